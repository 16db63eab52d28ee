// The player: a room's messages in a visual-novel dialog box, typed out one after another.
// URL: /<room> on the hub, or player.html?hub=https://hub.example&room=<room> on any static
// host. Options: ?theme=, ?bg=transparent (OBS), ?idle=<seconds> (hide when idle),
// ?status=hide, ?token= (a private room's subscribe token), ?lastEventId= (start after this
// message id), ?role=preview (the admin's preview: not counted as a player).
import { type Segment, messageSegments, styledSpan } from './codes';
import { api, byId } from './common';

const params = new URLSearchParams(location.search);
const ROOM_ID = /^[a-zA-Z0-9]{1,64}$/;
const DEFAULT_SPEED = 30; // characters per second
const CJK = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}\u3000-\u303f\uff00-\uffef]/u;
const CJK_FACTOR = 2; // a CJK character says more: it takes twice as long
const HOLD_MS = 1500; // a finished line stays this long before the next queued one
const MAX_QUEUE = 100; // lines waiting; past it the oldest are skipped (a flood, a long outage)
const MISSED_HEARTBEATS = 3; // then the controller is shown offline

const box = byId('dialog');
const nameplate = byId('speaker');
const quoteTag = byId('quote');
const textBox = byId('text');
const connection = byId('connection');
const controller = byId('controller');

// --- The dialog box: one line at a time, typed character by character --------------------

interface Line {
  id: string;
  speaker: string;
  segments: Segment[];
  speed: number; // characters per second
  quote?: string; // a fallback quote: where it is from
  stream?: string; // an AI answer: its stream key
  live?: boolean; // an AI answer still streaming in
}

const queue: Line[] = [];
let current: Line | null = null;
let laidOut = 0; // segments of the current line already in the text box
let pending: [Text, string][] = []; // its characters not shown yet, in order...
let next = 0; // ...from this index
let typing: number | undefined;
let typedAt = 0; // when the current line was fully shown
let holding: number | undefined;
let idling: number | undefined;
const idleMs = Math.max(0, Number(params.get('idle')) || 0) * 1000;

function enqueue(line: Line): void {
  if (queue.push(line) > MAX_QUEUE) queue.shift();
  if (!current) showNext();
  else if (box.dataset.state === 'done' && holding === undefined) hold();
}

/** The next line comes once the current one has been shown for HOLD_MS. */
function hold(): void {
  holding = window.setTimeout(showNext, typedAt + HOLD_MS - performance.now());
}

function showNext(): void {
  window.clearTimeout(typing);
  window.clearTimeout(holding);
  window.clearTimeout(idling);
  typing = holding = undefined;
  current = queue.shift() ?? null;
  if (!current) {
    // Only when the line shown is withdrawn (a failed AI answer): nothing left to show.
    box.dataset.state = 'idle';
    box.classList.add('hidden');
    return;
  }
  box.classList.remove('hidden');
  nameplate.textContent = current.speaker;
  nameplate.hidden = !current.speaker;
  quoteTag.textContent = current.quote === undefined ? '' : current.quote ? `quote · ${current.quote}` : 'quote';
  quoteTag.hidden = current.quote === undefined;
  textBox.replaceChildren();
  pending = [];
  next = laidOut = 0;
  box.dataset.id = current.id;
  box.dataset.state = 'typing';
  layOut();
  type();
}

/** Puts the current line's new segments in the text box, empty; type() fills them. */
function layOut(): void {
  if (!current) return;
  for (const { text, style } of current.segments.slice(laidOut)) {
    const span = styledSpan(style);
    const node = document.createTextNode('');
    span.append(node);
    textBox.append(span);
    for (const character of text) pending.push([node, character]);
  }
  laidOut = current.segments.length;
}

function type(): void {
  if (!current) return;
  if (next === pending.length) return typed();
  const [node, character] = pending[next++];
  node.appendData(character);
  const delay = (1000 / current.speed) * (CJK.test(character) ? CJK_FACTOR : 1);
  typing = window.setTimeout(type, delay);
}

/** Shows the rest of the current line at once. */
function finish(): void {
  window.clearTimeout(typing);
  for (; next < pending.length; next++) pending[next][0].appendData(pending[next][1]);
  typed();
}

function typed(): void {
  typing = undefined;
  if (!current || current.live) {
    box.dataset.state = 'streaming';
    return;
  }
  box.dataset.state = 'done';
  typedAt = performance.now();
  if (queue.length) hold();
  else if (idleMs) idling = window.setTimeout(() => box.classList.add('hidden'), idleMs);
}

