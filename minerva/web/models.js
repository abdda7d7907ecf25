// The Models page: every registered model with its metadata, sortable and filterable; load, unload, details.

import { json, postJSON } from './api.js';
import {
  formatBytes, formatCount, formatDuration, formatInteger, formatTime, h, notify, poll, replace,
} from './dom.js';

const SOURCES = {
  default: 'embedded default', dir: 'models directory', explicit: 'registered', fine_tuned: 'fine-tuned',
  ollama: 'Ollama', huggingface: 'Hugging Face cache', lmstudio: 'LM Studio', llamacpp: 'llama.cpp cache',
};

// The header facts the detail view names; any other field `minerva inspect` shows is listed after them.
const SHOWN_FIELDS = new Set(['id', 'source', 'format', 'path', 'files', 'file_size_bytes', 'tensor_count', 'parameter_count',
  'quantization', 'architecture', 'context_length', 'kind', 'name', 'chat_template', 'embedding_length', 'block_count',
  'vocab_size', 'pooling', 'bos_token', 'eos_token', 'tokenizer_model', 'mtime', 'extra', 'file_size_mb', 'has_chat_template']);

const COLUMNS = [
  { key: 'id', label: 'Model', cell: modelCell },
  { key: 'format', label: 'Format' },
  { key: 'quantization', label: 'Quant.', title: 'Quantization' },
  { key: 'file_size_mb', label: 'Size', numeric: true, text: (m) => `${m.file_size_mb.toLocaleString('en')} MB` },
  { key: 'tensor_count', label: 'Tensors', numeric: true, text: (m) => formatInteger(m.tensor_count) },
  { key: 'parameter_count', label: 'Params', title: 'Parameters', numeric: true, text: (m) => formatCount(m.parameter_count) },
  { key: 'architecture', label: 'Arch.', title: 'Architecture' },
  { key: 'context_length', label: 'Context', numeric: true, text: (m) => formatInteger(m.context_length) },
  { key: 'capabilities', label: 'Capabilities', cell: (m) => chips(m.capabilities) },
  { key: 'loaded', label: 'Loaded', cell: loadedCell, sortValue: (m) => (m.loaded ? 1 : 0) },
  { key: 'source', label: 'Where found', cell: sourceCell },
];

function chips(values) {
  return h('span', { class: 'chips' }, values.map((v) => h('span', { class: 'chip' }, v)));
}

function modelCell(model) {
  return [h('a', { class: 'model-id', href: `#/models/${encodeURIComponent(model.id)}`, title: `Details of ${model.id}`,
    dataset: { action: 'details', model: model.id } }, model.id), h('span', { class: 'model-name', title: model.name }, model.name)];
}

function loadedCell(model) {
  if (!model.loaded) return h('span', { class: 'badge badge-idle' }, 'not loaded');
  const parts = [model.serving_model === model.id ? formatBytes(model.memory_bytes) : `on ${model.serving_model}`];
  if (model.expires_in_s != null) parts.push(`unloads in ${formatDuration(model.expires_in_s)}`);
  return [h('span', { class: 'badge badge-ok' }, 'loaded'), h('span', { class: 'cell-note' }, parts.join(' · '))];
}

function shortPath(path) {
  const parts = path.split(/[\\/]/).filter(Boolean);
  return parts.length > 2 ? `…/${parts.slice(-2).join('/')}` : path;
}

function sourceCell(model) {
  return [h('span', {}, SOURCES[model.source] || model.source),
    h('span', { class: 'cell-note path', title: model.found_at }, shortPath(model.found_at))];
}

function searchText(model) {
  return [model.id, model.name, model.format, model.quantization, model.architecture, model.kind, model.found_at,
    SOURCES[model.source], ...(model.capabilities || [])].join(' ').toLowerCase();
}

function compare(a, b) {
  if (a == null && b == null) return 0;
  if (a == null) return 1;
  if (b == null) return -1;
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return String(a).localeCompare(String(b), 'en', { numeric: true });
}

