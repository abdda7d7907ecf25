// The Server page: live figures from GET /metrics (Prometheus text, parsed here) as charts.

import { api, errorOf } from './api.js';
import { LiveChart } from './charts.js';
import { formatBytes, formatInteger, formatMs, h, poll, replace } from './dom.js';
import { byLabel, parsePrometheus, total } from './prometheus.js';

const INTERVAL_MS = 2000;
const HISTORY = 150; // samples kept: five minutes at one every two seconds
const NOT_API = new Set(['/metrics', '/health', '/', '/web/{path:path}', 'unmatched']);

function apiEndpoint(labels) {
  return !NOT_API.has(labels.endpoint) && !labels.endpoint.startsWith('/minerva/');
}

/** The figures of one scrape. */
export function snapshotOf(samples, t) {
  return {
    t,
    requests: total(samples, 'minerva_requests_total', apiEndpoint),
    errors: total(samples, 'minerva_requests_total', (l) => apiEndpoint(l) && /^[45]/.test(l.status)),
    completion: total(samples, 'minerva_completion_tokens_total'),
    prompt: total(samples, 'minerva_prompt_tokens_total'),
    cached: total(samples, 'minerva_cached_prompt_tokens_total'),
    queue: total(samples, 'minerva_queue_depth'),
    active: total(samples, 'minerva_active_slots'),
    slots: total(samples, 'minerva_total_slots'),
    loaded: total(samples, 'minerva_models_loaded'),
    memory: byLabel(samples, 'minerva_model_memory_bytes', 'model'),
    ttftSum: total(samples, 'minerva_time_to_first_token_seconds_sum'),
    ttftCount: total(samples, 'minerva_time_to_first_token_seconds_count'),
    tokenSum: total(samples, 'minerva_time_per_output_token_seconds_sum'),
    tokenCount: total(samples, 'minerva_time_per_output_token_seconds_count'),
  };
}

function rate(history, key) {
  return history.map((s, i) => {
    if (i === 0) return null;
    const dt = s.t - history[i - 1].t;
    return dt > 0 ? Math.max(0, (s[key] - history[i - 1][key]) / dt) : null;
  });
}

const perSecond = (v) => (v >= 100 ? Math.round(v).toString() : v >= 10 ? v.toFixed(1) : v.toFixed(2).replace(/\.?0+$/, '') || '0');
const count = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));
const mebibytes = (v) => `${v >= 10 || v === 0 ? Math.round(v) : v.toFixed(1)} MiB`;

/** The Server page inside `root`. */
export function createServerPage(root) {
  let history = [];
  let active = false;

  const tiles = h('div', { class: 'tiles' });
  const status = h('p', { class: 'summary', role: 'status' });
  const chartCards = [];
  const card = (id, title, note) => {
    const box = h('div', { class: 'chart', id, role: 'img', dataset: { title } });
    chartCards.push(h('section', { class: 'card chart-card' }, h('h2', {}, title), note ? h('p', { class: 'cell-note' }, note) : null, box));
    return box;
  };
  const charts = {
    requests: new LiveChart(card('chart-requests', 'Requests per second', 'API requests (not this page’s own polling)'),
      { series: [{ label: 'requests/s' }, { label: 'errors/s' }], format: perSecond }),
    tokens: new LiveChart(card('chart-tokens', 'Tokens per second', 'Counted when each request ends'),
      { series: [{ label: 'generated' }, { label: 'prompt' }], format: perSecond }),
    slots: new LiveChart(card('chart-slots', 'Slots and queue', 'Sequences generating now, of the slots of the loaded models, and requests waiting'),
      { series: [{ label: 'slots in use' }, { label: 'slots' }, { label: 'waiting' }], format: count }),
    cache: new LiveChart(card('chart-cache', 'Prefix cache', 'Prompt tokens per second reused from the cache, and computed'),
      { series: [{ label: 'reused' }, { label: 'computed' }], format: perSecond }),
    memory: new LiveChart(card('chart-memory', 'Memory per loaded model', 'Estimated: weights plus KV cache'),
      { series: [], format: mebibytes }),
  };
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Server'),
    h('p', { class: 'lede' }, `Live figures from /metrics, every ${INTERVAL_MS / 1000} s while this page is open.`)),
  status, tiles, h('div', { class: 'chart-grid' }, chartCards));

  function tile(label, value, note, unit = null) {
    return h('div', { class: 'tile' }, h('span', { class: 'tile-label' }, label),
      h('span', { class: 'tile-value' }, value, unit && value !== '–' ? h('small', {}, ` ${unit}`) : null),
      note ? h('span', { class: 'tile-note' }, note) : null);
  }

  function render() {
    const xs = history.map((s) => s.t);
    const requests = rate(history, 'requests');
    charts.requests.setData([xs, requests, rate(history, 'errors')]);
    charts.tokens.setData([xs, rate(history, 'completion'), rate(history, 'prompt')]);
    charts.slots.setData([xs, history.map((s) => s.active), history.map((s) => s.slots), history.map((s) => s.queue)]);
    const reused = rate(history, 'cached');
    charts.cache.setData([xs, reused, rate(history, 'prompt').map((p, i) => (p == null ? null : Math.max(0, p - reused[i])))]);
    const models = [...new Set(history.flatMap((s) => [...s.memory.keys()]))].sort();
    charts.memory.setSeries(models.map((m) => ({ label: m })),
      [xs, ...models.map((m) => history.map((s) => (s.memory.has(m) ? s.memory.get(m) / 2 ** 20 : null)))]);
    const now = history[history.length - 1];
    const memory = [...now.memory.values()].reduce((a, b) => a + b, 0);
    replace(tiles,
      tile('API requests', formatInteger(now.requests), `${formatInteger(now.errors)} errors`),
      tile('Tokens generated', formatInteger(now.completion), `${formatInteger(now.prompt)} prompt tokens`),
      tile('Generation speed', now.tokenCount ? (now.tokenCount / now.tokenSum).toFixed(1) : '–', 'mean per request', 'tokens/s'),
      tile('Time to first token', now.ttftCount ? formatMs((1000 * now.ttftSum) / now.ttftCount) : '–', 'mean'),
      tile('Prefix cache', now.prompt ? String(Math.round((100 * now.cached) / now.prompt)) : '–', 'of prompt tokens reused', '%'),
      tile('Slots in use', `${formatInteger(now.active)} / ${formatInteger(now.slots)}`, `${formatInteger(now.queue)} waiting`),
      tile('Models loaded', formatInteger(now.loaded), formatBytes(memory)));
  }

  async function scrape() {
    if (history.length && Date.now() / 1000 - history[history.length - 1].t < 1) return; // a rate needs time between
    try {
      const response = await api('metrics');
      if (!response.ok) throw await errorOf(response);
      const samples = parsePrometheus(await response.text());
      history.push(snapshotOf(samples, Date.now() / 1000));
      history = history.slice(-HISTORY);
      status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      render();
    } catch (error) {
      status.textContent = `Could not read /metrics: ${error.message}`;
    }
  }

  poll(scrape, INTERVAL_MS, () => active);

  return {
    show() {
      active = true;
      scrape();
    },
    hide() {
      active = false;
    },
  };
}
