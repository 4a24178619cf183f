//! `phoenix host ...`: list the hosts whose agents report in, and describe one host:
//! its last heartbeat and the collectors its agent runs, with their health, restarts
//! and last errors.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use phoenix_wire::agent::{CollectorStatus, Health};
use phoenix_wire::names;
use phoenix_wire::view::{Host, HostState, List};

use phoenix_wire::events::{Event, EventFilter};

use crate::commands::Context;
use crate::output::{self, Details, Table};
use crate::selector::Selector;
use crate::stream;

const HOSTS: &str = "/api/v1/hosts";

/// The LABELS column is cut to this many characters; `get` shows them whole.
const LABELS_WIDTH: usize = 40;

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// List hosts: state, labels, healthy/total collectors, when last heard from
    #[command(after_help = "\
Example:
  phoenix host list
  phoenix host list -o yaml
  phoenix host list -l role=web
  phoenix host list --watch

A host is `lost` when its agent has been silent for longer than its grace period.
-l selects by the hosts' labels (key=value, key!=value, key, !key; all must
hold). --watch prints the list, then one more row (-o json: one JSON object per
line) each time a host registers or reports its collectors, until Ctrl-C or the
connection drops (exit 1).")]
    List {
        /// Only hosts whose labels match: key=value,key!=value,key,!key
        #[arg(short = 'l', long, value_name = "SELECTOR", value_parser = crate::selector::parse)]
        selector: Option<Selector>,
        /// After listing, print each host again when it registers or reports
        #[arg(short, long)]
        watch: bool,
    },
    /// Show one host: last heartbeat, and each collector's health, restarts and last error
    #[command(
        visible_alias = "describe",
        after_help = "\
Examples:
  phoenix host describe web-1
  phoenix host get web-1 -o json

`Last heartbeat` is when the agent was last heard from; a host silent for longer
than the api's grace period is `lost`. Its tasks: phoenix task list --host web-1"
    )]
    Get {
        /// The host id, as `phoenix host list` shows it
        id: String,
    },
}

pub async fn run(ctx: &Context, command: HostCommand) -> anyhow::Result<()> {
    match command {
        HostCommand::List { selector, watch } => list(ctx, selector, watch).await,
        HostCommand::Get { id } => {
            names::check_host_id(&id).map_err(|m| anyhow::anyhow!("invalid host id: {m}"))?;
            let host: Host = ctx.client.get(&format!("{HOSTS}/{id}")).await?;
            let text = match output::render_object(ctx.output, &host)? {
                Some(text) => text,
                None => host_details(&host, ctx.now),
            };
            Ok(output::print(&text)?)
        }
    }
}

/// `phoenix host list [-l SELECTOR] [--watch]`.
async fn list(ctx: &Context, selector: Option<Selector>, watch: bool) -> anyhow::Result<()> {
    let selected = |h: &Host| selector.as_ref().is_none_or(|s| s.matches(&h.labels));
    // Subscribe before listing: nothing that changes after the list is missed.
    let mut stream = match watch {
        true => Some(stream::subscribe(&ctx.client, &EventFilter::default()).await?),
        false => None,
    };
    let mut list: List<Host> = ctx.client.get(HOSTS).await?;
    list.items.retain(selected);
    match output::render_object(ctx.output, &list)? {
        Some(text) => output::print(&text)?,
        None if list.items.is_empty() && selector.is_some() => {
            eprintln!("No hosts match the selector.")
        }
        None if list.items.is_empty() => eprintln!(
            "No hosts have reported yet. Hosts appear when a phoenix-agent on them reaches the API."
        ),
        None => output::print(&host_table(&list.items, ctx.now).render())?,
    }
    let Some(stream) = stream.as_mut() else {
        return Ok(());
    };
    loop {
        let event = stream
            .next()
            .await
            .map_err(|err| stream::watch_ended(err, "phoenix host list --watch"))?;
        let Event::Host(event) = event else {
            continue;
        };
        names::check_host_id(&event.host).map_err(|m| anyhow::anyhow!("invalid host id: {m}"))?;
        let host: Host = ctx.client.get(&format!("{HOSTS}/{}", event.host)).await?;
        if !selected(&host) {
            continue;
        }
        let line = stream::watch_line(ctx.output, &host, || {
            let table = host_table(std::slice::from_ref(&host), Utc::now()).render();
            table.lines().skip(1).map(|l| format!("{l}\n")).collect()
        })?;
        output::print(&line)?;
    }
}

fn state(state: HostState) -> &'static str {
    match state {
        HostState::Ready => "ready",
        HostState::Lost => "lost",
    }
}

