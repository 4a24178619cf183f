//! `phoenix experiment ...` (alias `exp`): create from a resource document, list,
//! get, events, stop, delete; and how experiments and their events look in a table.
//! `status` shows where one is and, with `--watch`, follows the event stream.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use phoenix_wire::events::{Event, EventFilter};
use phoenix_wire::names;
use phoenix_wire::resource::{ExperimentSpec, HostTarget, PipelineRef};
use phoenix_wire::view::{Experiment, ExperimentEvent, List};

use crate::commands::Context;
use crate::document;
use crate::output::{self, Details, OutputFormat, Table};
use crate::selector::Selector;
use crate::stream;

const EXPERIMENTS: &str = "/api/v1/experiments";

/// The REASON column is cut to this many characters; `get` and `events` show it whole.
const REASON_WIDTH: usize = 50;
/// The HOSTS column shows a selector until hosts are resolved; cut to this width.
const HOSTS_WIDTH: usize = 30;

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Submit an experiment from an Experiment resource document (YAML or JSON)
    #[command(after_help = "\
Example:
  phoenix experiment create -f topk-web.yaml
  cat topk-web.yaml | phoenix experiment create -f -

A document looks like:
  apiVersion: phoenix.dev/v1
  kind: Experiment
  metadata: {name: topk-web}
  spec:
    hosts: {selector: {role: web}}
    baseline: {pipeline: process-baseline}
    candidate: {pipeline: process-topk}
    duration: 10m

Files ending in .json are sent as JSON, everything else (and stdin) as YAML.")]
    Create {
        /// The document to submit; `-` reads stdin
        #[arg(short = 'f', long = "filename", alias = "file", value_name = "FILE")]
        file: String,
    },
    /// List experiments with their phase and the reason for it
    #[command(after_help = "\
Example:
  phoenix experiment list
  phoenix exp list -o json
  phoenix experiment list -l team=sre,env!=prod
  phoenix experiment list --watch

HOSTS is the number of target hosts once deploying has resolved them, and the
selector before that. -l selects by the experiments' labels (key=value,
key!=value, key, !key; all must hold). --watch prints the list, then one more
row (-o json: one JSON object per line) each time an experiment changes phase,
until Ctrl-C or the connection drops (exit 1).")]
    List {
        /// Only experiments whose labels match: key=value,key!=value,key,!key
        #[arg(short = 'l', long, value_name = "SELECTOR", value_parser = crate::selector::parse)]
        selector: Option<Selector>,
        /// After listing, print each experiment again when it changes phase
        #[arg(short, long)]
        watch: bool,
    },
    /// Show one experiment: phase, reason, target hosts, pipelines, criteria
    #[command(after_help = "\
Example:
  phoenix experiment get topk-web
  phoenix experiment get topk-web -o yaml
  phoenix experiment get topk-web -o yaml | phoenix apply -f -    (a no-op)

-o json|yaml print the experiment as a document (apiVersion, kind, metadata,
spec) with what Phoenix made of it (phase, reason, target hosts...) under
`status`, which `phoenix apply` ignores.")]
    Get {
        /// The experiment's metadata.name
        name: String,
    },
    /// Show where an experiment is (phase, reason, target hosts, recent events); --watch follows it live
    #[command(after_help = "\
Example:
  phoenix experiment status topk-web
  phoenix experiment status topk-web --watch
  phoenix experiment status topk-web --watch -o json

With --watch it subscribes to the API's event stream and prints each phase change
and each of the experiment's agent tasks as it happens, one line each (-o json: one
JSON event per line, starting with the recorded phase changes). It exits 0 when the
experiment reaches completed, failed, stopped, promoted or rolled-back, and 1 if
the connection drops (run it again to resume).")]
    Status {
        /// The experiment's metadata.name
        name: String,
        /// Follow the experiment's events until it reaches a terminal phase
        #[arg(short, long)]
        watch: bool,
    },
    /// Show every phase change of an experiment, oldest first, with its reason
    #[command(after_help = "Example:\n  phoenix experiment events topk-web")]
    Events {
        /// The experiment's metadata.name
        name: String,
    },
    /// Show the analysis: KPIs of baseline and candidate side by side, and the verdict
    #[command(after_help = "\
