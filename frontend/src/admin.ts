// The admin page: log in, manage rooms, speak in them as their controller, API tokens, users.
// The access token lives in memory only and is renewed before it expires with the HttpOnly
// refresh cookie; the controller stream authenticates with the session cookie.
import { renderMessage } from './codes';
import { type Profile, uploadElement, uploadUrl } from './dialogue';
import { type ApiOptions, ApiError, api, byId, el, fill, messageOf } from './common';

interface User {
  id: string;
  username: string;
  role: 'admin' | 'user';
  disabled: boolean;
}

interface Session {
  access_token: string;
  expires_in: number;
  user: User;
}

interface Presence {
  players: number;
  controllers: number;
}

interface Room {
  id: string;
  owner: string | null; // a user id
  title: string;
  private: boolean;
  history_size: number | null;
  settings: { typewriter_speed?: number; theme?: string; profiles?: Record<string, Profile> };
  last_id: number;
  subscribers?: Presence;
}

interface ApiToken {
  id: string;
  name: string;
  rooms: string[] | '*';
  rights: string[];
  expires_at: number | null;
}

interface Payload {
  id: number;
  room: string;
  speaker: string;
  data: { message?: unknown };
  meta: unknown;
  time: number;
  edited?: number; // epoch ms of its last edit
}

const SIGNED_IN = 'streaming-message.signed-in'; // a refresh cookie may exist: try it on load
const HISTORY = 50; // recent messages shown (read from the history API when a room is opened)

type Inputs = Record<string, HTMLInputElement>;

function inputsOf(form: HTMLFormElement): Inputs {
  return form.elements as unknown as Inputs;
}

/** Handles the submit of the form `id`: handler(its inputs by name, the form). */
function onSubmit(id: string, handler: (inputs: Inputs, form: HTMLFormElement) => void): void {
  const form = byId<HTMLFormElement>(id);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    handler(inputsOf(form), form);
  });
}

let accessToken = '';
let me: User | null = null;
let renewal: number | undefined;
let rooms: Room[] = [];
let selected: string | null = location.hash.slice(1) || null; // the room in the URL: #<room>
let controller: SSEClient | null = null;
let following: string | null = null; // the room of the controller stream

// --- Messages to the user ----------------------------------------------------------------

function notify(message: string, kind: 'error' | 'success' = 'error'): void {
  const toast = el('div', { class: `alert ${kind === 'error' ? 'alert-error' : 'alert-success'}`, role: 'alert' }, message);
  byId('toasts').append(toast);
  window.setTimeout(() => toast.remove(), kind === 'error' ? 8000 : 3000);
}

/** Runs an action of the page; its error, if any, is shown. */
async function attempt(action: () => Promise<unknown>, done?: string): Promise<void> {
  try {
    await action();
    if (done) notify(done, 'success');
  } catch (error) {
    notify(messageOf(error));
  }
}

// --- Session ---------------------------------------------------------------------------

function begin(session: Session): void {
  accessToken = session.access_token;
  me = session.user;
  localStorage.setItem(SIGNED_IN, '1');
  window.clearTimeout(renewal);
  renewal = window.setTimeout(renew, session.expires_in * 800); // at 80% of its lifetime
}

/** A new access token from the refresh cookie, which rotates. Tabs take turns (Web Locks,
 * where the browser has them), so that no two present the same refresh token. */
async function renew(): Promise<boolean> {
  const refresh = () => api<Session>('/api/v1/auth/refresh', { method: 'POST' });
  try {
    begin(navigator.locks ? await navigator.locks.request('streaming-message.refresh', refresh) : await refresh());
    if (controller?.readyState === SSEClient.CLOSED) follow(); // it may have lost its cookie
    return true;
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      signOut('Your session has ended: please log in again.');
    } else {
      renewal = window.setTimeout(renew, 10000);
      notify(`Could not renew the session: ${messageOf(error)}`);
    }
    return false;
  }
}

/** An API call as the logged-in user; an expired access token is renewed once. */
async function call<T = any>(url: string, options: ApiOptions = {}): Promise<T> {
  try {
    return await api<T>(url, { ...options, token: accessToken });
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401) || !(await renew())) throw error;
    return api<T>(url, { ...options, token: accessToken });
  }
}

