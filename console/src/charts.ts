// Evidence charts as inline SVG, no library: lines over time and strip + box plots
// of distributions. Baseline and candidate differ in colour (Okabe–Ito blue and
// vermillion, told apart with any colour vision), in line style (solid, dashed)
// and in marker (circle, square), and every chart names them in its legend.

import type { Point } from "./api";
import { h, num, s } from "./dom";

export type Variant = "baseline" | "candidate";

export interface Line {
  variant: Variant;
  /** e.g. the host, shown in the tooltip and legend. */
  label: string;
  points: Point[];
}

const W = 640;
const H = 220;
const PAD = { left: 56, right: 12, top: 12, bottom: 28 };

function ticks(min: number, max: number, count = 4): number[] {
  if (!(max > min)) return [min];
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((m) => m >= raw) ?? raw;
  const out: number[] = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step / 1e6; v += step) out.push(v);
  return out;
}

function legend(variants: { variant: Variant; text: string }[]): HTMLElement {
  return h(
    "ul",
    { class: "legend" },
    variants.map(({ variant, text }) =>
      h(
        "li",
        null,
        s(
          "svg",
          { width: 28, height: 12, "aria-hidden": "true", class: `variant-${variant}` },
          s("line", { x1: 0, y1: 6, x2: 28, y2: 6, class: "stroke" }),
          marker(variant, 14, 6),
        ),
        text,
      ),
    ),
  );
}

function marker(variant: Variant, x: number, y: number, title?: string): SVGElement {
  const el =
    variant === "baseline"
      ? s("circle", { cx: x, cy: y, r: 3, class: "marker" })
      : s("rect", { x: x - 3, y: y - 3, width: 6, height: 6, class: "marker" });
  if (title) el.appendChild(s("title", null, title));
  return el;
}