Example:
  phoenix experiment report topk-web
  phoenix experiment report topk-web -o json

A report exists once the experiment has been analyzed (phase completed).")]
    Report {
        /// The experiment's metadata.name
        name: String,
    },
    /// Stop a running experiment early; its collectors are removed from the hosts
    #[command(after_help = "Example:\n  phoenix experiment stop topk-web")]
    Stop {
        /// The experiment's metadata.name
        name: String,
    },
    /// Make a completed experiment's candidate the standing pipeline of its hosts
    #[command(after_help = "\
Examples:
  phoenix experiment promote topk-web
  phoenix experiment promote topk-web --deployment web-standing
  phoenix experiment promote topk-web --force

Only a completed experiment can be promoted, and only with the verdict `pass` unless
--force is given. The candidate (pipeline, variables, critical processes) becomes the
current revision of a pipeline deployment: the one named by --deployment, else the one
its hosts already run as their standing pipeline, else a new one named after the
experiment for exactly its target hosts. The new revision then rolls out to every host
the deployment selects, in batches of its spec.rollout.maxUnavailable, the experiment's
hosts first; a host whose new collector fails stops it and rolls the deployment (and
this experiment) back (`phoenix deployment describe NAME` shows each step). The
experiment's own collectors stop. `phoenix experiment rollback` undoes it.")]
    Promote {
        /// The experiment's metadata.name
        name: String,
        /// Promote even though the verdict is not `pass`
        #[arg(long)]
        force: bool,
        /// The pipeline deployment to create or update
        #[arg(long, value_name = "NAME")]
        deployment: Option<String>,
    },
    /// Undo a promotion: the deployment's previous revision runs again (or none)
    #[command(after_help = "\
Example:
  phoenix experiment rollback topk-web

The deployment revision the promotion made is rolled back: its hosts run the standing
pipeline they ran before, or none if the promotion created the deployment. Refused
when the deployment has changed since; then use `phoenix pipeline rollback`.")]
    Rollback {
        /// The experiment's metadata.name
        name: String,
    },
    /// Delete an experiment and its history
    #[command(after_help = "\
Example:
  phoenix experiment delete topk-web

With -o json or -o yaml nothing is printed on success (there is no object to show).")]
    Delete {
        /// The experiment's metadata.name
        name: String,
    },
}

pub async fn run(ctx: &Context, command: ExperimentCommand) -> anyhow::Result<()> {
    match command {
        ExperimentCommand::Create { file } => create(ctx, &file).await,
        ExperimentCommand::Status { name, watch } => status(ctx, &name, watch).await,
        ExperimentCommand::Report { name } => {
            let path = format!("{}/report", experiment_path(&name)?);
            let report: phoenix_wire::report::ExperimentReport = ctx.client.get(&path).await?;
            let text = match output::render_object(ctx.output, &report)? {
                Some(text) => text,
                None => super::report::render(&report),
            };
            Ok(output::print(&text)?)
        }
        ExperimentCommand::List { selector, watch } => list(ctx, selector, watch).await,
        ExperimentCommand::Get { name } => {
            let experiment: Experiment = ctx.client.get(&experiment_path(&name)?).await?;
            let document = output::as_document("Experiment", &experiment)?;
            let text = match output::render_object(ctx.output, &document)? {
                Some(text) => text,
                None => experiment_details(&experiment, ctx.now),
            };
            Ok(output::print(&text)?)
        }
        ExperimentCommand::Events { name } => {
            let path = format!("{}/events", experiment_path(&name)?);
            let events: List<ExperimentEvent> = ctx.client.get(&path).await?;
            match output::render_object(ctx.output, &events)? {
                Some(text) => output::print(&text)?,
                None if events.items.is_empty() => eprintln!("No events for {name} yet."),
                None => output::print(&event_table(&events.items, ctx.now).render())?,
            }
            Ok(())
        }
        ExperimentCommand::Stop { name } => {
            let path = format!("{}/stop", experiment_path(&name)?);
            let experiment: Experiment = ctx.client.post(&path, None).await?;
            let text = match output::render_object(ctx.output, &experiment)? {
                Some(text) => text,
                None => format!(
                    "experiment/{} stop requested (phase: {})\n",
                    experiment.name, experiment.phase
                ),
            };
            Ok(output::print(&text)?)
        }
        ExperimentCommand::Promote {
            name,
            force,
            deployment,
        } => super::deployment::promote(ctx, &name, force, deployment.as_deref()).await,
        ExperimentCommand::Rollback { name } => {
            super::deployment::rollback_experiment(ctx, &name).await
        }
        ExperimentCommand::Delete { name } => {
            ctx.client.delete(&experiment_path(&name)?).await?;
            if ctx.output == output::OutputFormat::Table {
                output::print(&format!("experiment/{name} deleted\n"))?;
            }
            Ok(())
        }
    }
}

