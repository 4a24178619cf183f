//! The experiment state machine, as pure decisions: given an experiment and what the
//! fleet reports, which transition (if any) is due and why.
//!
//! `pending → deploying` resolves the target hosts once; `deploying → running` when
//! every target reports both collectors healthy with the desired hash; `deploying →
//! failed` when a collector keeps failing to start or the deploy timeout passes.
//! `running → analyzing` once `warmup` plus `duration` have passed since it started
//! running; the window analyzed is the `duration` after the warmup. (`analyzing →
//! completed | failed` is the analyzer's, see `crate::analyzer`.)

use std::collections::{BTreeMap, HashMap};
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
        first_ten(targets.iter().map(String::as_str), ", ")
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

/// Up to ten items, then how many more: a reason stays readable at 10,000 hosts.
fn first_ten<'a>(items: impl ExactSizeIterator<Item = &'a str>, separator: &str) -> String {
    const SHOWN: usize = 10;
    let total = items.len();
    let mut list = items.take(SHOWN).collect::<Vec<_>>().join(separator);
    if total > SHOWN {
        list += &format!(" and {} more", total - SHOWN);
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

/// The collectors of one deploying experiment not yet healthy with their desired
/// hash, as far as the passes since it began deploying have seen: kept by the
/// leader between passes ([`DeployProgress`]) so that a pass scoped to the hosts
/// that changed need not read every target again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NotReady {
    /// The experiment's `phase_changed_at` when the count began; another start of
    /// deploying begins again.
    since: Option<DateTime<Utc>>,
    /// (host, collector id) → why it is not ready.
    collectors: BTreeMap<(String, String), String>,
}

/// What the leader knows between passes about each deploying experiment.
#[derive(Clone, Debug, Default)]
pub struct DeployProgress {
    experiments: HashMap<String, NotReady>,
}

impl DeployProgress {
    /// What earlier passes found for `experiment`, if they saw every one of its
    /// targets since it began deploying; `None` means this pass must see them all.
    pub fn known(&self, experiment: &Experiment) -> Option<&NotReady> {
        self.experiments
            .get(&experiment.name)
            .filter(|known| known.since == Some(experiment.phase_changed_at))
    }

    /// Remembers `not_ready` for `experiment` (still deploying after this pass).
    pub fn remember(&mut self, experiment: &Experiment, not_ready: NotReady) {
        self.experiments.insert(experiment.name.clone(), not_ready);
    }
}

/// A deploying experiment runs once every desired collector is healthy with its
/// hash, fails when one keeps failing or time runs out.
///
/// `desired` holds the targets this pass looks at, and `not_ready` what earlier
/// passes found for the others (empty when this pass looks at every target): a
/// target outside the pass did not change since, so what was found still holds.
/// `not_ready` leaves updated.
pub fn decide_deploying(
    experiment: &Experiment,
    desired: &[(String, CollectorSpec)],
    actual: &HashMap<String, Vec<CollectorStatus>>,
    failures: &[FailedTask],
    not_ready: &mut NotReady,
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
    not_ready.since = Some(since);
    for (host, spec) in desired {
        let key = (host.clone(), spec.collector_id.clone());
        match why_not_ready(host, spec, actual, failures, since) {
            Some(why) => not_ready.collectors.insert(key, why),
            None => not_ready.collectors.remove(&key),
        };
    }
    if not_ready.collectors.is_empty() {
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
                first_ten(not_ready.collectors.values().map(String::as_str), "; ")
            ),
        };
    }
    Decision::Stay
}

