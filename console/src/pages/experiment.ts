// One experiment: its phase live, progress while it measures, the event timeline,
// the report (criteria, KPIs, per-host rows, evidence charts, critical processes),
// both configs side by side with a diff, and — for operators — Promote, Roll back
// and Stop, each confirmed first and answered with the API's own words.

import {
  ApiError,
  get,
  post,
  TERMINAL,
  type Experiment,
  type ExperimentEvent,
  type List,
  type Point,
  type PromotionResult,
  type Report,
  type StreamEvent,
  type Template,
  type VariantKpis,
} from "../api";
import { lineChart, stripPlot, type Line, type Variant } from "../charts";
import { diffLines } from "../diff";
import { age, badge, facts, h, labels, num, replace, time } from "../dom";
import { BASE, type Cleanup, type Context } from "../main";
import { EventStream } from "../stream";

const HAS_REPORT = ["completed", "promoted", "rolled-back"];

function seconds(duration: string): number {
  // HumanDuration as the API writes it: e.g. "15s", "1m", "1h30m", "500ms".
  let total = 0;
  for (const [, n, unit] of duration.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g)) {
    total += Number(n) * { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 }[unit as "s"];
  }
  return total;
}

export function experimentPage(main: HTMLElement, ctx: Context, name: string): Cleanup {
  const path = `/api/v1/experiments/${encodeURIComponent(name)}`;
  let experiment: Experiment | null = null;
  let report: Report | null = null;
  let events: ExperimentEvent[] = [];
  const taskEvents: StreamEvent[] = [];

  const header = h("div", { id: "summary" });
  const progress = h("section", { id: "progress", "aria-label": "Progress" });
  const actions = h("section", { id: "actions", "aria-label": "Actions" });
  const timeline = h("section", { id: "timeline", "aria-labelledby": "timeline-h" });
  const reportEl = h("section", { id: "report", "aria-labelledby": "report-h" });
  const configs = h("section", { id: "configs", "aria-labelledby": "configs-h" });
  replace(
    main,
    h("p", { class: "crumbs" }, h("a", { href: `${BASE}experiments` }, "Experiments"), " / ", name),
    h("h1", null, name),
    header,
    progress,
    actions,
    reportEl,
    timeline,
    configs,
  );

  const drawHeader = () => {
    if (!experiment) return;
    const e = experiment;
    replace(
      header,
      h(
        "p",
        { class: "status-line" },
        h("span", { id: "phase", "data-phase": e.phase }, badge(e.phase, e.phase)),
        " ",
        report ? h("span", { id: "verdict", "data-verdict": report.verdict }, badge(report.verdict, `verdict ${report.verdict}`)) : null,
      ),
      facts([
        ["Why", e.reason ?? "created"],
        ["Hosts", e.targetHosts.length ? e.targetHosts.join(", ") : "resolved when deploying starts"],
        ["Selects", e.spec.hosts.selector ? labels(e.spec.hosts.selector) : (e.spec.hosts.names ?? []).join(", ")],
        ["Baseline", pipelineText(e.spec.baseline)],
        ["Candidate", pipelineText(e.spec.candidate)],
        ["Measures", `warmup ${e.spec.warmup}, then ${e.spec.duration}`],
        ["Criteria", Object.entries(e.spec.criteria).map(([k, v]) => `${k} ${v}`).join(", ")],
        ["Promotion", e.spec.promotion],
        ["Created", [time(e.createdAt), ` (${age(e.createdAt)} ago)`]],
        ["Labels", labels(e.labels)],
      ]),
    );
  };

  const drawProgress = () => {
    if (!experiment) return;
    const e = experiment;
    const total = seconds(e.spec.warmup) + seconds(e.spec.duration);
    if (e.phase === "running") {
      const done = Math.min(total, Math.max(0, (Date.now() - Date.parse(e.phaseChangedAt)) / 1000));
      replace(
        progress,
        h("label", { for: "measure-progress" }, `Measuring: ${Math.round(done)} s of ${Math.round(total)} s (warmup ${e.spec.warmup}, then ${e.spec.duration})`),
        h("progress", { id: "measure-progress", max: Math.round(total), value: Math.round(done) }),
      );
    } else if (e.phase === "deploying" || e.phase === "pending") {
      replace(progress, h("p", null, badge(e.phase, e.phase), " starting both collectors on every target host; measuring starts when all are healthy."));
    } else if (e.phase === "analyzing") {
      replace(progress, h("p", null, badge("analyzing", "analyzing"), " measuring both variants in Prometheus and judging the candidate."));
    } else {
      replace(progress);
    }
  };

  // Drawn once: redraws on events must not close an open dialog or wipe the answer.
  let actionsDrawn = false;
  const drawActions = () => {
    if (!experiment || actionsDrawn) return;
    actionsDrawn = true;
    if (!ctx.who.canOperate) {
      replace(actions, h("p", { class: "muted" }, `A ${ctx.who.role} token reads only: promoting, rolling back and stopping need an operator token.`));
      return;
    }
    const result = h("div", { id: "action-result", role: "status", "aria-live": "polite" });
    replace(
      actions,
      h("h2", null, "Actions"),
      h(
        "div",
        { class: "buttons" },
        actionButton("promote", "Promote", `Make ${name}'s candidate (${pipelineText(experiment.spec.candidate)}) the standing pipeline of its hosts?`, result),
        actionButton("rollback", "Roll back", `Undo ${name}'s promotion and restore what its hosts ran before?`, result),
        actionButton("stop", "Stop", `Stop ${name}? Its collectors are removed and no verdict is recorded.`, result),
      ),
      result,
    );
  };

  const actionButton = (action: "promote" | "rollback" | "stop", text: string, question: string, result: HTMLElement) => {
    const force = h("input", { type: "checkbox", id: `force-${action}` });
    const forceText = h("label", { for: `force-${action}` });
    const forceRow = h("p", null, force, " ", forceText);
    const dialog = h(
      "dialog",
      { id: `confirm-${action}`, "aria-labelledby": `confirm-${action}-h` },
      h(
        "form",
        { method: "dialog" },
        h("h2", { id: `confirm-${action}-h` }, `${text} ${name}`),
        h("p", null, question),
        action === "promote" ? forceRow : null,
        h(
          "div",
          { class: "buttons" },
          h("button", { value: "cancel", type: "submit" }, "Cancel"),
          h("button", { value: "confirm", type: "submit", class: action === "stop" ? "danger" : "primary" }, `Yes, ${text.toLowerCase()}`),
        ),
      ),
    );
    dialog.addEventListener("close", async () => {
      if (dialog.returnValue !== "confirm") return;
      replace(result, h("p", null, `${text}: sending…`));
      const query = action === "promote" && force.checked ? "?force=true" : "";
      try {
        const answer = await post<PromotionResult | Experiment>(`${path}/${action}${query}`);
        const exp = "experiment" in answer ? answer.experiment : answer;
        const dep = "deployment" in answer ? answer.deployment : null;
        experiment = exp;
        if (report === null && HAS_REPORT.includes(exp.phase)) void reread();
        replace(
          result,
          h(
            "p",
            { class: "ok", "data-outcome": "ok" },
            badge("pass", "done"),
            ` ${text}: ${name} is now ${exp.phase}.`,
            dep ? [" Deployment ", h("a", { href: `${BASE}catalog#deployment-${dep.name}` }, dep.name), ` is at revision ${dep.revision} (${dep.change}).`] : null,
            "deployment" in answer && !dep ? " Its deployment was removed." : null,
          ),
        );
        drawAll();
      } catch (err) {
        const e = err instanceof ApiError ? err : new ApiError(0, "Error", String(err));
        replace(
          result,
          h("p", { class: "error", "data-outcome": "error", "data-status": e.status }, badge("fail", `${e.status} ${e.title}`), ` ${e.detail}`),
        );
      }
    });
    return [
      h(
        "button",
        {
          type: "button",
          id: `action-${action}`,
          onclick: () => {
            // Forcing is offered only when the verdict is not a pass.
            forceRow.hidden = report?.verdict === "pass";
            force.checked = false;
            forceText.textContent = `Force: the verdict is ${report?.verdict ?? "not known yet"}, not pass`;
            dialog.showModal();
          },
        },
        text,
      ),
      dialog,
    ];
  };

  const drawTimeline = () => {
    const items: { at: string; node: HTMLElement }[] = events.map((ev) => ({
      at: ev.at,
      node: h("li", { "data-kind": "phase" }, time(ev.at), " ", badge(ev.toPhase, ev.fromPhase ? `${ev.fromPhase} → ${ev.toPhase}` : ev.toPhase), " ", ev.reason),
    }));
    for (const ev of taskEvents) {
      if (ev.kind !== "task") continue;
      items.push({
        at: ev.at,
        node: h(
          "li",
          { "data-kind": "task" },
          time(ev.at),
          " ",
          badge(ev.status, ev.status),
          ` task ${ev.action} ${ev.unit} on ${ev.host}`,
          ev.error ? h("span", { class: "error" }, `: ${ev.error}`) : null,
        ),
      });
    }
    items.sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
    replace(
      timeline,
      h("h2", { id: "timeline-h" }, "Timeline"),
      h("p", { class: "muted small" }, "Phase changes as recorded; agent tasks as they happen while this page is open."),
      h("ol", { class: "timeline" }, items.map((i) => i.node)),
    );
  };

  const drawReport = () => {
    if (!experiment) return;
    if (!report) {
      replace(
        reportEl,
        h("h2", { id: "report-h" }, "Report"),
        h("p", { class: "muted" }, TERMINAL.includes(experiment.phase) ? `No report: the experiment ended ${experiment.phase}.` : "The report is written when the analysis completes."),
      );
      return;
    }
    replace(reportEl, h("h2", { id: "report-h" }, "Report"), reportView(report, experiment));
  };

  const drawConfigs = async () => {
    if (!experiment) return;
    const e = experiment;
    try {
      const [base, cand] = await Promise.all([
        get<Template>(`/api/v1/pipelines/${encodeURIComponent(e.spec.baseline.pipeline)}`),
        get<Template>(`/api/v1/pipelines/${encodeURIComponent(e.spec.candidate.pipeline)}`),
      ]);
      replace(configs, h("h2", { id: "configs-h" }, "Configs"), configView(base, e.spec.baseline.vars, cand, e.spec.candidate.vars));
    } catch (err) {
      replace(configs, h("h2", { id: "configs-h" }, "Configs"), h("p", { class: "error" }, String(err)));
    }
  };

  const drawAll = () => {
    drawHeader();
    drawProgress();
    drawActions();
    drawReport();
    drawTimeline();
  };

  const reread = async () => {
    try {
      experiment = await get<Experiment>(path);
    } catch (err) {
      replace(header, h("p", { class: "error", role: "alert" }, err instanceof ApiError ? `${err.status} ${err.title}: ${err.detail}` : String(err)));
      return;
    }
    try {
      events = (await get<List<ExperimentEvent>>(`${path}/events`)).items;
    } catch {
      events = [];
    }
    if (HAS_REPORT.includes(experiment.phase) && !report) {
      try {
        report = await get<Report>(`${path}/report`);
      } catch {
        report = null;
      }
    }
    drawAll();
  };

  let configsDrawn = false;
  const stream = new EventStream(`experiment=${encodeURIComponent(name)}`, {
    onState: ctx.setLive,
    onResync: () =>
      void reread().then(() => {
        if (!configsDrawn && experiment) {
          configsDrawn = true;
          void drawConfigs();
        }
      }),
    onEvent: (event) => {
      if (event.kind === "experiment") void reread();
      else if (event.kind === "task") {
        taskEvents.push(event);
        drawTimeline();
      }
    },
  });
  const tick = window.setInterval(drawProgress, 1000);
  return () => {
    stream.close();
    window.clearInterval(tick);
  };
}

