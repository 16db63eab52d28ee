// What the player and the history page share: where the hub and the room are, the room's
// speaker profiles, and the formatting codes, turned into DOM (never HTML) step by step.

/** The hub's base URL from ?hub= (http or https), else '' for this origin. */
export function hubBase(value: string | null): string {
  if (!value) return '';
  try {
    const url = new URL(value);
    if (url.protocol === 'http:' || url.protocol === 'https:') return url.origin + url.pathname.replace(/\/+$/, '');
  } catch {
    // thrown below
  }
  throw new Error(`?hub= must be an http(s) URL, not ${value}`);
}

/** ?theme=, ?bg=transparent (OBS) and ?status=hide. */
export function applyPageOptions(params: URLSearchParams, status: HTMLElement): void {
  if (params.get('theme')) document.documentElement.dataset.theme = params.get('theme') as string;
  if (params.get('bg') === 'transparent') document.documentElement.classList.add('transparent');
  if (params.get('status') === 'hide') status.hidden = true;
}

/** How a page follows a room's stream: it never gives up, and a stalled one reconnects. */
export const STREAM_OPTIONS = {
  retryDelay: 1000,
  backoff: 2,
  maxRetryDelay: 30000,
  jitter: 0.5,
  retryOnServerError: true,
  heartbeatTimeout: 45000, // three missed keepalives (KEEPALIVE_S=15): a dead connection
};

/** A page of frontend/dist opened as a file of a static site (player.html) without ?hub=:
 * there is no hub to ask, so the page says how to name one. */
export function needsHub(params: URLSearchParams): boolean {
  return !params.get('hub') && location.pathname.endsWith('.html');
}

/** ?room=, else the path's segment `skip` places from the end (the hub serves /<room> and
 * /<room>/history), else '' (the default room). Any id: one that is not a room streams quotes. */
export function roomOf(params: URLSearchParams, skip = 0): string {
  const segments = location.pathname.split('/');
  const segment = segments[segments.length - 1 - skip] || '';
  if (params.get('room') !== null) return params.get('room') as string;
  if (segment.endsWith('.html')) return '';
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment; // not UTF-8 once decoded: the hub says it is no room
  }
}

// --- Speaker profiles (room setting `profiles`) --------------------------------------------

export interface Profile {
  color?: string; // the name plate's, #rrggbb
  avatar?: string; // an upload's name
  speed?: number; // characters per second
  sound?: string; // blip (the default), soft, none, or the name of an uploaded sound
  pitch?: number; // the typing sound's playback rate
}

export interface RoomSettings {
  typewriter_speed?: number;
  theme?: string;
  profiles?: Record<string, Profile>;
}

const COLOR = /^#[0-9a-fA-F]{6}$/;

/** The profile a message names: `data.profile`, else its speaker. */
export function profileOf(settings: RoomSettings, speaker: string, named?: unknown): Profile {
  const profiles = settings.profiles || {};
  const name = typeof named === 'string' ? named : speaker;
  return Object.prototype.hasOwnProperty.call(profiles, name) ? profiles[name] : {};
}

/** Where the hub serves a room's upload (?token= for a private room). */
export function uploadUrl(hub: string, room: string, name: string, token: string): string {
  const query = token ? `?token=${encodeURIComponent(token)}` : '';
  return `${hub}/api/v1/rooms/${encodeURIComponent(room)}/uploads/${encodeURIComponent(name.toLowerCase())}${query}`;
}

/** A name plate in the profile's colour (else the theme's). */
export function paintPlate(plate: HTMLElement, profile: Profile): void {
  plate.style.background = profile.color && COLOR.test(profile.color) ? profile.color : '';
}

// --- Formatting codes: a safe superset of Echo-Live's -------------------------------------

export interface Style {
  b?: boolean; // bold
  i?: boolean; // italic
  u?: boolean; // underline
  s?: boolean; // strike
  shake?: boolean; // each character trembles
  pop?: boolean; // each character is stamped in as it is typed
  color?: string; // #rrggbb, checked by CODES
  size?: number; // steps of SIZE_STEP, from MIN_SIZE to MAX_SIZE
}

export type Segment =
  | { text: string; style: Style; ruby?: string } // ruby: the reading above the text
  | { image: string; style: Style } // an upload of the room, by name
  | { pause: number }; // milliseconds

const SIZE_STEP = 1.25;
const MIN_SIZE = -2;
const MAX_SIZE = 3;
const PAUSE_S = 0.5; // @p
const MAX_PAUSE_S = 10;
const FLAGS: Record<string, keyof Style> = { b: 'b', i: 'i', u: 'u', s: 's', '~': 'shake', '!': 'pop' };

/** `\@` is a literal @; `@b @i @u @s` bold, italic, underline, strike; `@~` shake, `@!`
 * stamped in; `@[#rrggbb]` a colour; `@+`/`@-` a size bigger/smaller; `@r` resets them all.
 * `@{name}` an image of the room's uploads, `@(text|reading)` ruby text, `@p` or
 * `@p[seconds]` a pause. Anything else is text. */
