// The Chat page: streamed answers from /v1/chat/completions, rendered as Markdown, kept in this browser.

import { api, ApiError, errorOf, json, sseData } from './api.js';
import { formatInteger, formatMs, h, notify, replace } from './dom.js';
import { renderMarkdown } from './markdown.js';

const CONVERSATIONS = 'minerva.conversations';
const CURRENT = 'minerva.chat.current';
const SAMPLING = 'minerva.chat.sampling';
const MAX_CONVERSATIONS = 200;
const RENDER_EVERY_MS = 60;

const SAMPLING_FIELDS = [
  { key: 'temperature', label: 'Temperature', min: 0, max: 2, step: 0.05, help: '0 picks the likeliest token' },
  { key: 'top_p', label: 'Top p', min: 0, max: 1, step: 0.05 },
  { key: 'max_tokens', label: 'Max tokens', min: 1, step: 1, integer: true, help: 'empty: the server default' },
  { key: 'seed', label: 'Seed', step: 1, integer: true },
  { key: 'presence_penalty', label: 'Presence penalty', min: -2, max: 2, step: 0.1 },
  { key: 'frequency_penalty', label: 'Frequency penalty', min: -2, max: 2, step: 0.1 },
];

const SUGGESTIONS = ['What is the capital of France?', 'Write a Python function that reverses a string.',
  'Explain what a prefix cache is in two sentences.'];