function pipelineText(p: { pipeline: string; vars?: Record<string, string> }): string {
  const vars = Object.entries(p.vars ?? {});
  return vars.length ? `${p.pipeline} (${vars.map(([k, v]) => `${k}=${v}`).join(", ")})` : p.pipeline;
}

function reportView(r: Report, e: Experiment): HTMLElement {
  const kpiRow = (label: string, f: (k: VariantKpis) => string) =>
    h("tr", null, h("th", { scope: "row" }, label), h("td", null, f(r.baseline)), h("td", null, f(r.candidate)));
  const reduction = r.baseline.series > 0 ? 100 * (1 - r.candidate.series / r.baseline.series) : null;
  return h(
    "div",
    null,
    h("p", null, "Window ", time(r.windowStart), " – ", time(r.windowEnd), "; analyzed ", time(r.analyzedAt), "."),
    h("h3", null, "Criteria"),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "list", id: "criteria" },
        h("thead", null, h("tr", null, ["Criterion", "Outcome", "Reason"].map((t) => h("th", { scope: "col" }, t)))),
        h(
          "tbody",
          null,
          r.criteria.map((c) =>
            h("tr", { "data-criterion": c.criterion }, h("th", { scope: "row" }, c.criterion), h("td", null, badge(c.outcome, c.outcome)), h("td", null, c.reason)),
          ),
        ),
      ),
    ),
    h("h3", null, "Cost and overhead"),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "list kpis" },
        h("thead", null, h("tr", null, h("td"), h("th", { scope: "col" }, "Baseline"), h("th", { scope: "col" }, "Candidate"))),
        h(
          "tbody",
          null,
          kpiRow("Series", (k) => k.series.toLocaleString("en")),
          kpiRow("Datapoints per minute", (k) => num(k.datapointsPerMinute, 0)),
          kpiRow("Monthly cost", (k) => `${num(k.monthlyCost, 2)} (at ${r.pricePerMillionDpm} per million DPM)`),
          kpiRow("Collector CPU (cores)", (k) => num(k.cpuCores, 4)),
          kpiRow("Collector RSS (MiB)", (k) => num(k.rssMib, 1)),
          kpiRow("Critical processes seen", (k) => k.criticalProcesses.join(", ") || "none"),
        ),
      ),
    ),
    reduction !== null ? h("p", null, `Series reduction: ${num(reduction, 1)}%.`) : null,
    h("h3", null, "Per host"),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "list", id: "hosts" },
        h(
          "thead",
          null,
          h("tr", null, ["Host", "Series (b → c)", "DPM (b → c)", "CPU cores (b → c)", "RSS MiB (b → c)", "Critical kept"].map((t) => h("th", { scope: "col" }, t))),
        ),
        h(
          "tbody",
          null,
          Object.entries(r.hosts).map(([host, k]) => {
            const lost = k.baseline.criticalProcesses.filter((p) => !k.candidate.criticalProcesses.includes(p));
            return h(
              "tr",
              { "data-host": host },
              h("th", { scope: "row" }, h("a", { href: `${BASE}fleet/${encodeURIComponent(host)}` }, host)),
              h("td", null, `${k.baseline.series} → ${k.candidate.series}`),
              h("td", null, `${num(k.baseline.datapointsPerMinute, 0)} → ${num(k.candidate.datapointsPerMinute, 0)}`),
              h("td", null, `${num(k.baseline.cpuCores, 4)} → ${num(k.candidate.cpuCores, 4)}`),
              h("td", null, `${num(k.baseline.rssMib, 1)} → ${num(k.candidate.rssMib, 1)}`),
              h("td", null, lost.length ? badge("fail", `lost ${lost.join(", ")}`) : badge("pass", `${k.candidate.criticalProcesses.length} of ${k.baseline.criticalProcesses.length}`)),
            );
          }),
        ),
      ),
    ),
    h("h3", null, "Evidence"),
    evidenceView(r),
    h("h3", null, "Critical processes"),
    criticalView(r, e),
    h("h3", null, "Fidelity"),
    fidelityView(r),
    h("h3", null, "Statistical tests"),
    testsView(r),
  );
}

