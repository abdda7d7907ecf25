// Talking to minerva: the API key (asked for once on a 401, kept in this browser), errors, SSE streams.

const KEY_STORAGE = 'minerva.apiKey';

/** An error answer from the server, with the message of its error envelope. */
export class ApiError extends Error {
  constructor(message, status = 0, code = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export function storedKey() {
  return localStorage.getItem(KEY_STORAGE) || '';
}

function withKey(headers = {}) {
  const key = storedKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

/** The message of an error response: its envelope's error.message, else its text, else the status. */
export async function errorOf(response) {
  const text = await response.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    const error = body.error || body;
    if (error && typeof error.message === 'string') return new ApiError(error.message, response.status, error.code);
  } catch {
    // not JSON: the text itself, if any
  }
  return new ApiError(text.trim() || `HTTP ${response.status} ${response.statusText}`, response.status);
}

let pendingKey = null;

/** Ask for a key in the key dialog; resolves once a key is saved, rejects when the person cancels. */
export function askForKey(reason = 'change', detail = '') {
  if (pendingKey) return pendingKey;
  const dialog = document.getElementById('key-dialog');
  const form = dialog.querySelector('form');
  const input = dialog.querySelector('#key-input');
  const message = dialog.querySelector('#key-message');
  const texts = {
    missing: 'This server requires an API key. Enter one of the keys it was started with '
      + '(--api-key or MINERVA_API_KEYS); it is kept in this browser only.',
    refused: 'The server refused the API key this browser sent. Check the key and enter it again.',
    change: 'The key is sent as "Authorization: Bearer …" and kept in this browser only.',
  };
  message.textContent = texts[reason] || texts.change;
  message.classList.toggle('key-refused', reason === 'refused');
  dialog.querySelector('#key-detail').textContent = reason === 'refused' && detail ? `Server said: ${detail}` : '';
  dialog.querySelector('#key-forget').hidden = !storedKey();
  input.value = '';
  pendingKey = new Promise((resolve, reject) => {
    const finish = (event) => {
      event.preventDefault();
      const action = event.submitter?.value || 'save';
      if (action === 'save' && !input.value.trim()) {
        input.focus();
        return;
      }
      form.removeEventListener('submit', finish);
      dialog.removeEventListener('cancel', cancel);
      dialog.close();
      pendingKey = null;
      if (action === 'forget') {
        localStorage.removeItem(KEY_STORAGE);
        reject(new ApiError('No API key: the key was removed from this browser.', 401));
      } else if (action === 'cancel') {
        reject(new ApiError('This server requires an API key; none was entered.', 401));
      } else {
        localStorage.setItem(KEY_STORAGE, input.value.trim());
        resolve();
      }
    };
    const cancel = (event) => {
      event.preventDefault();
      finish({ preventDefault() {}, submitter: { value: 'cancel' } });
    };
    form.addEventListener('submit', finish);
    dialog.addEventListener('cancel', cancel);
  });
  dialog.showModal();
  input.focus();
  return pendingKey;
}

/** fetch() with the stored key; on a 401 asks for a key (once, however many requests failed) and retries. */
export async function api(path, options = {}) {
  for (;;) {
    const response = await fetch(path, { ...options, headers: withKey(options.headers) });
    if (response.status !== 401) return response;
    const error = await errorOf(response);
    await askForKey(storedKey() ? 'refused' : 'missing', error.message);
  }
}

/** GET or POST JSON; throws ApiError for an error answer. */
export async function json(path, options = {}) {
  const response = await api(path, options);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** POST a JSON body and return the JSON answer. */
export function postJSON(path, body, options = {}) {
  return json(path, {
    ...options,
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...(options.headers || {}) },
    body: JSON.stringify(body),
  });
}

/** The `data:` payloads of a server-sent event stream, as they arrive. */
export async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      for (let end = buffer.search(/\r?\n\r?\n/); end >= 0; end = buffer.search(/\r?\n\r?\n/)) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
        const data = block.split(/\r?\n/).filter((line) => line.startsWith('data:'))
          .map((line) => line.slice(5).replace(/^ /, '')).join('\n');
        if (data) yield data;
      }
    }
  } finally {
    reader.releaseLock();
  }
}
