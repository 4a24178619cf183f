// DOM helpers. Every piece of data reaches the page as text (textContent or an
// attribute value), never as HTML: names, reasons and configs come from users and
// collectors and are treated as hostile.

export type Child = Node | string | number | null | undefined | false | Child[];
export type Attrs = Record<string, string | number | boolean | EventListener | null | undefined>;

/** An HTML element with attributes (`on…` keys are listeners) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs | null = null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element. */
export function s(tag: string, attrs: Attrs | null = null, ...children: Child[]): SVGElement {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el: Element, attrs: Attrs | null) {
  if (!attrs) return;
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
}

export function append(el: Node, children: Child[]) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. Keyboard focus inside it stays on the
 * equivalent element (same id, or a link to the same place), so live redraws
 * do not throw a keyboard user back to the top. */
export function replace(el: Element, ...children: Child[]) {
  const focused = document.activeElement;
  const key = focused && focused !== el && el.contains(focused) ? focusKey(focused) : null;
  el.replaceChildren();
  append(el, children);
  if (key) {
    const again = el.querySelector<HTMLElement>(key);
    again?.focus({ preventScroll: true });
  }
}

function focusKey(el: Element): string | null {
  if (el.id) return `#${CSS.escape(el.id)}`;
  const href = el.getAttribute("href");
  if (href) return `a[href="${CSS.escape(href)}"]`;
  return null;
}

/** "12 s", "4 min", "3 h", "2 d" since `iso` (or until, if in the future). */
export function age(iso: string, now = Date.now()): string {
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (seconds < 90) return `${seconds} s`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 90) return `${minutes} min`;
  const hours = Math.round(minutes / 60);
  if (hours < 36) return `${hours} h`;
  return `${Math.round(hours / 24)} d`;
}

export function time(iso: string): HTMLTimeElement {
  const d = new Date(iso);
  return h("time", { datetime: iso, title: d.toISOString() }, d.toLocaleString());
}

export function num(value: number | null | undefined, digits = 1): string {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en");
  return value.toFixed(digits);
}

/** Status shown with an icon and a word, never by colour alone. */
export function badge(kind: string, text: string, label?: string): HTMLElement {
  const icon = ICONS[kind] ?? "•";
  return h(
    "span",
    { class: `badge badge-${kind}`, title: label ?? text },
    h("span", { class: "badge-icon", "aria-hidden": "true" }, icon),
    text,
  );
}

const ICONS: Record<string, string> = {
  pass: "✓",
  fail: "✗",
  inconclusive: "?",
  "no-data": "∅",
  "n/a": "–",
  pending: "…",
  deploying: "↻",
  running: "▶",
  analyzing: "∑",
  completed: "■",
  failed: "✗",
  stopped: "■",
  promoted: "★",
  "rolled-back": "↶",
  ready: "✓",
  lost: "✗",
  healthy: "✓",
  starting: "…",
  unhealthy: "!",
  restarting: "↻",
  succeeded: "✓",
  leased: "↻",
  cancelled: "–",
  live: "●",
  offline: "○",
};

/** A small key: value list. */
export function facts(pairs: [string, Child][]): HTMLElement {
  return h(
    "dl",
    { class: "facts" },
    pairs.map(([k, v]) => [h("dt", null, k), h("dd", null, v)]),
  );
}

export function labels(map: Record<string, string> | undefined): HTMLElement {
  const entries = Object.entries(map ?? {});
  if (entries.length === 0) return h("span", { class: "muted" }, "none");
  return h(
    "ul",
    { class: "labels" },
    entries.map(([k, v]) => h("li", { class: "label" }, `${k}=${v}`)),
  );
}