/** What the candidate still shows of the processes: top-k recall and total error. */
function fidelityView(r: Report): HTMLElement {
  const f = r.fidelity;
  if (!f) return h("p", { class: "muted" }, "This report holds no fidelity (no process series, or an older Phoenix).");
  const pct = (v: number | null) => (v === null ? "—" : `${num(v, 1)} %`);
  const row = (scope: string, k: typeof f.overall, host: boolean) =>
    h(
      "tr",
      { "data-scope": scope },
      h("th", { scope: "row" }, host ? h("a", { href: `${BASE}fleet/${encodeURIComponent(scope)}` }, scope) : scope),
      h("td", null, pct(k.cpuTopKRecall)),
      h("td", null, pct(k.memoryTopKRecall)),
      h("td", null, pct(k.cpuTotalError)),
      h("td", null, pct(k.memoryTotalError)),
      h("td", null, String(k.steps)),
    );
  return h(
    "div",
    { class: "scroll" },
    h(
      "p",
      { class: "muted small" },
      `Top-${f.topK} recall: the share of the baseline's ${f.topK} busiest executables (by CPU, by memory) the candidate still reports. ` +
        `Total error: how far the host's total process CPU and memory, summed from the candidate's series, is from the baseline's. Means over steps of ${f.stepSeconds} s.`,
    ),
    h(
      "table",
      { class: "list", id: "fidelity" },
      h(
        "thead",
        null,
        h("tr", null, ["Scope", `CPU top-${f.topK} recall`, `Memory top-${f.topK} recall`, "CPU total error", "Memory total error", "Steps"].map((t) => h("th", { scope: "col" }, t))),
      ),
      h("tbody", null, row("all hosts", f.overall, false), Object.entries(f.hosts).map(([host, k]) => row(host, k, true))),
    ),
  );
}