/// `phoenix experiment list [-l SELECTOR] [--watch]`.
async fn list(ctx: &Context, selector: Option<Selector>, watch: bool) -> anyhow::Result<()> {
    let selected = |e: &Experiment| selector.as_ref().is_none_or(|s| s.matches(&e.labels));
    // Subscribe before listing: nothing that changes after the list is missed.
    let mut stream = match watch {
        true => Some(stream::subscribe(&ctx.client, &EventFilter::default()).await?),
        false => None,
    };
    let mut list: List<Experiment> = ctx.client.get(EXPERIMENTS).await?;
    list.items.retain(selected);
    match output::render_object(ctx.output, &list)? {
        Some(text) => output::print(&text)?,
        None if list.items.is_empty() && selector.is_some() => {
            eprintln!("No experiments match the selector.")
        }
        None if list.items.is_empty() => {
            eprintln!("No experiments yet. Create one with `phoenix experiment create -f FILE`.")
        }
        None => output::print(&experiment_table(&list.items, ctx.now).render())?,
    }
    let Some(stream) = stream.as_mut() else {
        return Ok(());
    };
    loop {
        let event = stream
            .next()
            .await
            .map_err(|err| stream::watch_ended(err, "phoenix experiment list --watch"))?;
        let Event::Experiment(event) = event else {
            continue;
        };
        let path = experiment_path(&event.experiment)?;
        let experiment: Experiment = match ctx.client.get(&path).await {
            Ok(experiment) => experiment,
            Err(crate::client::ClientError::Api { problem, .. }) if problem.status == 404 => {
                if ctx.output == OutputFormat::Table {
                    output::print(&output::shown(&format!("{}   deleted\n", event.experiment)))?;
                }
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        if !selected(&experiment) {
            continue;
        }
        let line = stream::watch_line(ctx.output, &experiment, || {
            let table = experiment_table(std::slice::from_ref(&experiment), Utc::now()).render();
            table.lines().skip(1).map(|l| format!("{l}\n")).collect()
        })?;
        output::print(&line)?;
    }
}

async fn create(ctx: &Context, file: &str) -> anyhow::Result<()> {
    let body = document::read(file, "an Experiment", "phoenix experiment create --help")?;
    let experiment: Experiment = ctx.client.post(EXPERIMENTS, Some(body)).await?;
    let text = match output::render_object(ctx.output, &experiment)? {
        Some(text) => text,
        None => format!(
            "experiment/{name} created (phase: {phase})\n  follow it with `phoenix experiment get {name}`\n",
            name = experiment.name,
            phase = experiment.phase
        ),
    };
    Ok(output::print(&text)?)
}

/// `/api/v1/experiments/{name}`, refusing names that could not exist (and could
/// escape the path) before anything is sent.
fn experiment_path(name: &str) -> anyhow::Result<String> {
    names::check_resource_name(name)
        .map_err(|m| anyhow::anyhow!("invalid experiment name: {m}"))?;
    Ok(format!("{EXPERIMENTS}/{name}"))
}

fn experiment_table(experiments: &[Experiment], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "PHASE",
        "HOSTS",
        "BASELINE",
        "CANDIDATE",
        "AGE",
        "REASON",
    ]);
    for e in experiments {
        table.row(vec![
            e.name.clone(),
            e.phase.to_string(),
            hosts_column(e),
            e.spec.baseline.pipeline.clone(),
            e.spec.candidate.pipeline.clone(),
            output::age(e.created_at, now),
            output::truncate(e.reason.as_deref().unwrap_or(""), REASON_WIDTH),
        ]);
    }
    table
}