/** Click or Space: finish the line being typed, else go on to the next one. */
function advance(): void {
  if (typing !== undefined) finish();
  else if (queue.length) showNext();
}

document.addEventListener('click', advance);
document.addEventListener('keydown', (event) => {
  if (event.key !== ' ' && event.key !== 'Enter') return;
  event.preventDefault();
  advance();
});

// --- AI answers: typed as they stream (event: delta), then the stored message -------------

function streamLine(stream: string): Line | undefined {
  return current?.stream === stream ? current : queue.find((line) => line.stream === stream);
}

function onDelta(delta: { stream: string; speaker: string; content?: string; error?: string }): void {
  let line = streamLine(delta.stream);
  if (delta.error !== undefined) {
    // The answer failed: nothing is stored, so its live text goes too.
    if (line === current) showNext();
    else if (line) queue.splice(queue.indexOf(line), 1);
    return;
  }
  if (!line) {
    line = { id: delta.stream, speaker: delta.speaker, segments: [], speed: roomSpeed, stream: delta.stream, live: true };
    enqueue(line);
  }
  line.segments.push({ text: delta.content ?? '', style: {} });
  if (line === current) {
    layOut();
    if (typing === undefined) {
      box.dataset.state = 'typing';
      type();
    }
  }
}

// --- Messages --------------------------------------------------------------------------

interface Payload {
  id: number;
  speaker: string;
  data: { message?: unknown; speed?: unknown; stream?: unknown; from?: unknown };
  meta?: unknown;
}

let roomSpeed = DEFAULT_SPEED;

function speedOf(value: unknown): number | undefined {
  return typeof value === 'number' && value >= 1 && value <= 1000 ? value : undefined;
}

/** A message's line of dialogue, formatted; null when it has none. */
function segmentsOf(payload: Payload): Segment[] | null {
  const { data } = payload;
  return typeof data?.message === 'string' ? messageSegments(data.message, payload.meta) : null;
}

function onMessage(payload: Payload): void {
  const { data } = payload;
  const segments = segmentsOf(payload);
  if (!segments) return; // not a line of dialogue
  const stream = typeof data.stream === 'string' ? data.stream : undefined;
  const live = stream === undefined ? undefined : streamLine(stream);
  if (live) {
    // The stored answer replaces the live one: the same text, unless deltas were lost.
    live.id = String(payload.id);
    live.live = false;
    const changed = segments.map((s) => s.text).join('') !== live.segments.map((s) => s.text).join('');
    if (changed) live.segments = segments;
    if (live !== current) return;
    if (changed) {
      queue.unshift(live); // type it again
      showNext();
    } else {
      box.dataset.id = live.id;
      if (typing === undefined) typed();
    }
    return;
  }
  enqueue({
    id: String(payload.id),
    speaker: payload.speaker,
    segments,
    speed: speedOf(data.speed) ?? roomSpeed,
    quote: payload.meta === 'fallback' ? (typeof data.from === 'string' ? data.from : '') : undefined,
  });
}

// --- Edited and retracted messages (event: edit, event: retract) ------------------------

/** A message was edited (`payload`: the message as it is now) or retracted (only its id):
 * a line shown or waiting is fixed, or taken away. Lines already gone stay gone. */
function onChange(payload: Payload, retracted: boolean): void {
  const id = String(payload.id);
  const line = current?.id === id ? current : queue.find((waiting) => waiting.id === id);
  if (!line) return;
  const segments = retracted ? null : segmentsOf(payload);
  if (!segments) {
    if (line === current) showNext();
    else queue.splice(queue.indexOf(line), 1);
    return;
  }
  line.speaker = payload.speaker;
  line.segments = segments;
  line.speed = speedOf(payload.data.speed) ?? line.speed;
  if (line !== current) return;
  const shown = typing === undefined; // typed out already: the fixed text at once
  queue.unshift(line);
  showNext();
  if (shown) finish();
}

// --- Connection and controller indicators ------------------------------------------------

function show(indicator: HTMLElement, state: string, text: string): void {
  indicator.dataset.state = state;
  indicator.textContent = text;
}

let heartbeatS = 5;
let offline: number | undefined;

/** A controller count from a hello, heartbeat or presence event. While there are
 * controllers, heartbeats keep coming; three missed ones mean the controller is gone. */
function controllers(count: number): void {
  window.clearTimeout(offline);
  if (count > 0) {
    show(controller, 'online', 'controller online');
    offline = window.setTimeout(() => show(controller, 'offline', 'controller offline'), MISSED_HEARTBEATS * heartbeatS * 1000);
  } else show(controller, 'offline', 'controller offline');
}