const TEST_NAMES: Record<string, string> = {
  "signed-rank-hosts": "Wilcoxon signed-rank across hosts",
  "signed-rank-windows": "Wilcoxon signed-rank across separate windows",
  "mann-whitney": "pooled Mann–Whitney U",
};

function evidenceView(r: Report): HTMLElement {
  const ev = r.evidence;
  if (!ev) {
    return h("p", { class: "muted" }, "This report holds no samples (it was analyzed by an older Phoenix); only its numbers are shown.");
  }
  const variants: Variant[] = ["baseline", "candidate"];
  const perHost = (pick: (v: Variant) => Record<string, Point[]>): Line[] =>
    variants.flatMap((v) => Object.entries(pick(v)).map(([host, points]) => ({ variant: v, label: host, points })));
  const values = (m: Record<string, Point[]>) => Object.values(m).flatMap((ps) => ps.map((p) => p[1]));
  return h(
    "div",
    { class: "charts", id: "evidence" },
    lineChart("Distinct series over time", "series", variants.map((v) => ({ variant: v, label: "", points: ev[v].series }))),
    lineChart("Datapoints per minute over time", "DPM", variants.map((v) => ({ variant: v, label: "", points: ev[v].datapointsPerMinute }))),
    lineChart("Collector CPU per host", "cores", perHost((v) => ev[v].cpuCores)),
    lineChart("Collector RSS per host", "MiB", perHost((v) => ev[v].rssMib)),
    stripPlot(
      "CPU samples compared by Mann–Whitney",
      "cores",
      variants.map((v) => ({ variant: v, values: values(ev[v].cpuCores) })),
      `Samples every ${ev.stepSeconds} s over the window, at most ${ev.maxPoints} per series.`,
    ),
    stripPlot("RSS samples compared by Mann–Whitney", "MiB", variants.map((v) => ({ variant: v, values: values(ev[v].rssMib) }))),
  );
}

