//! `phoenix loadsim ...`: start and stop load simulations (real processes on target
//! hosts, run by their agents), see how they are doing, and list the profiles.

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Subcommand};
use phoenix_wire::duration::HumanDuration;
use phoenix_wire::load::{LoadProfile, LoadProfileInfo, LoadSim, LoadSimRequest};
use phoenix_wire::names::{self, Labels};
use phoenix_wire::resource::HostTarget;
use phoenix_wire::view::List;

use crate::client::Body;
use crate::commands::Context;
use crate::output::{self, Details, Table};

const LOADSIMS: &str = "/api/v1/loadsims";

#[derive(Debug, Subcommand)]
pub enum LoadsimCommand {
    /// Start generating process load on hosts, chosen by name or by label selector
    #[command(
        group(ArgGroup::new("target").required(true).args(["host", "selector"])),
        after_help = "\
Examples:
  phoenix loadsim start --host web-1 --profile high-cardinality --processes 500 --duration 10m
  phoenix loadsim start --selector role=web --profile process-churn --name churn
  phoenix loadsim start --host web-1,web-2 --profile spike -o yaml

Every option left out takes the profile's default (see `phoenix loadsim list-profiles`).
The run ends by itself after --duration; `phoenix loadsim stop NAME` ends it sooner.
A host refuses more processes than its agent's --max-load-processes: the request fails
and starts nothing."
    )]
    Start {
        /// A name to stop it by [default: <profile>-<time of day>]
        #[arg(long)]
        name: Option<String>,
        /// Target host ids (repeat the flag or separate with commas)
        #[arg(long, value_delimiter = ',', value_name = "HOST")]
        host: Vec<String>,
        /// Target the hosts whose labels match, e.g. role=web,zone=a
        #[arg(long, value_name = "KEY=VALUE,...", value_parser = parse_selector)]
        selector: Option<Labels>,
        /// realistic, high-cardinality, process-churn or spike
        #[arg(long, value_parser = parse_profile)]
        profile: LoadProfile,
        /// How long the run lasts, e.g. 10m
        #[arg(long, value_parser = HumanDuration::parse)]
        duration: Option<HumanDuration>,
        /// The most worker processes alive at once, on each host
        #[arg(long)]
        processes: Option<u32>,
        /// The most spawns per second, on each host
        #[arg(long)]
        spawn_rate: Option<u32>,
        /// How long each worker lives, e.g. 1s (default: the profile's)
        #[arg(long, value_parser = HumanDuration::parse)]
        worker_lifetime: Option<HumanDuration>,
        /// The share of workers that burn CPU, in percent
        #[arg(long)]
        busy_percent: Option<u32>,
        /// CPU each busy worker burns, in thousandths of a core
        #[arg(long)]
        cpu_millicores: Option<u32>,
        /// Memory each worker holds, in MiB
        #[arg(long)]
        memory_mib: Option<u32>,
    },
    /// Stop a load simulation; its processes are killed on every host
    #[command(after_help = "Example:\n  phoenix loadsim stop churn")]
    Stop {
        /// The name it was started with (see `phoenix loadsim status`)
        name: String,
    },
    /// Show every load simulation, or one with each host's live process count
    #[command(after_help = "\
Examples:
  phoenix loadsim status
  phoenix loadsim status churn
  phoenix loadsim status churn -o json

LIVE is the number of worker processes alive, as the hosts' agents last reported it
(they report progress every few seconds).")]
    Status {
        /// One simulation's name; all when left out
        name: Option<String>,
    },
    /// List the load profiles and their defaults
    #[command(after_help = "Example:\n  phoenix loadsim list-profiles")]
    ListProfiles,
}

fn parse_profile(text: &str) -> Result<LoadProfile, String> {
    LoadProfile::parse(text).ok_or_else(|| {
        format!(
            "there is no profile `{text}`; use one of: {}",
            LoadProfile::names()
        )
    })
}

/// `role=web,zone=a` as labels, each key and value checked.
pub(crate) fn parse_selector(text: &str) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not key=value (e.g. role=web,zone=a)"))?;
        names::check_label_key(key.trim())?;
        names::check_label_value(value.trim())?;
        labels.insert(key.trim().to_string(), value.trim().to_string());
    }
    if labels.is_empty() {
        return Err("give at least one key=value, e.g. role=web".into());
    }
    Ok(labels)
}

