//! Staged roll-outs of pipeline deployments: the leader's `rollout` background job.
//!
//! A revision made by a deploy or a promotion starts a roll-out
//! (`phoenix_storage::rollouts`). Each activation of this job moves every open
//! roll-out one step with [`decide`], a pure function of the roll-out, what the
//! hosts report and the series the measurement Prometheus holds:
//!
//! - hosts are moved in batches of `spec.rollout.maxUnavailable`, the promoted
//!   experiment's hosts first (they already ran the candidate), then by host id;
//! - a batch is done when each of its hosts reports the new collector healthy and,
//!   with `--rollout-series-window` above zero, has written series to the
//!   measurement Prometheus during that window since it became healthy;
//! - a host whose new collector fails to start (`--max-start-failures` times),
//!   stops being healthy, is not healthy within `--deploy-timeout`, or writes no
//!   series in the window, fails the roll-out: it stops (no later batch starts) and
//!   the deployment is put back on the revision it came from (only that
//!   deployment), through the api's promotion policy.
//!
//! A deployment's first revision replaces nothing, so it goes to every host in
//! one batch; a host that fails it marks the roll-out `failed` (there is nothing
//! to go back to; the hosts keep running it).
//!
//! Every step is a row of `deployment_events` (the event stream's `rollout`
//! events). The pass ([`crate::standing`]) reads the roll-out to decide which
//! revision each host runs: hosts a batch reached run the new one, the others the
//! one it came from. The roll-out lives in Postgres, so a restarted or new leader
//! carries on where the last one stopped; deciding again on the same state decides
//! the same. Prometheus is queried with no transaction open; the decision and its
//! writes are one transaction per roll-out, fenced by the leadership epoch.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use phoenix_storage::deployments::{self, StoredDeployment};
use phoenix_storage::hosts::HostFilter;
use phoenix_storage::rollouts::{self, CurrentRollout, NewEvent};
use phoenix_storage::tasks::FailedTask;
use phoenix_storage::{
    PgConnection, PgPool, Result, StoreError, destinations, experiments, hosts, tasks,
};
use phoenix_wire::agent::{CollectorStatus, Health, TaskKind};
use phoenix_wire::duration::HumanDuration;
use phoenix_wire::rollout::{HostRollout, Rollout, RolloutHost, RolloutState, RolloutStep};
use sqlx::Connection;

use crate::prometheus::Prometheus;

/// What the roll-out step needs from the reconciler's configuration.
#[derive(Clone)]
pub struct RolloutSettings {
    pub prometheus: Prometheus,
    /// How long a new collector has to become healthy (`--deploy-timeout`).
    pub health_timeout: Duration,
    /// How long after it became healthy a host's series are counted; `None`: not
    /// checked (`--rollout-series-window 0s`).
    pub series_window: Option<Duration>,
    /// Failed starts of a new collector that fail its host (`--max-start-failures`).
    pub max_start_failures: usize,
    pub remote_write_url: String,
}

/// The series a host's new collector wrote since it became healthy.
#[derive(Clone, Debug, PartialEq)]
pub enum Series {
    /// Not asked (yet, or the check is off).
    NotMeasured,
    Counted(u64),
    /// Prometheus could not answer.
    Unmeasurable(String),
}

/// One host the deployment's current revision selects, as the decision sees it.
#[derive(Clone, Debug)]
pub struct HostReport {
    pub host: String,
    /// The config hash of the new revision's collector on this host.
    pub want_hash: String,
    /// The deployment's standing collector as the host's agent reports it.
    pub reported: Option<CollectorStatus>,
    /// Failed starts of the new revision's collector on this host since its batch
    /// started, oldest first: (count, the last error).
    pub failed_starts: (usize, Option<String>),
    pub series: Series,
}

/// The limits [`decide`] works with.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub batch_size: usize,
    pub health_timeout: Duration,
    pub series_window: Option<Duration>,
    pub max_start_failures: usize,
}

