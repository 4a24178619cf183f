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

/// A pending experiment deploys to the hosts it selects now: all of them, or a
/// sample of at most `spec.maxHosts` and `max_hosts` (the reconciler's
/// `--max-experiment-hosts`, the width its Prometheus ingests) when fewer.
pub fn decide_pending(
    experiment: &Experiment,
    hosts: &[HostRecord],
    max_hosts: Option<usize>,
) -> Decision {
    let matching: Vec<String> = hosts
        .iter()
        .filter(|h| experiment.spec.hosts.matches(&h.host_id, &h.labels))
        .map(|h| h.host_id.clone())
        .collect();
    if matching.is_empty() {
        return Decision::Fail {
            reason: "no registered host matches spec.hosts".into(),
        };
    }
    let spec_max = experiment.spec.max_hosts.map(|m| m as usize);
    let limit = match (spec_max, max_hosts) {
        (Some(spec), Some(reconciler)) if reconciler < spec => {
            Some((reconciler, "the reconciler's --max-experiment-hosts"))
        }
        (Some(spec), _) => Some((spec, "spec.maxHosts")),
        (None, Some(reconciler)) => Some((reconciler, "the reconciler's --max-experiment-hosts")),
        (None, None) => None,
    };
    let (targets, sampled) = match limit {
        Some((max, by)) if matching.len() > max => (
            sample_hosts(&experiment.name, matching.clone(), max),
            format!(
                " of {} matching (a stable sample: {by} is {max})",
                matching.len()
            ),
        ),
        _ => (matching, String::new()),
    };
    let reason = format!(
        "deploying to {} host(s){sampled}: {}",
        targets.len(),
        host_list(&targets)
    );
    Decision::Deploy { targets, reason }
}

/// At most `max` of `hosts`, chosen by a stable hash of the experiment's name and
/// each host id: the same hosts for the same experiment and fleet, spread over the
/// fleet rather than the first in name order, and different for another
/// experiment. Sorted by host id.
pub fn sample_hosts(experiment: &str, mut hosts: Vec<String>, max: usize) -> Vec<String> {
    if hosts.len() > max {
        hosts.sort_by_cached_key(|host| {
            phoenix_wire::agent::body_sha256(&format!("{experiment}\n{host}"))
        });
        hosts.truncate(max);
        hosts.sort();
    }
    hosts
}

/// Up to ten host ids, then how many more: a reason stays readable at 10,000 hosts.
fn host_list(hosts: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut list = hosts
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if hosts.len() > SHOWN {
        list += &format!(" and {} more", hosts.len() - SHOWN);
    }
    list
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

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_wire::duration::HumanDuration;
    use phoenix_wire::resource::{ExperimentSpec, HostTarget, PipelineRef};
    use phoenix_wire::view::Phase;

    fn experiment(name: &str, max_hosts: Option<u32>) -> Experiment {
        let pipeline = |p: &str| PipelineRef {
            pipeline: p.into(),
            vars: Default::default(),
        };
        let at = DateTime::from_timestamp(1_750_000_000, 0).unwrap();
        Experiment {
            name: name.into(),
            uid: "u".into(),
            labels: Default::default(),
            spec: ExperimentSpec {
                hosts: HostTarget {
                    selector: Some([("role".to_string(), "web".to_string())].into()),
                    names: None,
                },
                baseline: pipeline("process-baseline"),
                candidate: pipeline("process-topk"),
                warmup: HumanDuration::from_secs(60),
                duration: HumanDuration::from_secs(600),
                load: None,
                critical_processes: vec![],
                max_hosts,
                criteria: Default::default(),
                promotion: Default::default(),
            },
            generation: 1,
            observed_generation: 0,
            phase: Phase::Pending,
            reason: None,
            target_hosts: vec![],
            managed_by: None,
            created_at: at,
            updated_at: at,
            phase_changed_at: at,
        }
    }

    fn fleet(n: usize) -> Vec<HostRecord> {
        (0..n)
            .map(|i| HostRecord {
                host_id: format!("web-{i:04}"),
                labels: [("role".to_string(), "web".to_string())].into(),
                agent_version: "test".into(),
                last_seen: DateTime::from_timestamp(1_750_000_000, 0).unwrap(),
            })
            .collect()
    }

    fn deploy(decision: Decision) -> (Vec<String>, String) {
        match decision {
            Decision::Deploy { targets, reason } => (targets, reason),
            other => panic!("expected a deploy, got {other:?}"),
        }
    }

    #[test]
    fn a_wide_selector_runs_on_a_stable_sample() {
        let hosts = fleet(1000);
        // No limit: every selected host, and a reason that stays short.
        let (all, reason) = deploy(decide_pending(&experiment("wide", None), &hosts, None));
        assert_eq!(all.len(), 1000);
        assert!(reason.ends_with("and 990 more"), "{reason}");
        assert!(reason.len() < 200, "{reason}");

        // The reconciler's cap: a sample of 50, said so, the same on the next pass.
        let (sample, reason) = deploy(decide_pending(&experiment("wide", None), &hosts, Some(50)));
        assert_eq!(sample.len(), 50);
        assert!(
            reason.starts_with(
                "deploying to 50 host(s) of 1000 matching (a stable sample: the reconciler's --max-experiment-hosts is 50)"
            ),
            "{reason}"
        );
        let (again, _) = deploy(decide_pending(&experiment("wide", None), &hosts, Some(50)));
        assert_eq!(again, sample, "stable across passes");
        // Spread over the fleet, not the first 50 in name order.
        assert!(sample.iter().any(|h| h.as_str() > "web-0500"), "{sample:?}");
        // Another experiment samples other hosts.
        let (other, _) = deploy(decide_pending(&experiment("other", None), &hosts, Some(50)));
        assert_ne!(other, sample);

        // spec.maxHosts narrows further; the smaller limit wins and is named.
        let (narrow, reason) = deploy(decide_pending(
            &experiment("wide", Some(10)),
            &hosts,
            Some(50),
        ));
        assert_eq!(narrow.len(), 10);
        assert!(reason.contains("spec.maxHosts is 10"), "{reason}");
        let (capped, reason) = deploy(decide_pending(
            &experiment("wide", Some(500)),
            &hosts,
            Some(50),
        ));
        assert_eq!(capped.len(), 50);
        assert!(reason.contains("--max-experiment-hosts is 50"), "{reason}");

        // Fewer matching hosts than the limit: all of them, no sample.
        let (few, reason) = deploy(decide_pending(
            &experiment("wide", None),
            &fleet(3),
            Some(50),
        ));
        assert_eq!(few.len(), 3);
        assert!(!reason.contains("sample"), "{reason}");
    }
}
