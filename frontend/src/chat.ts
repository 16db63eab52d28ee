// The chat page: a conversation with the server's AI relay, kept in localStorage. Each
// answer is started with POST /api/v1/chat and followed on /api/v1/chat/<uid>/events
// (SSEClient: a dropped connection resumes by Last-Event-ID). The answer being followed is
// also in sessionStorage (its uid and last event id): a reload of the tab resumes it.
import { api, byId, el, fill, messageOf } from './common';

interface ChatMessage {
  role: 'user' | 'assistant';
  content: string;
  model?: string; // of an answer: which model gave it ("demo": the built-in one)
  note?: string; // of an answer: stopped, or why it failed
  failed?: boolean; // a failed answer is shown but not sent back as context
  cut?: boolean; // stopped or interrupted before its end: sent back as context marked so
  pending?: boolean; // still coming in (this tab follows it, see FOLLOWED)
}

interface Followed {
  uid: string;
  lastEventId: string;
}

interface Running {
  answer: ChatMessage;
  uid?: string; // once the server has started it
  source?: SSEClient;
}

const STORE = 'streaming-message.chat';
const FOLLOWED = 'streaming-message.chat.followed'; // sessionStorage: the answer coming in
const CUT_NOTE = '\n\n[This answer was cut off before its end.]';
const log = byId('log');
const prompt = byId<HTMLTextAreaElement>('prompt');
const sendButton = byId<HTMLButtonElement>('send');
const stopButton = byId('stop');
const demoBadge = byId('demo');

let messages: ChatMessage[] = load();
let running: Running | null = null;

function load(): ChatMessage[] {
  try {
    const stored = JSON.parse(localStorage.getItem(STORE) || '[]');
    return Array.isArray(stored) ? stored : [];
  } catch {
    return [];
  }
}

function save(): void {
  localStorage.setItem(STORE, JSON.stringify(messages));
}

function render(): void {
  const last = messages[messages.length - 1];
  fill(
    log,
    messages.length === 0 && el('p', { class: 'mt-16 text-center text-base-content/60' }, 'Ask anything.'),
    ...messages.map((message) => {
      const bubble = el(
        'div',
        {
          class: `chat-bubble whitespace-pre-wrap break-words ${
            message.role === 'user' ? 'chat-bubble-primary' : message.failed ? 'chat-bubble-error' : ''
          }`,
        },
        message.content || (message === running?.answer ? '…' : ''),
      );
      const footer =
        message.role === 'assistant' &&
        el(
          'div',
          { class: 'chat-footer mt-1 flex items-center gap-2 opacity-80' },
          message.note && el('span', { class: 'note' }, message.note),
          message.model && el('span', { class: 'text-xs' }, message.model),
          message === last &&
            !running &&
            el('button', { class: 'btn btn-ghost btn-xs', type: 'button', onclick: regenerate }, 'Regenerate'),
        );
      return el('div', { class: `chat ${message.role === 'user' ? 'chat-end' : 'chat-start'}` }, bubble, footer);
    }),
  );
  log.scrollTop = log.scrollHeight;
  const answered = messages.filter((message) => message.model);
  demoBadge.hidden = answered[answered.length - 1]?.model !== 'demo';
  sendButton.hidden = running !== null;
  stopButton.hidden = running === null;
}

async function ask(): Promise<void> {
  const conversation = messages
    .filter((m) => !m.failed)
    .map(({ role, content, cut }) => ({ role, content: cut ? content + CUT_NOTE : content }));
  const answer: ChatMessage = { role: 'assistant', content: '', pending: true };
  messages.push(answer);
  running = { answer };
  save();
  render();
  let uid: string;
  try {
    ({ uid } = await api('/api/v1/chat', { method: 'POST', body: { messages: conversation } }));
  } catch (error) {
    return end(answer, messageOf(error), 'failed');
  }
  if (running?.answer !== answer) return cancel(uid); // stopped while it was starting
  follow(answer, { uid, lastEventId: '' });
}

/** Follow an answer's events from after `lastEventId`. */
function follow(answer: ChatMessage, followed: Followed): void {
  const { uid } = followed;
  sessionStorage.setItem(FOLLOWED, JSON.stringify(followed));
  const source = new SSEClient(`/api/v1/chat/${encodeURIComponent(uid)}/events`, {
    lastEventId: followed.lastEventId,
    retryDelay: 1000,
    backoff: 2,
    maxRetryDelay: 10000,
    maxRetries: 5,
  });
  running = { answer, uid, source };
  source.addEventListener('delta', (event) => {
    answer.content += JSON.parse(event.data).content;
    const bubble = log.querySelector('.chat:last-child .chat-bubble');
    if (bubble) bubble.textContent = answer.content;
    log.scrollTop = log.scrollHeight;
    save(); // the text and the id it goes on after, together
    sessionStorage.setItem(FOLLOWED, JSON.stringify({ uid, lastEventId: event.lastEventId }));
  });
  source.addEventListener('done', (event) => {
    answer.model = JSON.parse(event.data).model;
    end(answer);
  });
  source.addEventListener('error', (event) => {
    const { data, status } = event as { data?: string; status?: number };
    if (data !== undefined) end(answer, JSON.parse(data).msg, 'failed'); // the answer failed
    else if (status === 404) end(answer, 'interrupted', 'cut'); // the server no longer has it
    else if (source.readyState === SSEClient.CLOSED) end(answer, 'Lost the connection to the server', 'failed');
  });
}

/** The answer is over: done, stopped or interrupted (cut), or failed. */
function end(answer: ChatMessage, note?: string, outcome?: 'cut' | 'failed'): void {
  running?.source?.close();
  running = null;
  sessionStorage.removeItem(FOLLOWED);
  answer.note = note;
  answer.failed = outcome === 'failed' || undefined;
  answer.cut = outcome === 'cut' || undefined;
  answer.pending = undefined;
  save();
  render();
}

/** On load: an answer that was coming in when this tab was reloaded goes on where it was;
 * one that this tab was not following (its tab was closed) is marked interrupted. */
function resume(): void {
  const last = messages[messages.length - 1];
  if (!last?.pending) return;
  let followed: Followed | null = null;
  try {
    followed = JSON.parse(sessionStorage.getItem(FOLLOWED) || 'null');
  } catch {
    // as if there were none
  }
  if (followed?.uid) follow(last, followed);
  else end(last, 'interrupted', 'cut');
}

function cancel(uid: string): void {
  api(`/api/v1/chat/${encodeURIComponent(uid)}`, { method: 'DELETE' }).catch(() => undefined);
}

function stop(): void {
  if (!running) return;
  const { uid, answer } = running;
  end(answer, 'stopped', 'cut');
  if (uid) cancel(uid);
}

function regenerate(): void {
  if (messages[messages.length - 1]?.role === 'assistant') messages.pop();
  ask();
}

byId('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = prompt.value.trim();
  if (!text || running) return;
  messages.push({ role: 'user', content: text });
  prompt.value = '';
  ask();
});
prompt.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    byId<HTMLFormElement>('composer').requestSubmit();
  }
});
stopButton.addEventListener('click', stop);
byId('new').addEventListener('click', () => {
  stop();
  messages = [];
  save();
  render();
});
resume();
render();
