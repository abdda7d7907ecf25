// The Fine-tuning page: upload a JSONL file, start a job, watch its loss and events, try the model in Chat.

import { api, errorOf, json, postJSON } from './api.js';
import { LiveChart } from './charts.js';
import { formatInteger, formatTime, h, notify, poll, replace } from './dom.js';

const ACTIVE = new Set(['validating_files', 'queued', 'running']);

function statusBadge(status) {
  const kind = { succeeded: 'ok', failed: 'error', cancelled: 'idle', running: 'busy', queued: 'busy', validating_files: 'busy' }[status] || 'idle';
  return h('span', { class: `badge badge-${kind}`, dataset: { status } }, status.replace('_', ' '));
}

/** The Fine-tuning page inside `root`. */
export function createFineTuningPage(root) {
  let jobs = [];
  let selected = null; // job id
  let job = null;
  let events = [];
  let active = false;

  const file = h('input', { id: 'ft-file', type: 'file', accept: '.jsonl,application/jsonl,application/x-ndjson', required: true });
  const base = h('select', { id: 'ft-model', required: true });
  const suffix = h('input', { id: 'ft-suffix', type: 'text', maxlength: 64, placeholder: 'e.g. facts', autocomplete: 'off' });
  const epochs = h('input', { id: 'ft-epochs', type: 'number', min: 1, max: 50, step: 1, placeholder: 'auto' });
  const start = h('button', { type: 'submit', class: 'button button-primary', id: 'ft-start' }, 'Upload and start');
  const formStatus = h('p', { class: 'form-status', role: 'status', 'aria-live': 'polite' });
  const form = h('form', { class: 'card ft-form' }, h('h2', {}, 'New job'),
    h('p', { class: 'lede' }, 'One chat example per line: {"messages": [{"role": "user", …}, {"role": "assistant", …}]}. '
      + 'Training runs on this machine (LoRA); serving goes on meanwhile.'),
    h('div', { class: 'form-grid' },
      h('div', { class: 'field' }, h('label', { for: 'ft-file' }, 'Training file (JSONL)'), file),
      h('div', { class: 'field' }, h('label', { for: 'ft-model' }, 'Base model'), base),
      h('div', { class: 'field' }, h('label', { for: 'ft-suffix' }, 'Suffix (optional)'), suffix),
      h('div', { class: 'field' }, h('label', { for: 'ft-epochs' }, 'Epochs'), epochs)),
    h('div', { class: 'form-actions' }, start, formStatus));
  const jobList = h('ul', { class: 'job-list' });
  const jobsCard = h('section', { class: 'card' }, h('h2', {}, 'Jobs'), jobList);
  const detail = h('section', { class: 'card job-detail', hidden: true, 'aria-live': 'polite' });
  const chartBox = h('div', { class: 'chart', role: 'img', dataset: { title: 'Training loss by step' } });
  replace(root, h('div', { class: 'page-head' }, h('h1', {}, 'Fine-tuning'),
    h('p', { class: 'lede' }, 'Train a LoRA adapter through the OpenAI fine-tuning API; the result is served as a new model.')),
  h('div', { class: 'ft-layout' }, h('div', { class: 'ft-side' }, form, jobsCard), detail));
  const chart = new LiveChart(chartBox, { series: [{ label: 'training loss', points: true }], time: false, xLabel: 'step',
    format: (v) => v.toFixed(2), height: 220 });

  async function loadModels() {
    try {
      const answer = await json('v1/models');
      const trainable = answer.data.filter((m) => !m.fine_tuned && m.kind !== 'embedding');
      const chosen = base.value;
      replace(base, trainable.map((m) => h('option', { value: m.id }, m.id)));
      if (chosen) base.value = chosen;
    } catch (error) {
      formStatus.textContent = `Could not list the models: ${error.message}`;
    }
  }

  function renderJobs() {
    replace(jobList, jobs.map((j) => {
      const open = h('button', { type: 'button', class: 'job-item', 'aria-current': j.id === selected ? 'true' : null,
        dataset: { job: j.id } },
      h('span', { class: 'job-item-head' }, h('code', { class: 'job-id' }, j.id), statusBadge(j.status)),
      h('span', { class: 'job-meta' }, `${j.model} → ${j.fine_tuned_model || '…'}`),
      h('span', { class: 'job-meta' }, formatTime(j.created_at)));
      open.addEventListener('click', () => select(j.id));
      return h('li', { dataset: { jobId: j.id } }, open);
    }));
    if (!jobs.length) jobList.append(h('li', { class: 'empty' }, 'No jobs yet.'));
  }

  function renderDetail() {
    detail.hidden = !job;
    if (!job) return;
    const metrics = events.filter((e) => e.type === 'metrics' && e.data && e.data.step != null)
      .map((e) => e.data).sort((a, b) => a.step - b.step);
    const lastMetric = metrics[metrics.length - 1];
    const total = lastMetric?.total_steps;
    const progress = total ? Math.round((100 * lastMetric.step) / total) : (job.status === 'succeeded' ? 100 : 0);
    chart.setData([metrics.map((m) => m.step), metrics.map((m) => m.train_loss)]);
    const tryIt = h('a', { class: 'button button-primary', id: 'ft-try', href: `#/chat?model=${encodeURIComponent(job.fine_tuned_model || '')}`,
      hidden: !job.fine_tuned_model }, 'Try in Chat');
    const cancel = h('button', { type: 'button', class: 'button button-danger', hidden: !ACTIVE.has(job.status) }, 'Cancel job');
    cancel.addEventListener('click', async () => {
      try {
        await postJSON(`v1/fine_tuning/jobs/${encodeURIComponent(job.id)}/cancel`, {});
        await refreshJob();
      } catch (error) {
        notify(`Could not cancel: ${error.message}`, 'error');
      }
    });
    const hyper = job.hyperparameters || {};
    replace(detail,
      h('div', { class: 'detail-head' }, h('div', {}, h('h2', { class: 'detail-title' }, h('code', {}, job.id)),
        h('p', { class: 'lede' }, statusBadge(job.status), ` ${job.model} → `, job.fine_tuned_model ? h('code', {}, job.fine_tuned_model) : 'not yet trained')),
      h('div', { class: 'detail-actions' }, tryIt, cancel)),
      h('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': progress,
        'aria-label': 'Training progress' }, h('div', { class: 'progress-bar' })),
      h('p', { class: 'cell-note' }, lastMetric ? `Step ${lastMetric.step} of ${total ?? '?'} · loss ${lastMetric.train_loss.toFixed(3)}` : 'No training steps yet.',
        job.trained_tokens ? ` · ${formatInteger(job.trained_tokens)} trained tokens` : '',
        ` · epochs ${hyper.n_epochs ?? 'auto'}, batch ${hyper.batch_size ?? 'auto'}, learning rate × ${hyper.learning_rate_multiplier ?? 'auto'}`),
      job.error?.message ? h('p', { class: 'message-error', role: 'alert' }, job.error.message) : null,
      h('h3', {}, 'Training loss'), chartBox,
      h('h3', {}, `Events (${events.length})`),
      h('ol', { class: 'event-list', reversed: true }, events.map((e) => h('li', { class: `event event-${e.level}` },
        h('time', {}, new Date(e.created_at * 1000).toLocaleTimeString()), h('span', {}, e.message)))));
    detail.querySelector('.progress-bar').style.width = `${progress}%`;
    chart.resize();
  }

  async function loadJobs() {
    const answer = await json('v1/fine_tuning/jobs?limit=100');
    jobs = answer.data;
    renderJobs();
  }

  async function refreshJob() {
    if (!selected) return;
    const [fresh, list] = await Promise.all([
      json(`v1/fine_tuning/jobs/${encodeURIComponent(selected)}`),
      json(`v1/fine_tuning/jobs/${encodeURIComponent(selected)}/events?limit=1000`),
    ]);
    const finishedNow = job && ACTIVE.has(job.status) && !ACTIVE.has(fresh.status);
    job = fresh;
    events = list.data;
    renderDetail();
    if (finishedNow) {
      notify(`Job ${job.id} ${job.status}.`, job.status === 'failed' ? 'error' : 'info');
      loadJobs();
    }
  }

  async function select(id) {
    selected = id;
    job = null;
    renderJobs();
    await refreshJob();
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) return;
    start.disabled = true;
    try {
      formStatus.textContent = `Uploading ${chosen.name}…`;
      const data = new FormData();
      data.append('purpose', 'fine-tune');
      data.append('file', chosen, chosen.name);
      const upload = await api('v1/files', { method: 'POST', body: data });
      if (!upload.ok) throw await errorOf(upload);
      const uploaded = await upload.json();
      formStatus.textContent = `Uploaded ${uploaded.filename} (${formatInteger(uploaded.bytes)} bytes); starting the job…`;
      const body = { model: base.value, training_file: uploaded.id };
      if (suffix.value.trim()) body.suffix = suffix.value.trim();
      if (epochs.value) body.hyperparameters = { n_epochs: parseInt(epochs.value, 10) };
      const created = await postJSON('v1/fine_tuning/jobs', body);
      formStatus.textContent = `Started ${created.id}.`;
      form.reset();
      await loadJobs();
      await select(created.id);
    } catch (error) {
      formStatus.textContent = `Could not start the job: ${error.message}`;
    } finally {
      start.disabled = false;
    }
  });

  poll(loadJobs, 4000, () => active);
  poll(refreshJob, 1000, () => active && job != null && ACTIVE.has(job.status));

  return {
    show() {
      active = true;
      loadModels();
      loadJobs().catch((error) => { formStatus.textContent = `Could not list the jobs: ${error.message}`; });
    },
    hide() {
      active = false;
    },
  };
}