function signOut(reason?: string): void {
  controller?.close();
  controller = null;
  following = null;
  accessToken = '';
  me = null;
  localStorage.removeItem(SIGNED_IN);
  window.clearTimeout(renewal);
  byId('app-view').hidden = true;
  byId('login-view').hidden = false;
  const error = byId('login-error');
  error.textContent = reason || '';
  error.hidden = !reason;
}

function showApp(): void {
  if (!me) return;
  byId('login-view').hidden = true;
  byId('app-view').hidden = false;
  byId('who').textContent = `${me.username} · ${me.role}`;
  byId('users-panel').hidden = me.role !== 'admin';
  attempt(loadRooms);
  attempt(loadTokens);
  if (me.role === 'admin') attempt(loadUsers);
}

onSubmit('login', async ({ username, password }, form) => {
  try {
    begin(await api('/api/v1/auth/login', { method: 'POST', body: { username: username.value, password: password.value } }));
    form.reset();
    showApp();
  } catch (error) {
    signOut(messageOf(error));
  }
});

byId('logout').addEventListener('click', async () => {
  await api('/api/v1/auth/logout', { method: 'POST', token: accessToken }).catch(() => undefined);
  signOut();
});

// --- Rooms -----------------------------------------------------------------------------

async function loadRooms(): Promise<void> {
  const all: Room[] = [];
  let after: string | null = null;
  do {
    // the list comes a page at a time, by id: `next` is where the next page starts
    const query: string = after === null ? '' : `&after=${encodeURIComponent(after)}`;
    const page: { rooms: Room[]; next: string | null } = await call(`/api/v1/rooms?limit=1000${query}`);
    all.push(...page.rooms);
    after = page.next;
  } while (after !== null);
  rooms = all.filter((room) => me?.role === 'admin' || room.owner === me?.id); // those one controls
  if (!rooms.some((room) => room.id === selected)) selected = rooms[0]?.id ?? null;
  renderRooms();
  select(selected);
}

function renderRooms(): void {
  fill(
    byId('rooms'),
    ...rooms.map((room) =>
      el(
        'li',
        {},
        el(
          'button',
          { type: 'button', class: room.id === selected ? 'menu-active' : '', 'data-room': room.id, onclick: () => select(room.id) },
          el('span', { class: 'font-mono' }, room.id),
          room.title && el('span', { class: 'truncate opacity-70' }, room.title),
          room.private && el('span', { class: 'badge badge-sm badge-outline' }, 'private'),
        ),
      ),
    ),
  );
  fill(
    byId('token-rooms'),
    el('option', { value: '*' }, 'all my rooms'),
    ...rooms.map((room) => el('option', { value: room.id, selected: room.id === selected }, room.id)),
  );
}

function select(roomId: string | null): void {
  selected = roomId;
  const room = rooms.find((candidate) => candidate.id === roomId);
  byId('room-panel').hidden = !room;
  if (!room) return follow(); // none left: stop following
  window.history.replaceState(null, '', `#${room.id}`);
  for (const item of byId('rooms').querySelectorAll('button')) {
    item.classList.toggle('menu-active', item.dataset.room === room.id);
  }
  byId('room-title').textContent = room.title ? `${room.id} · ${room.title}` : room.id;
  byId<HTMLAnchorElement>('player-link').href = `/${room.id}`;
  const settings = inputsOf(byId<HTMLFormElement>('settings'));
  settings.title.value = room.title;
  settings.private.checked = room.private;
  settings.history_size.value = room.history_size === null ? '' : String(room.history_size);
  settings.typewriter_speed.value = room.settings.typewriter_speed ? String(room.settings.typewriter_speed) : '';
  settings.theme.value = room.settings.theme || '';
  if (room.subscribers) showPresence(room.subscribers);
  profilesPanel(room);
  if (following !== room.id) follow();
}

onSubmit('create-room', ({ id, title, private: hidden }, form) => {
  attempt(async () => {
    const { room } = await call('/api/v1/rooms', {
      method: 'POST',
      body: { id: id.value, title: title.value, private: hidden.checked },
    });
    form.reset();
    selected = room.id;
    await loadRooms();
    notify(`Room ${room.id} created`, 'success');
  });
});

