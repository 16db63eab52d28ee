// The player: a room's messages in a visual-novel dialog box, typed out one after another.
// URL: /<room> on the hub, or player.html?hub=https://hub.example&room=<room> on any static
// host. Options: ?theme=, ?bg=transparent (OBS), ?idle=<seconds> (hide when idle),
// ?status=hide, ?sound=0, ?token= (a private room's subscribe token), ?lastEventId= (start
// after this message id), ?role=preview (the admin's preview: not counted as a player).
import { applyStep, layOut, messageSegments, plainText, type Segment, type Step, stepRect, undoStep } from './codes';
import { api, byId } from './common';
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
  type Profile,
  type RoomSettings,
} from './dialogue';

const params = new URLSearchParams(location.search);
const DEFAULT_SPEED = 30; // characters per second
const CJK = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}\u3000-\u303f\uff00-\uffef]/u;
const CJK_FACTOR = 2; // a CJK character says more: it takes twice as long
const HOLD_MS = 1500; // a finished line stays this long before the next queued one
const PAGE_MS = 3000; // a full page stays this long before the next one, unless clicked on
const MAX_QUEUE = 100; // lines waiting; past it the oldest are skipped (a flood, a long outage)
const MISSED_HEARTBEATS = 3; // then the controller is shown offline
const KIND_WAIT_MS = 50; // typing waits this long, again and again, for an `@{name}`'s kind

const box = byId('dialog');
const nameplate = byId('speaker');
const avatar = byId<HTMLImageElement>('avatar');
const quoteTag = byId('quote');
const pageBox = byId('page');
const textBox = byId('text');
const idleCard = byId('idle');
const connection = byId('connection');
const controller = byId('controller');
const soundButton = byId<HTMLButtonElement>('enable-sound');

// --- Sound: a blip per typed character, a chime per line and page ---------------------------

const BLIP_GAP_MS = 55; // at most one blip in this time: fast typing does not buzz
const BUNDLED = ['blip', 'soft', 'next'];

/** Bundled sounds (assets/sounds) and the room's uploaded ones, played through Web Audio. A
 * normal page may not play before the user's first click (autoplay policy): it shows a
 * button for that. OBS plays. */
class Sounds {
  private readonly context = new AudioContext();
  private readonly buffers = new Map<string, Promise<AudioBuffer | null>>(); // by URL
  private lastBlip = 0;

  constructor() {
    for (const name of BUNDLED) this.load(`assets/sounds/${name}.wav`);
    const blocked = () => this.context.state === 'suspended';
    soundButton.hidden = !blocked();
    this.context.addEventListener('statechange', () => (soundButton.hidden = !blocked()));
    soundButton.addEventListener('click', (event) => {
      event.stopPropagation(); // not a click that advances the dialogue
      this.context.resume();
    });
  }

  /** A sound, fetched and decoded once (null: it could not be). */
  private load(url: string): Promise<AudioBuffer | null> {
    let buffer = this.buffers.get(url);
    if (!buffer) {
      buffer = fetch(url)
        .then((response) => (response.ok ? response.arrayBuffer() : Promise.reject(response.status)))
        .then((bytes) => this.context.decodeAudioData(bytes))
        .catch(() => null);
      this.buffers.set(url, buffer);
    }
    return buffer;
  }

  private async play(url: string, rate = 1): Promise<void> {
    const buffer = await this.load(url);
    if (!buffer || this.context.state !== 'running') return;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.playbackRate.value = rate;
    source.connect(this.context.destination);
    source.start();
  }

  /** A profile's voice: bundled, or an upload of the room (loaded when the line starts). */
  voice(profile: Profile): string | null {
    const sound = profile.sound || 'blip';
    if (sound === 'none') return null;
    return BUNDLED.includes(sound) ? `assets/sounds/${sound}.wav` : uploadUrl(hub, roomId, sound, token);
  }

  prepare(profile: Profile): void {
    const voice = this.voice(profile);
    if (voice) this.load(voice);
  }

  blip(profile: Profile, character: string): void {
    const now = performance.now();
    const voice = this.voice(profile);
    if (!voice || !character.trim() || now - this.lastBlip < BLIP_GAP_MS) return;
    this.lastBlip = now;
    const variation = 1 + (Math.random() - 0.5) * 0.06; // a voice, not a metronome
    this.play(voice, (profile.pitch || 1) * variation);
  }

  next(): void {
    this.play('assets/sounds/next.wav');
  }

  /** An `@{name}` sound of the room's uploads, where the typewriter reached its code. */
  effect(url: string): void {
    this.play(url);
  }
}

const sounds = params.get('sound') === '0' || typeof AudioContext === 'undefined' ? null : new Sounds();

// --- The dialog box: one line at a time, typed step by step, a page at a time -------------

interface Line {
  id: string;
  speaker: string;
  segments: Segment[];
  speed?: number; // the message's own (data.speed); else its profile's, else the room's
  profile?: string; // data.profile: the profile to use instead of the speaker's
  quote?: string; // a fallback quote: where it is from
  stream?: string; // an AI answer: its stream key
  live?: boolean; // an AI answer still streaming in
}

