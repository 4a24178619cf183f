// The catalog: pipeline templates with their description, variables and config,
// and pipeline deployments with their hosts and every revision.

import { get, type Deployment, type List, type Template } from "../api";
import { badge, h, labels, replace, time } from "../dom";
import { BASE, type Cleanup, type Context } from "../main";
import { EventStream } from "../stream";

export function catalogPage(main: HTMLElement, ctx: Context): Cleanup {
  const templatesEl = h("section", { id: "templates", "aria-labelledby": "templates-h" });
  const deploymentsEl = h("section", { id: "deployments", "aria-labelledby": "deployments-h" });
  replace(main, h("h1", null, "Catalog"), deploymentsEl, templatesEl);

  const reread = async () => {
    try {
      const [templates, deployments] = await Promise.all([
        get<List<Template>>("/api/v1/pipelines"),
        get<List<Deployment>>("/api/v1/deployments"),
      ]);
      // The list has current revisions; each deployment's history comes with it alone.
      const full = await Promise.all(deployments.items.map((d) => get<Deployment>(`/api/v1/deployments/${encodeURIComponent(d.name)}`)));
      drawDeployments(deploymentsEl, full);
      drawTemplates(templatesEl, templates.items);
      if (location.hash) document.getElementById(decodeURIComponent(location.hash.slice(1)))?.scrollIntoView();
    } catch (err) {
      replace(deploymentsEl, h("p", { class: "error", role: "alert" }, String(err)));
    }
  };
  // A promotion or rollback is an experiment event; deployments have none of
  // their own, so the page re-reads on experiment events and standing-collector tasks.
  const stream = new EventStream("", {
    onState: ctx.setLive,
    onResync: () => void reread(),
    onEvent: (event) => {
      if (event.kind === "experiment" || (event.kind === "task" && event.unit.endsWith(".standing"))) void reread();
    },
  });
  return () => stream.close();
}

function drawDeployments(el: HTMLElement, deployments: Deployment[]) {
  replace(
    el,
    h("h2", { id: "deployments-h" }, "Deployments"),
    deployments.length === 0 ? h("p", { class: "muted" }, "No pipeline deployments. Promote an experiment or run `phoenix pipeline deploy`.") : null,
    deployments.map((d) =>
      h(
        "article",
        { class: "card", id: `deployment-${d.name}`, "data-deployment": d.name, "data-revision": d.revision },
        h("h3", null, d.name, " ", h("span", { class: "muted" }, `revision ${d.revision}`)),
        h(
          "p",
          null,
          `Runs ${d.spec.pipeline}`,
          Object.keys(d.spec.vars ?? {}).length ? ` with ${Object.entries(d.spec.vars ?? {}).map(([k, v]) => `${k}=${v}`).join(", ")}` : "",
          " on ",
          d.spec.hosts.selector ? labels(d.spec.hosts.selector) : (d.spec.hosts.names ?? []).join(", "),
          `. Revision ${d.revision}: ${d.change}.`,
          d.promotedFrom ? [" ", h("a", { href: `${BASE}experiments/${encodeURIComponent(d.promotedFrom)}` }, `Experiment ${d.promotedFrom}`)] : null,
        ),
        h(
          "ul",
          { class: "collectors" },
          d.hosts.map((host) =>
            h(
              "li",
              null,
              h("a", { href: `${BASE}fleet/${encodeURIComponent(host.hostId)}` }, host.hostId),
              ": ",
              host.collector ? badge(host.collector.health, host.collector.health) : badge("starting", "not running yet"),
              host.shadowedBy ? ` (runs ${host.shadowedBy} instead)` : "",
            ),
          ),
        ),
        h(
          "div",
          { class: "scroll" },
          h(
            "table",
            { class: "list revisions" },
            h("caption", null, `Revisions of ${d.name}`),
            h("thead", null, h("tr", null, ["Revision", "Pipeline", "What made it", "Created", "State"].map((t) => h("th", { scope: "col" }, t)))),
            h(
              "tbody",
              null,
              (d.revisions ?? []).map((r) =>
                h(
                  "tr",
                  { "data-revision": r.revision },
                  h("th", { scope: "row" }, r.revision),
                  h("td", null, r.spec.pipeline),
                  h("td", null, r.change, r.promotedFrom ? ` (${r.promotedFrom})` : ""),
                  h("td", null, time(r.createdAt)),
                  h(
                    "td",
                    null,
                    r.revision === d.revision
                      ? badge("pass", "current")
                      : r.rolledBackAt
                        ? badge("rolled-back", "rolled back")
                        : badge("n/a", "earlier"),
                  ),
                ),
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

function drawTemplates(el: HTMLElement, templates: Template[]) {
  replace(
    el,
    h("h2", { id: "templates-h" }, "Pipeline templates"),
    templates.map((t) =>
      h(
        "article",
        { class: "card", id: `template-${t.name}`, "data-template": t.name },
        h("h3", null, t.name, " ", t.builtin ? h("span", { class: "muted" }, "built in") : null),
        h("p", null, t.description || "(no description)"),
        t.variables.length
          ? h(
              "table",
              { class: "list" },
              h("caption", null, `Variables of ${t.name}`),
              h("thead", null, h("tr", null, h("th", { scope: "col" }, "Variable"), h("th", { scope: "col" }, "Default"))),
              h("tbody", null, t.variables.map((v) => h("tr", null, h("th", { scope: "row" }, v.name), h("td", null, v.default || "(empty)")))),
            )
          : h("p", { class: "muted" }, "No variables."),
        h("details", null, h("summary", null, "Config"), h("pre", { class: "code", tabindex: "0", role: "region", "aria-label": `${t.name} config` }, t.config)),
      ),
    ),
  );
}