fn hosts_column(e: &Experiment) -> String {
    if e.target_hosts.is_empty() {
        output::truncate(&host_target(&e.spec.hosts), HOSTS_WIDTH)
    } else {
        e.target_hosts.len().to_string()
    }
}

/// `role=web` for a selector, `host-a,host-b` for a list of names.
fn host_target(target: &HostTarget) -> String {
    match (&target.selector, &target.names) {
        (Some(selector), _) => output::labels(selector),
        (None, Some(names)) => names.join(","),
        (None, None) => "<none>".into(),
    }
}

fn pipeline(p: &PipelineRef) -> String {
    if p.vars.is_empty() {
        return p.pipeline.clone();
    }
    format!("{} ({})", p.pipeline, output::labels(&p.vars))
}

fn criteria(spec: &ExperimentSpec) -> String {
    let c = &spec.criteria;
    let cost = c
        .min_cost_reduction
        .map(|v| format!(", cost reduction >= {v}%"))
        .unwrap_or_default();
    let recall = c
        .min_top_k_recall
        .map(|v| format!(", top-10 recall >= {v}%"))
        .unwrap_or_default();
    let total = c
        .max_total_error
        .map(|v| format!(", total error <= {v}%"))
        .unwrap_or_default();
    format!(
        "series reduction >= {}%, critical retention >= {}%, cpu overhead <= {} cores, memory overhead <= {} MiB{cost}{recall}{total}",
        c.min_series_reduction,
        c.min_critical_retention,
        c.max_cpu_overhead_cores,
        c.max_memory_overhead_mib
    )
}

fn experiment_details(e: &Experiment, now: DateTime<Utc>) -> String {
    let spec = &e.spec;
    let hosts_kind = if spec.hosts.selector.is_some() {
        "selector"
    } else {
        "names"
    };
    let target_hosts = if e.target_hosts.is_empty() {
        "<not resolved yet: resolved when deploying starts>".to_string()
    } else {
        format!("{} ({})", e.target_hosts.join(", "), e.target_hosts.len())
    };
    let load = match &spec.load {
        Some(load) => match load.processes {
            Some(n) => format!("{} ({n} processes)", load.profile),
            None => load.profile.clone(),
        },
        None => "<none>".into(),
    };
    let critical = if spec.critical_processes.is_empty() {
        "<none>".to_string()
    } else {
        spec.critical_processes.join(", ")
    };
    let mut details = Details::new();
    details
        .field("Name", &e.name)
        .field("Phase", e.phase.as_str())
        .field("Reason", e.reason.as_deref().unwrap_or("<none>"))
        .field("Labels", output::labels(&e.labels))
        .field(
            "Hosts",
            format!("{hosts_kind} {}", host_target(&spec.hosts)),
        )
        .field("Target hosts", target_hosts)
        .field("Baseline", pipeline(&spec.baseline))
        .field("Candidate", pipeline(&spec.candidate))
        .field("Warmup", spec.warmup.to_string())
        .field("Duration", spec.duration.to_string())
        .field("Load", load)
        .field("Critical processes", critical)
        .field("Criteria", criteria(spec))
        .field("Promotion", format!("{:?}", spec.promotion).to_lowercase())
        .field(
            "Generation",
            format!("{} (observed {})", e.generation, e.observed_generation),
        )
        .field("Managed by", e.managed_by.as_deref().unwrap_or("<none>"))
        .field("UID", &e.uid)
        .field("Created", output::timestamp(e.created_at, now))
        .field("Phase changed", output::timestamp(e.phase_changed_at, now));
    details.render()
}

