// The only way the UI builds DOM: elements with attributes and children,
// where every string child becomes a Text node. No code in src/ parses a
// string as HTML (test/dom.test.ts fails on any HTML sink), so message
// bodies can only ever be text. `on*` attributes are refused: handlers are
// attached with addEventListener via `on`.

export type Child = Node | string | number | null | undefined | false | Child[];

export interface Attrs {
  [name: string]: string | number | boolean | undefined | null;
}

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (/^on/i.test(k)) throw new Error(`event handler attribute ${k} refused`);
    el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

export function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export function on<K extends keyof HTMLElementEventMap>(
  el: HTMLElement,
  type: K,
  f: (ev: HTMLElementEventMap[K]) => void,
): HTMLElement {
  el.addEventListener(type, f);
  return el;
}

export function clear(el: Node): void {
  while (el.firstChild) el.removeChild(el.firstChild);
}