onSubmit('settings', ({ title, private: hidden, history_size, typewriter_speed, theme }) => {
  const number = (input: HTMLInputElement) => (input.value ? Number(input.value) : null);
  attempt(async () => {
    await call(`/api/v1/rooms/${selected}`, {
      method: 'PATCH',
      body: {
        title: title.value,
        private: hidden.checked,
        history_size: number(history_size),
        settings: { typewriter_speed: number(typewriter_speed), theme: theme.value || null },
      },
    });
    await loadRooms();
  }, 'Settings saved');
});

byId('delete-room').addEventListener('click', () => {
  const roomId = selected;
  if (!roomId || !window.confirm(`Delete room ${roomId} and its history? Its players will be disconnected.`)) return;
  attempt(async () => {
    await call(`/api/v1/rooms/${roomId}`, { method: 'DELETE' });
    await loadRooms();
  }, `Room ${roomId} deleted`);
});

// --- Speaker profiles and uploads (issue 16): the room's `profiles` setting, its files -----

interface Upload {
  name: string;
  type: string;
  url: string;
}

const BUNDLED_SOUNDS = ['blip', 'soft']; // the player's own (frontend/src/sounds); `none`: silent
const MAX_SPEAKER = 64; // characters of a speaker's name (the hub's MAX_SPEAKER_CHARS)

let roomUploads: Upload[] = []; // the selected room's: what avatars and sounds can be

/** Shows the room's profiles (a row each, to edit) and its uploads. `keepEdits`: the rows
 * as they are in the form (not saved yet), with the new list of uploads to choose from. */
function profilesPanel(room: Room, keepEdits = false): void {
  attempt(async () => {
    const { uploads }: { uploads: Upload[] } = await call(`/api/v1/rooms/${room.id}/uploads`);
    if (selected !== room.id) return;
    const profiles = keepEdits ? readProfiles() : room.settings.profiles || {};
    roomUploads = uploads;
    fill(
      byId('uploads'),
      ...uploads.map((upload) =>
        el(
          'li',
          { class: 'badge badge-lg gap-2 py-4' },
          isImage(upload) ? el('img', { class: 'h-6 w-6 rounded object-cover', src: upload.url, alt: '' }) : '♪',
          el('span', { class: 'font-mono' }, upload.name),
          el('button', { type: 'button', class: 'btn btn-ghost btn-xs', 'aria-label': `delete ${upload.name}`, onclick: () => deleteUpload(upload) }, '✕'),
        ),
      ),
    );
    fill(byId('profile-rows'), ...Object.entries(profiles).map(([name, profile]) => profileRow(name, profile)));
  });
}

function isImage(upload: Upload): boolean {
  return upload.type.startsWith('image/');
}

function reloadProfiles(): void {
  const room = rooms.find((candidate) => candidate.id === selected);
  if (room) profilesPanel(room, true);
}

/** A labelled field of a profile row. */
function field(label: string, ...controls: HTMLElement[]): HTMLElement {
  return el('label', { class: 'grid min-w-0 gap-1 text-xs' }, el('span', { class: 'opacity-70' }, label), ...controls);
}

/** A select of `choices` ([value, text]) with `value` chosen; a value that is not among them
 * (an upload deleted since) stays, marked missing, so that saving does not drop it unseen. */
function choice(name: string, value: string, choices: [string, string][]): HTMLSelectElement {
  if (value && !choices.some(([known]) => known === value)) choices.push([value, `${value} (missing)`]);
  return el(
    'select',
    { class: 'select select-sm w-full min-w-0', name },
    ...choices.map(([known, text]) => el('option', { value: known, selected: known === value }, text)),
  );
}

/** A number input: empty for none. */
function numberInput(name: string, value: number | undefined, min: number, max: number, placeholder: string): HTMLInputElement {
  return el('input', { class: 'input input-sm w-full min-w-0', name, type: 'number', min, max, step: 'any', placeholder, value: value ?? '' });
}