const queue: Line[] = [];
let current: Line | null = null;
let profile: Profile = {}; // the current line's
let speed = DEFAULT_SPEED; // the current line's
let laidOut = 0; // segments of the current line already in the text box
let steps: Step[] = []; // what typing the current line does, in order...
let next = 0; // ...from this index
let pageTop = 0; // the current page starts this far down the text (px)
let nextPageTop = 0; // where the next page starts, when the current one is full
let typing: number | undefined;
let typedAt = 0; // when the current line (or page) was fully shown
let holding: number | undefined;
let idling: number | undefined;
const hidesWhenIdle = params.has('idle');
const idleMs = Math.max(0, Number(params.get('idle')) || 0) * 1000;
let settings: RoomSettings = {};
let roomId = '';

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
    idleCard.hidden = hidesWhenIdle;
    return;
  }
  idleCard.hidden = true;
  box.classList.remove('hidden');
  profile = profileOf(settings, current.speaker, current.profile);
  speed = current.speed ?? speedOf(profile.speed) ?? speedOf(settings.typewriter_speed) ?? DEFAULT_SPEED;
  nameplate.textContent = current.speaker;
  nameplate.hidden = !current.speaker;
  paintPlate(nameplate, profile);
  showAvatar(profile.avatar);
  quoteTag.textContent = current.quote === undefined ? '' : current.quote ? `quote · ${current.quote}` : 'quote';
  quoteTag.hidden = current.quote === undefined;
  textBox.replaceChildren();
  turnTo(0);
  steps = [];
  next = laidOut = 0;
  box.dataset.id = current.id;
  box.dataset.state = 'typing';
  sounds?.prepare(profile);
  sounds?.next();
  layOutNew();
  type();
}

function showAvatar(name: string | undefined): void {
  box.classList.toggle('with-avatar', Boolean(name));
  avatar.hidden = !name;
  if (name) avatar.src = uploadUrl(hub, roomId, name, token);
  else avatar.removeAttribute('src');
}

function turnTo(top: number): void {
  pageTop = top;
  textBox.style.transform = top ? `translateY(${-top}px)` : '';
}

/** Puts the current line's new segments in the text box, empty; typing fills them. */
function layOutNew(): void {
  if (!current) return;
  const upload = (name: string) => uploadElement(uploadUrl(hub, roomId, name, token), name, false);
  steps.push(...layOut(current.segments.slice(laidOut), textBox, upload));
  laidOut = current.segments.length;
}

/** Applies the next step; false when it did not fit on the page: the page is full, and the
 * next one starts at `nextPageTop` with this step's line, taken back until then. */
function step(): boolean {
  const before = textBox.getBoundingClientRect();
  const taken = steps[next];
  applyStep(taken);
  const after = textBox.getBoundingClientRect();
  if (after.height - pageTop <= pageBox.clientHeight + 0.5) {
    next++;
    return true;
  }
  // Past the page's end. A step that wraps to a new line starts it where the text ended
  // before it; one that grows the line it is on (a bigger size, an image), where it is.
  const top = (applied: Step) => {
    const rect = stepRect(applied);
    return rect ? rect.top - after.top : Infinity; // a pause goes with what follows it
  };
  const start = Math.min(before.height, top(taken));
  if (start <= pageTop) {
    next++; // taller than a page on its own: it cannot fit any better on the next one
    return true;
  }
  // What the step pulled onto the new line with it (a word, a character that may not end a
  // line) goes to the next page too.
  let first = next;
  while (first > 0 && top(steps[first - 1]) >= start - 0.5) first--;
  for (let index = next; index >= first; index--) undoStep(steps[index]);
  next = first;
  nextPageTop = start;
  return false;
}

function type(): void {
  if (!current) return;
  if (next === steps.length) return typed();
  const taken = steps[next];
  const kind = uploadOf(taken)?.dataset.kind;
  if (kind === 'pending') {
    typing = window.setTimeout(type, KIND_WAIT_MS); // an image takes room on the page, a sound none
    return;
  }
  if (!step()) return pageFull();
  let delay = 1000 / speed;
  if ('pause' in taken) delay = taken.pause;
  else if (kind === 'sound') sounds?.effect(uploadOf(taken)?.dataset.url as string); // no blip: its own sound
  else {
    const character = 'text' in taken ? taken.text : taken.child.textContent || '•'; // an image: '•'
    sounds?.blip(profile, character);
    if (CJK.test(character)) delay *= CJK_FACTOR;
  }
  typing = window.setTimeout(type, delay);
}

/** The `@{name}` element a step puts in, if it is one. */
function uploadOf(taken: Step): HTMLElement | undefined {
  return 'child' in taken && taken.child.classList.contains('upload') ? (taken.child as HTMLElement) : undefined;
}

