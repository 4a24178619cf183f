//! The application layer of load simulations (`/api/v1/loadsims`): what a start
//! request means (its hosts resolved, each host's load limit respected) and how a
//! stored run looks with what its hosts' agents report.
//!
//! A request that asks a host for more processes than its agent allows
//! (`phoenix-agent --max-load-processes`, reported in its status) is refused with
//! a 422 naming `processes` and the host, and nothing is stored. The agent enforces
//! the same limit over all runs it has.

use chrono::{DateTime, Utc};
use phoenix_storage::hosts::HostFilter;
use phoenix_storage::loads::{self, NewLoadRun, StoredLoadRun};
use phoenix_storage::tasks::{self, FailedTask};
use phoenix_storage::{PgConnection, hosts};
use phoenix_wire::agent::TaskKind;
use phoenix_wire::load::{
    LoadHostState, LoadHostStatus, LoadSim, LoadSimPhase, LoadSimRequest, LoadState, LoadStatus,
};
use phoenix_wire::names::selector_matches;
use phoenix_wire::problem::FieldError;
use std::collections::HashMap;

use crate::app::parse_body;
use crate::error::ApiError;
use crate::http::body::DocumentBody;

/// Validates a start request, resolves its hosts, checks each host's load limit,
/// then stores the run. Nothing is written unless every check passes.
pub async fn start(conn: &mut PgConnection, body: &DocumentBody) -> Result<LoadSim, ApiError> {
    let request: LoadSimRequest = parse_body(body)?;
    let parameters = request.validate().map_err(ApiError::Invalid)?;
    let target_hosts = resolve_hosts(conn, &request).await?;
    let limits = loads::max_processes_by_host(conn).await?;
    check_load_limits(&target_hosts, &limits, parameters.processes, "processes")?;
    let stored = loads::create_run(
        conn,
        NewLoadRun {
            name: &request.name,
            hosts: &request.hosts,
            target_hosts: &target_hosts,
            profile: request.profile,
            parameters: &parameters,
            traceparent: phoenix_telemetry::current_traceparent().as_deref(),
        },
    )
    .await?;
    let reported = loads::reported_by_host(conn, HostFilter::All).await?;
    Ok(view(stored, &reported, &[], Utc::now()))
}

/// Refuses load that asks one of `hosts` for more processes than its agent allows
/// (`limits`, from the hosts' status reports): a 422 naming `field` and the host.
/// Used by `loadsim start` and by an experiment's `spec.load`.
pub(crate) fn check_load_limits(
    hosts: &[String],
    limits: &HashMap<String, u32>,
    processes: u32,
    field: &str,
) -> Result<(), ApiError> {
    for host in hosts {
        let max = limits.get(host).copied().unwrap_or(0);
        if processes > max {
            let why = if max == 0 {
                format!(
                    "host {host} runs no load: its agent allows 0 load processes (an agent older than load simulation, or --max-load-processes 0)"
                )
            } else {
                format!(
                    "host {host} allows at most {max} load processes (its agent's --max-load-processes), and {processes} were asked for; ask for at most {max}, or raise the host's limit"
                )
            };
            return Err(ApiError::Invalid(FieldError::new(field, why)));
        }
    }
    Ok(())
}

/// The registered hosts the request targets, in order; a selector that matches
/// none, or a name nobody registered, is a 422 naming the field.
async fn resolve_hosts(
    conn: &mut PgConnection,
    request: &LoadSimRequest,
) -> Result<Vec<String>, ApiError> {
    let known = hosts::list_records(conn, HostFilter::All).await?;
    if let Some(selector) = &request.hosts.selector {
        let matching: Vec<String> = known
            .iter()
            .filter(|h| selector_matches(selector, &h.labels))
            .map(|h| h.host_id.clone())
            .collect();
        if matching.is_empty() {
            return Err(ApiError::Invalid(FieldError::new(
                "hosts.selector",
                format!(
                    "the selector matches none of the {} registered hosts; check their labels with `phoenix host list`",
                    known.len()
                ),
            )));
        }
        return Ok(matching);
    }
    let names = request.hosts.names.as_deref().unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        if !known.iter().any(|h| &h.host_id == name) {
            return Err(ApiError::Invalid(FieldError::new(
                format!("hosts.names[{i}]"),
                format!("no agent has registered host `{name}`; see `phoenix host list`"),
            )));
        }
    }
    let mut unique = names.to_vec();
    unique.sort();
    unique.dedup();
    Ok(unique)
}

