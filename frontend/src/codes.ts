// Formatting codes: a safe superset of Echo-Live's, shared by the player (which types them
// out step by step), the history page and the admin's recent messages. Text only ever
// becomes text nodes, and codes make elements of a fixed set: never HTML.

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
  | { image: string; style: Style } // an upload of the room, by name: an image or a sound
  | { pause: number }; // milliseconds

const SIZE_STEP = 1.25;
const MIN_SIZE = -2;
const MAX_SIZE = 3;
const PAUSE_S = 0.5; // @p
const MAX_PAUSE_S = 10;
const FLAGS: Record<string, keyof Style> = { b: 'b', i: 'i', u: 'u', s: 's', '~': 'shake', '!': 'pop' };

/** `\@` is a literal @; `@b @i @u @s` bold, italic, underline, strike; `@~` shake, `@!`
 * stamped in; `@[#rrggbb]` a colour; `@+`/`@-` a size bigger/smaller; `@r` resets them all.
 * `@{name}` an upload of the room (an image; a sound plays in the player), `@(text|reading)` ruby text, `@p` or
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

/** A message's text as shown: machine text (an AI answer, a quote) as it is, anything
 * else with its codes. */
export function messageSegments(text: string, meta: unknown): Segment[] {
  return meta === 'ai' || meta === 'fallback' ? [{ text, style: {} }] : parseCodes(text);
}

/** A message's text as spans, formatted as the player shows it, all at once. */
export function renderMessage(source: string, meta: unknown, upload: (name: string) => Element): HTMLSpanElement {
  const shown = document.createElement('span');
  for (const step of layOut(messageSegments(source, meta), shown, upload)) applyStep(step);
  return shown;
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

/** Lays out segments in `target`, empty; applying the steps in order fills them in.
 * `upload(name)`: the element of an `@{name}` code (an image, or a sound: the page knows). */
export function layOut(segments: Segment[], target: HTMLElement, upload: (name: string) => Element): Step[] {
  const steps: Step[] = [];
  for (const segment of segments) {
    if ('pause' in segment) {
      steps.push({ pause: segment.pause });
      continue;
    }
    const span = styledSpan(segment.style);
    target.append(span);
    if ('image' in segment) {
      steps.push({ parent: span, child: upload(segment.image) }); // loads now: shown when typed
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

/** An empty span in a segment's style (classes `fmt-*`, a colour, a size). */
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
