//! Pipeline deployments (`phoenix deployment list|get|describe|events|rollback|
//! delete`, and the older `phoenix pipeline deploy|list-deployments|show-deployment|
//! rollback|delete-deployment`) and an experiment's promote and rollback
//! (`phoenix experiment promote|rollback`): the calls, and how deployments and
//! their roll-outs look in a table. [`DeploymentCommand`] is the `deployment` noun;
//! the other clap subcommands live with their nouns (`pipeline`, `experiment`).

use chrono::{DateTime, Utc};
use phoenix_wire::API_VERSION;
use phoenix_wire::agent::Health;
use phoenix_wire::deployment::{
    DeploymentRevision, DeploymentSpec, PipelineDeployment, PipelineDeploymentDocument,
    PromotionResult,
};
use phoenix_wire::names::{self, Labels};
use phoenix_wire::resource::{HostTarget, Metadata};
use phoenix_wire::rollout::{HostRollout, MaxUnavailable, Rollout, RolloutEvent, RolloutPolicy};
use phoenix_wire::view::List;

use crate::client::Body;
use crate::commands::Context;
use crate::document;
use crate::output::{self, Details, Table};
use crate::watch::{Watch, WatchArgs};

const DEPLOYMENTS: &str = "/api/v1/deployments";
const EXPERIMENTS: &str = "/api/v1/experiments";