/// Every stored run, newest first, with what its hosts report.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<LoadSim>, ApiError> {
    let runs = loads::list_runs(conn).await?;
    let reported = loads::reported_by_host(conn, HostFilter::All).await?;
    let oldest = runs.iter().map(|r| r.created_at).min();
    let failures = match oldest {
        Some(since) => tasks::failures_since(conn, TaskKind::Load, since).await?,
        None => Vec::new(),
    };
    let now = Utc::now();
    Ok(runs
        .into_iter()
        .map(|run| view(run, &reported, &failures, now))
        .collect())
}

pub async fn get(conn: &mut PgConnection, name: &str) -> Result<LoadSim, ApiError> {
    let run = loads::get_run(conn, name).await?;
    let reported = loads::reported_by_host(conn, HostFilter::All).await?;
    let failures = tasks::failures_since(conn, TaskKind::Load, run.created_at).await?;
    Ok(view(run, &reported, &failures, Utc::now()))
}

/// Stops a run; its workers go away with the next reconcile pass.
pub async fn stop(conn: &mut PgConnection, name: &str) -> Result<LoadSim, ApiError> {
    let run = loads::stop_run(conn, name).await?;
    let reported = loads::reported_by_host(conn, HostFilter::All).await?;
    Ok(view(run, &reported, &[], Utc::now()))
}

/// A stored run as the API shows it: its phase at `now`, and each target host as
/// its agent reports the run (or the error that kept it from starting).
pub fn view(
    run: StoredLoadRun,
    reported: &HashMap<String, Vec<LoadStatus>>,
    failures: &[FailedTask],
    now: DateTime<Utc>,
) -> LoadSim {
    let phase = if run.phase == loads::PHASE_STOPPED {
        LoadSimPhase::Stopped
    } else if run.expires_at <= now {
        LoadSimPhase::Expired
    } else {
        LoadSimPhase::Running
    };
    let spec = run.spec();
    let unit = spec.unit_id();
    let host_status =
        run.target_hosts
            .iter()
            .map(|host| {
                let on_host = reported
                    .get(host)
                    .and_then(|runs| runs.iter().find(|r| r.run_id == spec.run_id));
                if let Some(r) = on_host {
                    return LoadHostStatus {
                        host_id: host.clone(),
                        state: match r.state {
                            LoadState::Running => LoadHostState::Running,
                            LoadState::Finished => LoadHostState::Finished,
                        },
                        live_processes: r.live_processes,
                        spawned_total: r.spawned_total,
                        last_error: r.last_error.clone(),
                    };
                }
                let failure = failures.iter().rev().find(|f| {
                    &f.host_id == host && f.unit_id == unit && f.spec_hash == spec.spec_hash
                });
                let state = match (phase, failure) {
                    (LoadSimPhase::Running, Some(_)) => LoadHostState::Failed,
                    (LoadSimPhase::Running, None) => LoadHostState::Pending,
                    _ => LoadHostState::Gone,
                };
                LoadHostStatus {
                    host_id: host.clone(),
                    state,
                    live_processes: 0,
                    spawned_total: 0,
                    last_error: failure.and_then(|f| f.error.clone()),
                }
            })
            .collect();
    LoadSim {
        name: run.name,
        profile: run.profile,
        parameters: run.parameters,
        hosts: run.hosts,
        target_hosts: run.target_hosts,
        phase,
        created_at: run.created_at,
        expires_at: run.expires_at,
        stopped_at: run.stopped_at,
        host_status,
    }
}
