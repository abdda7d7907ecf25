// Model output as Markdown: marked to HTML, DOMPurify to make it safe, highlight.js for code blocks.
// Model output is untrusted: raw HTML in it is shown as text, images become links (so nothing is fetched
// from another host), and whatever marked produces is sanitised before it reaches the page.

import { Marked } from './vendor/marked.esm.js';
import DOMPurify from './vendor/purify.es.mjs';
import hljs from './vendor/highlight.min.js';
import { h } from './dom.js';

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

const marked = new Marked({ gfm: true, breaks: false });
marked.use({
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
    image({ href, text }) {
      return `<a href="${escapeHtml(href)}">${escapeHtml(`image: ${text || href}`)}</a>`;
    },
  },
});

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ['style', 'img', 'picture', 'source', 'video', 'audio', 'iframe', 'object', 'embed', 'form',
    'input', 'button', 'textarea', 'select', 'link', 'meta', 'base'],
  FORBID_ATTR: ['style', 'srcset', 'background', 'poster'],
};

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer');
  }
});

/** Safe HTML of a Markdown text. */
export function markdownToHtml(text) {
  return DOMPurify.sanitize(marked.parse(text || ''), PURIFY);
}

function highlight(code) {
  const language = [...code.classList].find((c) => c.startsWith('language-'))?.slice(9);
  const source = code.textContent;
  const result = language && hljs.getLanguage(language)
    ? hljs.highlight(source, { language, ignoreIllegals: true })
    : hljs.highlightAuto(source);
  code.innerHTML = result.value; // highlight.js escapes the text it wraps in spans
  code.classList.add('hljs');
  return result.language || language || '';
}

/** Render Markdown into an element: code blocks highlighted (when `highlightCode`), each with a copy button. */
export function renderMarkdown(el, text, { highlightCode = true } = {}) {
  el.innerHTML = markdownToHtml(text);
  for (const code of el.querySelectorAll('pre > code')) {
    const language = highlightCode ? highlight(code) : '';
    const pre = code.parentElement;
    const copy = h('button', { type: 'button', class: 'copy-code', title: 'Copy code' }, 'Copy');
    copy.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText(code.textContent);
        copy.textContent = 'Copied';
      } catch {
        copy.textContent = 'Copy failed';
      }
      setTimeout(() => { copy.textContent = 'Copy'; }, 1500);
    });
    const block = h('div', { class: 'code-block' },
      h('div', { class: 'code-bar' }, h('span', { class: 'code-language' }, language), copy));
    pre.replaceWith(block);
    block.append(pre);
  }
}