/// `phoenix deployment ...`: standing pipelines and their roll-outs.
#[derive(Debug, clap::Subcommand)]
pub enum DeploymentCommand {
    /// List deployments: what each runs, where, how many hosts are ready, and its roll-out
    #[command(after_help = "\
Example:
  phoenix deployment list
  phoenix deployment list -o json
  phoenix deployment list -l team=sre
  phoenix deployment list --watch
  phoenix deployment list -w -o json --watch-interval 10s

READY counts the selected hosts whose collector reports healthy. --watch prints
the list, then reads it again every --watch-interval (default 2s) and prints
each deployment that changed (a new revision, a host ready, a roll-out step) as
one more row, or one JSON object per line with -o json; a deleted one prints
`NAME   deleted`. Ctrl-C stops it (exit 0).")]
    List {
        /// Only deployments whose labels match: key=value,key!=value,key,!key
        #[arg(short = 'l', long, value_name = "SELECTOR", value_parser = crate::selector::parse)]
        selector: Option<crate::selector::Selector>,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// One deployment: its hosts, their collectors, its latest roll-out and its revisions
    #[command(after_help = "\
Example:
  phoenix deployment get web
  phoenix deployment get web -o json     # a document; `status` holds revision, hosts, rollout
  phoenix deployment get web -o yaml | phoenix apply -f -    (a no-op)

The roll-out shows where a new revision is: its batch, each host a batch reached
(updating, healthy, done or failed, and why) and how it ended. Hosts no batch
reached still run the revision it came from.")]
    Get {
        /// The deployment's name
        name: String,
    },
    /// Like get, followed by every step of its roll-outs
    #[command(after_help = "\
Example:
  phoenix deployment describe web
  phoenix deployment describe web -o yaml   # {deployment, events}")]
    Describe {
        /// The deployment's name
        name: String,
    },
    /// Every step of its roll-outs: batches started and done, hosts healthy or failed, roll-backs
    #[command(after_help = "\
Example:
  phoenix deployment events web
  phoenix deployment events web -o json

Live: `phoenix` streams them too (GET /api/v1/events?deployment=NAME, `kind: rollout`).")]
    Events {
        /// The deployment's name
        name: String,
    },
    /// Restore the previous revision on every host at once (same as `phoenix pipeline rollback`)
    #[command(after_help = "Example:\n  phoenix deployment rollback web")]
    Rollback {
        /// The deployment's name
        name: String,
    },
    /// Delete a deployment and its history; its hosts stop its collector
    #[command(after_help = "Example:\n  phoenix deployment delete web")]
    Delete {
        /// The deployment's name
        name: String,
    },
}

pub async fn run(ctx: &Context, command: DeploymentCommand) -> anyhow::Result<()> {
    match command {
        DeploymentCommand::List { selector, watch } => {
            list(ctx, selector.as_ref(), Some(&watch)).await
        }
        DeploymentCommand::Get { name } => show(ctx, &name).await,
        DeploymentCommand::Describe { name } => describe(ctx, &name).await,
        DeploymentCommand::Events { name } => events(ctx, &name).await,
        DeploymentCommand::Rollback { name } => rollback(ctx, &name).await,
        DeploymentCommand::Delete { name } => delete(ctx, &name).await,
    }
}

/// A deployment given by flags instead of a file.
#[derive(Debug, Default)]
pub struct DeployFlags {
    pub name: Option<String>,
    pub pipeline: Option<String>,
    pub selector: Option<Labels>,
    pub hosts: Vec<String>,
    pub vars: Vec<(String, String)>,
    pub critical: Vec<String>,
    pub destinations: Vec<String>,
    pub max_unavailable: Option<MaxUnavailable>,
}

impl DeployFlags {
    /// The document the flags describe; the API validates it like a file's.
    fn document(self) -> anyhow::Result<PipelineDeploymentDocument> {
        let name = self
            .name
            .ok_or_else(|| anyhow::anyhow!("give --name (or a document with -f FILE)"))?;
        let pipeline = self
            .pipeline
            .ok_or_else(|| anyhow::anyhow!("give --pipeline (see `phoenix pipeline list`)"))?;
        let hosts = match (self.selector, self.hosts.is_empty()) {
            (Some(selector), true) => HostTarget {
                selector: Some(selector),
                names: None,
            },
            (None, false) => HostTarget {
                selector: None,
                names: Some(self.hosts),
            },
            _ => anyhow::bail!("give either --selector KEY=VALUE,... or --host HOST,..."),
        };
        Ok(PipelineDeploymentDocument {
            api_version: API_VERSION.to_string(),
            kind: PipelineDeploymentDocument::KIND.to_string(),
            metadata: Metadata {
                name,
                labels: Labels::new(),
            },
            spec: DeploymentSpec {
                hosts,
                pipeline,
                vars: self.vars.into_iter().collect(),
                critical_processes: self.critical,
                destinations: self.destinations,
                rollout: RolloutPolicy {
                    max_unavailable: self.max_unavailable,
                },
            },
        })
    }
}

/// `k=v` for `--var`.
pub fn parse_var(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not name=value (e.g. cpu_threshold=0.05)"))?;
    Ok((key.trim().to_string(), value.to_string()))
}

/// `phoenix pipeline deploy`: from a file, or from flags.
pub async fn deploy(ctx: &Context, file: Option<String>, flags: DeployFlags) -> anyhow::Result<()> {
    let body = match file {
        Some(file) => document::read(
            &file,
            "a PipelineDeployment",
            "phoenix pipeline deploy --help",
        )?,
        None => Body {
            bytes: serde_json::to_vec(&flags.document()?)?,
            content_type: "application/json",
            origin: None,
        },
    };
    let deployment: PipelineDeployment = ctx.client.post(DEPLOYMENTS, Some(body)).await?;
    let text = match output::render_object(ctx.output, &deployment)? {
        Some(text) => text,
        None => format!(
            "deployment/{name} at revision {revision}: {pipeline} on {hosts} host(s) ({target})\n  it reaches them in batches; follow its roll-out with `phoenix deployment get {name}`\n",
            name = deployment.name,
            revision = deployment.revision,
            pipeline = pipeline(&deployment.spec),
            hosts = deployment.hosts.len(),
            target = host_target(&deployment.spec.hosts),
        ),
    };
    Ok(output::print(&text)?)
}

/// `phoenix deployment list [-l SELECTOR] [--watch]` (and `pipeline list-deployments`).
pub async fn list(
    ctx: &Context,
    selector: Option<&crate::selector::Selector>,
    watch: Option<&WatchArgs>,
) -> anyhow::Result<()> {
    let read = || async {
        let mut list: List<PipelineDeployment> = ctx.client.get(DEPLOYMENTS).await?;
        list.items
            .retain(|d| selector.is_none_or(|s| s.matches(&d.labels)));
        anyhow::Ok(list)
    };
    let list = read().await?;
    match output::render_object(ctx.output, &list)? {
        Some(text) => output::print(&text)?,
        None if list.items.is_empty() => eprintln!(
            "No pipeline deployments yet. Deploy one with `phoenix pipeline deploy`, or promote an experiment."
        ),
        None => output::print(&deployment_table(&list.items, ctx.now).render())?,
    }
    let Some(args) = watch.filter(|w| w.watch) else {
        return Ok(());
    };
    let watch = Watch {
        output: ctx.output,
        interval: args.watch_interval.as_duration(),
        key: |d: &PipelineDeployment| d.name.clone(),
        table: |d, now| deployment_table(std::slice::from_ref(d), now),
        gone_is_deleted: true,
        newest_first: false,
    };
    watch
        .follow(&list.items, || async { Ok(read().await?.items) })
        .await
}

pub async fn show(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let deployment: PipelineDeployment = ctx.client.get(&deployment_path(name)?).await?;
    let document = output::as_document("PipelineDeployment", &deployment)?;
    let text = match output::render_object(ctx.output, &document)? {
        Some(text) => text,
        None => deployment_details(&deployment, ctx.now),
    };
    Ok(output::print(&text)?)
}

/// `phoenix deployment describe NAME`: the details and every roll-out step; with
/// `-o json|yaml`, `{deployment, events}`.
pub async fn describe(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let path = deployment_path(name)?;
    let deployment: PipelineDeployment = ctx.client.get(&path).await?;
    let events: List<RolloutEvent> = ctx.client.get(&format!("{path}/events")).await?;
    #[derive(serde::Serialize)]
    struct Described<'a> {
        deployment: &'a PipelineDeployment,
        events: &'a [RolloutEvent],
    }
    let described = Described {
        deployment: &deployment,
        events: &events.items,
    };
    let text = match output::render_object(ctx.output, &described)? {
        Some(text) => text,
        None => {
            let mut text = deployment_details(&deployment, ctx.now);
            text.push_str("Events:\n");
            text.push_str(&output::indent(&event_lines(&events.items), "  "));
            text
        }
    };
    Ok(output::print(&text)?)
}