/** One speaker's row: the fields docs/API.md documents, with their ranges. */
function profileRow(name: string, profile: Profile): HTMLLIElement {
  const color = el('input', { class: 'h-8 w-12 cursor-pointer peer-not-checked:opacity-30', name: 'color', type: 'color', 'aria-label': 'colour', value: profile.color || '#2a9d8f' });
  const colored = el('input', { class: 'peer checkbox checkbox-sm', name: 'colored', type: 'checkbox', 'aria-label': 'use a colour', checked: Boolean(profile.color) });
  color.addEventListener('input', () => (colored.checked = true)); // picking a colour means using it (unticked: dimmed)
  const images = roomUploads.filter(isImage).map((upload): [string, string] => [upload.name, upload.name]);
  const sounds = roomUploads.filter((upload) => !isImage(upload)).map((upload): [string, string] => [upload.name, `♪ ${upload.name}`]);
  const row: HTMLLIElement = el(
    'li',
    { class: 'profile grid grid-cols-2 items-end gap-2 rounded-box border border-base-300 p-2 sm:grid-cols-4' },
    el(
      'label',
      { class: 'col-span-2 grid min-w-0 gap-1 text-xs' },
      el('span', { class: 'opacity-70' }, 'Speaker'),
      el('input', { class: 'input input-sm w-full min-w-0', name: 'speaker', value: name, maxLength: MAX_SPEAKER, required: true, placeholder: 'speaker name' }),
    ),
    el('div', { class: 'grid min-w-0 gap-1 text-xs' }, el('span', { class: 'opacity-70' }, 'Colour'), el('span', { class: 'flex h-8 items-center gap-2' }, colored, color)),
    field('Avatar', choice('avatar', profile.avatar || '', [['', 'none'], ...images])),
    field('Speed (chars/s)', numberInput('speed', profile.speed, 1, 1000, 'room’s')),
    field('Sound', choice('sound', profile.sound || '', [['', 'default (blip)'], ...BUNDLED_SOUNDS.map((sound): [string, string] => [sound, sound]), ['none', 'none (silent)'], ...sounds])),
    field('Pitch', numberInput('pitch', profile.pitch, 0.25, 4, '1')),
    el('button', { class: 'btn btn-sm btn-ghost text-error self-end', type: 'button', onclick: () => row.remove() }, 'Remove'),
  );
  return row;
}

byId('add-profile').addEventListener('click', () => {
  const row = profileRow('', {});
  byId('profile-rows').append(row);
  row.querySelector('input')?.focus();
});

/** The profiles as the form has them: only the fields set. */
function readProfiles(): Record<string, Profile> {
  const profiles: Record<string, Profile> = {};
  for (const row of byId('profile-rows').children) {
    const value = (name: string) => (row.querySelector(`[name=${name}]`) as HTMLInputElement).value;
    const profile: Profile = {};
    if ((row.querySelector('[name=colored]') as HTMLInputElement).checked) profile.color = value('color');
    if (value('avatar')) profile.avatar = value('avatar');
    if (value('speed')) profile.speed = Number(value('speed'));
    if (value('sound')) profile.sound = value('sound');
    if (value('pitch')) profile.pitch = Number(value('pitch'));
    profiles[value('speaker')] = profile;
  }
  return profiles;
}

onSubmit('profiles', () => {
  const names = [...byId('profile-rows').querySelectorAll<HTMLInputElement>('[name=speaker]')].map((input) => input.value);
  const twice = names.find((name, index) => names.indexOf(name) !== index);
  if (twice !== undefined) return notify(`Two profiles for ${twice}: a speaker has one`);
  const profiles = readProfiles();
  attempt(async () => {
    // One PATCH, the profiles as a whole (none left: the setting goes)
    await call(`/api/v1/rooms/${selected}`, { method: 'PATCH', body: { settings: { profiles: names.length ? profiles : null } } });
    await loadRooms();
  }, 'Profiles saved');
});

onSubmit('upload', ({ name, file }, form) => {
  const chosen = file.files?.[0];
  if (!chosen) return;
  attempt(async () => {
    // The file as the body, not JSON: api() sends JSON, so this one is a fetch of its own.
    const send = () =>
      fetch(`/api/v1/rooms/${selected}/uploads/${encodeURIComponent(name.value)}`, {
        method: 'PUT',
        headers: { Authorization: `Bearer ${accessToken}` },
        body: chosen,
      });
    let response = await send();
    if (response.status === 401 && (await renew())) response = await send();
    const reply = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, reply?.msg || `${response.status} ${response.statusText}`);
    form.reset();
    reloadProfiles();
  }, 'Uploaded');
});

