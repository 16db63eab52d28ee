// What the player and the history page share: where the hub and the room are, and the
// room's speaker profiles. The formatting codes are in codes.ts.

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

// --- `@{name}`: an upload of the room, an image or a sound ---------------------------------

export type UploadKind = 'image' | 'sound';

const kinds = new Map<string, Promise<UploadKind>>(); // by URL

/** Whether an upload is an image or a sound. Its name does not say; the hub's reply does: it
 * serves the file with the type it found in the file's first bytes. One GET per URL, not a
 * HEAD nor the room's list of uploads: the list may be older than the message (an upload made
 * since), and the GET's bytes stay in the HTTP cache (max-age) for the <img> or the decoder
 * that takes them next. Missing or unreachable: an image, shown broken as any missing image. */
export function uploadKind(url: string): Promise<UploadKind> {
  let kind = kinds.get(url);
  if (!kind) {
    kind = fetch(url)
      .then((response): UploadKind => (response.ok && response.headers.get('Content-Type')?.startsWith('audio/') ? 'sound' : 'image'))
      .catch((): UploadKind => 'image');
    kinds.set(url, kind);
  }
  return kind;
}

/** An `@{name}` code's element, filled in once its upload's kind is known (data-kind: pending,
 * then image or sound): the image; for a sound, nothing (the player plays it), or with
 * `marker` a "♪ name" text (a log, where nothing plays). */
export function uploadElement(url: string, name: string, marker: boolean): HTMLSpanElement {
  const holder = document.createElement('span');
  holder.className = 'upload';
  holder.dataset.kind = 'pending';
  holder.dataset.url = url;
  uploadKind(url).then((kind) => {
    holder.dataset.kind = kind;
    if (kind === 'sound') {
      if (marker) holder.textContent = `♪ ${name}`;
      return;
    }
    const image = document.createElement('img');
    image.className = 'emote';
    image.alt = name;
    image.src = url;
    holder.append(image);
  });
  return holder;
}