/** The Models page inside `root`; `show(params)` is called by the router. */
export function createModelsPage(root) {
  let models = [];
  let failures = [];
  let sort = { key: 'id', dir: 1 };
  let detailId = null;
  const busy = new Set();
  let active = false;

  const filter = h('input', { id: 'model-filter', type: 'search', placeholder: 'id, architecture, quantization…', autocomplete: 'off' });
  const summary = h('p', { class: 'summary', 'aria-live': 'polite' });
  const refresh = h('button', { type: 'button', class: 'button' }, 'Refresh');
  const sortSelect = h('select', { id: 'model-sort' }, COLUMNS.flatMap((c) => [
    h('option', { value: `${c.key}:1` }, `${c.title || c.label} ↑`), h('option', { value: `${c.key}:-1` }, `${c.title || c.label} ↓`)]));
  const head = h('tr');
  const body = h('tbody');
  const table = h('table', { class: 'data-table models-table' }, h('thead', {}, head), body);
  const failuresBox = h('section', { class: 'card failures', hidden: true, 'aria-labelledby': 'failures-title' });
  const listView = h('div', { class: 'models-list' },
    h('div', { class: 'toolbar' },
      h('div', { class: 'field field-inline' }, h('label', { for: 'model-filter' }, 'Filter'), filter),
      h('div', { class: 'field field-inline narrow-only' }, h('label', { for: 'model-sort' }, 'Sort'), sortSelect),
      refresh, summary),
    h('div', { class: 'card table-card' }, h('div', { class: 'table-scroll' }, table)),
    failuresBox);
  const detailView = h('div', { class: 'model-detail', hidden: true });
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Models'),
    h('p', { class: 'lede' }, 'Every model the server found, from its file headers. A model loads on its first request, or here.')),
  listView, detailView);

  filter.addEventListener('input', renderRows);
  sortSelect.addEventListener('change', () => {
    const [key, dir] = sortSelect.value.split(':');
    sort = { key, dir: Number(dir) };
    renderHead();
    renderRows();
  });
  refresh.addEventListener('click', () => load(true));

  function renderHead() {
    sortSelect.value = `${sort.key}:${sort.dir}`;
    replace(head, COLUMNS.map((column) => {
      const state = sort.key === column.key ? (sort.dir > 0 ? 'ascending' : 'descending') : 'none';
      const button = h('button', { type: 'button', class: 'sort', title: column.title || null, dataset: { sort: column.key } }, column.label,
        h('span', { class: 'sort-mark', 'aria-hidden': 'true' }, state === 'ascending' ? '▲' : state === 'descending' ? '▼' : ''));
      button.addEventListener('click', () => {
        sort = { key: column.key, dir: sort.key === column.key ? -sort.dir : 1 };
        renderHead();
        renderRows();
        head.querySelector(`[data-sort="${column.key}"]`).focus();
      });
      return h('th', { scope: 'col', 'aria-sort': state, class: column.numeric ? 'numeric' : '' }, button);
    }), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')));
  }

  function actionButtons(model) {
    const working = busy.has(model.id);
    const action = model.loaded ? 'unload' : 'load';
    const label = working ? (model.loaded ? 'Unloading…' : 'Loading…') : (model.loaded ? 'Unload' : 'Load');
    const toggle = h('button', {
      type: 'button', class: `button button-small ${model.loaded ? '' : 'button-primary'}`, disabled: working,
      dataset: { action, model: model.id }, 'aria-label': `${label} ${model.id}`,
    }, label);
    toggle.addEventListener('click', () => act(action, model.id));
    return h('td', { class: 'actions' }, toggle);
  }

  function renderRows() {
    const focused = document.activeElement?.closest?.('[data-action]');
    const refocus = focused && body.contains(focused) ? [focused.dataset.model, focused.dataset.action] : null;
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    const column = COLUMNS.find((c) => c.key === sort.key);
    const valueOf = column.sortValue || ((m) => m[sort.key]);
    const shown = models.filter((m) => words.every((w) => searchText(m).includes(w)))
      .sort((a, b) => sort.dir * compare(valueOf(a), valueOf(b)));
    replace(body, shown.map((model) => h('tr', { dataset: { modelId: model.id } },
      COLUMNS.map((c) => h('td', {
        class: c.numeric ? 'numeric' : '', 'data-label': c.title || c.label,
        dataset: { field: c.key, value: JSON.stringify(model[c.key] ?? null) },
      }, c.cell ? c.cell(model) : (c.text ? c.text(model) : (model[c.key] ?? '–')))),
      actionButtons(model))));
    if (!shown.length) {
      replace(body, h('tr', {}, h('td', { colspan: COLUMNS.length + 1, class: 'empty' },
        models.length ? 'No model matches the filter.' : 'No models registered. Start minerva with --models-dir DIR or --model ID=PATH.')));
    }
    const engines = new Map(models.filter((m) => m.loaded).map((m) => [m.serving_model, m.memory_bytes || 0]));
    const memory = [...engines.values()].reduce((sum, bytes) => sum + bytes, 0);
    summary.textContent = `${shown.length === models.length ? models.length : `${shown.length} of ${models.length}`} `
      + `model${models.length === 1 ? '' : 's'} · ${engines.size} loaded${engines.size ? ` (${formatBytes(memory)})` : ''}`;
    if (refocus) {
      const again = body.querySelector(`[data-model="${CSS.escape(refocus[0])}"][data-action]`);
      again?.focus();
    }
  }

  function renderFailures() {
    failuresBox.hidden = !failures.length;
    replace(failuresBox, h('h2', { id: 'failures-title' }, `Files that could not be read (${failures.length})`),
      h('ul', { class: 'failure-list' }, failures.map((f) => h('li', {},
        h('code', { class: 'path' }, f.path), h('span', { class: 'failure-reason' }, f.reason)))));
  }

  function fact(label, value) {
    return h('div', { class: 'fact' }, h('dt', {}, label), h('dd', {}, value == null || value === '' ? '–' : value));
  }

  function renderDetail() {
    const model = models.find((m) => m.id === detailId);
    if (!model) {
      replace(detailView, h('p', {}, `No model '${detailId}'.`), h('a', { class: 'button', href: '#/models' }, 'Back to models'));
      return;
    }
    const info = model.inspect;
    const facts = [
      fact('Name', info.name), fact('Kind', info.kind), fact('Format', info.format), fact('Quantization', info.quantization),
      fact('Architecture', info.architecture), fact('Parameters', `${formatInteger(info.parameter_count)} (${formatCount(info.parameter_count)})`),
      fact('Tensors', formatInteger(info.tensor_count)), fact('File size', `${formatInteger(info.file_size_bytes)} bytes (${info.file_size_mb} MB)`),
      fact('Context length', formatInteger(info.context_length)), fact('Embedding length', formatInteger(info.embedding_length)),
      fact('Layers (blocks)', formatInteger(info.block_count)), fact('Vocabulary', formatInteger(info.vocab_size)),
      fact('Tokenizer', info.tokenizer_model), fact('BOS token', info.bos_token), fact('EOS token', info.eos_token),
      fact('Pooling', info.pooling), fact('Chat template', info.has_chat_template ? `yes (${info.chat_template.length} characters)` : 'no'),
      fact('Capabilities', chips(model.capabilities)), fact('Modified', formatTime(info.mtime)),
      fact('Where found', SOURCES[model.source] || model.source),
      model.found_at !== info.path ? fact('Found at', h('code', { class: 'path' }, model.found_at)) : null,
      fact('Path', h('code', { class: 'path' }, info.path)),
    ];
    if (model.fine_tuned) {
      facts.push(fact('Base model', h('a', { href: `#/models/${encodeURIComponent(model.base_model)}` }, model.base_model)),
        fact('Adapter', h('code', { class: 'path' }, model.adapter)), fact('Adapter format', model.adapter_format),
        fact('Adapter size', `${model.adapter_size_mb} MB`));
    }
    const state = model.loaded
      ? `Loaded${model.serving_model !== model.id ? ` (as ${model.serving_model})` : ''}, ${formatBytes(model.memory_bytes)} estimated`
        + (model.expires_in_s != null ? `; unloads after ${formatDuration(model.expires_in_s)} more idle` : '; stays loaded')
      : 'Not loaded';
    const extra = [...(Array.isArray(info.extra) ? info.extra : Object.entries(info.extra || {})),
      ...Object.entries(info).filter(([key]) => !SHOWN_FIELDS.has(key))];
    const toggle = h('button', { type: 'button', class: `button ${model.loaded ? '' : 'button-primary'}`,
      disabled: busy.has(model.id), dataset: { action: model.loaded ? 'unload' : 'load', model: model.id } },
    busy.has(model.id) ? 'Working…' : (model.loaded ? 'Unload' : 'Load'));
    toggle.addEventListener('click', () => act(model.loaded ? 'unload' : 'load', model.id));
    const same = detailView.dataset.model === model.id;
    const opened = same ? [...detailView.querySelectorAll('details')].map((d) => d.open) : []; // kept across refreshes
    detailView.dataset.model = model.id;
    replace(detailView,
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/models' }, '← All models')),
      h('div', { class: 'detail-head' }, h('div', {}, h('h2', { class: 'detail-title' }, model.id), h('p', { class: 'lede' }, state)),
        h('div', { class: 'detail-actions' }, toggle,
          model.capabilities.includes('chat') ? h('a', { class: 'button', href: `#/chat?model=${encodeURIComponent(model.id)}` }, 'Chat with it') : null)),
      h('section', { class: 'card' }, h('h3', {}, 'Header metadata'), h('dl', { class: 'facts' }, facts)),
      h('section', { class: 'card' }, h('h3', {}, `Files (${info.files.length})`),
        h('ul', { class: 'file-list' }, info.files.map((f) => h('li', {}, h('code', { class: 'path' }, f))))),
      extra.length ? h('section', { class: 'card' }, h('h3', {}, 'Other header fields'),
        h('dl', { class: 'facts' }, extra.map(([k, v]) => fact(k, typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v))))) : null,
      info.chat_template ? h('section', { class: 'card' }, h('details', {}, h('summary', {}, 'Chat template'),
        h('pre', { class: 'template' }, info.chat_template))) : null);
    detailView.querySelectorAll('details').forEach((d, i) => { d.open = opened[i] ?? d.open; });
  }

  function render() {
    listView.hidden = detailId != null;
    detailView.hidden = detailId == null;
    if (detailId != null) renderDetail();
    else {
      renderHead();
      renderRows();
      renderFailures();
    }
  }

  async function load(announce = false) {
    try {
      const answer = await json('minerva/models');
      models = answer.data;
      failures = answer.failures;
      render();
      if (announce) notify('Models refreshed.');
    } catch (error) {
      summary.textContent = `Could not list the models: ${error.message}`;
      if (announce) notify(error.message, 'error');
    }
  }

  async function act(action, id) {
    busy.add(id);
    render();
    try {
      await postJSON(`minerva/models/${action}`, { model: id });
      notify(`${action === 'load' ? 'Loaded' : 'Unloaded'} ${id}.`);
    } catch (error) {
      notify(`Could not ${action} ${id}: ${error.message}`, 'error');
    } finally {
      busy.delete(id);
      await load();
    }
  }

  poll(() => load(), 5000, () => active);

  return {
    show(params) {
      active = true;
      detailId = params.rest ? decodeURIComponent(params.rest) : null;
      render();
      load();
    },
    hide() {
      active = false;
    },
  };
}
