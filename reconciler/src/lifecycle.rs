//! The experiment state machine, as pure decisions: given an experiment and what the
//! fleet reports, which transition (if any) is due and why.
//!
//! `pending → deploying` resolves the target hosts once; `deploying → running` when
//! every target reports both collectors healthy with the desired hash; `deploying →
//! failed` when a collector keeps failing to start or the deploy timeout passes.
//! `running → analyzing` once `warmup` plus `duration` have passed since it started
//! running; the window analyzed is the `duration` after the warmup. (`analyzing →
//! completed | failed` is the analyzer's, see `crate::analyzer`.)

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use phoenix_storage::hosts::HostRecord;
use phoenix_storage::tasks::FailedTask;
use phoenix_wire::agent::{CollectorSpec, CollectorStatus, Health};
use phoenix_wire::view::Experiment;

#[derive(Debug, PartialEq)]
pub enum Decision {
    Stay,
    Deploy {
        targets: Vec<String>,
        reason: String,
    },
    Run {
        reason: String,
    },
    /// Measuring is over: analyze the window from `window_start` to `window_end`.
    Analyze {
        window_start: DateTime<Utc>,
        window_end: DateTime<Utc>,
        reason: String,
    },
    Fail {
        reason: String,
    },
}

/// A pending experiment deploys to the hosts it selects now.
pub fn decide_pending(experiment: &Experiment, hosts: &[HostRecord]) -> Decision {
    let targets: Vec<String> = hosts
        .iter()
        .filter(|h| experiment.spec.hosts.matches(&h.host_id, &h.labels))
        .map(|h| h.host_id.clone())
        .collect();
    if targets.is_empty() {
        return Decision::Fail {
            reason: "no registered host matches spec.hosts".into(),
        };
    }
    let reason = format!(
        "deploying to {} host(s): {}",
        targets.len(),
        targets.join(", ")
    );
    Decision::Deploy { targets, reason }
}

/// Failed starts of one collector config on one host since `since`.
pub fn failures_of<'a>(
    failures: &'a [FailedTask],
    host: &str,
    spec: &CollectorSpec,
    since: DateTime<Utc>,
) -> Vec<&'a FailedTask> {
    failures
        .iter()
        .filter(|f| {
            f.host_id == host
                && f.unit_id == spec.collector_id
                && f.spec_hash == spec.config_hash
                && f.created_at >= since
        })
        .collect()
}

/// Settings of the deploying decision.
pub struct DeployLimits {
    pub timeout: Duration,
    pub max_start_failures: usize,
}

/// A deploying experiment runs once every desired collector is healthy with its
/// hash, fails when one keeps failing or time runs out.
pub fn decide_deploying(
    experiment: &Experiment,
    desired: &[(String, CollectorSpec)],
    actual: &HashMap<String, Vec<CollectorStatus>>,
    failures: &[FailedTask],
    limits: &DeployLimits,
    now: DateTime<Utc>,
) -> Decision {
    let since = experiment.phase_changed_at;
    for (host, spec) in desired {
        let failed = failures_of(failures, host, spec, since);
        if failed.len() >= limits.max_start_failures {
            let error = failed
                .last()
                .and_then(|f| f.error.as_deref())
                .unwrap_or("no error text");
            return Decision::Fail {
                reason: format!(
                    "collector {} ({}) failed to start on host {host} {} times: {error}",
                    spec.collector_id,
                    spec.pipeline,
                    failed.len()
                ),
            };
        }
    }
    let mut not_ready = Vec::new();
    for (host, spec) in desired {
        let reported = actual
            .get(host)
            .and_then(|cs| cs.iter().find(|c| c.collector_id == spec.collector_id));
        match reported {
            Some(c) if c.config_hash == spec.config_hash && c.health == Health::Healthy => {}
            Some(c) if c.config_hash == spec.config_hash => not_ready.push(format!(
                "{host}: {} is {}{}",
                spec.collector_id,
                c.health.as_str(),
                c.last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )),
            Some(_) => not_ready.push(format!(
                "{host}: {} runs an older config",
                spec.collector_id
            )),
            None => {
                let last_error = failures_of(failures, host, spec, since)
                    .last()
                    .and_then(|f| f.error.clone());
                not_ready.push(format!(
                    "{host}: {} not running{}",
                    spec.collector_id,
                    last_error
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ))
            }
        }
    }
    if not_ready.is_empty() {
        let hosts = experiment.target_hosts.len();
        return Decision::Run {
            reason: format!("both collectors healthy on all {hosts} host(s)"),
        };
    }
    let elapsed = now
        .signed_duration_since(since)
        .to_std()
        .unwrap_or_default();
    if elapsed > limits.timeout {
        return Decision::Fail {
            reason: format!(
                "deploy timed out after {}: {}",
                phoenix_wire::duration::HumanDuration(limits.timeout),
                not_ready.join("; ")
            ),
        };
    }
    Decision::Stay
}

/// A running experiment is done measuring once warmup and duration have passed.
pub fn decide_running(experiment: &Experiment, now: DateTime<Utc>) -> Decision {
    let warmup =
        chrono::Duration::from_std(experiment.spec.warmup.as_duration()).unwrap_or_default();
    let duration =
        chrono::Duration::from_std(experiment.spec.duration.as_duration()).unwrap_or_default();
    let window_start = experiment.phase_changed_at + warmup;
    let window_end = window_start + duration;
    if now < window_end {
        return Decision::Stay;
    }
    Decision::Analyze {
        window_start,
        window_end,
        reason: format!(
            "measured for {} after a {} warmup; analyzing",
            experiment.spec.duration, experiment.spec.warmup
        ),
    }
}