/// One step to record.
#[derive(Clone, Debug, PartialEq)]
pub struct StepEvent {
    pub step: RolloutStep,
    pub batch: Option<u32>,
    pub host: Option<String>,
    pub reason: String,
}

/// What a decision asks for besides the new roll-out state.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Keep going (or wait).
    Continue,
    /// A host failed: put the deployment back on `from_revision` (with none, the
    /// deployment stays; an experiment whose promotion made it is rolled back).
    RollBack { reason: String },
}

/// A decision: the roll-out as it should be stored, the steps taken, and whether
/// to roll back.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub rollout: Rollout,
    pub events: Vec<StepEvent>,
    pub outcome: Outcome,
}

fn since(from: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    now.signed_duration_since(from).to_std().unwrap_or_default()
}

/// The state a batch host moves to now, with why it failed.
fn judge_host(
    state: &RolloutHost,
    report: &HostReport,
    batch_started: DateTime<Utc>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Option<(HostRollout, Option<String>)> {
    let runs_new = report
        .reported
        .as_ref()
        .filter(|c| c.config_hash == report.want_hash);
    let healthy = runs_new.is_some_and(|c| c.health == Health::Healthy);
    let last_error = |c: &CollectorStatus| {
        c.last_error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    };
    match state.state {
        HostRollout::Updating => {
            let (failed, error) = &report.failed_starts;
            if healthy {
                return Some((HostRollout::Healthy, None));
            }
            if *failed >= limits.max_start_failures {
                return Some((
                    HostRollout::Failed,
                    Some(format!(
                        "its new collector failed to start {failed} times: {}",
                        error.as_deref().unwrap_or("no error text")
                    )),
                ));
            }
            if since(batch_started, now) > limits.health_timeout {
                let what = match runs_new {
                    Some(c) => format!("it is {}{}", c.health.as_str(), last_error(c)),
                    None => match error {
                        Some(e) => format!("it is not running (last error: {e})"),
                        None => "it is not running".to_string(),
                    },
                };
                return Some((
                    HostRollout::Failed,
                    Some(format!(
                        "its new collector was not healthy within {}: {what}",
                        HumanDuration(limits.health_timeout)
                    )),
                ));
            }
            None
        }
        HostRollout::Healthy => {
            if !healthy {
                let what = match runs_new {
                    Some(c) => format!("became {}{}", c.health.as_str(), last_error(c)),
                    None => "is no longer running".to_string(),
                };
                return Some((
                    HostRollout::Failed,
                    Some(format!("its new collector {what} after it was healthy")),
                ));
            }
            let Some(window) = limits.series_window else {
                return Some((HostRollout::Done, None));
            };
            let waited = since(state.since, now);
            if waited < window {
                return None;
            }
            match &report.series {
                Series::Counted(n) if *n > 0 => Some((HostRollout::Done, None)),
                Series::Counted(_) => Some((
                    HostRollout::Failed,
                    Some(format!(
                        "its series dropped to zero: the measurement Prometheus holds no series from its new collector in the {} since it became healthy",
                        HumanDuration(Duration::from_secs(waited.as_secs()))
                    )),
                )),
                Series::Unmeasurable(error) if waited > window + limits.health_timeout => Some((
                    HostRollout::Failed,
                    Some(format!(
                        "its series could not be measured for {}: {error}",
                        HumanDuration(limits.health_timeout)
                    )),
                )),
                Series::Unmeasurable(_) | Series::NotMeasured => None,
            }
        }
        HostRollout::Done | HostRollout::Failed => None,
    }
}

/// Orders the hosts not reached yet: `first` (the promoted experiment's hosts)
/// before the others, each group by host id.
pub fn next_hosts<'a>(pending: &[&'a str], first: &[String], n: usize) -> Vec<&'a str> {
    let mut ordered: Vec<&str> = pending.to_vec();
    ordered.sort_by_key(|h| (!first.iter().any(|f| f == h), *h));
    ordered.truncate(n);
    ordered
}