/** Shows the rest of the current page at once. */
function finish(): void {
  window.clearTimeout(typing);
  typing = undefined;
  while (next < steps.length) if (!step()) return pageFull();
  typed();
}

function pageFull(): void {
  typing = undefined;
  box.dataset.state = 'page';
  typedAt = performance.now();
  holding = window.setTimeout(turnPage, PAGE_MS);
}

function turnPage(): void {
  window.clearTimeout(holding);
  holding = undefined;
  turnTo(nextPageTop);
  box.dataset.state = 'typing';
  sounds?.next();
  type();
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

/** Click or Space: finish the page being typed, else turn the page, else go on to the next
 * line. */
function advance(): void {
  if (typing !== undefined) finish();
  else if (box.dataset.state === 'page') turnPage();
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
    line = { id: delta.stream, speaker: delta.speaker, segments: [], stream: delta.stream, live: true };
    enqueue(line);
  }
  line.segments.push({ text: delta.content ?? '', style: {} });
  if (line === current) {
    layOutNew();
    if (typing === undefined && box.dataset.state !== 'page') {
      box.dataset.state = 'typing';
      type();
    }
  }
}

// --- Messages --------------------------------------------------------------------------

interface Payload {
  id: number;
  speaker: string;
  data: { message?: unknown; speed?: unknown; stream?: unknown; from?: unknown; profile?: unknown };
  meta?: unknown;
}

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
    const changed = plainText(segments) !== plainText(live.segments);
    if (changed) live.segments = segments;
    if (live !== current) return;
    if (changed) {
      queue.unshift(live); // type it again
      showNext();
    } else {
      box.dataset.id = live.id;
      if (typing === undefined && box.dataset.state !== 'page') typed();
    }
    return;
  }
  enqueue({
    id: String(payload.id),
    speaker: payload.speaker,
    segments,
    speed: speedOf(data.speed),
    profile: typeof data.profile === 'string' ? data.profile : undefined,
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
  line.profile = typeof payload.data.profile === 'string' ? payload.data.profile : undefined;
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
    byId('idle-title').textContent = 'Quotes';
    return;
  }
  roomId = hello.room;
  show(connection, 'live', `live · ${hello.room}`);
  if (hello.heartbeat_s) heartbeatS = hello.heartbeat_s;
  if (hello.presence) controllers(hello.presence.controllers);
  if (!settingsLoaded) {
    settingsLoaded = true;
    loadSettings(hello.room);
  }
}

/** The room's settings: typewriter speed, theme (?theme= wins), speaker profiles. */
async function loadSettings(room: string): Promise<void> {
  const query = token ? `?token=${encodeURIComponent(token)}` : '';
  try {
    const reply = await api(`${hub}/api/v1/rooms/${room}${query}`);
    byId('idle-title').textContent = reply.room.title || reply.room.id;
    applySettings(reply.room.settings || {});
  } catch {
    settingsLoaded = false; // try again on the next hello
  }
}

function applySettings(changed: RoomSettings): void {
  settings = changed;
  if (!params.get('theme')) {
    if (typeof settings.theme === 'string') document.documentElement.dataset.theme = settings.theme;
    else delete document.documentElement.dataset.theme;
  }
}

function closedReason(status?: number): string {
  if (status === 401 || status === 403) return 'private room: add ?token=';
  if (status === 404) return 'no such room';
  return status ? `disconnected (${status})` : 'disconnected';
}

// --- Start ----------------------------------------------------------------------------

const token = params.get('token') || '';
let hub = '';

function start(): void {
  applyPageOptions(params, byId('status'));
  idleCard.hidden = hidesWhenIdle;
  if (needsHub(params)) {
    show(connection, 'closed', 'set ?hub= to the hub’s address');
    byId('idle-note').textContent = 'Add ?hub=https://your.hub&room=<room> to this page’s address';
    return;
  }
  try {
    hub = hubBase(params.get('hub'));
  } catch (error) {
    show(connection, 'closed', (error as Error).message);
    return;
  }
  const room = roomOf(params);
  const query = new URLSearchParams(token ? { token } : {});
  if (params.get('role') === 'preview') query.set('role', 'preview');
  const path = `${hub}/api/v1/events${room ? `/${encodeURIComponent(room)}` : ''}`;
  const source = new SSEClient(query.toString() ? `${path}?${query}` : path, {
    ...STREAM_OPTIONS,
    lastEventId: params.get('lastEventId') || undefined,
  });
  source.onerror = (event) => {
    if (source.readyState === SSEClient.CLOSED) show(connection, 'closed', closedReason(event.status));
    else show(connection, 'reconnecting', 'reconnecting…');
  };
  source.addEventListener('meta', (event) => onHello(JSON.parse(event.data)));
  source.addEventListener('message', (event) => onMessage(JSON.parse(event.data)));
  source.addEventListener('delta', (event) => onDelta(JSON.parse(event.data)));
  source.addEventListener('settings', (event) => applySettings(JSON.parse(event.data).settings || {}));
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