const CODES =
  /\\@|@([bius~!+\-r])|@\[(#[0-9a-fA-F]{6})\]|@\{([a-zA-Z0-9_-]{1,64})\}|@\(([^|()\n]{1,64})\|([^|()\n]{1,64})\)|@p(?:\[(\d{1,2}(?:\.\d{1,3})?)\])?/g;

export function parseCodes(source: string): Segment[] {
  const segments: Segment[] = [];
  let style: Style = {};
  let text = '';
  let end = 0;
  const flush = () => {
    if (text) segments.push({ text, style });
    text = '';
  };
  for (const match of source.matchAll(CODES)) {
    text += source.slice(end, match.index);
    end = (match.index ?? 0) + match[0].length;
    if (match[0] === '\\@') {
      text += '@';
      continue;
    }
    flush();
    const [, flag, color, image, base, reading, seconds] = match;
    if (flag === 'r') style = {};
    else if (flag === '+' || flag === '-') {
      const size = (style.size ?? 0) + (flag === '+' ? 1 : -1);
      style = { ...style, size: Math.min(MAX_SIZE, Math.max(MIN_SIZE, size)) };
    } else if (flag) style = { ...style, [FLAGS[flag]]: true };
    else if (color) style = { ...style, color: color.toLowerCase() };
    else if (image) segments.push({ image, style });
    else if (base) segments.push({ text: base, style, ruby: reading });
    else segments.push({ pause: Math.min(MAX_PAUSE_S, seconds ? Number(seconds) : PAUSE_S) * 1000 });
  }
  text += source.slice(end);
  flush();
  return segments;
}

/** The text of segments, without their codes (and without ruby readings). */
export function plainText(segments: Segment[]): string {
  return segments.map((segment) => ('text' in segment ? segment.text : '')).join('');
}

/** One step of typing a line: a character into a text node, an element into its parent
 * (an image, a ruby's reading, a stamped-in character), or a pause. */
export type Step =
  | { node: Text; offset: number; text: string } // the character goes at `offset` in `node`
  | { parent: Node; child: Element }
  | { pause: number };

/** Lays out segments in `target`, empty; applying the steps in order fills them in. */
export function layOut(segments: Segment[], target: HTMLElement, imageUrl: (name: string) => string): Step[] {
  const steps: Step[] = [];
  for (const segment of segments) {
    if ('pause' in segment) {
      steps.push({ pause: segment.pause });
      continue;
    }
    const span = styledSpan(segment.style);
    target.append(span);
    if ('image' in segment) {
      const image = document.createElement('img');
      image.className = 'emote';
      image.alt = segment.image;
      image.src = imageUrl(segment.image); // loads now: shown when typed
      steps.push({ parent: span, child: image });
      continue;
    }
    let into: HTMLElement = span;
    if (segment.ruby !== undefined) {
      into = document.createElement('ruby');
      span.append(into);
    }
    if (segment.style.shake || segment.style.pop) {
      // Each character is an element of its own, to move (or appear) on its own.
      let index = 0;
      for (const character of segment.text) {
        const letter = document.createElement('span');
        letter.className = 'letter';
        if (segment.style.shake) letter.style.animationDelay = `${-(index++ % 7) * 0.06}s`; // not in step
        letter.textContent = character;
        steps.push({ parent: into, child: letter });
      }
    } else {
      const node = document.createTextNode('');
      into.append(node);
      let offset = 0;
      for (const character of segment.text) {
        steps.push({ node, offset, text: character });
        offset += character.length;
      }
    }
    if (segment.ruby !== undefined) {
      const reading = document.createElement('rt');
      reading.textContent = segment.ruby;
      steps.push({ parent: into, child: reading }); // once its text is all there
    }
  }
  return steps;
}

function styledSpan(style: Style): HTMLSpanElement {
  const span = document.createElement('span');
  for (const flag of ['b', 'i', 'u', 's', 'shake', 'pop'] as const) if (style[flag]) span.classList.add(`fmt-${flag}`);
  if (style.color) span.style.color = style.color;
  if (style.size) span.style.fontSize = `${SIZE_STEP ** style.size}em`;
  return span;
}

export function applyStep(step: Step): void {
  if ('node' in step) step.node.appendData(step.text);
  else if ('parent' in step) step.parent.appendChild(step.child);
}

/** Takes the last applied step back (a page break: it goes on the next page). */
export function undoStep(step: Step): void {
  if ('node' in step) step.node.deleteData(step.offset, step.text.length);
  else if ('parent' in step) step.child.remove();
}

/** Where an applied step's content is on screen. */
export function stepRect(step: Step): DOMRect | null {
  if ('node' in step) {
    const range = document.createRange();
    range.setStart(step.node, step.offset);
    range.setEnd(step.node, step.offset + step.text.length);
    return range.getBoundingClientRect();
  }
  if ('parent' in step) return step.child.getBoundingClientRect();
  return null;
}