/// One step of an open roll-out. `hosts` are the hosts the deployment's current
/// revision selects and runs on, `first` the hosts to move first.
pub fn decide(
    rollout: &Rollout,
    hosts: &[HostReport],
    first: &[String],
    limits: &Limits,
    now: DateTime<Utc>,
) -> Decision {
    let mut next = rollout.clone();
    let mut events = Vec::new();
    let by_host: HashMap<&str, &HostReport> = hosts.iter().map(|h| (h.host.as_str(), h)).collect();
    let batch_started = rollout.batch_started_at.unwrap_or(rollout.started_at);

    // The hosts of the batch in progress still selected: how each is doing.
    let mut failed: Vec<(String, String)> = Vec::new();
    for (host, state) in next.hosts.iter_mut() {
        if state.batch != rollout.batch || rollout.batch == 0 {
            continue;
        }
        let Some(report) = by_host.get(host.as_str()) else {
            continue; // no longer selected: nothing to wait for
        };
        let Some((to, reason)) = judge_host(state, report, batch_started, limits, now) else {
            continue;
        };
        if to == HostRollout::Healthy && limits.series_window.is_some() {
            // Healthy; series are counted from now.
            *state = RolloutHost {
                batch: state.batch,
                state: to,
                since: now,
                reason: None,
            };
            continue;
        }
        match to {
            HostRollout::Failed => {
                let reason = reason.unwrap_or_default();
                events.push(StepEvent {
                    step: RolloutStep::HostFailed,
                    batch: Some(state.batch),
                    host: Some(host.clone()),
                    reason: format!("host {host} failed: {reason}"),
                });
                failed.push((host.clone(), reason.clone()));
                *state = RolloutHost {
                    batch: state.batch,
                    state: to,
                    since: now,
                    reason: Some(reason),
                };
            }
            _ => {
                let checked = match (&report.series, limits.series_window) {
                    (Series::Counted(n), Some(_)) => format!(", {n} series written since"),
                    _ => String::new(),
                };
                events.push(StepEvent {
                    step: RolloutStep::HostHealthy,
                    batch: Some(state.batch),
                    host: Some(host.clone()),
                    reason: format!(
                        "host {host} runs revision {} healthy{checked}",
                        rollout.revision
                    ),
                });
                *state = RolloutHost {
                    batch: state.batch,
                    state: HostRollout::Done,
                    since: now,
                    reason: None,
                };
            }
        }
    }

    if !failed.is_empty() {
        let hosts: Vec<String> = failed
            .iter()
            .map(|(host, reason)| format!("host {host} failed ({reason})"))
            .collect();
        let waiting: usize = by_host
            .keys()
            .filter(|h| !next.hosts.contains_key(**h))
            .count();
        let (state, step, reason) = match rollout.from_revision {
            Some(from) => (
                RolloutState::RolledBack,
                RolloutStep::RolledBack,
                format!(
                    "stopped at batch {}: {}; rolled back to revision {from} ({waiting} host(s) never got revision {})",
                    rollout.batch,
                    hosts.join("; "),
                    rollout.revision
                ),
            ),
            None => (
                RolloutState::Failed,
                RolloutStep::Failed,
                format!(
                    "{}; this is the deployment's first revision, with nothing to go back to: its hosts keep running it (deploy a fix, or delete the deployment)",
                    hosts.join("; ")
                ),
            ),
        };
        next.state = state;
        next.reason = Some(reason.clone());
        events.push(StepEvent {
            step,
            batch: Some(rollout.batch),
            host: None,
            reason: reason.clone(),
        });
        return Decision {
            rollout: next,
            events,
            outcome: Outcome::RollBack { reason },
        };
    }

    let batch_done = rollout.batch == 0
        || next
            .hosts
            .iter()
            .filter(|(h, s)| s.batch == rollout.batch && by_host.contains_key(h.as_str()))
            .all(|(_, s)| s.state == HostRollout::Done);
    if !batch_done {
        next.reason = Some(waiting_for(&next, &by_host));
        return Decision {
            rollout: next,
            events,
            outcome: Outcome::Continue,
        };
    }
    if rollout.batch > 0 && rollout.state == RolloutState::Rolling {
        let n = next
            .hosts
            .values()
            .filter(|s| s.batch == rollout.batch)
            .count();
        events.push(StepEvent {
            step: RolloutStep::BatchDone,
            batch: Some(rollout.batch),
            host: None,
            reason: format!(
                "batch {} done: {n} host(s) run revision {} healthy",
                rollout.batch, rollout.revision
            ),
        });
    }

    // Hosts that run the new collector already (a revision that changed nothing
    // for them) need no batch.
    for report in hosts {
        let already = report
            .reported
            .as_ref()
            .is_some_and(|c| c.config_hash == report.want_hash && c.health == Health::Healthy);
        if already && !next.hosts.contains_key(&report.host) {
            next.hosts.insert(
                report.host.clone(),
                RolloutHost {
                    batch: 0,
                    state: HostRollout::Done,
                    since: now,
                    reason: None,
                },
            );
        }
    }
    let pending: Vec<&str> = hosts
        .iter()
        .map(|h| h.host.as_str())
        .filter(|h| !next.hosts.contains_key(*h))
        .collect();
    if pending.is_empty() {
        let reason = format!(
            "every selected host ({}) runs revision {}",
            hosts.len(),
            rollout.revision
        );
        next.state = RolloutState::Done;
        next.reason = Some(reason.clone());
        events.push(StepEvent {
            step: RolloutStep::Done,
            batch: None,
            host: None,
            reason,
        });
        return Decision {
            rollout: next,
            events,
            outcome: Outcome::Continue,
        };
    }
    let batch = next_hosts(&pending, first, limits.batch_size);
    next.batch = rollout.batch + 1;
    next.batch_started_at = Some(now);
    next.state = RolloutState::Rolling;
    for host in &batch {
        next.hosts.insert(
            host.to_string(),
            RolloutHost {
                batch: next.batch,
                state: HostRollout::Updating,
                since: now,
                reason: None,
            },
        );
    }
    let after = pending.len() - batch.len();
    events.push(StepEvent {
        step: RolloutStep::BatchStarted,
        batch: Some(next.batch),
        host: None,
        reason: format!(
            "batch {} started: {} move to revision {}{}; {after} host(s) after it",
            next.batch,
            batch.join(", "),
            rollout.revision,
            rollout
                .from_revision
                .map(|f| format!(" from revision {f}"))
                .unwrap_or_default()
        ),
    });
    next.reason = Some(waiting_for(&next, &by_host));
    Decision {
        rollout: next,
        events,
        outcome: Outcome::Continue,
    }
}

