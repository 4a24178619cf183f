// The experiments list: phase, verdict, age and hosts, live from the event stream
// (a phase change updates its row; an unknown experiment re-reads the list).

import { get, TERMINAL, type Experiment, type List, type Report } from "../api";
import { age, badge, h, replace } from "../dom";
import { BASE, type Cleanup, type Context } from "../main";
import { EventStream } from "../stream";

/** Reports never change once written; a verdict is fetched once per experiment. */
const verdicts = new Map<string, string>();

export function experimentsPage(main: HTMLElement, ctx: Context): Cleanup {
  let experiments: Experiment[] = [];
  const body = h("tbody");
  const status = h("p", { class: "muted", role: "status", id: "list-status" }, "Loading…");
  replace(
    main,
    h("h1", null, "Experiments"),
    h(
      "p",
      { class: "muted" },
      "Baseline and candidate pipelines measured side by side. This list follows the event stream live.",
    ),
    status,
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "list", id: "experiments" },
        h("caption", { class: "visually-hidden" }, "Experiments"),
        h(
          "thead",
          null,
          h(
            "tr",
            null,
            ["Name", "Phase", "Verdict", "Age", "Hosts", "Baseline → candidate"].map((t) =>
              h("th", { scope: "col" }, t),
            ),
          ),
        ),
        body,
      ),
    ),
  );

  const draw = () => {
    if (experiments.length === 0) {
      replace(body, h("tr", null, h("td", { colspan: 6, class: "muted" }, "No experiments yet. Create one with `phoenix experiment create -f FILE`.")));
      return;
    }
    const now = Date.now();
    replace(
      body,
      experiments.map((e) =>
        h(
          "tr",
          { "data-experiment": e.name },
          h("th", { scope: "row" }, h("a", { href: `${BASE}experiments/${encodeURIComponent(e.name)}` }, e.name)),
          h("td", { class: "phase" }, badge(e.phase, e.phase, e.reason ?? undefined)),
          h("td", { class: "verdict" }, verdictCell(e)),
          h("td", null, h("span", { title: e.createdAt }, age(e.createdAt, now))),
          h("td", null, e.targetHosts.length ? e.targetHosts.join(", ") : h("span", { class: "muted" }, "not resolved yet")),
          h("td", null, `${e.spec.baseline.pipeline} → ${e.spec.candidate.pipeline}`),
        ),
      ),
    );
  };

  const hasReport = (e: Experiment) => ["completed", "promoted", "rolled-back"].includes(e.phase);
  const verdictCell = (e: Experiment) => {
    const v = verdicts.get(e.name);
    if (v) return badge(v, v);
    if (hasReport(e)) return h("span", { class: "muted" }, "…");
    return h("span", { class: "muted" }, TERMINAL.includes(e.phase) ? "none" : "not yet");
  };
  const fetchVerdicts = async () => {
    await Promise.all(
      experiments
        .filter((e) => hasReport(e) && !verdicts.has(e.name))
        .map(async (e) => {
          try {
            verdicts.set(e.name, (await get<Report>(`/api/v1/experiments/${encodeURIComponent(e.name)}/report`)).verdict);
          } catch {
            verdicts.set(e.name, "n/a");
          }
        }),
    );
    draw();
  };

  const reread = async () => {
    try {
      experiments = (await get<List<Experiment>>("/api/v1/experiments")).items;
      replace(status, `${experiments.length} experiment${experiments.length === 1 ? "" : "s"}`);
      draw();
      void fetchVerdicts();
    } catch (err) {
      replace(status, h("span", { class: "error" }, String(err)));
    }
  };

  const stream = new EventStream("", {
    onResync: () => void reread(),
    onState: ctx.setLive,
    onEvent: (event) => {
      if (event.kind !== "experiment") return;
      const e = experiments.find((x) => x.name === event.experiment);
      if (!e || event.fromPhase === event.toPhase) {
        void reread(); // created, deleted or unknown here
        return;
      }
      e.phase = event.toPhase;
      e.reason = event.reason;
      e.phaseChangedAt = event.at;
      if (event.toPhase === "deploying" && e.targetHosts.length === 0) void reread();
      draw();
      void fetchVerdicts();
    },
  });
  // Ages tick with the clock; nothing is fetched for it.
  const tick = window.setInterval(draw, 15_000);
  return () => {
    stream.close();
    window.clearInterval(tick);
  };
}
