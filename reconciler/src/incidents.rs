//! What was asked is what is measured: a collector or load task of an experiment
//! that fails while the experiment deploys or runs becomes an event of the
//! experiment (once per task, so `phoenix experiment events` and the report show
//! it), and a failure that breaks the comparison fails the experiment with that
//! reason:
//!
//! - the experiment's load (`spec.load`) failed to start `max_start_failures` times
//!   on a target host: the hosts would be measured without the load the user asked
//!   for;
//! - a collector of a running experiment failed `max_start_failures` times on a
//!   target host (an experiment still deploying fails by
//!   [`crate::lifecycle::decide_deploying`]): one side is no longer measured there.
//!
//! [`judge`] is the pure decision; the pass records what it says.

use std::collections::HashMap;

use phoenix_storage::tasks::FailedTask;
use phoenix_wire::agent::Variant;
use phoenix_wire::load::LoadRunSpec;
use phoenix_wire::view::{Experiment, Phase};

/// What the failed tasks of one experiment mean.
#[derive(Debug, Default, PartialEq)]
pub struct Judgement {
    /// An event per failed task: (task id, reason).
    pub events: Vec<(i64, String)>,
    /// Why the experiment fails, when a failure breaks the comparison.
    pub fail: Option<String>,
}

/// Judges the failed collector and load tasks (every kind's failed starts and
/// updates since at least the experiment's creation) of a deploying or running
/// experiment.
pub fn judge(
    experiment: &Experiment,
    collector_failures: &[FailedTask],
    load_failures: &[FailedTask],
    max_start_failures: usize,
) -> Judgement {
    let mut judgement = Judgement::default();
    if !matches!(experiment.phase, Phase::Deploying | Phase::Running) {
        return judgement;
    }
    let ours = |f: &&FailedTask| {
        f.created_at >= experiment.created_at && experiment.target_hosts.contains(&f.host_id)
    };
    let collectors: Vec<String> = [Variant::Baseline, Variant::Candidate]
        .iter()
        .map(|v| format!("{}.{v}", experiment.name))
        .collect();
    let load_unit = format!(
        "load.{}",
        LoadRunSpec::run_id_for_experiment(&experiment.name)
    );
    let error = |f: &FailedTask| f.error.clone().unwrap_or_else(|| "no error text".into());

    let mut counts: HashMap<(&str, &str, &str), (usize, &FailedTask)> = HashMap::new();
    for f in collector_failures
        .iter()
        .filter(ours)
        .filter(|f| collectors.contains(&f.unit_id))
    {
        judgement.events.push((
            f.id,
            format!(
                "collector {} failed on host {} (task {}): {}",
                f.unit_id,
                f.host_id,
                f.id,
                error(f)
            ),
        ));
        let entry = counts
            .entry((&f.host_id, &f.unit_id, &f.spec_hash))
            .or_insert((0, f));
        *entry = (entry.0 + 1, f);
    }
    if experiment.phase == Phase::Running {
        let mut broken: Vec<_> = counts
            .iter()
            .filter(|(_, (n, _))| *n >= max_start_failures)
            .collect();
        broken.sort_by_key(|((host, unit, _), _)| (*host, *unit));
        if let Some(((host, unit, _), (n, last))) = broken.first() {
            judgement.fail = Some(format!(
                "collector {unit} failed {n} times on host {host} while the experiment ran, so one side is no longer measured there: {}",
                error(last)
            ));
        }
    }

    let mut load_counts: HashMap<(&str, &str), (usize, &FailedTask)> = HashMap::new();
    for f in load_failures
        .iter()
        .filter(ours)
        .filter(|f| f.unit_id == load_unit)
    {
        judgement.events.push((
            f.id,
            format!(
                "load failed on host {} (task {}): {}",
                f.host_id,
                f.id,
                error(f)
            ),
        ));
        let entry = load_counts
            .entry((&f.host_id, &f.spec_hash))
            .or_insert((0, f));
        *entry = (entry.0 + 1, f);
    }
    if judgement.fail.is_none() {
        let mut broken: Vec<_> = load_counts
            .iter()
            .filter(|(_, (n, _))| *n >= max_start_failures)
            .collect();
        broken.sort_by_key(|((host, _), _)| *host);
        if let Some(((host, _), (n, last))) = broken.first() {
            let asked = experiment
                .spec
                .load
                .as_ref()
                .map(|l| format!(" ({})", l.profile))
                .unwrap_or_default();
            judgement.fail = Some(format!(
                "the load it asked for{asked} failed to start {n} times on host {host}, so the comparison would not be measured under that load: {}",
                error(last)
            ));
        }
    }
    judgement
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn experiment(phase: Phase) -> Experiment {
        let doc: phoenix_wire::resource::ExperimentDocument = phoenix_wire::resource::parse_document(
            b"apiVersion: phoenix.dev/v1\nkind: Experiment\nmetadata: {name: e}\nspec:\n  hosts: {selector: {role: web}}\n  baseline: {pipeline: process-baseline}\n  candidate: {pipeline: process-topk}\n  warmup: 0s\n  duration: 1m\n  load: {profile: high-cardinality, processes: 100}\n",
            phoenix_wire::resource::DocumentFormat::Yaml,
        )
        .expect("a valid document");
        let spec = doc.spec;
        Experiment {
            name: "e".into(),
            uid: "u".into(),
            labels: Default::default(),
            spec,
            generation: 1,
            observed_generation: 1,
            phase,
            reason: None,
            target_hosts: vec!["h1".into(), "h2".into()],
            managed_by: None,
            created_at: at(0),
            updated_at: at(0),
            phase_changed_at: at(10),
        }
    }

    fn failed(id: i64, host: &str, unit: &str, created: i64) -> FailedTask {
        FailedTask {
            id,
            host_id: host.into(),
            unit_id: unit.into(),
            spec_hash: "hash".into(),
            error: Some(format!("boom {id}")),
            created_at: at(created),
        }
    }

    #[test]
    fn each_failed_task_of_the_experiment_is_one_event_and_others_are_ignored() {
        let e = experiment(Phase::Running);
        let collectors = [
            failed(1, "h1", "e.candidate", 5),
            failed(2, "h3", "e.candidate", 5), // not a target host
            failed(3, "h1", "other.candidate", 5), // another experiment
            failed(4, "h1", "e.baseline", -5), // before this experiment existed
        ];
        let loads = [failed(5, "h2", "load.experiment.e", 6)];
        let j = judge(&e, &collectors, &loads, 3);
        let ids: Vec<i64> = j.events.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![1, 5]);
        assert!(
            j.events[0]
                .1
                .contains("collector e.candidate failed on host h1")
        );
        assert!(j.events[0].1.contains("boom 1"));
        assert!(j.events[1].1.contains("load failed on host h2"));
        assert_eq!(j.fail, None, "one failure of each is retried, not fatal");
    }

    #[test]
    fn load_that_keeps_failing_fails_the_experiment_naming_host_and_error() {
        let e = experiment(Phase::Deploying);
        let loads: Vec<FailedTask> = (1..=3)
            .map(|i| failed(i, "h2", "load.experiment.e", i))
            .collect();
        let j = judge(&e, &[], &loads, 3);
        assert_eq!(j.events.len(), 3);
        let reason = j.fail.expect("fails");
        assert!(reason.contains("host h2"), "{reason}");
        assert!(reason.contains("high-cardinality"), "{reason}");
        assert!(reason.contains("boom 3"), "{reason}");
        assert_eq!(judge(&e, &[], &loads[..2], 3).fail, None);
    }

    #[test]
    fn a_collector_that_keeps_failing_fails_a_running_experiment_only() {
        let collectors: Vec<FailedTask> = (1..=3)
            .map(|i| failed(i, "h1", "e.baseline", 20 + i))
            .collect();
        let running = judge(&experiment(Phase::Running), &collectors, &[], 3);
        let reason = running.fail.expect("fails");
        assert!(
            reason.contains("collector e.baseline failed 3 times on host h1"),
            "{reason}"
        );
        // Deploying: lifecycle::decide_deploying decides; the events are recorded.
        let deploying = judge(&experiment(Phase::Deploying), &collectors, &[], 3);
        assert_eq!(deploying.fail, None);
        assert_eq!(deploying.events.len(), 3);
        assert_eq!(
            judge(&experiment(Phase::Completed), &collectors, &[], 3),
            Judgement::default()
        );
    }
}