/// `healthy/total`, like kubectl's READY column.
fn collectors_column(collectors: &[CollectorStatus]) -> String {
    let healthy = collectors
        .iter()
        .filter(|c| c.health == Health::Healthy)
        .count();
    format!("{healthy}/{}", collectors.len())
}

fn host_table(hosts: &[Host], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&["HOST", "STATE", "LABELS", "COLLECTORS", "LAST-SEEN"]);
    for host in hosts {
        table.row(vec![
            host.host_id.clone(),
            state(host.state).to_string(),
            output::truncate(&output::labels(&host.labels), LABELS_WIDTH),
            collectors_column(&host.collectors),
            output::age(host.last_seen, now),
        ]);
    }
    table
}

fn host_details(host: &Host, now: DateTime<Utc>) -> String {
    let collectors = if host.collectors.is_empty() {
        "none (its agent runs no Phoenix collectors)".to_string()
    } else {
        format!("{} healthy", collectors_column(&host.collectors))
    };
    let mut details = Details::new();
    details
        .field("Host", &host.host_id)
        .field("State", state(host.state))
        .field("Labels", output::labels(&host.labels))
        .field("Agent version", &host.agent_version)
        .field("Last heartbeat", output::timestamp(host.last_seen, now))
        .field("Collectors", collectors);
    let mut text = details.render();
    if host.collectors.is_empty() {
        return text;
    }
    let mut table = Table::new(&[
        "COLLECTOR",
        "OWNER",
        "VARIANT",
        "PIPELINE",
        "HEALTH",
        "PID",
        "RESTARTS",
        "CPU-SECONDS",
        "RSS",
        "HASH",
    ]);
    for c in &host.collectors {
        table.row(vec![
            c.collector_id.clone(),
            c.owner.clone(),
            c.variant.to_string(),
            c.pipeline.clone(),
            c.health.as_str().to_string(),
            c.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
            c.restarts.to_string(),
            format!("{:.1}", c.cpu_seconds),
            format!("{:.1}MiB", c.rss_bytes as f64 / (1024.0 * 1024.0)),
            c.config_hash.clone(),
        ]);
    }
    text.push('\n');
    text.push_str(&output::indent(&table.render(), "  "));
    let errors: Vec<_> = host
        .collectors
        .iter()
        .filter_map(|c| c.last_error.as_ref().map(|e| (c, e)))
        .collect();
    if !errors.is_empty() {
        text.push_str("\nLast errors:\n");
        for (c, error) in errors {
            let mut line = Details::new();
            line.field(&c.collector_id, error);
            text.push_str(&output::indent(&line.render(), "  "));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn host(now: DateTime<Utc>) -> Host {
        serde_json::from_value(serde_json::json!({
            "hostId": "web-1",
            "labels": {"role": "web"},
            "agentVersion": "0.1.0",
            "state": "ready",
            "lastSeen": (now - chrono::Duration::seconds(4)).to_rfc3339(),
            "collectors": [
                {"collectorId": "topk-web.baseline", "owner": "topk-web", "variant": "baseline",
                 "pipeline": "process-baseline", "configHash": "00112233aabbccdd", "pid": 41,
                 "health": "healthy", "restarts": 0, "cpuSeconds": 1.25, "rssBytes": 52428800},
                {"collectorId": "topk-web.candidate", "owner": "topk-web", "variant": "candidate",
                 "pipeline": "process-topk", "configHash": "44556677aabbccdd",
                 "health": "restarting", "restarts": 3, "lastError": "bind: address in use"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn the_host_table_counts_healthy_collectors() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        assert_eq!(
            host_table(&[host(now)], now).render(),
            "HOST    STATE   LABELS     COLLECTORS   LAST-SEEN\n\
             web-1   ready   role=web   1/2          4s\n"
        );
    }

    #[test]
    fn host_details_list_collectors_and_their_errors() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let text = host_details(&host(now), now);
        assert!(text.starts_with("Host:           web-1\n"), "{text}");
        assert!(
            text.contains("Last heartbeat: 2025-06-01T11:59:56Z (4s ago)\n"),
            "{text}"
        );
        assert!(text.contains("Collectors:     1/2 healthy\n"), "{text}");
        assert!(text.contains("  COLLECTOR "), "{text}");
        assert!(text.contains("   topk-web   "), "{text}");
        assert!(text.contains("50.0MiB"), "{text}");
        assert!(text.contains("restarting"), "{text}");
        assert!(
            text.ends_with("Last errors:\n  topk-web.candidate: bind: address in use\n"),
            "{text}"
        );
    }

    #[test]
    fn a_host_without_collectors_says_so() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let mut host = host(now);
        host.collectors.clear();
        let text = host_details(&host, now);
        assert!(
            text.ends_with("Collectors:     none (its agent runs no Phoenix collectors)\n"),
            "{text}"
        );
    }
}