pub async fn run(ctx: &Context, command: LoadsimCommand) -> anyhow::Result<()> {
    match command {
        LoadsimCommand::Start {
            name,
            host,
            selector,
            profile,
            duration,
            processes,
            spawn_rate,
            worker_lifetime,
            busy_percent,
            cpu_millicores,
            memory_mib,
        } => {
            let name = name.unwrap_or_else(|| default_name(profile, ctx.now));
            let hosts = match selector {
                Some(selector) => HostTarget {
                    selector: Some(selector),
                    names: None,
                },
                None => HostTarget {
                    selector: None,
                    names: Some(host),
                },
            };
            let request = LoadSimRequest {
                name,
                hosts,
                profile,
                processes,
                spawn_rate,
                duration,
                worker_lifetime,
                busy_percent,
                cpu_millicores,
                memory_mib,
            };
            let body = Body {
                bytes: serde_json::to_vec(&request)?,
                content_type: "application/json",
                origin: None,
            };
            let run: LoadSim = ctx.client.post(LOADSIMS, Some(body)).await?;
            let text = match output::render_object(ctx.output, &run)? {
                Some(text) => text,
                None => format!(
                    "loadsim/{name} started: {profile}, up to {processes} processes on {hosts} host(s): {list}, until {until} ({left})\n  follow it with `phoenix loadsim status {name}`\n",
                    name = run.name,
                    profile = run.profile,
                    processes = run.parameters.processes,
                    hosts = run.target_hosts.len(),
                    list = run.target_hosts.join(", "),
                    until = run
                        .expires_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    left = expires(&run, ctx.now),
                ),
            };
            Ok(output::print(&text)?)
        }
        LoadsimCommand::Stop { name } => {
            let run: LoadSim = ctx.client.delete_returning(&loadsim_path(&name)?).await?;
            let text = match output::render_object(ctx.output, &run)? {
                Some(text) => text,
                None => format!(
                    "loadsim/{} stopped; its processes are being killed on {} host(s)\n",
                    run.name,
                    run.target_hosts.len()
                ),
            };
            Ok(output::print(&text)?)
        }
        LoadsimCommand::Status { name: Some(name) } => {
            let run: LoadSim = ctx.client.get(&loadsim_path(&name)?).await?;
            let text = match output::render_object(ctx.output, &run)? {
                Some(text) => text,
                None => loadsim_details(&run, ctx.now),
            };
            Ok(output::print(&text)?)
        }
        LoadsimCommand::Status { name: None } => {
            let list: List<LoadSim> = ctx.client.get(LOADSIMS).await?;
            match output::render_object(ctx.output, &list)? {
                Some(text) => output::print(&text)?,
                None if list.items.is_empty() => eprintln!(
                    "No load simulations yet. Start one with `phoenix loadsim start --host HOST --profile PROFILE`."
                ),
                None => output::print(&loadsim_table(&list.items, ctx.now).render())?,
            }
            Ok(())
        }
        LoadsimCommand::ListProfiles => {
            let list: List<LoadProfileInfo> =
                ctx.client.get(&format!("{LOADSIMS}/profiles")).await?;
            let text = match output::render_object(ctx.output, &list)? {
                Some(text) => text,
                None => profile_table(&list.items).render(),
            };
            Ok(output::print(&text)?)
        }
    }
}

/// `high-cardinality-153012`: the profile and the time of day (UTC).
fn default_name(profile: LoadProfile, now: DateTime<Utc>) -> String {
    format!("{profile}-{}", now.format("%H%M%S"))
}

/// `/api/v1/loadsims/{name}`, refusing names that could not exist (and could escape
/// the path) before anything is sent.
fn loadsim_path(name: &str) -> anyhow::Result<String> {
    names::check_resource_name(name)
        .map_err(|m| anyhow::anyhow!("invalid load simulation name: {m}"))?;
    Ok(format!("{LOADSIMS}/{name}"))
}

fn live_total(run: &LoadSim) -> u32 {
    run.host_status.iter().map(|h| h.live_processes).sum()
}

/// `in 4m` for a time ahead, `-` once it passed.
fn expires(run: &LoadSim, now: DateTime<Utc>) -> String {
    if run.expires_at > now {
        format!("in {}", output::age(now, run.expires_at))
    } else {
        "-".into()
    }
}

fn hosts_column(run: &LoadSim) -> String {
    match (&run.hosts.selector, &run.hosts.names) {
        (Some(selector), _) => format!("{} ({})", run.target_hosts.len(), output::labels(selector)),
        _ => run.target_hosts.join(","),
    }
}

fn loadsim_table(runs: &[LoadSim], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "PHASE",
        "PROFILE",
        "PROCESSES",
        "LIVE",
        "HOSTS",
        "EXPIRES",
        "AGE",
    ]);
    for run in runs {
        table.row(vec![
            run.name.clone(),
            run.phase.as_str().to_string(),
            run.profile.to_string(),
            run.parameters.processes.to_string(),
            live_total(run).to_string(),
            output::truncate(&hosts_column(run), 30),
            expires(run, now),
            output::age(run.created_at, now),
        ]);
    }
    table
}

