// The history page: a room's last lines as a log, for a second OBS source beside the player.
// URL: /<room>/history on the hub, or history.html?hub=https://hub.example&room=<room>.
// Options: ?lines=<n> (default 20, at most 200), ?theme=, ?bg=transparent, ?status=hide,
// ?token= (a private room's subscribe token).
import { renderMessage } from './codes';
import { api, byId, el } from './common';
import {
  applyPageOptions,
  hubBase,
  needsHub,
  paintPlate,
  profileOf,
  roomOf,
  STREAM_OPTIONS,
  uploadElement,
  uploadUrl,
  type RoomSettings,
} from './dialogue';

const params = new URLSearchParams(location.search);
const DEFAULT_LINES = 20;
const MAX_LINES = 200;
const lines = Math.min(MAX_LINES, Math.max(1, Math.floor(Number(params.get('lines'))) || DEFAULT_LINES));
const token = params.get('token') || '';
const query = token ? `token=${encodeURIComponent(token)}` : '';
const log = byId('log');
const connection = byId('connection');
let settings: RoomSettings = {};
let hub = '';
let roomId = '';

interface Payload {
  id: number;
  speaker: string;
  data: { message?: unknown; profile?: unknown; from?: unknown };
  meta?: unknown;
}

/** A line of the log: the speaker's avatar and plate (their profile's), the text with its
 * codes (all at once: pauses and effects do not apply to a log). */
function lineOf(payload: Payload): HTMLLIElement | null {
  const { data } = payload;
  if (typeof data?.message !== 'string') return null; // not a line of dialogue
  const text = renderMessage(data.message, payload.meta, (name) => uploadElement(uploadUrl(hub, roomId, name, token), name, true));
  text.className = 'log-text';
  const profile = profileOf(settings, payload.speaker, data.profile);
  const plate = el('span', { class: 'log-speaker' }, payload.speaker);
  paintPlate(plate, profile);
  const face = profile.avatar ? el('img', { class: 'log-avatar', alt: '', src: uploadUrl(hub, roomId, profile.avatar, token) }) : null;
  return el('li', { class: 'log-line', 'data-id': payload.id }, face, payload.speaker ? plate : null, text);
}

function addLine(payload: Payload): void {
  const line = lineOf(payload);
  if (!line) return;
  log.append(line);
  while (log.children.length > lines) log.firstElementChild?.remove();
}

/** An edited message is fixed in place, a retracted one taken out. */
function changeLine(payload: Payload, retracted: boolean): void {
  const shown = [...log.children].find((line) => (line as HTMLElement).dataset.id === String(payload.id));
  if (!shown) return;
  const fixed = retracted ? null : lineOf(payload);
  if (fixed) shown.replaceWith(fixed);
  else shown.remove();
}

function show(state: string, text: string): void {
  connection.dataset.state = state;
  connection.textContent = text;
}

/** The last lines from the history API, then the stream from the newest of them on. */
async function start(): Promise<void> {
  applyPageOptions(params, byId('status'));
  if (needsHub(params)) return show('closed', 'set ?hub= to the hub’s address');
  try {
    hub = hubBase(params.get('hub'));
  } catch (error) {
    return show('closed', (error as Error).message);
  }
  // /<room>/history: the room is the segment before the last one
  const room = roomOf(params, location.pathname.endsWith('.html') ? 0 : 1);
  if (!room) return show('closed', 'set ?room= to the room’s id');
  const path = `/${encodeURIComponent(room)}`;
  let after = '';
  try {
    const { room: record } = await api(`${hub}/api/v1/rooms${path}${query ? `?${query}` : ''}`);
    roomId = record.id;
    settings = record.settings || {};
    const reply = await api(`${hub}/api/v1/rooms/${roomId}/messages?limit=${lines}${query ? `&${query}` : ''}`);
    for (const message of [...reply.messages].reverse()) addLine(message);
    if (reply.messages.length) after = `lastEventId=${reply.messages[0].id}`;
  } catch {
    // no such room (the stream shows quotes instead), or no right to read it: the stream says
  }
  const search = [query, after].filter(Boolean).join('&');
  const source = new SSEClient(`${hub}/api/v1/events${path}${search ? `?${search}` : ''}`, STREAM_OPTIONS);
  source.onerror = (event) => {
    if (source.readyState !== SSEClient.CLOSED) show('reconnecting', 'reconnecting…');
    else show('closed', event.status === 401 || event.status === 403 ? 'private room: add ?token=' : 'disconnected');
  };
  source.addEventListener('meta', (event) => {
    const hello = JSON.parse(event.data);
    if (hello.fallback) show('fallback', `${hello.reason || 'no such room'}: showing quotes`);
    else show('live', `live · ${hello.room}`);
  });
  source.addEventListener('message', (event) => addLine(JSON.parse(event.data)));
  source.addEventListener('edit', (event) => changeLine(JSON.parse(event.data), false));
  source.addEventListener('retract', (event) => changeLine(JSON.parse(event.data), true));
  source.addEventListener('settings', (event) => (settings = JSON.parse(event.data).settings || {}));
}

start();