/// `phoenix deployment events NAME`: every roll-out step, oldest first.
pub async fn events(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let path = format!("{}/events", deployment_path(name)?);
    let events: List<RolloutEvent> = ctx.client.get(&path).await?;
    let text = match output::render_object(ctx.output, &events)? {
        Some(text) => text,
        None => event_lines(&events.items),
    };
    Ok(output::print(&text)?)
}

/// One line per step: `2026-01-01T00:00:00Z  rev 2  batch-started  batch 1 started: …`.
fn event_lines(events: &[RolloutEvent]) -> String {
    if events.is_empty() {
        return "<no roll-out steps yet>\n".to_string();
    }
    let mut table = Table::new(&["AT", "REVISION", "STEP", "REASON"]);
    for e in events {
        table.row(vec![
            e.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            e.revision.to_string(),
            e.step.clone(),
            e.reason.clone(),
        ]);
    }
    table.render()
}

/// `rolling 2/6`, `done`, `rolled-back`: where the latest roll-out is.
fn rollout_summary(deployment: &PipelineDeployment) -> String {
    match &deployment.rollout {
        None => "-".to_string(),
        Some(r) if r.state.is_open() => {
            format!("{} {}/{}", r.state, r.done_hosts(), deployment.hosts.len())
        }
        Some(r) if r.revision != deployment.revision => {
            format!("{} (revision {})", r.state, r.revision)
        }
        Some(r) => r.state.to_string(),
    }
}

