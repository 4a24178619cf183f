// The fleet: every host with its labels, heartbeat age and state, each collector's
// health and last error; a label-selector filter; a host's tasks. Heartbeats are
// not events (by design: they are cheap and frequent), so besides following host
// and task events the page re-reads the hosts every few seconds, and a host whose
// last heartbeat is older than the api's grace period shows as lost at once.

import { get, type AgentTask, type Host, type List } from "../api";
import { age, badge, h, labels, num, replace, time } from "../dom";
import { BASE, type Cleanup, type Context } from "../main";
import { EventStream } from "../stream";

const REREAD_MS = 5_000;

/** `role=web,zone=a`: every pair must match (the API's selector rule). */
export function parseSelector(text: string): Record<string, string> | string {
  const selector: Record<string, string> = {};
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const eq = part.indexOf("=");
    if (eq <= 0) return `\`${part}\` is not key=value`;
    selector[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return selector;
}

export function fleetPage(main: HTMLElement, ctx: Context, selected?: string): Cleanup {
  let hosts: Host[] = [];
  let tasks: AgentTask[] = [];
  const graceMs = ctx.who.hostGraceSeconds * 1000;
  const params = new URLSearchParams(location.search);
  const filter = h("input", { id: "selector", name: "selector", type: "search", value: params.get("selector") ?? "", placeholder: "role=web,zone=a", "aria-describedby": "selector-help" });
  const filterError = h("span", { class: "error", role: "alert" });
  const status = h("p", { class: "muted", role: "status", id: "fleet-status" });
  const body = h("tbody");
  const detail = h("section", { id: "host-detail", "aria-live": "polite" });

  replace(
    main,
    h("h1", null, "Fleet"),
    h(
      "form",
      {
        class: "filter",
        role: "search",
        onsubmit: (e: Event) => {
          e.preventDefault();
          applyFilter();
        },
      },
      h("label", { for: "selector" }, "Label selector"),
      filter,
      h("button", { type: "submit" }, "Filter"),
      h("span", { id: "selector-help", class: "muted small" }, " key=value pairs, comma separated; all must match."),
      filterError,
    ),
    status,
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "list", id: "fleet" },
        h("caption", { class: "visually-hidden" }, "Hosts"),
        h("thead", null, h("tr", null, ["Host", "State", "Last heartbeat", "Labels", "Agent", "Collectors"].map((t) => h("th", { scope: "col" }, t)))),
        body,
      ),
    ),
    detail,
  );
  // The selector lives in the address (?selector=…), so it survives opening a host.
  const applyFilter = () => {
    const url = new URL(location.href);
    if (filter.value.trim()) url.searchParams.set("selector", filter.value.trim());
    else url.searchParams.delete("selector");
    history.replaceState(null, "", url);
    draw();
  };
  filter.addEventListener("input", applyFilter);

  const stateOf = (host: Host, now: number) => (host.state === "lost" || now - Date.parse(host.lastSeen) > graceMs ? "lost" : "ready");

  const draw = () => {
    const selector = parseSelector(filter.value);
    replace(filterError, typeof selector === "string" ? ` ${selector}` : "");
    const wanted = typeof selector === "string" ? {} : selector;
    const now = Date.now();
    const shown = hosts.filter((host) => Object.entries(wanted).every(([k, v]) => host.labels[k] === v));
    const lost = shown.filter((host) => stateOf(host, now) === "lost").length;
    replace(status, `${shown.length} of ${hosts.length} hosts shown; ${lost} lost. A host silent for more than ${ctx.who.hostGraceSeconds} s is lost.`);
    replace(
      body,
      shown.length === 0 ? h("tr", null, h("td", { colspan: 6, class: "muted" }, "No host matches.")) : null,
      shown.map((host) => {
        const state = stateOf(host, now);
        return h(
          "tr",
          { "data-host": host.hostId, "data-state": state, class: state === "lost" ? "row-bad" : null, "aria-current": host.hostId === selected ? "true" : null },
          h("th", { scope: "row" }, h("a", { href: `${BASE}fleet/${encodeURIComponent(host.hostId)}${location.search}` }, host.hostId)),
          h("td", { class: "state" }, badge(state, state)),
          h("td", null, h("span", { title: host.lastSeen, "data-last-seen": host.lastSeen }, `${age(host.lastSeen, now)} ago`)),
          h("td", null, labels(host.labels)),
          h("td", null, host.agentVersion),
          h(
            "td",
            null,
            host.collectors.length === 0
              ? h("span", { class: "muted" }, "none")
              : h(
                  "ul",
                  { class: "collectors", "aria-label": state === "lost" ? "Collectors as last reported" : "Collectors" },
                  state === "lost" ? h("li", { class: "muted small" }, "as last reported, before the host went silent:") : null,
                  host.collectors.map((c) =>
                    h(
                      "li",
                      { "data-collector": c.collectorId },
                      badge(c.health, c.health),
                      ` ${c.collectorId}`,
                      c.restarts ? ` (${c.restarts} restarts)` : "",
                      c.lastError ? h("div", { class: "error small" }, `last error: ${c.lastError}`) : null,
                    ),
                  ),
                ),
          ),
        );
      }),
    );
    drawDetail();
  };

  const drawDetail = () => {
    if (!selected) {
      replace(detail, h("p", { class: "muted" }, "Choose a host to see its collectors in detail and the tasks Phoenix gave its agent."));
      return;
    }
    const host = hosts.find((x) => x.hostId === selected);
    replace(
      detail,
      h("h2", null, `Host ${selected}`),
      host
        ? h(
            "div",
            { class: "scroll" },
            h(
              "table",
              { class: "list" },
              h("caption", null, "Collectors"),
              h("thead", null, h("tr", null, ["Collector", "Health", "Pipeline", "PID", "Restarts", "CPU s", "RSS MiB", "Last error"].map((t) => h("th", { scope: "col" }, t)))),
              h(
                "tbody",
                null,
                host.collectors.map((c) =>
                  h(
                    "tr",
                    null,
                    h("th", { scope: "row" }, c.collectorId),
                    h("td", null, badge(c.health, c.health)),
                    h("td", null, c.pipeline),
                    h("td", null, c.pid ?? "—"),
                    h("td", null, c.restarts),
                    h("td", null, num(c.cpuSeconds, 1)),
                    h("td", null, num(c.rssBytes / 1048576, 1)),
                    h("td", { class: c.lastError ? "error" : "muted" }, c.lastError ?? "none"),
                  ),
                ),
              ),
            ),
          )
        : h("p", { class: "error" }, `No host ${selected} is registered.`),
      h(
        "div",
        { class: "scroll" },
        h(
          "table",
          { class: "list", id: "tasks" },
          h("caption", null, "Tasks, newest first"),
          h("thead", null, h("tr", null, ["Id", "Status", "Action", "Unit", "For", "Attempts", "Created", "Error"].map((t) => h("th", { scope: "col" }, t)))),
          h(
            "tbody",
            null,
            tasks.map((t) =>
              h(
                "tr",
                null,
                h("td", null, t.id),
                h("td", null, badge(t.status, t.status)),
                h("td", null, `${t.kind} ${t.action}`),
                h("td", null, t.unit),
                h(
                  "td",
                  null,
                  t.experiment
                    ? h("a", { href: `${BASE}experiments/${encodeURIComponent(t.experiment)}` }, `experiment ${t.experiment}`)
                    : t.deployment
                      ? `deployment ${t.deployment}`
                      : t.loadsim
                        ? `load ${t.loadsim}`
                        : "—",
                ),
                h("td", null, t.attempts),
                h("td", null, time(t.createdAt)),
                h("td", { class: t.error ? "error" : "muted" }, t.error ?? ""),
              ),
            ),
          ),
        ),
      ),
    );
  };

  const reread = async () => {
    try {
      hosts = (await get<List<Host>>("/api/v1/hosts")).items;
      if (selected) tasks = (await get<List<AgentTask>>(`/api/v1/tasks?host=${encodeURIComponent(selected)}&limit=50`)).items;
      draw();
    } catch (err) {
      replace(status, h("span", { class: "error" }, String(err)));
    }
  };

  const stream = new EventStream("", {
    onState: ctx.setLive,
    onResync: () => void reread(),
    onEvent: (event) => {
      if (event.kind === "host" || (event.kind === "task" && event.host === selected)) void reread();
    },
  });
  const rereads = window.setInterval(() => void reread(), REREAD_MS);
  // Every second: ages move on, and a host past the grace period turns lost.
  const ticks = window.setInterval(() => {
    const now = Date.now();
    const changed = [...body.querySelectorAll<HTMLElement>("tr[data-host]")].some((row) => {
      const host = hosts.find((x) => x.hostId === row.dataset.host);
      return host !== undefined && row.dataset.state !== stateOf(host, now);
    });
    if (changed) {
      draw();
      return;
    }
    for (const span of body.querySelectorAll<HTMLElement>("[data-last-seen]")) {
      span.textContent = `${age(span.dataset.lastSeen!, now)} ago`;
    }
  }, 1000);
  return () => {
    stream.close();
    window.clearInterval(rereads);
    window.clearInterval(ticks);
  };
}
