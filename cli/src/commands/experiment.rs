//! `phoenix experiment ...` (alias `exp`): create from a resource document, list,
//! get, events, stop, delete; and how experiments and their events look in a table.

use std::io::Read;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use phoenix_wire::names;
use phoenix_wire::resource::{ExperimentSpec, HostTarget, PipelineRef};
use phoenix_wire::view::{Experiment, ExperimentEvent, List};

use crate::client::Body;
use crate::commands::Context;
use crate::output::{self, Details, Table};

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
        #[arg(
            short = 'f',
            long = "file",
            visible_alias = "filename",
            value_name = "FILE"
        )]
        file: String,
    },
    /// List experiments with their phase and the reason for it
    #[command(after_help = "\
Example:
  phoenix experiment list
  phoenix exp list -o json

HOSTS is the number of target hosts once deploying has resolved them, and the
selector before that.")]
    List,
    /// Show one experiment: phase, reason, target hosts, pipelines, criteria
    #[command(
        after_help = "Example:\n  phoenix experiment get topk-web\n  phoenix experiment get topk-web -o yaml"
    )]
    Get {
        /// The experiment's metadata.name
        name: String,
    },
    /// Show every phase change of an experiment, oldest first, with its reason
    #[command(after_help = "Example:\n  phoenix experiment events topk-web")]
    Events {
        /// The experiment's metadata.name
        name: String,
    },
    /// Stop a running experiment early; its collectors are removed from the hosts
    #[command(after_help = "Example:\n  phoenix experiment stop topk-web")]
    Stop {
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
        ExperimentCommand::List => {
            let list: List<Experiment> = ctx.client.get(EXPERIMENTS).await?;
            match output::render_object(ctx.output, &list)? {
                Some(text) => output::print(&text)?,
                None if list.items.is_empty() => eprintln!(
                    "No experiments yet. Create one with `phoenix experiment create -f FILE`."
                ),
                None => output::print(&experiment_table(&list.items, ctx.now).render())?,
            }
            Ok(())
        }
        ExperimentCommand::Get { name } => {
            let experiment: Experiment = ctx.client.get(&experiment_path(&name)?).await?;
            let text = match output::render_object(ctx.output, &experiment)? {
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
        ExperimentCommand::Delete { name } => {
            ctx.client.delete(&experiment_path(&name)?).await?;
            if ctx.output == output::OutputFormat::Table {
                output::print(&format!("experiment/{name} deleted\n"))?;
            }
            Ok(())
        }
    }
}

async fn create(ctx: &Context, file: &str) -> anyhow::Result<()> {
    let bytes = read_document(file)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        anyhow::bail!(
            "{} is empty; it should hold an Experiment document (see `phoenix experiment create --help`)",
            describe_source(file)
        );
    }
    let body = Body {
        bytes,
        content_type: content_type_for(file),
    };
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

/// Reads the document as bytes, unchanged: the API parses and validates it.
fn read_document(file: &str) -> anyhow::Result<Vec<u8>> {
    if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read the document from stdin")?;
        return Ok(bytes);
    }
    std::fs::read(file).with_context(|| format!("cannot read {file}"))
}

fn describe_source(file: &str) -> String {
    if file == "-" {
        "stdin".into()
    } else {
        file.to_string()
    }
}

/// `.json` files are JSON; everything else, stdin included, is sent as YAML (of which
/// JSON is a subset, so a JSON document on stdin still parses).
fn content_type_for(file: &str) -> &'static str {
    if file.to_ascii_lowercase().ends_with(".json") {
        "application/json"
    } else {
        "application/yaml"
    }
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
    format!(
        "series reduction >= {}%, critical retention >= {}%, cpu overhead <= {} cores, memory overhead <= {} MiB",
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

    #[test]
    fn content_type_follows_the_file_name() {
        assert_eq!(content_type_for("x.json"), "application/json");
        assert_eq!(content_type_for("X.JSON"), "application/json");
        assert_eq!(content_type_for("x.yaml"), "application/yaml");
        assert_eq!(content_type_for("-"), "application/yaml");
    }
}