/// The roll-out section of the details.
fn rollout_details(r: &Rollout, now: DateTime<Utc>) -> String {
    let mut details = Details::new();
    details
        .field(
            "Revision",
            match r.from_revision {
                Some(from) => format!("{} (from revision {from})", r.revision),
                None => format!("{} (the first)", r.revision),
            },
        )
        .field("State", r.state.as_str())
        .field(
            "Batch",
            match r.batch_started_at {
                Some(at) => format!("{} (started {})", r.batch, output::timestamp(at, now)),
                None => r.batch.to_string(),
            },
        )
        .field("Reason", r.reason.as_deref().unwrap_or("-"))
        .field("Started", output::timestamp(r.started_at, now));
    if let Some(at) = r.finished_at {
        details.field("Finished", output::timestamp(at, now));
    }
    let mut text = details.render();
    if !r.hosts.is_empty() {
        let mut hosts = Table::new(&["HOST", "BATCH", "STATE", "SINCE", "REASON"]);
        for (host, h) in &r.hosts {
            hosts.row(vec![
                host.clone(),
                if h.batch == 0 {
                    "-".to_string()
                } else {
                    h.batch.to_string()
                },
                match h.state {
                    HostRollout::Done if h.batch == 0 => "done (already ran it)".to_string(),
                    state => state.as_str().to_string(),
                },
                output::age(h.since, now),
                h.reason.clone().unwrap_or_default(),
            ]);
        }
        text.push_str(&hosts.render());
    }
    text
}

pub async fn rollback(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let path = format!("{}/rollback", deployment_path(name)?);
    let deployment: PipelineDeployment = ctx.client.post(&path, None).await?;
    let text = match output::render_object(ctx.output, &deployment)? {
        Some(text) => text,
        None => format!(
            "deployment/{} rolled back to revision {}: {}\n",
            deployment.name,
            deployment.revision,
            pipeline(&deployment.spec)
        ),
    };
    Ok(output::print(&text)?)
}

pub async fn delete(ctx: &Context, name: &str) -> anyhow::Result<()> {
    ctx.client.delete(&deployment_path(name)?).await?;
    if ctx.output == output::OutputFormat::Table {
        output::print(&format!(
            "deployment/{name} deleted; its hosts stop its collector\n"
        ))?;
    }
    Ok(())
}

/// `phoenix experiment promote NAME [--force] [--deployment NAME]`.
pub async fn promote(
    ctx: &Context,
    experiment: &str,
    force: bool,
    deployment: Option<&str>,
) -> anyhow::Result<()> {
    names::check_resource_name(experiment)
        .map_err(|m| anyhow::anyhow!("invalid experiment name: {m}"))?;
    let mut query = Vec::new();
    if force {
        query.push("force=true".to_string());
    }
    if let Some(deployment) = deployment {
        names::check_resource_name(deployment)
            .map_err(|m| anyhow::anyhow!("invalid deployment name: {m}"))?;
        query.push(format!("deployment={deployment}"));
    }
    let mut path = format!("{EXPERIMENTS}/{experiment}/promote");
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let result: PromotionResult = ctx.client.post(&path, None).await?;
    let text = match output::render_object(ctx.output, &result)? {
        Some(text) => text,
        None => format!(
            "experiment/{name} promoted: {reason}\n  undo with `phoenix experiment rollback {name}`\n",
            name = result.experiment.name,
            reason = result.experiment.reason.as_deref().unwrap_or("")
        ),
    };
    Ok(output::print(&text)?)
}

/// `phoenix experiment rollback NAME`.
pub async fn rollback_experiment(ctx: &Context, experiment: &str) -> anyhow::Result<()> {
    names::check_resource_name(experiment)
        .map_err(|m| anyhow::anyhow!("invalid experiment name: {m}"))?;
    let path = format!("{EXPERIMENTS}/{experiment}/rollback");
    let result: PromotionResult = ctx.client.post(&path, None).await?;
    let text = match output::render_object(ctx.output, &result)? {
        Some(text) => text,
        None => format!(
            "experiment/{} {}\n",
            result.experiment.name,
            result.experiment.reason.as_deref().unwrap_or("rolled back")
        ),
    };
    Ok(output::print(&text)?)
}