function deleteUpload(upload: Upload): void {
  attempt(async () => {
    await call(`/api/v1/rooms/${selected}/uploads/${upload.name}`, { method: 'DELETE' });
    reloadProfiles();
  }, `${upload.name} deleted`);
}

// --- The room's controller stream: presence, recent messages ---------------------------------

function controllerState(state: 'live' | 'reconnecting' | 'closed', text: string): void {
  const badge = byId('controller-state');
  badge.dataset.state = state;
  badge.className = `badge ${state === 'live' ? 'badge-success' : state === 'reconnecting' ? 'badge-warning' : 'badge-error'}`;
  badge.textContent = text;
}

function showPresence({ players, controllers }: Presence): void {
  byId('presence').textContent = `${players} player${players === 1 ? '' : 's'} · ${controllers} controller${controllers === 1 ? '' : 's'}`;
}

/** A recent message, formatted as players show it, with buttons to edit or retract it. */
function historyEntry(message: Payload): HTMLLIElement {
  const text = message.data?.message;
  const shown = el('span', { class: 'message min-w-0 wrap-anywhere' });
  if (typeof text === 'string') shown.append(renderMessage(text, message.meta, (name) => uploadElement(uploadUrl('', message.room, name, ''), name, true)));
  else shown.textContent = JSON.stringify(message.data);
  const entry: HTMLLIElement = el(
    'li',
    { class: 'flex flex-wrap items-baseline gap-x-2 border-b border-base-300 py-1', 'data-id': message.id },
    el('span', { class: 'font-mono text-xs opacity-60' }, `#${message.id} ${new Date(message.time).toLocaleTimeString()}`),
    el('b', {}, `${message.speaker}:`),
    shown,
    message.edited && el('span', { class: 'text-xs opacity-60' }, '(edited)'),
    el(
      'span',
      { class: 'ml-auto flex gap-1' },
      typeof text === 'string' &&
        el('button', { class: 'btn btn-ghost btn-xs', type: 'button', onclick: () => editEntry(entry, message, text) }, 'Edit'),
      el('button', { class: 'btn btn-ghost btn-xs text-error', type: 'button', onclick: () => retract(message) }, 'Retract'),
    ),
  );
  return entry;
}

/** Edit a message's text in place: Enter (or Save) sends it, Escape (or Cancel) gives up. */
function editEntry(entry: HTMLLIElement, message: Payload, text: string): void {
  const input = el('input', { class: 'input input-xs min-w-0 flex-1', name: 'message', value: text, required: true });
  const form: HTMLFormElement = el(
    'form',
    {
      class: 'flex w-full gap-1',
      onsubmit: (event: Event) => {
        event.preventDefault();
        attempt(async () => {
          const { event: edited } = await call<{ event: Payload }>(`/api/v1/rooms/${message.room}/messages/${message.id}`, {
            method: 'PATCH',
            body: { data: { ...message.data, message: input.value } },
          });
          showEdit(edited);
        });
      },
    },
    input,
    el('button', { class: 'btn btn-primary btn-xs', type: 'submit' }, 'Save'),
    el('button', { class: 'btn btn-ghost btn-xs', type: 'button', onclick: () => entry.replaceWith(historyEntry(message)) }, 'Cancel'),
  );
  input.addEventListener('keydown', (event: KeyboardEvent) => {
    if (event.key === 'Escape') entry.replaceWith(historyEntry(message));
  });
  entry.replaceChildren(entry.children[0], entry.children[1], form);
  input.focus();
}

function retract(message: Payload): void {
  if (!window.confirm(`Retract message #${message.id}? Players take it off the screen and history leaves it out.`)) return;
  attempt(async () => {
    await call(`/api/v1/rooms/${message.room}/messages/${message.id}`, { method: 'DELETE' });
    showRetract(message.id);
  });
}

