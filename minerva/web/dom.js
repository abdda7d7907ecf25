// Small DOM and formatting helpers shared by the pages.

/** An element with properties, attributes, listeners (onClick…) and children (strings become text). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2).toLowerCase(), value);
    else if (typeof value !== 'string' && typeof value !== 'number' && key in el) el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

/** Append children (nested arrays flattened; null, undefined and false skipped). */
export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replace an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

const integer = new Intl.NumberFormat('en');

/** 8192 → "8,192"; null → "–". */
export function formatInteger(value) {
  return value == null ? '–' : integer.format(value);
}

/** 134515008 → "134.5M". */
export function formatCount(value) {
  if (value == null) return '–';
  for (const [unit, size] of [['B', 1e9], ['M', 1e6], ['K', 1e3]]) {
    if (value >= size) return `${(value / size).toFixed(1)}${unit}`;
  }
  return String(value);
}

/** Bytes as a person reads them (binary units). */
export function formatBytes(bytes) {
  if (bytes == null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value >= 100 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

/** Seconds as "45 s", "12 min", "2 h 5 min". */
export function formatDuration(seconds) {
  if (seconds == null) return '–';
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  const hours = Math.floor(seconds / 3600);
  return `${hours} h ${Math.round((seconds - hours * 3600) / 60)} min`;
}

/** Milliseconds as "820 ms" or "1.42 s". */
export function formatMs(ms) {
  if (ms == null) return '–';
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

/** A Unix time (seconds) as a local date and time. */
export function formatTime(unixSeconds) {
  if (!unixSeconds) return '–';
  return new Date(unixSeconds * 1000).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** A short-lived notice in the corner (errors stay until dismissed). */
export function notify(message, kind = 'info') {
  const region = document.getElementById('notices');
  const close = h('button', { type: 'button', class: 'notice-close', 'aria-label': 'Dismiss' }, '×');
  const notice = h('div', { class: `notice notice-${kind}`, role: kind === 'error' ? 'alert' : 'status' },
    h('span', {}, message), close);
  close.addEventListener('click', () => notice.remove());
  region.append(notice);
  if (kind !== 'error') setTimeout(() => notice.remove(), 5000);
}

/** Run `tick` now and every `intervalMs` while `active()` holds and the tab is visible; returns a stop function. */
export function poll(tick, intervalMs, active = () => true) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    if (stopped) return;
    if (active() && document.visibilityState === 'visible') {
      try {
        await tick();
      } catch (error) {
        console.debug('poll failed', error);
      }
    }
    if (!stopped) timer = setTimeout(run, intervalMs);
  };
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