function load(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

function newId() {
  return `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 7)}`;
}

function titleOf(conversation) {
  const first = conversation.messages.find((m) => m.role === 'user');
  return first ? first.content.replace(/\s+/g, ' ').slice(0, 60) : 'New chat';
}

/** The chat request's messages: the system prompt, then the turns (answers that failed are left out). */
export function requestMessages(conversation) {
  const messages = conversation.system?.trim() ? [{ role: 'system', content: conversation.system }] : [];
  for (const m of conversation.messages) {
    if (m.role === 'user') messages.push({ role: 'user', content: m.content });
    else if (m.role === 'assistant' && (m.content || !m.error)) messages.push({ role: 'assistant', content: m.content || '' });
  }
  return messages;
}

/** The Chat page inside `root`. */
export function createChatPage(root) {
  let conversations = load(CONVERSATIONS, []);
  let current = conversations.find((c) => c.id === localStorage.getItem(CURRENT)) || null;
  const sampling = load(SAMPLING, {});
  let models = [];
  let streaming = null; // {controller, message, node}

  const conversationList = h('ul', { class: 'conversation-list' });
  const newChat = h('button', { type: 'button', class: 'button button-primary new-chat' }, '+ New chat');
  const modelSelect = h('select', { id: 'chat-model' });
  const messagesBox = h('div', { class: 'messages', role: 'log', 'aria-live': 'polite', 'aria-label': 'Conversation' });
  const input = h('textarea', { id: 'chat-input', rows: 3, placeholder: 'Message the model…' });
  const send = h('button', { type: 'submit', class: 'button button-primary', id: 'chat-send' }, 'Send');
  const stop = h('button', { type: 'button', class: 'button button-danger', id: 'chat-stop', hidden: true }, 'Stop');
  const composer = h('form', { class: 'composer' },
    h('label', { for: 'chat-input', class: 'visually-hidden' }, 'Message'), input,
    h('div', { class: 'composer-bar' },
      h('span', { class: 'hint' }, 'Enter to send · Shift+Enter for a new line · Esc to stop'), stop, send));
  const system = h('textarea', { id: 'chat-system', rows: 4, placeholder: "Empty: the model's template default" });
  const tools = h('textarea', { id: 'chat-tools', rows: 6, spellcheck: false, class: 'mono',
    placeholder: '[{"type": "function", "function": {"name": "get_weather", "parameters": {…}}}]' });
  const toolChoice = h('select', { id: 'chat-tool-choice' },
    ['auto', 'required', 'none'].map((choice) => h('option', { value: choice }, choice)));
  const samplingInputs = Object.fromEntries(SAMPLING_FIELDS.map((f) => [f.key, h('input', {
    id: `chat-${f.key}`, type: 'number', step: f.step, min: f.min, max: f.max, placeholder: 'default', inputmode: 'decimal',
  })]));
  const reset = h('button', { type: 'button', class: 'button button-small button-quiet' }, 'Reset to server defaults');

  const conversationsPanel = h('details', { class: 'chat-conversations', open: true },
    h('summary', {}, h('h2', {}, 'Conversations')), newChat, conversationList);
  const settingsPanel = h('details', { class: 'chat-settings', open: true },
    h('summary', {}, h('h2', {}, 'Settings')),
    h('div', { class: 'field' }, h('label', { for: 'chat-system' }, 'System prompt'), system),
    h('fieldset', { class: 'sampling' }, h('legend', {}, 'Sampling'),
      SAMPLING_FIELDS.map((f) => h('div', { class: 'field' }, h('label', { for: `chat-${f.key}` }, f.label),
        samplingInputs[f.key], f.help ? h('span', { class: 'field-help' }, f.help) : null)), reset),
    h('details', { class: 'tools-field' }, h('summary', {}, 'Tools (JSON)'),
      h('div', { class: 'field' }, h('label', { for: 'chat-tools' }, 'OpenAI tool definitions; calls are shown, not run'), tools),
      h('div', { class: 'field' }, h('label', { for: 'chat-tool-choice' }, 'Tool choice'), toolChoice)));
  replace(root, h('div', { class: 'chat-layout' },
    conversationsPanel,
    h('section', { class: 'chat-main', 'aria-label': 'Chat' },
      h('div', { class: 'chat-head' }, h('div', { class: 'field field-inline' }, h('label', { for: 'chat-model' }, 'Model'), modelSelect)),
      messagesBox, composer),
    settingsPanel));
  if (window.matchMedia('(max-width: 1100px)').matches) {
    conversationsPanel.open = false;
    settingsPanel.open = false;
  }

  for (const f of SAMPLING_FIELDS) {
    samplingInputs[f.key].value = sampling[f.key] ?? '';
    samplingInputs[f.key].addEventListener('change', () => {
      sampling[f.key] = samplingInputs[f.key].value;
      localStorage.setItem(SAMPLING, JSON.stringify(sampling));
    });
  }
  tools.value = sampling.tools || '';
  toolChoice.value = sampling.tool_choice || 'auto';
  toolChoice.addEventListener('change', () => {
    sampling.tool_choice = toolChoice.value;
    localStorage.setItem(SAMPLING, JSON.stringify(sampling));
  });
  tools.addEventListener('change', () => {
    sampling.tools = tools.value;
    localStorage.setItem(SAMPLING, JSON.stringify(sampling));
  });
  reset.addEventListener('click', () => {
    for (const f of SAMPLING_FIELDS) {
      samplingInputs[f.key].value = '';
      delete sampling[f.key];
    }
    localStorage.setItem(SAMPLING, JSON.stringify(sampling));
  });

  function save() {
    conversations.sort((a, b) => b.updated - a.updated);
    conversations = conversations.slice(0, MAX_CONVERSATIONS);
    try {
      localStorage.setItem(CONVERSATIONS, JSON.stringify(conversations));
      if (current) localStorage.setItem(CURRENT, current.id);
    } catch (error) {
      notify(`Could not keep the conversations in this browser: ${error.message}`, 'error');
    }
  }

  function startConversation(model = modelSelect.value || models[0]?.id || '') {
    current = { id: newId(), title: 'New chat', model, system: system.value, messages: [], updated: Date.now() };
    conversations.unshift(current);
    save();
    renderAll();
  }

  function renderConversations() {
    replace(conversationList, conversations.map((c) => {
      const open = h('button', { type: 'button', class: 'conversation-open', 'aria-current': c === current ? 'true' : null },
        h('span', { class: 'conversation-title' }, c.title), h('span', { class: 'conversation-meta' },
          `${c.model || 'no model'} · ${new Date(c.updated).toLocaleDateString()}`));
      open.addEventListener('click', () => {
        if (streaming) return notify('Stop the answer being written first.');
        current = c;
        save();
        renderAll();
        input.focus();
      });
      const remove = h('button', { type: 'button', class: 'conversation-delete', 'aria-label': `Delete conversation ${c.title}`, title: 'Delete' }, '×');
      remove.addEventListener('click', () => {
        if (streaming && c === current) return notify('Stop the answer being written first.');
        conversations = conversations.filter((x) => x !== c);
        if (current === c) current = conversations[0] || null;
        save();
        renderAll();
      });
      return h('li', { class: c === current ? 'current' : '' }, open, remove);
    }));
    if (!conversations.length) conversationList.append(h('li', { class: 'empty' }, 'No conversations yet.'));
  }

  function renderModels() {
    const chosen = current?.model || modelSelect.value;
    const options = models.map((m) => h('option', { value: m.id }, m.fine_tuned ? `${m.id} (fine-tuned)` : m.id));
    if (chosen && !models.some((m) => m.id === chosen)) options.push(h('option', { value: chosen }, `${chosen} (not available)`));
    replace(modelSelect, options);
    if (chosen) modelSelect.value = chosen;
  }

  function statsLine(message) {
    const s = message.stats || {};
    const items = [];
    if (s.stopped) items.push(h('span', { class: 'stat stat-stopped', dataset: { stat: 'stopped' } }, 'Stopped'));
    if (s.ttft_ms != null) items.push(h('span', { class: 'stat', dataset: { stat: 'ttft' }, title: 'Time to first token' }, `TTFT ${formatMs(s.ttft_ms)}`));
    if (s.tokens_per_s != null) items.push(h('span', { class: 'stat', dataset: { stat: 'tps' } }, `${s.tokens_per_s.toFixed(1)} tokens/s`));
    if (s.completion_tokens != null) items.push(h('span', { class: 'stat', dataset: { stat: 'tokens' } }, `${formatInteger(s.completion_tokens)} tokens`));
    else if (s.chunks) items.push(h('span', { class: 'stat', dataset: { stat: 'chunks' } }, `${formatInteger(s.chunks)} chunks`));
    if (s.cached_tokens != null) {
      items.push(h('span', { class: 'stat', dataset: { stat: 'cached' }, title: 'Prompt tokens reused from the prefix cache' },
        `${formatInteger(s.cached_tokens)} of ${formatInteger(s.prompt_tokens)} prompt tokens cached`));
    }
    if (s.finish_reason) items.push(h('span', { class: 'stat', dataset: { stat: 'finish' } }, `finish: ${s.finish_reason}`));
    return items.length ? h('footer', { class: 'message-stats' }, items) : null;
  }

  function toolCallNode(call) {
    let args = call.arguments || '';
    try {
      args = JSON.stringify(JSON.parse(args), null, 2);
    } catch {
      // still streaming, or not JSON: shown as it is
    }
    return h('div', { class: 'tool-call' }, h('div', { class: 'tool-call-head' }, h('span', { class: 'tool-call-label' }, 'Tool call'),
      h('code', { class: 'tool-call-name' }, call.name || '…'), call.id ? h('span', { class: 'cell-note' }, call.id) : null),
    h('pre', { class: 'tool-call-args' }, args));
  }

  function fillAnswer(node, message, done) {
    const parts = [];
    if (message.reasoning) {
      const body = h('div', { class: 'markdown' });
      renderMarkdown(body, message.reasoning, { highlightCode: done });
      const words = message.reasoning.trim().split(/\s+/).length;
      const thinking = !done && !message.content && !message.toolCalls?.length;
      parts.push(h('details', { class: 'reasoning' }, h('summary', {}, thinking ? 'Thinking…' : `Reasoning · ${formatInteger(words)} words`), body));
    }
    if (message.content || (!message.reasoning && !message.toolCalls?.length && !message.error)) {
      const body = h('div', { class: 'markdown content' });
      renderMarkdown(body, message.content, { highlightCode: done });
      if (!done) body.append(h('span', { class: 'cursor', 'aria-hidden': 'true' }));
      parts.push(body);
    }
    if (message.toolCalls?.length) parts.push(h('div', { class: 'tool-calls' }, message.toolCalls.map(toolCallNode)));
    if (message.error) parts.push(h('p', { class: 'message-error', role: 'alert' }, message.error));
    parts.push(statsLine(message));
    const wasOpen = node.querySelector('details.reasoning')?.open;
    replace(node.querySelector('.message-body'), parts);
    if (wasOpen) node.querySelector('details.reasoning').open = true;
  }

  function messageNode(message, done = true) {
    const node = h('article', { class: `message message-${message.role}`, dataset: { role: message.role } },
      h('header', { class: 'message-who' }, message.role === 'user' ? 'You' : (message.model || 'assistant')),
      h('div', { class: 'message-body' }));
    if (message.role === 'user') node.querySelector('.message-body').append(h('div', { class: 'user-text' }, message.content));
    else fillAnswer(node, message, done);
    return node;
  }

  function renderMessages() {
    if (!current || !current.messages.length) {
      const model = modelSelect.value;
      replace(messagesBox, h('div', { class: 'chat-empty' },
        h('h2', {}, model ? `Chat with ${model}` : 'No chat model'),
        h('p', {}, model ? 'Answers stream from this machine; nothing leaves it.' : 'Register a chat model to talk to it here.'),
        model ? h('div', { class: 'suggestions' }, SUGGESTIONS.map((text) => {
          const button = h('button', { type: 'button', class: 'button suggestion' }, text);
          button.addEventListener('click', () => {
            input.value = text;
            submit();
          });
          return button;
        })) : null));
      return;
    }
    replace(messagesBox, current.messages.map((m) => messageNode(m)));
    messagesBox.scrollTop = messagesBox.scrollHeight;
  }

  function renderAll() {
    renderConversations();
    renderModels();
    system.value = current?.system ?? system.value;
    renderMessages();
  }

  function setStreaming(value) {
    streaming = value;
    stop.hidden = !value;
    send.hidden = Boolean(value);
    modelSelect.disabled = Boolean(value);
  }

  function requestBody(conversation) {
    const body = { model: conversation.model, messages: requestMessages(conversation), stream: true, stream_options: { include_usage: true } };
    for (const f of SAMPLING_FIELDS) {
      const raw = samplingInputs[f.key].value.trim();
      if (raw !== '') body[f.key] = f.integer ? parseInt(raw, 10) : parseFloat(raw);
    }
    if (tools.value.trim()) {
      let parsed;
      try {
        parsed = JSON.parse(tools.value);
      } catch (error) {
        throw new ApiError(`The tools are not valid JSON: ${error.message}`);
      }
      body.tools = Array.isArray(parsed) ? parsed : [parsed];
      body.tool_choice = toolChoice.value;
    }
    return body;
  }

  async function submit() {
    const text = input.value.trim();
    if (!text || streaming) return;
    if (!modelSelect.value) return notify('Pick a model first.', 'error');
    if (!current) startConversation();
    current.model = modelSelect.value;
    current.system = system.value;
    let body;
    try {
      current.messages.push({ role: 'user', content: text });
      body = requestBody(current);
    } catch (error) {
      current.messages.pop();
      return notify(error.message, 'error');
    }
    input.value = '';
    const answer = { role: 'assistant', model: current.model, content: '', reasoning: '', toolCalls: [], stats: {} };
    current.messages.push(answer);
    current.title = titleOf(current);
    current.updated = Date.now();
    save();
    renderConversations();
    renderMessages();
    const node = messagesBox.lastElementChild;
    fillAnswer(node, answer, false);
    const controller = new AbortController();
    setStreaming({ controller, answer });
    await stream(body, answer, node, controller);
    setStreaming(null);
    fillAnswer(node, answer, true);
    current.updated = Date.now();
    save();
    renderConversations();
    input.focus();
  }

  async function stream(body, answer, node, controller) {
    const started = performance.now();
    let first = null;
    let last = null;
    let usage = null;
    let chunks = 0;
    let pending = null;
    const nearBottom = () => messagesBox.scrollHeight - messagesBox.scrollTop - messagesBox.clientHeight < 80;
    const paint = () => {
      pending = null;
      const follow = nearBottom();
      fillAnswer(node, answer, false);
      if (follow) messagesBox.scrollTop = messagesBox.scrollHeight;
    };
    try {
      const response = await api('v1/chat/completions', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body), signal: controller.signal,
      });
      if (!response.ok) throw await errorOf(response);
      for await (const data of sseData(response)) {
        if (data === '[DONE]') break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(chunk.error.message || 'the stream failed');
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const delta = choice.delta || {};
          if (delta.content) answer.content += delta.content;
          if (delta.reasoning_content) answer.reasoning += delta.reasoning_content;
          for (const call of delta.tool_calls || []) {
            const slot = answer.toolCalls[call.index ?? answer.toolCalls.length] ||= { id: '', name: '', arguments: '' };
            if (call.id) slot.id = call.id;
            if (call.function?.name) slot.name += call.function.name;
            if (call.function?.arguments) slot.arguments += call.function.arguments;
          }
          if (delta.content || delta.reasoning_content || delta.tool_calls) {
            chunks += 1;
            last = performance.now();
            first ??= last;
          }
          if (choice.finish_reason) answer.stats.finish_reason = choice.finish_reason;
        }
        if (!pending) pending = setTimeout(paint, RENDER_EVERY_MS);
      }
    } catch (error) {
      if (error.name === 'AbortError') answer.stats.stopped = true;
      else answer.error = error.message;
    } finally {
      clearTimeout(pending);
    }
    const s = answer.stats;
    if (first != null) s.ttft_ms = first - started;
    if (usage) {
      s.completion_tokens = usage.completion_tokens;
      s.prompt_tokens = usage.prompt_tokens;
      s.cached_tokens = usage.prompt_tokens_details?.cached_tokens ?? 0;
      if (usage.completion_tokens > 1 && last > first) s.tokens_per_s = (usage.completion_tokens - 1) / ((last - first) / 1000);
    } else if (chunks) {
      s.chunks = chunks;
      if (chunks > 1 && last > first) s.tokens_per_s = (chunks - 1) / ((last - first) / 1000);
    }
  }

  composer.addEventListener('submit', (event) => {
    event.preventDefault();
    submit();
  });
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  root.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && streaming) streaming.controller.abort();
  });
  stop.addEventListener('click', () => streaming?.controller.abort());
  newChat.addEventListener('click', () => {
    if (streaming) return notify('Stop the answer being written first.');
    startConversation();
    input.focus();
  });
  modelSelect.addEventListener('change', () => {
    if (current) {
      current.model = modelSelect.value;
      save();
      renderConversations();
    }
    if (!current?.messages.length) renderMessages();
  });
  system.addEventListener('change', () => {
    if (current) {
      current.system = system.value;
      save();
    }
  });

  async function loadModels() {
    try {
      const answer = await json('v1/models');
      models = answer.data.filter((m) => (m.capabilities || []).includes('chat'));
    } catch (error) {
      notify(`Could not list the models: ${error.message}`, 'error');
    }
    renderModels();
    if (!current?.messages.length) renderMessages();
  }

  renderAll();

  return {
    async show(params) {
      await loadModels();
      const wanted = params.query.get('model');
      if (wanted) {
        history.replaceState(null, '', '#/chat');
        if (!current || current.messages.length || streaming) startConversation(wanted);
        else {
          current.model = wanted;
          save();
          renderAll();
        }
      }
      input.focus({ preventScroll: true });
    },
    hide() {},
  };
}