/** An edit (by this page or another controller): its entry shows the message as it is now. */
function showEdit(message: Payload): void {
  byId('history').querySelector(`li[data-id="${message.id}"]`)?.replaceWith(historyEntry(message));
}

function showRetract(id: number): void {
  byId('history').querySelector(`li[data-id="${id}"]`)?.remove();
}

/** This page is the selected room's controller: players see it online while it is open. Its
 * recent messages come from the history API (newest first); the stream resumes after the
 * newest of them, so nothing is missed or shown twice. */
function follow(): void {
  controller?.close();
  controller = null;
  const history = byId('history');
  history.replaceChildren();
  const room = rooms.find((candidate) => candidate.id === selected);
  following = room?.id ?? null;
  if (!room) return;
  controllerState('reconnecting', 'connecting…');
  call<{ messages: Payload[] }>(`/api/v1/rooms/${room.id}/messages?limit=${HISTORY}`).then(
    ({ messages }) => {
      if (following !== room.id || controller) return; // another room (or this one again) since
      history.replaceChildren(...messages.map(historyEntry));
      preview(room, messages[0]?.id);
      control(room, String(messages[0]?.id ?? 0));
    },
    (error) => {
      if (following !== room.id || controller) return;
      notify(`Could not read the recent messages: ${messageOf(error)}`);
      preview(room);
      control(room, String(room.last_id)); // live messages only
    },
  );
}

/** The player in the preview: it starts with the newest message, and as a "preview" its
 * stream is not counted as a player. */
function preview(room: Room, newest?: number): void {
  const query = new URLSearchParams({ role: 'preview' });
  if (newest) query.set('lastEventId', String(newest - 1));
  byId<HTMLIFrameElement>('preview').src = `/${room.id}?${query}`;
}

function control(room: Room, lastEventId: string): void {
  const history = byId('history');
  const source = new SSEClient(`/api/v1/events/${room.id}?role=controller`, {
    lastEventId,
    retryDelay: 1000,
    backoff: 2,
    maxRetryDelay: 30000,
    jitter: 0.5,
    retryOnServerError: true,
  });
  controller = source;
  source.onopen = () => controllerState('live', 'controller online');
  source.onerror = (event) => {
    if (source.readyState !== SSEClient.CLOSED) controllerState('reconnecting', 'reconnecting…');
    else if (event.status === 401 || event.status === 403) controllerState('closed', 'not allowed to control this room');
    else controllerState('closed', 'disconnected');
  };
  source.addEventListener('meta', (event) => {
    const hello = JSON.parse(event.data);
    if (hello.presence) showPresence(hello.presence);
  });
  source.addEventListener('presence', (event) => showPresence(JSON.parse(event.data)));
  source.addEventListener('message', (event) => {
    history.prepend(historyEntry(JSON.parse(event.data)));
    history.children[HISTORY]?.remove();
  });
  source.addEventListener('edit', (event) => showEdit(JSON.parse(event.data)));
  source.addEventListener('retract', (event) => showRetract(JSON.parse(event.data).id));
  source.addEventListener('deleted', () => attempt(loadRooms));
}

// --- Sending ---------------------------------------------------------------------------

onSubmit('send', ({ speaker, message, speed, meta }) => {
  const data: Record<string, unknown> = { message: message.value };
  if (speed.value) data.speed = Number(speed.value);
  attempt(async () => {
    await call('/api/v1/send', {
      method: 'POST',
      body: { room: selected, speaker: speaker.value, data, meta: meta.value || null },
    });
    message.value = '';
    message.focus();
  });
});

inputsOf(byId<HTMLFormElement>('send')).message.addEventListener('keydown', (event: KeyboardEvent) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    byId<HTMLFormElement>('send').requestSubmit();
  }
});

onSubmit('ai', ({ speaker, prompt }) => {
  const roomId = selected;
  attempt(async () => {
    await call(`/api/v1/rooms/${roomId}/ai`, { method: 'POST', body: { speaker: speaker.value, prompt: prompt.value } });
    prompt.value = '';
  }, `The AI is answering in ${roomId}`);
});

// --- API tokens ------------------------------------------------------------------------