function criticalView(r: Report, e: Experiment): HTMLElement {
  const listed = e.spec.criticalProcesses ?? [];
  if (listed.length === 0) return h("p", { class: "muted" }, "No critical processes were listed.");
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      { class: "list", id: "critical" },
      h("thead", null, h("tr", null, ["Process", "Baseline", "Candidate", "Outcome"].map((t) => h("th", { scope: "col" }, t)))),
      h(
        "tbody",
        null,
        listed.map((p) => {
          const b = r.baseline.criticalProcesses.includes(p);
          const c = r.candidate.criticalProcesses.includes(p);
          const outcome = !b ? badge("no-data", "not seen by the baseline") : c ? badge("pass", "kept") : badge("fail", "lost");
          return h(
            "tr",
            { "data-process": p },
            h("th", { scope: "row" }, p),
            h("td", null, b ? badge("pass", "seen") : badge("n/a", "not seen")),
            h("td", null, c ? badge("pass", "seen") : badge("n/a", "not seen")),
            h("td", null, outcome),
          );
        }),
      ),
    ),
  );
}

function testsView(r: Report): HTMLElement {
  const row = (name: string, t: Report["cpuTest"], unit: string) =>
    t
      ? h(
          "tr",
          { "data-test": name },
          h("th", { scope: "row" }, name),
          h("td", null, h("span", { class: "test-name", title: t.why ?? "" }, TEST_NAMES[t.method ?? "mann-whitney"] ?? t.method ?? ""), t.why ? h("div", { class: "muted small" }, t.why) : null),
          h(
            "td",
            null,
            t.pairs ? `${t.hosts ?? 0} hosts, ${t.pairs} paired differences` : `${t.baselineSamples} / ${t.candidateSamples} samples`,
          ),
          h("td", null, `${num(t.shift, 4)} ${unit} (allowance ${num(t.allowance, 4)})`),
          h(
            "td",
            { class: "interval" },
            t.ciLow !== undefined && t.ciHigh !== undefined ? `${num(t.ciLow, 4)} to ${num(t.ciHigh, 4)} ${unit} (${num((t.confidence ?? 0.95) * 100, 0)} %)` : "—",
          ),
          h("td", null, num(t.pValue, 4)),
          h("td", null, t.pOverAllowance === null ? "—" : num(t.pOverAllowance, 4)),
          h("td", null, t.pAdjusted === undefined ? "—" : num(t.pAdjusted, 4)),
          h("td", null, num(t.effectSize, 3)),
        )
      : h("tr", null, h("th", { scope: "row" }, name), h("td", { colspan: 8, class: "muted" }, "not enough samples"));
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      { class: "list", id: "tests" },
      h(
        "thead",
        null,
        h(
          "tr",
          null,
          ["Criterion", "Test", "Units", "Change", "Confidence interval", "p (differ)", "p (over allowance)", "p (Holm-adjusted)", "Effect size"].map((t) => h("th", { scope: "col" }, t)),
        ),
      ),
      h("tbody", null, row("CPU", r.cpuTest, "cores"), row("Memory", r.memoryTest, "MiB")),
    ),
    r.errorControl ? h("p", { class: "muted small", id: "error-control" }, `Across criteria: ${r.errorControl.summary}.`) : null,
  );
}