fn event_table(events: &[ExperimentEvent], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&["AGE", "FROM", "TO", "REASON"]);
    for event in events {
        table.row(vec![
            output::age(event.at, now),
            event
                .from_phase
                .map_or_else(|| "-".to_string(), |p| p.to_string()),
            event.to_phase.to_string(),
            event.reason.clone(),
        ]);
    }
    table
}

/// How many of an experiment's latest events `status` shows.
const RECENT_EVENTS: usize = 10;

/// What `status -o json|yaml` prints.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusView<'a> {
    experiment: &'a Experiment,
    recent_events: &'a [ExperimentEvent],
}

/// `phoenix experiment status NAME [--watch]`.
async fn status(ctx: &Context, name: &str, watch: bool) -> anyhow::Result<()> {
    let path = experiment_path(name)?;
    // Subscribe first, then read the events, then the experiment: whatever happens
    // after the read arrives on the stream (events already read are skipped by id),
    // and a phase read as not terminal cannot already have a terminal event.
    let stream = if watch {
        let filter = EventFilter {
            experiment: Some(name.to_string()),
            host: None,
            deployment: None,
        };
        Some(stream::subscribe(&ctx.client, &filter).await?)
    } else {
        None
    };
    let events: List<ExperimentEvent> = ctx.client.get(&format!("{path}/events")).await?;
    let experiment: Experiment = ctx.client.get(&path).await?;
    let recent = &events.items[events.items.len().saturating_sub(RECENT_EVENTS)..];
    let table = ctx.output == OutputFormat::Table;
    let Some(mut stream) = stream else {
        let view = StatusView {
            experiment: &experiment,
            recent_events: recent,
        };
        let text = match output::render_object(ctx.output, &view)? {
            Some(text) => text,
            None => status_text(&experiment, recent, events.items.len(), ctx.now),
        };
        return Ok(output::print(&text)?);
    };
    if table {
        output::print(&status_text(
            &experiment,
            recent,
            events.items.len(),
            ctx.now,
        ))?;
    } else {
        for event in recent {
            print_event(ctx.output, &Event::Experiment(event.clone()))?;
        }
    }
    if experiment.phase.is_terminal() {
        stream.close().await;
        if table {
            eprintln!(
                "experiment/{name} is {}: nothing more to watch",
                experiment.phase
            );
        }
        return Ok(());
    }
    if table {
        eprintln!("\nwatching experiment/{name} until it ends (Ctrl-C to stop)...");
    }
    let seen = events.items.last().map_or(0, |e| e.id);
    loop {
        let event = match stream.next().await {
            Ok(event) => event,
            Err(err) => {
                let hint = if err.asks_to_resubscribe() {
                    "the stream can resume: run"
                } else {
                    "check that phoenix-api is up, then run"
                };
                anyhow::bail!(
                    "{err}\n  hint: {hint} `phoenix experiment status {name} --watch` again \
                     (`phoenix experiment events {name}` lists what happened meanwhile)"
                );
            }
        };
        let transition = match &event {
            Event::Experiment(e) if e.id <= seen => continue,
            Event::Experiment(e) => Some((e.from_phase, e.to_phase)),
            _ => None,
        };
        print_event(ctx.output, &event)?;
        match transition {
            // A deletion is recorded from and to the phase the experiment had.
            Some((Some(from), to)) if from == to => {
                stream.close().await;
                anyhow::bail!("experiment/{name} was deleted while being watched");
            }
            Some((_, to)) if to.is_terminal() => {
                stream.close().await;
                return Ok(());
            }
            _ => {}
        }
    }
}

