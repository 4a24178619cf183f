// The console's shell: sign-in, the header (what the token's role allows), the
// router (history API under /ui/, which the API answers with index.html), and the
// live-stream indicator.

import { ApiError, get, setToken, token, type Whoami } from "./api";
import { badge, h, replace } from "./dom";
import { experimentsPage } from "./pages/experiments";
import { experimentPage } from "./pages/experiment";
import { fleetPage } from "./pages/fleet";
import { catalogPage } from "./pages/catalog";

export const BASE = "/ui/";

/** What every page gets. */
export interface Context {
  who: Whoami;
  /** Shows whether the page's event stream is connected. */
  setLive(live: boolean, why: string): void;
}

/** A mounted page; the function undoes its subscriptions and timers. */
export type Cleanup = () => void;

let cleanup: Cleanup | null = null;
let who: Whoami | null = null;

function path(): string {
  const p = location.pathname;
  return p.startsWith(BASE) ? decodeURIComponent(p.slice(BASE.length)).replace(/\/+$/, "") : "";
}

export function navigate(to: string) {
  history.pushState(null, "", BASE + to);
  void render();
}

function takeTokenFromFragment() {
  // `scripts/demo` prints /ui/#token=…; keep it for this tab, then drop it from
  // the address bar and history.
  const match = /^#token=(.+)$/.exec(location.hash);
  if (match) {
    setToken(decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

async function signIn(message?: string) {
  const root = document.getElementById("app")!;
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "off",
    required: true,
    "aria-describedby": "token-help",
  });
  const error = h("p", { class: "error", role: "alert", id: "signin-error" }, message ?? "");
  const form = h(
    "form",
    {
      class: "signin",
      onsubmit: async (e: Event) => {
        e.preventDefault();
        setToken(input.value.trim());
        who = null;
        await render();
      },
    },
    h("h1", null, "Phoenix console"),
    h("label", { for: "token" }, "API token"),
    input,
    h(
      "p",
      { id: "token-help", class: "muted" },
      "A token from PHOENIX_API_TOKENS (viewer, operator or admin). It is kept in this tab only (sessionStorage).",
    ),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    error,
  );
  replace(root, h("main", { id: "main" }, form));
  input.focus();
}

function shell(whoami: Whoami): HTMLElement {
  const current = path().split("/")[0] || "experiments";
  const link = (to: string, text: string) =>
    h("a", { href: BASE + to, "aria-current": current === to ? "page" : null }, text);
  const allows = whoami.canOperate
    ? "may promote, roll back and stop experiments"
    : "read only";
  return h(
    "header",
    { class: "top" },
    h("a", { class: "skip", href: "#main" }, "Skip to content"),
    h("span", { class: "brand" }, "Phoenix"),
    h(
      "nav",
      { "aria-label": "Main" },
      link("experiments", "Experiments"),
      link("fleet", "Fleet"),
      link("catalog", "Catalog"),
    ),
    h(
      "span",
      { class: "who", id: "who", "data-role": whoami.role },
      `Signed in as ${whoami.role}${whoami.authDisabled ? " (authentication is off)" : ""}: ${allows}`,
    ),
    h("span", { id: "live", class: "live", role: "status" }),
    h(
      "button",
      {
        type: "button",
        onclick: () => {
          setToken(null);
          who = null;
          void render();
        },
      },
      "Sign out",
    ),
  );
}

function setLive(live: boolean, why: string) {
  const el = document.getElementById("live");
  if (!el) return;
  replace(el, badge(live ? "live" : "offline", live ? "live" : "not live", why));
  el.dataset.live = String(live);
}

async function render() {
  cleanup?.();
  cleanup = null;
  const root = document.getElementById("app")!;
  if (!token()) return signIn();
  if (!who) {
    try {
      who = await get<Whoami>("/api/v1/whoami");
    } catch (err) {
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
        setToken(null);
        return signIn(`Sign-in refused: ${err.detail}`);
      }
      replace(root, h("main", { id: "main" }, h("p", { class: "error", role: "alert" }, String(err))));
      return;
    }
  }
  const main = h("main", { id: "main", tabindex: "-1" });
  replace(root, shell(who), main);
  const ctx: Context = { who, setLive };
  const [page, arg] = splitPath(path());
  switch (page) {
    case "":
    case "experiments":
      cleanup = arg ? experimentPage(main, ctx, arg) : experimentsPage(main, ctx);
      break;
    case "fleet":
      cleanup = fleetPage(main, ctx, arg);
      break;
    case "catalog":
      cleanup = catalogPage(main, ctx);
      break;
    default:
      replace(main, h("h1", null, "Not found"), h("p", null, `No page ${path()}.`));
  }
}

function splitPath(p: string): [string, string | undefined] {
  const i = p.indexOf("/");
  return i < 0 ? [p, undefined] : [p.slice(0, i), p.slice(i + 1) || undefined];
}

/** Moves focus to the page's heading once it is there, for keyboard and screen readers. */
export function focusHeading(main: HTMLElement) {
  const heading = main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

document.addEventListener("click", (e) => {
  const a = (e.target as Element).closest?.("a");
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith(BASE) || a.target) return;
  e.preventDefault();
  history.pushState(null, "", url.pathname + url.search);
  void render().then(() => focusHeading(document.getElementById("main")!));
});
window.addEventListener("popstate", () => void render());

takeTokenFromFragment();
void render();