fn loadsim_details(run: &LoadSim, now: DateTime<Utc>) -> String {
    let p = &run.parameters;
    let mut details = Details::new();
    details
        .field("Name", &run.name)
        .field("Phase", run.phase.as_str())
        .field("Profile", run.profile.as_str())
        .field("Processes", format!("up to {} per host", p.processes))
        .field("Spawn rate", format!("{}/s", p.spawn_rate))
        .field("Duration", p.duration.to_string())
        .field("Worker lifetime", lifetime(p.worker_lifetime))
        .field(
            "CPU",
            format!(
                "{}% of workers burn {}m each",
                p.busy_percent, p.cpu_millicores
            ),
        )
        .field("Memory", format!("{} MiB per worker", p.memory_mib))
        .field("Created", output::timestamp(run.created_at, now))
        .field("Expires", expires(run, now));
    if let Some(stopped) = run.stopped_at {
        details.field("Stopped", output::timestamp(stopped, now));
    }
    details.field("Live processes", live_total(run).to_string());
    let mut text = details.render();
    let mut table = Table::new(&["HOST", "STATE", "LIVE", "SPAWNED", "ERROR"]);
    for h in &run.host_status {
        table.row(vec![
            h.host_id.clone(),
            h.state.as_str().to_string(),
            h.live_processes.to_string(),
            h.spawned_total.to_string(),
            h.last_error.clone().unwrap_or_default(),
        ]);
    }
    text.push('\n');
    text.push_str(&output::indent(&table.render(), "  "));
    text
}

fn lifetime(lifetime: Option<HumanDuration>) -> String {
    lifetime.map_or_else(|| "the whole run".to_string(), |l| l.to_string())
}

fn profile_table(profiles: &[LoadProfileInfo]) -> Table {
    let mut table = Table::new(&[
        "PROFILE",
        "PROCESSES",
        "SPAWN-RATE",
        "DURATION",
        "LIFETIME",
        "BUSY",
        "CPU",
        "MEMORY",
        "DESCRIPTION",
    ]);
    for info in profiles {
        let d = &info.defaults;
        table.row(vec![
            info.name.to_string(),
            d.processes.to_string(),
            format!("{}/s", d.spawn_rate),
            d.duration.to_string(),
            lifetime(d.worker_lifetime),
            format!("{}%", d.busy_percent),
            format!("{}m", d.cpu_millicores),
            format!("{}MiB", d.memory_mib),
            info.description.clone(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use clap::Parser;

    use crate::commands::{Cli, Command};

    fn run(now: DateTime<Utc>) -> LoadSim {
        serde_json::from_value(serde_json::json!({
            "name": "churn",
            "profile": "process-churn",
            "parameters": {"processes": 100, "spawnRate": 25, "duration": "10m",
                           "workerLifetime": "1s", "busyPercent": 0, "cpuMillicores": 0,
                           "memoryMib": 0},
            "hosts": {"names": ["web-1", "web-2"]},
            "targetHosts": ["web-1", "web-2"],
            "phase": "running",
            "createdAt": (now - chrono::Duration::seconds(60)).to_rfc3339(),
            "expiresAt": (now + chrono::Duration::seconds(540)).to_rfc3339(),
            "hostStatus": [
                {"hostId": "web-1", "state": "running", "liveProcesses": 24, "spawnedTotal": 1500},
                {"hostId": "web-2", "state": "failed", "liveProcesses": 0, "spawnedTotal": 0,
                 "lastError": "this host allows at most 10 load processes"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn the_table_sums_live_processes_over_hosts() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        assert_eq!(
            loadsim_table(&[run(now)], now).render(),
            "NAME    PHASE     PROFILE         PROCESSES   LIVE   HOSTS         EXPIRES   AGE\n\
             churn   running   process-churn   100         24     web-1,web-2   in 9m     60s\n"
        );
    }

    #[test]
    fn details_show_each_host_and_its_error() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let text = loadsim_details(&run(now), now);
        assert!(text.contains("Spawn rate:"), "{text}");
        assert!(text.contains("  web-1   running   24     1500"), "{text}");
        assert!(text.contains("at most 10 load processes"), "{text}");
    }

    #[test]
    fn start_takes_hosts_or_a_selector_and_checks_the_profile() {
        let parse =
            |args: &[&str]| Cli::try_parse_from(["phoenix", "loadsim", "start"].iter().chain(args));
        let cli = parse(&["--host", "web-1,web-2", "--profile", "spike"]).unwrap();
        let Command::Loadsim(LoadsimCommand::Start { host, profile, .. }) = cli.command else {
            panic!("not a start");
        };
        assert_eq!(host, ["web-1", "web-2"]);
        assert_eq!(profile, LoadProfile::Spike);
        assert!(
            parse(&["--profile", "spike"]).is_err(),
            "a target is required"
        );
        assert!(
            parse(&[
                "--host",
                "a",
                "--selector",
                "role=web",
                "--profile",
                "spike"
            ])
            .is_err(),
            "not both"
        );
        let err = parse(&["--host", "a", "--profile", "huge"]).unwrap_err();
        assert!(err.to_string().contains("high-cardinality"), "{err}");
        assert!(parse(&["--selector", "role", "--profile", "spike"]).is_err());
        assert_eq!(
            default_name(
                LoadProfile::Spike,
                Utc.with_ymd_and_hms(2025, 6, 1, 15, 30, 12).unwrap()
            ),
            "spike-153012"
        );
    }
}