/// `/api/v1/deployments/{name}`, refusing names that could not exist (and could
/// escape the path) before anything is sent.
fn deployment_path(name: &str) -> anyhow::Result<String> {
    names::check_resource_name(name)
        .map_err(|m| anyhow::anyhow!("invalid deployment name: {m}"))?;
    Ok(format!("{DEPLOYMENTS}/{name}"))
}

/// `process-topk (cpu_threshold=0.05)`.
fn pipeline(spec: &DeploymentSpec) -> String {
    if spec.vars.is_empty() {
        spec.pipeline.clone()
    } else {
        format!("{} ({})", spec.pipeline, output::labels(&spec.vars))
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

/// `healthy/selected`: hosts whose standing collector is this deployment's and healthy.
fn ready(deployment: &PipelineDeployment) -> String {
    let healthy = deployment
        .hosts
        .iter()
        .filter(|h| {
            h.collector
                .as_ref()
                .is_some_and(|c| c.health == Health::Healthy)
        })
        .count();
    format!("{healthy}/{}", deployment.hosts.len())
}

fn deployment_table(deployments: &[PipelineDeployment], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&[
        "NAME", "PIPELINE", "HOSTS", "READY", "REVISION", "FROM", "AGE", "ROLL-OUT",
    ]);
    for d in deployments {
        table.row(vec![
            d.name.clone(),
            output::truncate(&pipeline(&d.spec), 50),
            output::truncate(&host_target(&d.spec.hosts), 30),
            ready(d),
            d.revision.to_string(),
            d.promoted_from
                .as_ref()
                .map_or_else(|| "-".to_string(), |e| format!("experiment/{e}")),
            output::age(d.created_at, now),
            rollout_summary(d),
        ]);
    }
    table
}

fn deployment_details(d: &PipelineDeployment, now: DateTime<Utc>) -> String {
    let hosts_kind = if d.spec.hosts.selector.is_some() {
        "selector"
    } else {
        "names"
    };
    let critical = if d.spec.critical_processes.is_empty() {
        "<none>".to_string()
    } else {
        d.spec.critical_processes.join(", ")
    };
    let mut details = Details::new();
    details
        .field("Name", &d.name)
        .field("Pipeline", pipeline(&d.spec))
        .field(
            "Hosts",
            format!("{hosts_kind} {}", host_target(&d.spec.hosts)),
        )
        .field("Critical processes", critical)
        .field("Collector", d.collector_id())
        .field("Revision", d.revision.to_string())
        .field(
            "Roll-out",
            match &d.spec.rollout.max_unavailable {
                Some(n) => format!("{}, {n} host(s) at a time", rollout_summary(d)),
                None => format!(
                    "{}, {} host(s) at a time (the default, {})",
                    rollout_summary(d),
                    d.spec.rollout.batch_size(d.hosts.len()),
                    MaxUnavailable::DEFAULT
                ),
            },
        )
        .field("Change", &d.change)
        .field(
            "Promoted from",
            d.promoted_from
                .as_ref()
                .map_or_else(|| "-".to_string(), |e| format!("experiment/{e}")),
        )
        .field("Labels", output::labels(&d.labels))
        .field("Created", output::timestamp(d.created_at, now))
        .field("Updated", output::timestamp(d.updated_at, now));
    let mut text = details.render();
    text.push_str("Hosts:\n");
    if d.hosts.is_empty() {
        text.push_str("  <no registered host is selected>\n");
    } else {
        let mut hosts = Table::new(&["HOST", "COLLECTOR", "PIPELINE", "PID", "RESTARTS"]);
        for h in &d.hosts {
            let row = match (&h.collector, &h.shadowed_by) {
                (_, Some(other)) => vec![
                    h.host_id.clone(),
                    format!("runs deployment/{other} instead"),
                ],
                (Some(c), None) => vec![
                    h.host_id.clone(),
                    c.health.as_str().to_string(),
                    c.pipeline.clone(),
                    c.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
                    c.restarts.to_string(),
                ],
                (None, None) => vec![h.host_id.clone(), "not running".to_string()],
            };
            hosts.row(row);
        }
        text.push_str(&output::indent(&hosts.render(), "  "));
    }
    if let Some(rollout) = &d.rollout {
        text.push_str("Latest roll-out:\n");
        text.push_str(&output::indent(&rollout_details(rollout, now), "  "));
    }
    if !d.revisions.is_empty() {
        text.push_str("Revisions:\n");
        text.push_str(&output::indent(
            &revision_table(&d.revisions, d.revision, now).render(),
            "  ",
        ));
    }
    text
}

fn revision_table(revisions: &[DeploymentRevision], current: i64, now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&["REVISION", "STATE", "PIPELINE", "AGE", "CHANGE"]);
    for r in revisions {
        let state = if r.revision == current {
            "current"
        } else if r.rolled_back_at.is_some() {
            "rolled back"
        } else {
            "earlier"
        };
        table.row(vec![
            r.revision.to_string(),
            state.to_string(),
            pipeline(&r.spec),
            output::age(r.created_at, now),
            r.change.clone(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn deployment(now: DateTime<Utc>) -> PipelineDeployment {
        serde_json::from_value(serde_json::json!({
            "name": "topk-web",
            "spec": {
                "hosts": {"names": ["web-1", "web-2"]},
                "pipeline": "process-topk",
                "vars": {"cpu_threshold": "0.2"}
            },
            "revision": 2,
            "promotedFrom": "topk-web",
            "change": "promoted from experiment topk-web (verdict pass) by user",
            "createdAt": (now - chrono::Duration::minutes(5)).to_rfc3339(),
            "updatedAt": now.to_rfc3339(),
            "hosts": [
                {"hostId": "web-1", "collector": {
                    "collectorId": "topk-web.standing", "owner": "topk-web", "variant": "standing",
                    "pipeline": "process-topk", "configHash": "abc", "pid": 42,
                    "health": "healthy", "restarts": 0
                }},
                {"hostId": "web-2"}
            ],
            "revisions": [
                {"revision": 2, "spec": {"hosts": {"names": ["web-1"]}, "pipeline": "process-topk"},
                 "change": "promoted", "createdAt": now.to_rfc3339()},
                {"revision": 1, "spec": {"hosts": {"names": ["web-1"]}, "pipeline": "process-baseline"},
                 "change": "deployed by user", "createdAt": now.to_rfc3339()}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn the_table_shows_readiness_and_where_it_came_from() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let text = deployment_table(&[deployment(now)], now).render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME "), "{text}");
        assert!(
            lines[1].contains("process-topk (cpu_threshold=0.2)"),
            "{text}"
        );
        assert!(lines[1].contains("web-1,web-2   1/2     2 "), "{text}");
        assert!(lines[1].contains("experiment/topk-web"), "{text}");
    }

    #[test]
    fn details_show_hosts_and_revisions() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let text = deployment_details(&deployment(now), now);
        assert!(
            text.contains("Collector:          topk-web.standing\n"),
            "{text}"
        );
        assert!(text.contains("  web-1   healthy"), "{text}");
        assert!(text.contains("  web-2   not running"), "{text}");
        assert!(text.contains("  2          current "), "{text}");
        assert!(text.contains("  1          earlier "), "{text}");
    }

    #[test]
    fn flags_make_a_document() {
        let doc = DeployFlags {
            name: Some("web".into()),
            pipeline: Some("process-topk".into()),
            selector: Some([("role".to_string(), "web".to_string())].into()),
            vars: vec![parse_var("cpu_threshold=0.1").unwrap()],
            critical: vec!["nginx".into()],
            ..Default::default()
        }
        .document()
        .unwrap();
        doc.validate().unwrap();
        assert_eq!(doc.spec.vars["cpu_threshold"], "0.1");
        assert!(DeployFlags::default().document().is_err());
        assert!(parse_var("novalue").is_err());
    }
}