fn status_text(
    e: &Experiment,
    recent: &[ExperimentEvent],
    total_events: usize,
    now: DateTime<Utc>,
) -> String {
    let target_hosts = if e.target_hosts.is_empty() {
        "<not resolved yet: resolved when deploying starts>".to_string()
    } else {
        format!("{} ({})", e.target_hosts.join(", "), e.target_hosts.len())
    };
    let mut details = Details::new();
    details
        .field("Name", &e.name)
        .field("Phase", e.phase.as_str())
        .field("Reason", e.reason.as_deref().unwrap_or("<none>"))
        .field("Target hosts", target_hosts)
        .field("Phase changed", output::timestamp(e.phase_changed_at, now));
    let mut text = details.render();
    if recent.len() < total_events {
        text.push_str(&format!(
            "\nLatest {} of {total_events} events (all: `phoenix experiment events {}`):\n",
            recent.len(),
            e.name
        ));
    } else {
        text.push_str("\nEvents:\n");
    }
    text.push_str(&event_table(recent, now).render());
    text
}

/// One streamed event: a readable line, a JSON line, or a YAML document.
fn print_event(format: OutputFormat, event: &Event) -> anyhow::Result<()> {
    let text = match format {
        OutputFormat::Table => format!("{}\n", stream::event_line(event)),
        OutputFormat::Json => format!("{}\n", serde_json::to_string(event)?),
        OutputFormat::Yaml => format!(
            "---\n{}",
            output::render_object(format, event)?.unwrap_or_default()
        ),
    };
    Ok(output::print(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use phoenix_wire::view::Phase;

    fn experiment(now: DateTime<Utc>) -> Experiment {
        let json = serde_json::json!({
            "name": "topk-web",
            "uid": "0b5c",
            "labels": {"team": "sre"},
            "spec": {
                "hosts": {"selector": {"role": "web"}},
                "baseline": {"pipeline": "process-baseline"},
                "candidate": {"pipeline": "process-topk", "vars": {"cpu_threshold": "0.05"}},
                "warmup": "1m",
                "duration": "10m"
            },
            "generation": 1,
            "observedGeneration": 1,
            "phase": "running",
            "reason": "all 2 hosts report both collectors healthy, and then some more words",
            "targetHosts": ["host-a", "host-b"],
            "createdAt": (now - chrono::Duration::minutes(5)).to_rfc3339(),
            "updatedAt": now.to_rfc3339(),
            "phaseChangedAt": now.to_rfc3339()
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_experiment_table_has_one_row_per_experiment() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let mut pending = experiment(now);
        pending.name = "pending-one".into();
        pending.phase = Phase::Pending;
        pending.target_hosts.clear();
        pending.reason = None;
        let text = experiment_table(&[experiment(now), pending], now).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME "));
        assert!(lines[0].ends_with("AGE   REASON"));
        assert!(
            lines[1].starts_with("topk-web      running   2 "),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].contains("process-topk   5m    all 2 hosts"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("..."), "{}", lines[1]);
        assert!(lines[2].contains("role=web"), "{}", lines[2]);
    }

    #[test]
    fn details_show_target_hosts_and_reason() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let text = experiment_details(&experiment(now), now);
        assert!(
            text.contains("Target hosts:       host-a, host-b (2)\n"),
            "{text}"
        );
        assert!(
            text.contains("Reason:             all 2 hosts report"),
            "{text}"
        );
        assert!(
            text.contains("Candidate:          process-topk (cpu_threshold=0.05)\n"),
            "{text}"
        );
        assert!(text.contains("Promotion:          manual\n"), "{text}");
        assert!(
            text.contains("Created:            2025-06-01T11:55:00Z (5m ago)\n"),
            "{text}"
        );
    }

    #[test]
    fn events_show_the_first_transition_from_nothing() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let event = ExperimentEvent {
            id: 1,
            experiment: "topk-web".into(),
            from_phase: None,
            to_phase: Phase::Pending,
            reason: "created".into(),
            at: now - chrono::Duration::seconds(30),
        };
        assert_eq!(
            event_table(&[event], now).render(),
            "AGE   FROM   TO        REASON\n30s   -      pending   created\n"
        );
    }

    #[test]
    fn bad_names_are_refused_before_sending() {
        assert_eq!(
            experiment_path("topk-web").unwrap(),
            "/api/v1/experiments/topk-web"
        );
        for bad in ["../hosts", "a/b", "Topk", "a?b", ""] {
            assert!(experiment_path(bad).is_err(), "{bad}");
        }
    }
}
