// What the pages share: building DOM without HTML strings, and calls to the JSON API.
// User text only ever reaches the page as text nodes, so it can never become markup.

type Child = Node | string | number | null | undefined | false;
type Props = Record<string, unknown>;

/** `el('button', {class: 'btn', onclick: f}, 'Send')`: `class`, `data-*`/`aria-*` and
 * other dashed names are attributes, `on*` functions listeners, the rest DOM properties. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Props = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      node.addEventListener(name.slice(2), value as EventListener);
    } else if (name === 'class' || name.includes('-')) {
      node.setAttribute(name, value === true ? '' : String(value));
    } else {
      (node as unknown as Props)[name] = value;
    }
  }
  append(node, children);
  return node;
}

function append(parent: Element, children: Child[]): void {
  for (const child of children) {
    if (child instanceof Node) parent.append(child);
    else if (child !== null && child !== undefined && child !== false) parent.append(String(child));
  }
}

/** Replaces an element's children. */
export function fill(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, children);
}

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (!node) throw new Error(`#${id} is missing from the page`);
  return node as T;
}

/** An API error: the server's `msg` (or what went wrong on the way), and the HTTP status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export interface ApiOptions {
  method?: string;
  body?: unknown;
  token?: string | null;
}

/** Calls the API and answers its JSON reply, or throws an ApiError with a message to show. */
export async function api<T = any>(url: string, options: ApiOptions = {}): Promise<T> {
  const headers: Record<string, string> = {};
  if (options.body !== undefined) headers['Content-Type'] = 'application/json';
  if (options.token) headers.Authorization = `Bearer ${options.token}`;
  let response: Response;
  try {
    response = await fetch(url, {
      method: options.method || 'GET',
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      credentials: 'same-origin',
    });
  } catch {
    throw new ApiError(0, 'Cannot reach the server: check the connection and try again');
  }
  const reply = await response.json().catch(() => null);
  if (!response.ok || !reply || reply.success === false) {
    const message = reply && typeof reply.msg === 'string' ? reply.msg : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return reply as T;
}

/** An error's message for the user. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