interface Hello {
  room: string;
  fallback?: boolean;
  reason?: string;
  heartbeat_s?: number;
  presence?: { controllers: number };
}

let settingsLoaded = false;

function onHello(hello: Hello): void {
  if (hello.fallback) {
    show(connection, 'fallback', `${hello.reason || 'no such room'}: showing quotes`);
    show(controller, 'offline', 'controller offline');
    return;
  }
  show(connection, 'live', `live · ${hello.room}`);
  if (hello.heartbeat_s) heartbeatS = hello.heartbeat_s;
  if (hello.presence) controllers(hello.presence.controllers);
  if (!settingsLoaded) {
    settingsLoaded = true;
    loadSettings(hello.room);
  }
}

/** The room's defaults: typewriter speed and theme (?theme= wins). */
async function loadSettings(roomId: string): Promise<void> {
  const query = token ? `?token=${encodeURIComponent(token)}` : '';
  try {
    const { room } = await api(`${hub}/api/v1/rooms/${roomId}${query}`);
    roomSpeed = speedOf(room.settings?.typewriter_speed) ?? DEFAULT_SPEED;
    if (!params.get('theme') && typeof room.settings?.theme === 'string') {
      document.documentElement.dataset.theme = room.settings.theme;
    }
  } catch {
    settingsLoaded = false; // try again on the next hello
  }
}

function closedReason(status?: number): string {
  if (status === 401 || status === 403) return 'private room: add ?token=';
  if (status === 404) return 'no such room';
  return status ? `disconnected (${status})` : 'disconnected';
}

// --- Start ----------------------------------------------------------------------------

/** The hub's base URL from ?hub= (http or https), else '' for this origin. */
function hubBase(value: string | null): string {
  if (!value) return '';
  try {
    const url = new URL(value);
    if (url.protocol === 'http:' || url.protocol === 'https:') return url.origin + url.pathname.replace(/\/+$/, '');
  } catch {
    // shown below
  }
  throw new Error(`?hub= must be an http(s) URL, not ${value}`);
}

/** ?room=, else the page's path when the hub serves it as /<room>, else the default room. */
function roomOf(): string {
  const last = location.pathname.split('/').pop() || '';
  return params.get('room') ?? (ROOM_ID.test(last) ? last : '');
}

const token = params.get('token') || '';
let hub = '';

function start(): void {
  if (params.get('theme')) document.documentElement.dataset.theme = params.get('theme') as string;
  if (params.get('bg') === 'transparent') document.documentElement.classList.add('transparent');
  if (params.get('status') === 'hide') byId('status').hidden = true;
  try {
    hub = hubBase(params.get('hub'));
  } catch (error) {
    show(connection, 'closed', (error as Error).message);
    return;
  }
  const room = roomOf();
  const query = new URLSearchParams(token ? { token } : {});
  if (params.get('role') === 'preview') query.set('role', 'preview');
  const path = `${hub}/api/v1/events${room ? `/${encodeURIComponent(room)}` : ''}`;
  const source = new SSEClient(query.toString() ? `${path}?${query}` : path, {
    lastEventId: params.get('lastEventId') || undefined,
    retryDelay: 1000,
    backoff: 2,
    maxRetryDelay: 30000,
    jitter: 0.5,
    retryOnServerError: true,
    heartbeatTimeout: 45000, // three missed keepalives (KEEPALIVE_S=15): a dead connection
  });
  source.onerror = (event) => {
    if (source.readyState === SSEClient.CLOSED) show(connection, 'closed', closedReason(event.status));
    else show(connection, 'reconnecting', 'reconnecting…');
  };
  source.addEventListener('meta', (event) => onHello(JSON.parse(event.data)));
  source.addEventListener('message', (event) => onMessage(JSON.parse(event.data)));
  source.addEventListener('delta', (event) => onDelta(JSON.parse(event.data)));
  source.addEventListener('edit', (event) => onChange(JSON.parse(event.data), false));
  source.addEventListener('retract', (event) => onChange(JSON.parse(event.data), true));
  source.addEventListener('heartbeat', (event) => {
    const beat = JSON.parse(event.data);
    if (beat.interval_s) heartbeatS = beat.interval_s;
    controllers(beat.controllers);
  });
  source.addEventListener('presence', (event) => {
    const { controllers: count } = JSON.parse(event.data);
    if (count === 0 || controller.dataset.state !== 'online') controllers(count);
  });
}

start();
