// The web page's shell: hash routes (#/chat, #/models[/id], #/finetune, #/server) and the API key button.

import { askForKey, storedKey } from './api.js';
import { createChatPage } from './chat.js';
import { notify } from './dom.js';
import { createFineTuningPage } from './finetune.js';
import { createModelsPage } from './models.js';
import { createServerPage } from './server.js';

const FACTORIES = { chat: createChatPage, models: createModelsPage, finetune: createFineTuningPage, server: createServerPage };
const TITLES = { chat: 'Chat', models: 'Models', finetune: 'Fine-tuning', server: 'Server' };
const DEFAULT_PAGE = 'chat';

const pages = {};
let shown = null;

/** #/models/org%2Fname?x=1 → {page: 'models', rest: 'org%2Fname', query}. */
function parseHash(hash) {
  const [path, search = ''] = hash.replace(/^#\/?/, '').split('?');
  const [page, ...rest] = path.split('/');
  return { page: FACTORIES[page] ? page : DEFAULT_PAGE, rest: rest.join('/') || null, query: new URLSearchParams(search) };
}

function route() {
  if (location.hash && !location.hash.startsWith('#/')) return; // an in-page anchor, not a route
  const params = parseHash(location.hash);
  const section = document.getElementById(`page-${params.page}`);
  if (!pages[params.page]) pages[params.page] = FACTORIES[params.page](section);
  if (shown && shown !== params.page) {
    pages[shown].hide();
    document.getElementById(`page-${shown}`).hidden = true;
  }
  section.hidden = false;
  shown = params.page;
  for (const link of document.querySelectorAll('.tabs a')) {
    if (link.dataset.page === params.page) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `${TITLES[params.page]} · minerva`;
  document.body.dataset.page = params.page;
  pages[params.page].show(params);
}

function keyButtonLabel() {
  document.getElementById('key-button').textContent = storedKey() ? 'API key ✓' : 'API key';
}

document.getElementById('key-button').addEventListener('click', async () => {
  try {
    await askForKey('change');
    notify('API key saved in this browser.');
    route();
  } catch (error) {
    notify(error.message);
  }
  keyButtonLabel();
});
window.addEventListener('storage', keyButtonLabel);
document.getElementById('key-dialog').addEventListener('close', keyButtonLabel);
document.querySelector('.skip-link').addEventListener('click', (event) => {
  event.preventDefault();
  document.getElementById('main').focus();
});
window.addEventListener('hashchange', route);
keyButtonLabel();
route();