async function loadTokens(): Promise<void> {
  const { tokens } = await call<{ tokens: ApiToken[] }>('/api/v1/tokens');
  fill(
    byId('tokens'),
    ...tokens.map((token) =>
      el(
        'tr',
        {},
        el('td', {}, token.name),
        el('td', {}, token.rooms === '*' ? 'all my rooms' : token.rooms.join(', ')),
        el('td', {}, token.rights.join(', ')),
        el('td', {}, token.expires_at ? new Date(token.expires_at).toLocaleString() : 'never'),
        el(
          'td',
          {},
          el('button', { class: 'btn btn-xs btn-outline btn-error', type: 'button', onclick: () => revoke(token) }, 'Revoke'),
        ),
      ),
    ),
  );
}

function revoke(token: ApiToken): void {
  if (!window.confirm(`Revoke the token ${token.name}? Scripts using it will stop working.`)) return;
  attempt(async () => {
    await call(`/api/v1/tokens/${token.id}`, { method: 'DELETE' });
    await loadTokens();
  }, `Token ${token.name} revoked`);
}

onSubmit('create-token', ({ name, rooms: scope, publish, subscribe, days }) => {
  const rights = [publish.checked && 'publish', subscribe.checked && 'subscribe'].filter(Boolean);
  const body: Record<string, unknown> = { name: name.value, rooms: scope.value === '*' ? '*' : [scope.value], rights };
  if (days.value) body.expires_in = Number(days.value) * 86400;
  attempt(async () => {
    const { token } = await call('/api/v1/tokens', { method: 'POST', body });
    byId('secret').textContent = token;
    byId('secret-box').hidden = false;
    name.value = '';
    await loadTokens();
  });
});

byId('copy').addEventListener('click', () => {
  const secret = byId('secret');
  if (!navigator.clipboard) {
    window.getSelection()?.selectAllChildren(secret); // copy by hand (not a secure context)
    return;
  }
  attempt(() => navigator.clipboard.writeText(secret.textContent || ''), 'Copied');
});

// --- Users (admins) --------------------------------------------------------------------

async function loadUsers(): Promise<void> {
  const { users } = await call<{ users: User[] }>('/api/v1/users');
  fill(
    byId('users'),
    ...users.map((user) =>
      el(
        'li',
        { class: 'flex flex-wrap items-center gap-2 py-2' },
        el('span', { class: 'flex-1 font-medium' }, user.username),
        el('span', { class: `badge badge-sm ${user.role === 'admin' ? 'badge-primary' : 'badge-ghost'}` }, user.role),
        user.disabled && el('span', { class: 'badge badge-sm badge-warning' }, 'disabled'),
        ...(user.id === me?.id
          ? [] // not yourself
          : [
              userButton(user, user.disabled ? 'Enable' : 'Disable', { disabled: !user.disabled }),
              userButton(user, user.role === 'admin' ? 'Make user' : 'Make admin', {
                role: user.role === 'admin' ? 'user' : 'admin',
              }),
              el('button', { class: 'btn btn-xs btn-outline btn-error', type: 'button', onclick: () => removeUser(user) }, 'Delete'),
            ]),
      ),
    ),
  );
}

function userButton(user: User, label: string, changes: Partial<User>): HTMLButtonElement {
  const update = () =>
    attempt(async () => {
      await call(`/api/v1/users/${user.id}`, { method: 'PATCH', body: changes });
      await loadUsers();
    }, `${user.username} updated`);
  return el('button', { class: 'btn btn-xs', type: 'button', onclick: update }, label);
}

function removeUser(user: User): void {
  if (!window.confirm(`Delete the user ${user.username}, with their tokens and sessions?`)) return;
  attempt(async () => {
    await call(`/api/v1/users/${user.id}`, { method: 'DELETE' });
    await loadUsers();
  }, `${user.username} deleted`);
}

onSubmit('create-user', ({ username, password, role }, form) => {
  attempt(async () => {
    await call('/api/v1/users', { method: 'POST', body: { username: username.value, password: password.value, role: role.value } });
    form.reset();
    await loadUsers();
  }, `User ${username.value} created`);
});

// --- Start: resume the session of the refresh cookie, else log in ----------------------------

(async () => {
  if (localStorage.getItem(SIGNED_IN) && (await renew())) showApp();
  else signOut();
})();