/** Lines over time, one per (variant, label). */
export function lineChart(title: string, unit: string, lines: Line[]): HTMLElement {
  const all = lines.flatMap((l) => l.points);
  if (all.length === 0) {
    return h("figure", { class: "chart" }, h("figcaption", null, title), h("p", { class: "muted" }, "No samples were recorded."));
  }
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]));
  const vmax = Math.max(...all.map((p) => p[1]), 0);
  const vmin = Math.min(...all.map((p) => p[1]), 0);
  const x = (t: number) => PAD.left + ((t - t0) / Math.max(t1 - t0, 1)) * (W - PAD.left - PAD.right);
  const y = (v: number) => H - PAD.bottom - ((v - vmin) / Math.max(vmax - vmin, 1e-9)) * (H - PAD.top - PAD.bottom);
  const yTicks = ticks(vmin, vmax);
  const summary = lines
    .map((l) => {
      const values = l.points.map((p) => p[1]);
      const mean = values.reduce((a, b) => a + b, 0) / Math.max(values.length, 1);
      return `${l.variant}${l.label ? ` ${l.label}` : ""}: ${values.length} points, mean ${num(mean, 3)} ${unit}`;
    })
    .join("; ");
  const svg = s(
    "svg",
    { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}. ${summary}`, class: "plot" },
    yTicks.map((v) => [
      s("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid" }),
      s("text", { x: PAD.left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, num(v, v < 10 ? 2 : 0)),
    ]),
    s("text", { x: PAD.left, y: H - 8, class: "tick" }, new Date(t0 * 1000).toLocaleTimeString()),
    s("text", { x: W - PAD.right, y: H - 8, class: "tick", "text-anchor": "end" }, new Date(t1 * 1000).toLocaleTimeString()),
    lines.map((l) =>
      s(
        "g",
        { class: `variant-${l.variant}`, "data-series": l.variant, "data-label": l.label, "data-points": l.points.length },
        s("path", {
          class: "stroke",
          d: l.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(""),
        }),
        // Markers on a thinned subset so dense series stay readable.
        l.points
          .filter((_, i) => i % Math.max(1, Math.ceil(l.points.length / 24)) === 0)
          .map((p) => marker(l.variant, x(p[0]), y(p[1]), `${l.variant} ${l.label} ${new Date(p[0] * 1000).toLocaleTimeString()}: ${num(p[1], 3)} ${unit}`)),
      ),
    ),
  );
  const variants = [...new Set(lines.map((l) => l.variant))];
  return h(
    "figure",
    { class: "chart" },
    h("figcaption", null, title, ` (${unit})`),
    svg,
    legend(variants.map((v) => ({ variant: v, text: `${v} (${v === "baseline" ? "solid, circles" : "dashed, squares"})` }))),
  );
}

function quantile(sorted: number[], q: number): number {
  const i = (sorted.length - 1) * q;
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (i - lo);
}

/** A box plot (quartiles, whiskers at min and max) with every sample as a dot. */
export function stripPlot(title: string, unit: string, groups: { variant: Variant; values: number[] }[], note?: string): HTMLElement {
  const all = groups.flatMap((g) => g.values);
  if (all.length === 0) {
    return h("figure", { class: "chart" }, h("figcaption", null, title), h("p", { class: "muted" }, "No samples were recorded."));
  }
  const rowH = 70;
  const height = PAD.top + rowH * groups.length + PAD.bottom;
  // The samples' own range (padded), so that the two distributions can be told apart.
  const spread = Math.max(...all) - Math.min(...all) || Math.abs(all[0]) || 1;
  const vmin = Math.max(0, Math.min(...all) - spread * 0.05);
  const vmax = Math.max(...all) + spread * 0.05;
  const x = (v: number) => PAD.left + 40 + ((v - vmin) / Math.max(vmax - vmin, 1e-9)) * (W - PAD.left - 40 - PAD.right);
  const summary: string[] = [];
  const rows = groups.map((g, row) => {
    const sorted = [...g.values].sort((a, b) => a - b);
    const cy = PAD.top + rowH * row + rowH / 2;
    if (sorted.length === 0) {
      summary.push(`${g.variant}: no samples`);
      return s("text", { x: PAD.left, y: cy, class: "tick" }, `${g.variant}: no samples`);
    }
    const [q1, med, q3] = [0.25, 0.5, 0.75].map((q) => quantile(sorted, q));
    summary.push(`${g.variant}: ${sorted.length} samples, median ${num(med, 3)}, quartiles ${num(q1, 3)}–${num(q3, 3)} ${unit}`);
    return s(
      "g",
      { class: `variant-${g.variant}`, "data-series": g.variant, "data-points": sorted.length },
      s("text", { x: 4, y: cy + 4, class: "tick" }, g.variant),
      s("line", { x1: x(sorted[0]), x2: x(sorted[sorted.length - 1]), y1: cy, y2: cy, class: "whisker" }),
      s("rect", { x: x(q1), y: cy - 14, width: Math.max(x(q3) - x(q1), 1), height: 28, class: "box" }),
      s("line", { x1: x(med), x2: x(med), y1: cy - 14, y2: cy + 14, class: "median" }),
      sorted.map((v, i) => marker(g.variant, x(v), cy + 20 + ((i * 7) % 11) - 5)),
    );
  });
  const xt = ticks(vmin, vmax);
  const svg = s(
    "svg",
    { viewBox: `0 0 ${W} ${height}`, role: "img", "aria-label": `${title}. ${summary.join("; ")}`, class: "plot" },
    xt.map((v) => [
      s("line", { x1: x(v), x2: x(v), y1: PAD.top, y2: height - PAD.bottom, class: "grid" }),
      s("text", { x: x(v), y: height - 8, class: "tick", "text-anchor": "middle" }, num(v, v < 10 ? 2 : 0)),
    ]),
    rows,
  );
  return h(
    "figure",
    { class: "chart" },
    h("figcaption", null, title, ` (${unit})`),
    svg,
    h("p", { class: "muted small" }, summary.join(" · ")),
    note ? h("p", { class: "muted small" }, note) : null,
  );
}