function configView(base: Template, baseVars: Record<string, string> | undefined, cand: Template, candVars: Record<string, string> | undefined): HTMLElement {
  const diff = diffLines(base.config, cand.config);
  const pane = (title: string, t: Template, vars: Record<string, string> | undefined, side: "del" | "add") =>
    h(
      "div",
      { class: "pane" },
      h("h3", null, `${title}: ${t.name}`),
      h("p", { class: "muted small" }, t.description),
      h("p", null, "Variables: ", t.variables.length ? t.variables.map((v) => `${v.name}=${vars?.[v.name] ?? v.default}${vars?.[v.name] !== undefined ? "" : " (default)"}`).join(", ") : "none"),
      h(
        "pre",
        { class: "code", tabindex: "0", role: "region", "aria-label": `${title} config` },
        diff
          .filter((d) => d.op === "same" || d.op === side)
          .map((d) =>
            h(
              "span",
              { class: `line ${d.op}` },
              h("span", { class: "gutter", "aria-hidden": "true" }, d.op === "same" ? " " : side === "del" ? "−" : "+"),
              d.text,
              "\n",
            ),
          ),
      ),
    );
  const changed = diff.filter((d) => d.op !== "same").length;
  return h(
    "div",
    null,
    h("p", null, changed ? `${changed} lines differ: removed lines are marked − in the baseline, added lines + in the candidate.` : "The two configs are identical; only variables differ."),
    h("div", { class: "side-by-side" }, pane("Baseline", base, baseVars, "del"), pane("Candidate", cand, candVars, "add")),
    h(
      "details",
      null,
      h("summary", null, "Unified diff"),
      h(
        "pre",
        { class: "code", tabindex: "0", role: "region", "aria-label": "Unified diff" },
        diff.map((d) => h("span", { class: `line ${d.op}` }, `${d.op === "same" ? " " : d.op === "del" ? "-" : "+"} ${d.text}\n`)),
      ),
    ),
  );
}
