// Formatting codes: a safe subset of Echo-Live's, shared by the player (which types them
// out) and the admin's recent messages. Text only ever becomes text nodes, never HTML.

export interface Style {
  b?: boolean; // bold
  i?: boolean; // italic
  u?: boolean; // underline
  s?: boolean; // strike
  color?: string; // #rrggbb, checked by CODES
}

export interface Segment {
  text: string;
  style: Style;
}

/** `\@` is a literal @; `@b @i @u @s` switch a style on, `@[#rrggbb]` sets the colour and
 * `@r` resets them all. Anything else is text. */
const CODES = /\\@|@([bius])|@(r)|@\[(#[0-9a-fA-F]{6})\]/g;

export function parseCodes(source: string): Segment[] {
  const segments: Segment[] = [];
  let style: Style = {};
  let text = '';
  let end = 0;
  for (const match of source.matchAll(CODES)) {
    text += source.slice(end, match.index);
    end = (match.index ?? 0) + match[0].length;
    if (match[0] === '\\@') {
      text += '@';
      continue;
    }
    if (text) segments.push({ text, style });
    text = '';
    const [, flag, reset, color] = match;
    style = reset ? {} : flag ? { ...style, [flag]: true } : { ...style, color: color.toLowerCase() };
  }
  text += source.slice(end);
  if (text) segments.push({ text, style });
  return segments;
}

/** A message's text as shown: machine text (an AI answer, a quote) as it is, anything
 * else with its codes. */
export function messageSegments(text: string, meta: unknown): Segment[] {
  return meta === 'ai' || meta === 'fallback' ? [{ text, style: {} }] : parseCodes(text);
}

/** An empty span in a segment's style (classes `fmt-b`, `fmt-i`, `fmt-u`, `fmt-s`). */
export function styledSpan(style: Style): HTMLSpanElement {
  const span = document.createElement('span');
  for (const flag of ['b', 'i', 'u', 's'] as const) if (style[flag]) span.classList.add(`fmt-${flag}`);
  if (style.color) span.style.color = style.color;
  return span;
}

/** A message's text as spans, formatted as the player shows it. */
export function renderMessage(source: string, meta: unknown): HTMLSpanElement[] {
  return messageSegments(source, meta).map(({ text, style }) => {
    const span = styledSpan(style);
    span.textContent = text;
    return span;
  });
}