/// `batch 2: waiting for web-3 (updating), web-4 (healthy, counting series)`.
fn waiting_for(rollout: &Rollout, selected: &HashMap<&str, &HostReport>) -> String {
    let waiting: Vec<String> = rollout
        .hosts
        .iter()
        .filter(|(h, s)| {
            s.batch == rollout.batch
                && s.state != HostRollout::Done
                && selected.contains_key(h.as_str())
        })
        .map(|(h, s)| match s.state {
            HostRollout::Healthy => format!("{h} (healthy, counting its series)"),
            other => format!("{h} ({})", other.as_str()),
        })
        .collect();
    format!(
        "batch {}: waiting for {}",
        rollout.batch,
        waiting.join(", ")
    )
}

/// The job's activation: every open roll-out one step further.
pub async fn advance(pool: &PgPool, settings: &RolloutSettings, epoch: i64) -> Result<()> {
    let mut conn = pool.acquire().await?;
    let open = rollouts::open(&mut conn).await?;
    if open.is_empty() {
        return Ok(());
    }
    // Series first, with no transaction open: Prometheus may be slow.
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await?;
    let series = match settings.series_window {
        Some(window) => measure(&settings.prometheus, &open, window, now).await,
        None => HashMap::new(),
    };
    for rollout in open {
        let mut tx = conn.begin().await?;
        phoenix_storage::leader::fence(&mut tx, epoch).await?;
        step(&mut tx, &rollout.deployment, settings, &series).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Counts, for every host whose new collector has been healthy for the window,
/// the series it wrote since, keyed by (deployment, host).
async fn measure(
    prometheus: &Prometheus,
    open: &[CurrentRollout],
    window: Duration,
    now: DateTime<Utc>,
) -> HashMap<(String, String), Series> {
    let mut series = HashMap::new();
    for current in open {
        for (host, state) in &current.rollout.hosts {
            if state.state != HostRollout::Healthy || since(state.since, now) < window {
                continue;
            }
            // The series API counts distinct series (metric names included) with
            // samples in the window.
            let selector = format!(
                "{{phoenix_experiment=\"{}\",phoenix_variant=\"standing\",phoenix_host=\"{host}\"}}",
                current.deployment
            );
            let measured = match prometheus.series(&selector, state.since, now).await {
                Ok(found) => Series::Counted(found.len() as u64),
                Err(err) => Series::Unmeasurable(err.to_string()),
            };
            series.insert((current.deployment.clone(), host.clone()), measured);
        }
    }
    series
}

/// One roll-out's step in the caller's transaction. Locks in the promotion
/// policy's order (the experiment that made the revision, the deployment, then the
/// roll-out), so it never deadlocks with a promote or a rollback.
async fn step(
    tx: &mut PgConnection,
    name: &str,
    settings: &RolloutSettings,
    series: &HashMap<(String, String), Series>,
) -> Result<()> {
    let Some(seen) = deployments::find(tx, name, false).await? else {
        return Ok(());
    };
    let experiment = match &seen.promoted_from {
        Some(experiment) => match experiments::lock(tx, experiment).await {
            Ok(locked) => Some(locked),
            Err(StoreError::NotFound(_)) => None, // deleted since its promotion
            Err(err) => return Err(err),
        },
        None => None,
    };
    let Some(deployment) = deployments::find(tx, name, true).await? else {
        return Ok(());
    };
    let Some(current) = rollouts::lock_open(tx, name)
        .await?
        .filter(|r| r.rollout.revision == deployment.revision)
    else {
        return Ok(()); // finished or superseded meanwhile
    };
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await?;
    let batch_started = current
        .rollout
        .batch_started_at
        .unwrap_or(current.rollout.started_at);
    let failures = tasks::failures_since(tx, TaskKind::Collector, batch_started).await?;
    let reports = host_reports(tx, &deployment, settings, &failures, series).await?;
    // The promoted experiment's hosts ran the candidate already: they go first.
    let first = experiment
        .as_ref()
        .filter(|e| deployment.promoted_from.as_deref() == Some(e.name.as_str()))
        .map(|e| e.target_hosts.clone())
        .unwrap_or_default();
    let limits = Limits {
        // A first revision replaces nothing: it goes everywhere at once (and is
        // still watched, host by host).
        batch_size: match current.rollout.from_revision {
            Some(_) => deployment.spec.rollout.batch_size(reports.len()),
            None => reports.len().max(1),
        },
        health_timeout: settings.health_timeout,
        series_window: settings.series_window,
        max_start_failures: settings.max_start_failures,
    };
    let decision = decide(&current.rollout, &reports, &first, &limits, now);
    if decision.rollout == current.rollout && decision.events.is_empty() {
        return Ok(());
    }
    rollouts::save(tx, name, &decision.rollout).await?;
    for event in &decision.events {
        tracing::info!(deployment = name, revision = deployment.revision, step = %event.step, host = event.host.as_deref(), reason = %event.reason, "roll-out");
        rollouts::record_event(
            tx,
            &NewEvent {
                deployment: name,
                revision: deployment.revision,
                step: event.step,
                batch: event.batch,
                host: event.host.as_deref(),
                reason: &event.reason,
            },
        )
        .await?;
    }
    if let Outcome::RollBack { reason } = &decision.outcome {
        let from = current.rollout.from_revision.zip(current.from_spec.clone());
        phoenix_api::app::promotion::undo_failed_rollout(tx, &deployment, from, reason)
            .await
            .map_err(|err| match err {
                phoenix_api::app::promotion::PromotionError::Store(err) => err,
                other => StoreError::Conflict(other.to_string()),
            })?;
    }
    Ok(())
}

/// Every host the deployment's current revision selects and runs on (it is the
/// host's standing owner), with what it reports.
async fn host_reports(
    tx: &mut PgConnection,
    deployment: &StoredDeployment,
    settings: &RolloutSettings,
    failures: &[FailedTask],
    series: &HashMap<(String, String), Series>,
) -> Result<Vec<HostReport>> {
    let all = deployments::list(tx).await?;
    let records = hosts::list_records(tx, HostFilter::All).await?;
    let collectors = hosts::collectors_by_host(tx, HostFilter::All).await?;
    let templates = crate::standing::template_configs(tx).await?;
    let destinations = destinations::specs(tx).await?;
    let Some(template) = templates.get(&deployment.spec.pipeline) else {
        return Ok(Vec::new());
    };
    let collector_id = phoenix_wire::agent::CollectorSpec::id_for(
        &deployment.name,
        phoenix_wire::agent::Variant::Standing,
    );
    let mut reports = Vec::new();
    let mut seen = BTreeSet::new();
    for host in &records {
        let owner = deployments::standing_owner(&all, &host.host_id, &host.labels);
        if owner.is_none_or(|o| o.name != deployment.name) || !seen.insert(&host.host_id) {
            continue;
        }
        let spec = phoenix_wire::render::standing_collector(
            &deployment.name,
            &deployment.spec,
            &host.host_id,
            template,
            &settings.remote_write_url,
            &destinations,
        );
        let failed: Vec<&FailedTask> = failures
            .iter()
            .filter(|f| {
                f.host_id == host.host_id
                    && f.unit_id == collector_id
                    && f.spec_hash == spec.config_hash
            })
            .collect();
        reports.push(HostReport {
            host: host.host_id.clone(),
            reported: collectors
                .get(&host.host_id)
                .and_then(|cs| cs.iter().find(|c| c.collector_id == collector_id))
                .cloned(),
            failed_starts: (failed.len(), failed.last().and_then(|f| f.error.clone())),
            series: series
                .get(&(deployment.name.clone(), host.host_id.clone()))
                .cloned()
                .unwrap_or(Series::NotMeasured),
            want_hash: spec.config_hash,
        });
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const LIMITS: Limits = Limits {
        batch_size: 2,
        health_timeout: Duration::from_secs(300),
        series_window: Some(Duration::from_secs(30)),
        max_start_failures: 3,
    };

    fn t(seconds: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
    }

    fn pending() -> Rollout {
        Rollout {
            revision: 2,
            from_revision: Some(1),
            state: RolloutState::Pending,
            batch: 0,
            batch_started_at: None,
            hosts: Default::default(),
            reason: None,
            started_at: t(0),
            finished_at: None,
        }
    }

    fn collector(hash: &str, health: Health) -> CollectorStatus {
        CollectorStatus {
            collector_id: "web.standing".into(),
            owner: "web".into(),
            variant: phoenix_wire::agent::Variant::Standing,
            pipeline: "p".into(),
            config_hash: hash.into(),
            pid: Some(1),
            health,
            restarts: 0,
            cpu_seconds: 0.0,
            rss_bytes: 0,
            last_error: None,
            rolled_back_from: None,
        }
    }

    /// Six hosts on the old config.
    fn fleet() -> Vec<HostReport> {
        (1..=6)
            .map(|i| HostReport {
                host: format!("web-{i}"),
                want_hash: "new".into(),
                reported: Some(collector("old", Health::Healthy)),
                failed_starts: (0, None),
                series: Series::NotMeasured,
            })
            .collect()
    }

    fn set(hosts: &mut [HostReport], host: &str, f: impl FnOnce(&mut HostReport)) {
        f(hosts.iter_mut().find(|h| h.host == host).unwrap())
    }

    fn steps(d: &Decision) -> Vec<(RolloutStep, Option<&str>)> {
        d.events
            .iter()
            .map(|e| (e.step, e.host.as_deref()))
            .collect()
    }

    #[test]
    fn batches_of_two_wait_for_health_and_series_then_finish() {
        let mut hosts = fleet();
        let d = decide(&pending(), &hosts, &[], &LIMITS, t(1));
        assert_eq!(steps(&d), vec![(RolloutStep::BatchStarted, None)]);
        assert_eq!(d.rollout.batch, 1);
        assert!(d.rollout.reached("web-1") && d.rollout.reached("web-2"));
        assert!(!d.rollout.reached("web-3"));
        // The same state again decides the same: nothing new.
        let again = decide(&d.rollout, &hosts, &[], &LIMITS, t(2));
        assert!(again.events.is_empty());
        assert_eq!(again.rollout.hosts, d.rollout.hosts);

        // Healthy on the new config: series are counted from then.
        for h in ["web-1", "web-2"] {
            set(&mut hosts, h, |r| {
                r.reported = Some(collector("new", Health::Healthy))
            });
        }
        let d = decide(&d.rollout, &hosts, &[], &LIMITS, t(10));
        assert!(d.events.is_empty());
        assert_eq!(d.rollout.hosts["web-1"].state, HostRollout::Healthy);
        // Before the window is over nothing moves, even with series counted.
        for h in ["web-1", "web-2"] {
            set(&mut hosts, h, |r| r.series = Series::Counted(12));
        }
        let d = decide(&d.rollout, &hosts, &[], &LIMITS, t(20));
        assert!(d.events.is_empty());
        let d = decide(&d.rollout, &hosts, &[], &LIMITS, t(41));
        assert_eq!(
            steps(&d),
            vec![
                (RolloutStep::HostHealthy, Some("web-1")),
                (RolloutStep::HostHealthy, Some("web-2")),
                (RolloutStep::BatchDone, None),
                (RolloutStep::BatchStarted, None),
            ]
        );
        assert_eq!(d.rollout.batch, 2);
        assert!(d.rollout.reached("web-3") && d.rollout.reached("web-4"));

        // The rest goes the same way; the last batch done is the roll-out done.
        let mut r = d.rollout;
        for (batch, pair) in [(2, ["web-3", "web-4"]), (3, ["web-5", "web-6"])] {
            for h in pair {
                set(&mut hosts, h, |r| {
                    r.reported = Some(collector("new", Health::Healthy));
                    r.series = Series::Counted(3);
                });
            }
            let at = t(100 * batch);
            r = decide(&r, &hosts, &[], &LIMITS, at).rollout;
            r = decide(&r, &hosts, &[], &LIMITS, at + chrono::Duration::seconds(31)).rollout;
        }
        assert_eq!(r.state, RolloutState::Done);
        assert_eq!(r.done_hosts(), 6);
    }

    #[test]
    fn a_host_that_fails_stops_the_rollout_and_rolls_back() {
        let mut hosts = fleet();
        let mut r = decide(&pending(), &hosts, &[], &LIMITS, t(0)).rollout;
        for h in ["web-1", "web-2"] {
            set(&mut hosts, h, |r| {
                r.reported = Some(collector("new", Health::Healthy));
                r.series = Series::Counted(5);
            });
        }
        r = decide(&r, &hosts, &[], &LIMITS, t(5)).rollout;
        r = decide(&r, &hosts, &[], &LIMITS, t(40)).rollout;
        assert_eq!(r.batch, 2);
        // web-4's new collector cannot start; web-3 is fine.
        set(&mut hosts, "web-3", |r| {
            r.reported = Some(collector("new", Health::Healthy))
        });
        set(&mut hosts, "web-4", |r| {
            r.failed_starts = (2, Some("cannot read credential".into()))
        });
        let d = decide(&r, &hosts, &[], &LIMITS, t(50));
        assert_eq!(
            d.outcome,
            Outcome::Continue,
            "two failures are not yet three"
        );
        set(&mut hosts, "web-4", |r| {
            r.failed_starts = (3, Some("cannot read credential".into()))
        });
        let d = decide(&d.rollout, &hosts, &[], &LIMITS, t(55));
        assert_eq!(
            steps(&d),
            vec![
                (RolloutStep::HostFailed, Some("web-4")),
                (RolloutStep::RolledBack, None)
            ]
        );
        assert!(
            d.events[0]
                .reason
                .contains("failed to start 3 times: cannot read credential")
        );
        assert!(
            matches!(&d.outcome, Outcome::RollBack { reason } if reason.contains("rolled back to revision 1"))
        );
        assert_eq!(d.rollout.state, RolloutState::RolledBack);
        assert!(!d.rollout.reached("web-5") && !d.rollout.reached("web-6"));
    }

    #[test]
    fn series_that_drop_to_zero_fail_the_host() {
        let mut hosts = fleet();
        let r = decide(&pending(), &hosts, &[], &LIMITS, t(0)).rollout;
        set(&mut hosts, "web-1", |r| {
            r.reported = Some(collector("new", Health::Healthy));
            r.series = Series::Counted(0);
        });
        let r = decide(&r, &hosts, &[], &LIMITS, t(5)).rollout;
        let d = decide(&r, &hosts, &[], &LIMITS, t(36));
        assert_eq!(steps(&d)[0], (RolloutStep::HostFailed, Some("web-1")));
        assert!(
            d.events[0].reason.contains("series dropped to zero"),
            "{:?}",
            d.events
        );
        // Without a window health alone decides.
        let no_series = Limits {
            series_window: None,
            ..LIMITS
        };
        let r = decide(&pending(), &hosts, &[], &no_series, t(0)).rollout;
        let d = decide(&r, &hosts, &[], &no_series, t(1));
        assert_eq!(d.rollout.hosts["web-1"].state, HostRollout::Done);
    }

    #[test]
    fn unhealthy_or_slow_collectors_fail_and_a_first_revision_has_nothing_to_go_back_to() {
        let mut hosts = fleet();
        let first = Rollout {
            from_revision: None,
            revision: 1,
            ..pending()
        };
        let r = decide(&first, &hosts, &[], &LIMITS, t(0)).rollout;
        set(&mut hosts, "web-2", |r| {
            let mut c = collector("new", Health::Restarting);
            c.last_error = Some("bind: address already in use".into());
            r.reported = Some(c);
        });
        let d = decide(&r, &hosts, &[], &LIMITS, t(10));
        assert!(d.events.is_empty(), "restarting is not yet a failure");
        let d = decide(&r, &hosts, &[], &LIMITS, t(301));
        assert_eq!(
            steps(&d),
            vec![
                (RolloutStep::HostFailed, Some("web-1")),
                (RolloutStep::HostFailed, Some("web-2")),
                (RolloutStep::Failed, None)
            ]
        );
        assert!(
            d.events[1]
                .reason
                .contains("restarting: bind: address already in use")
        );
        assert_eq!(d.rollout.state, RolloutState::Failed);
    }

    #[test]
    fn the_experiments_hosts_go_first_and_hosts_already_on_the_new_config_need_no_batch() {
        let mut hosts = fleet();
        set(&mut hosts, "web-6", |r| {
            r.reported = Some(collector("new", Health::Healthy))
        });
        let first = ["web-5".to_string(), "web-3".to_string()];
        let d = decide(&pending(), &hosts, &first, &LIMITS, t(0));
        let batch: Vec<&str> = d
            .rollout
            .hosts
            .iter()
            .filter(|(_, s)| s.batch == 1)
            .map(|(h, _)| h.as_str())
            .collect();
        assert_eq!(batch, vec!["web-3", "web-5"]);
        assert_eq!(d.rollout.hosts["web-6"].state, HostRollout::Done);
        assert_eq!(next_hosts(&["b", "a", "c"], &[], 2), vec!["a", "b"]);
    }
}