/// Why one desired collector is not healthy with its desired hash, or `None`
/// when it is.
fn why_not_ready(
    host: &str,
    spec: &CollectorSpec,
    actual: &HashMap<String, Vec<CollectorStatus>>,
    failures: &[FailedTask],
    since: DateTime<Utc>,
) -> Option<String> {
    let reported = actual
        .get(host)
        .and_then(|cs| cs.iter().find(|c| c.collector_id == spec.collector_id));
    match reported {
        Some(c) if c.config_hash == spec.config_hash && c.health == Health::Healthy => None,
        Some(c) if c.config_hash == spec.config_hash => Some(format!(
            "{host}: {} is {}{}",
            spec.collector_id,
            c.health.as_str(),
            c.last_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )),
        Some(_) => Some(format!(
            "{host}: {} runs an older config",
            spec.collector_id
        )),
        None => {
            let last_error = failures_of(failures, host, spec, since)
                .last()
                .and_then(|f| f.error.clone());
            Some(format!(
                "{host}: {} not running{}",
                spec.collector_id,
                last_error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            ))
        }
    }
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
    use phoenix_wire::agent::Variant;
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

    fn spec(host: &str, variant: Variant) -> (String, CollectorSpec) {
        let env = [("HOST".to_string(), host.to_string())].into();
        let id = format!("wide.{variant}");
        let spec = CollectorSpec::new(id, "wide".into(), variant, "p".into(), "cfg", env);
        (host.to_string(), spec)
    }

    fn healthy(spec: &CollectorSpec) -> CollectorStatus {
        CollectorStatus {
            collector_id: spec.collector_id.clone(),
            owner: spec.owner.clone(),
            variant: spec.variant,
            pipeline: spec.pipeline.clone(),
            config_hash: spec.config_hash.clone(),
            pid: Some(1),
            health: Health::Healthy,
            restarts: 0,
            cpu_seconds: 0.0,
            rss_bytes: 0,
            last_error: None,
            rolled_back_from: None,
        }
    }

    #[test]
    fn a_deploy_is_decided_from_what_earlier_passes_found_and_the_hosts_that_changed() {
        let mut e = experiment("wide", None);
        e.phase = Phase::Deploying;
        e.target_hosts = vec!["web-0".into(), "web-1".into()];
        let limits = DeployLimits {
            timeout: Duration::from_secs(600),
            max_start_failures: 3,
        };
        let now = e.phase_changed_at + chrono::Duration::seconds(10);
        let desired = |hosts: &[&str]| -> Vec<(String, CollectorSpec)> {
            hosts
                .iter()
                .flat_map(|h| [spec(h, Variant::Baseline), spec(h, Variant::Candidate)])
                .collect()
        };
        let report = |hosts: &[&str]| -> HashMap<String, Vec<CollectorStatus>> {
            desired(hosts)
                .into_iter()
                .map(|(h, s)| (h, vec![healthy(&s)]))
                .fold(HashMap::new(), |mut by_host, (h, mut c)| {
                    by_host.entry(h).or_insert_with(Vec::new).append(&mut c);
                    by_host
                })
        };

        // The first pass sees both targets; web-0 is ready, web-1 reports nothing.
        let mut not_ready = NotReady::default();
        let decision = decide_deploying(
            &e,
            &desired(&["web-0", "web-1"]),
            &report(&["web-0"]),
            &[],
            &mut not_ready,
            &limits,
            now,
        );
        assert_eq!(decision, Decision::Stay);
        let waiting: Vec<&String> = not_ready.collectors.values().collect();
        assert_eq!(
            waiting,
            [
                "web-1: wide.baseline not running",
                "web-1: wide.candidate not running"
            ]
        );
        let mut progress = DeployProgress::default();
        progress.remember(&e, not_ready);

        // A pass scoped to web-1 alone, which is now ready: every target is.
        let mut not_ready = progress.known(&e).cloned().expect("known");
        let decision = decide_deploying(
            &e,
            &desired(&["web-1"]),
            &report(&["web-1"]),
            &[],
            &mut not_ready,
            &limits,
            now,
        );
        assert_eq!(
            decision,
            Decision::Run {
                reason: "both collectors healthy on all 2 host(s)".into()
            }
        );

        // A pass scoped to web-0 alone does not run the experiment while web-1,
        // outside the pass, was last seen not ready; and past the timeout the
        // reason names what earlier passes found.
        let mut not_ready = progress.known(&e).cloned().expect("known");
        let later = e.phase_changed_at + chrono::Duration::seconds(601);
        let decision = decide_deploying(
            &e,
            &desired(&["web-0"]),
            &report(&["web-0"]),
            &[],
            &mut not_ready,
            &limits,
            later,
        );
        assert_eq!(
            decision,
            Decision::Fail {
                reason: "deploy timed out after 10m: web-1: wide.baseline not running; \
                         web-1: wide.candidate not running"
                    .into()
            }
        );

        // Deploying again (a new phase_changed_at) forgets what was found.
        let mut again = e.clone();
        again.phase_changed_at = later;
        assert!(progress.known(&again).is_none());
    }
}
