//! The load step of a pass: which load runs each host should have, diffed against
//! what its agent reports and the open load tasks.
//!
//! Desired: an experiment's `load` section on each of its target hosts while it is
//! deploying or running, and every standalone run (`phoenix loadsim start`) that is
//! neither stopped nor expired, on each host resolved when it started. Both end at
//! their `expires_at`, which the spec carries, so an agent stops a run on time even
//! when it hears nothing more.
//!
//! Load units are tasks of kind `load` (unit id `load.<run id>`), diffed by the same
//! [`crate::diff::plan`] as collectors, one kind at a time, so neither ever stops
//! the other's units. A start that keeps failing on a host (say the run asks for
//! more processes than the host allows) is not retried.

use std::time::Duration;

use chrono::{DateTime, Utc};
use phoenix_storage::loads::{self, StoredLoadRun};
use phoenix_storage::tasks::{self, OpenTask};
use phoenix_storage::{PgConnection, Result};
use phoenix_wire::agent::{TaskKind, UnitSpec};
use phoenix_wire::duration::HumanDuration;
use phoenix_wire::load::{self as wire_load, LoadRunSpec};
use phoenix_wire::view::{Experiment, Phase};

use crate::changes::Scope;
use crate::config::ReconcilerConfig;
use crate::diff::{self, DesiredState, Plan};

/// The load step of a pass: desired load runs (from `experiments`, the active
/// experiments with the phases this pass gave them, and standalone runs) against
/// what agents report and the open tasks.
pub async fn plan_loads(
    conn: &mut PgConnection,
    experiments: &[Experiment],
    open: &[OpenTask],
    config: &ReconcilerConfig,
    now: DateTime<Utc>,
    scope: &Scope,
) -> Result<Plan> {
    let runs = loads::active_runs(conn).await?;
    let actual = loads::reported_by_host(conn, scope.filter()).await?;
    let since =
        now - chrono::Duration::from_std(wire_load::MAX_DURATION).expect("seven days fit a chrono");
    let failures = tasks::failures_since(conn, TaskKind::Load, since).await?;
    let mut desired = desired_loads(experiments, &runs, config.deploy_timeout.as_duration(), now);
    desired.retain(|host, _| scope.includes(host));
    let blocked = diff::blocked_by(
        &failures.iter().collect::<Vec<_>>(),
        config.max_start_failures,
    );
    Ok(diff::plan(
        TaskKind::Load,
        &desired,
        &actual,
        open,
        &blocked,
    ))
}

/// The load run an experiment's `load` section asks for, on every target host.
/// It lasts from the experiment's creation for the deploy timeout plus warmup plus
/// duration (at most [`wire_load::MAX_DURATION`]): the longest the experiment can
/// take to deploy and run. `None` without a load section, or one that no longer
/// validates (it did when the experiment was created).
pub fn experiment_load(experiment: &Experiment, deploy_timeout: Duration) -> Option<LoadRunSpec> {
    let load = experiment.spec.load.as_ref()?;
    let (profile, mut parameters) = match load.parameters() {
        Ok(resolved) => resolved,
        Err(err) => {
            tracing::warn!(experiment = %experiment.name, "ignoring the load section: {err}");
            return None;
        }
    };
    let length = (deploy_timeout
        + experiment.spec.warmup.as_duration()
        + experiment.spec.duration.as_duration())
    .min(wire_load::MAX_DURATION);
    // Whole seconds, so the spec (and its hash) does not depend on sub-second noise.
    let length = Duration::from_secs(length.as_secs().max(1));
    parameters.duration = HumanDuration(length);
    let expires_at =
        experiment.created_at + chrono::Duration::from_std(length).expect("bounded duration");
    Some(LoadRunSpec::new(
        LoadRunSpec::run_id_for_experiment(&experiment.name),
        experiment.name.clone(),
        profile,
        parameters,
        expires_at,
    ))
}

/// Every (host, load run) that should exist at `now`.
pub fn desired_loads(
    experiments: &[Experiment],
    runs: &[StoredLoadRun],
    deploy_timeout: Duration,
    now: DateTime<Utc>,
) -> DesiredState {
    let mut desired = DesiredState::new();
    let mut add = |hosts: &[String], spec: LoadRunSpec| {
        if spec.expires_at <= now {
            return;
        }
        for host in hosts {
            desired
                .entry(host.clone())
                .or_default()
                .insert(spec.unit_id(), UnitSpec::Load(spec.clone()));
        }
    };
    for experiment in experiments {
        if !matches!(experiment.phase, Phase::Deploying | Phase::Running) {
            continue;
        }
        if let Some(spec) = experiment_load(experiment, deploy_timeout) {
            add(&experiment.target_hosts, spec);
        }
    }
    for run in runs.iter().filter(|r| r.is_active(now)) {
        add(&run.target_hosts, run.spec());
    }
    desired
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    use phoenix_storage::tasks::FailedTask;
    use phoenix_wire::agent::TaskAction;
    use phoenix_wire::load::{LoadProfile, LoadState, LoadStatus};
    use phoenix_wire::resource::{ExperimentSpec, HostTarget, LoadSpec, PipelineRef};
    use phoenix_wire::view::TaskStatus;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_750_000_000 + secs, 0).unwrap()
    }

    fn experiment(name: &str, phase: Phase, load: Option<LoadSpec>) -> Experiment {
        let pipeline = |p: &str| PipelineRef {
            pipeline: p.into(),
            vars: Default::default(),
        };
        Experiment {
            name: name.into(),
            uid: "u".into(),
            labels: Default::default(),
            spec: ExperimentSpec {
                hosts: HostTarget {
                    selector: None,
                    names: Some(vec!["h1".into(), "h2".into()]),
                },
                baseline: pipeline("process-baseline"),
                candidate: pipeline("process-topk"),
                warmup: HumanDuration::from_secs(60),
                duration: HumanDuration::from_secs(600),
                load,
                critical_processes: vec![],
                max_hosts: None,
                criteria: Default::default(),
                promotion: Default::default(),
            },
            generation: 1,
            observed_generation: 1,
            phase,
            reason: None,
            target_hosts: vec!["h1".into(), "h2".into()],
            managed_by: None,
            created_at: at(0),
            updated_at: at(0),
            phase_changed_at: at(0),
        }
    }

    fn run(name: &str, phase: &str, expires_at: DateTime<Utc>) -> StoredLoadRun {
        StoredLoadRun {
            name: name.into(),
            hosts: HostTarget {
                selector: None,
                names: Some(vec!["h1".into()]),
            },
            target_hosts: vec!["h1".into()],
            profile: LoadProfile::ProcessChurn,
            parameters: LoadProfile::ProcessChurn.defaults(),
            phase: phase.into(),
            created_at: at(0),
            expires_at,
            stopped_at: None,
        }
    }

    fn reported(spec: &LoadRunSpec) -> LoadStatus {
        LoadStatus {
            run_id: spec.run_id.clone(),
            owner: spec.owner.clone(),
            profile: spec.profile,
            spec_hash: spec.spec_hash.clone(),
            state: LoadState::Running,
            live_processes: 3,
            spawned_total: 3,
            started_at: at(0),
            expires_at: spec.expires_at,
            last_error: None,
        }
    }

    fn open(id: i64, host: &str, unit: &str, action: TaskAction, hash: &str) -> OpenTask {
        OpenTask {
            id,
            host_id: host.into(),
            kind: TaskKind::Load,
            unit_id: unit.into(),
            action,
            spec_hash: hash.into(),
            status: TaskStatus::Pending,
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(300);

    #[test]
    fn experiments_want_load_while_deploying_or_running_until_it_expires() {
        let load = Some(LoadSpec {
            profile: "high-cardinality".into(),
            processes: Some(500),
        });
        let running = experiment("exp", Phase::Running, load.clone());
        let spec = experiment_load(&running, TIMEOUT).unwrap();
        assert_eq!(spec.unit_id(), "load.experiment.exp");
        assert_eq!(spec.parameters.processes, 500);
        // Deploy timeout + warmup + duration after creation.
        assert_eq!(spec.expires_at, at(300 + 60 + 600));
        // Stable: the same experiment gives the same hash every pass.
        assert_eq!(experiment_load(&running, TIMEOUT).unwrap(), spec);

        let d = desired_loads(std::slice::from_ref(&running), &[], TIMEOUT, at(10));
        assert_eq!(d.len(), 2);
        assert!(d["h1"].contains_key("load.experiment.exp"));
        assert!(desired_loads(std::slice::from_ref(&running), &[], TIMEOUT, at(961)).is_empty());
        for phase in [Phase::Pending, Phase::Stopped, Phase::Analyzing] {
            let e = experiment("exp", phase, load.clone());
            assert!(
                desired_loads(&[e], &[], TIMEOUT, at(10)).is_empty(),
                "{phase}"
            );
        }
        let without = experiment("exp", Phase::Running, None);
        assert!(desired_loads(&[without], &[], TIMEOUT, at(10)).is_empty());
    }

    #[test]
    fn standalone_runs_are_wanted_until_stopped_or_expired() {
        let runs = [
            run("live", "running", at(100)),
            run("stopped", "stopped", at(100)),
            run("old", "running", at(5)),
        ];
        let d = desired_loads(&[], &runs, TIMEOUT, at(10));
        let units: Vec<&String> = d["h1"].keys().collect();
        assert_eq!(units, vec!["load.run.live"]);
    }

    #[test]
    fn starts_once_then_nothing_and_stops_what_nobody_wants() {
        let spec = run("churn", "running", at(100)).spec();
        let desired = DesiredState::from([(
            "h1".to_string(),
            BTreeMap::from([(spec.unit_id(), UnitSpec::Load(spec.clone()))]),
        )]);
        let none = HashMap::<String, Vec<LoadStatus>>::new();
        let p = diff::plan(TaskKind::Load, &desired, &none, &[], &diff::Blocked::new());
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Start);
        assert_eq!(p.new_tasks[0].unit_id, "load.run.churn");
        // With the task open, nothing more.
        let o = [open(
            1,
            "h1",
            "load.run.churn",
            TaskAction::Start,
            &spec.spec_hash,
        )];
        assert_eq!(
            diff::plan(TaskKind::Load, &desired, &none, &o, &diff::Blocked::new()),
            Plan::default()
        );
        // Reported (running or finished) with the hash: nothing.
        let mut status = reported(&spec);
        let actual = HashMap::from([("h1".to_string(), vec![status.clone()])]);
        assert_eq!(
            diff::plan(
                TaskKind::Load,
                &desired,
                &actual,
                &[],
                &diff::Blocked::new()
            ),
            Plan::default()
        );
        status.state = LoadState::Finished;
        let actual = HashMap::from([("h1".to_string(), vec![status])]);
        assert_eq!(
            diff::plan(
                TaskKind::Load,
                &desired,
                &actual,
                &[],
                &diff::Blocked::new()
            ),
            Plan::default()
        );
        // No longer desired: stop, and cancel a pending start.
        let p = diff::plan(
            TaskKind::Load,
            &DesiredState::new(),
            &actual,
            &o,
            &diff::Blocked::new(),
        );
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Stop);
        assert_eq!(p.cancel, vec![1]);
    }

    #[test]
    fn a_new_hash_updates_and_blocked_starts_are_not_retried() {
        let old = run("churn", "running", at(100)).spec();
        let new = run("churn", "running", at(200)).spec();
        let desired = DesiredState::from([(
            "h1".to_string(),
            BTreeMap::from([(new.unit_id(), UnitSpec::Load(new.clone()))]),
        )]);
        let actual = HashMap::from([("h1".to_string(), vec![reported(&old)])]);
        let p = diff::plan(
            TaskKind::Load,
            &desired,
            &actual,
            &[],
            &diff::Blocked::new(),
        );
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Update);
        assert_eq!(p.new_tasks[0].spec_hash, new.spec_hash);

        let failure = |at_s| FailedTask {
            id: at_s,
            host_id: "h1".into(),
            unit_id: new.unit_id(),
            spec_hash: new.spec_hash.clone(),
            error: Some("too many processes".into()),
            created_at: at(at_s),
        };
        let failures = [failure(1), failure(2), failure(3)];
        let blocked = diff::blocked_by(&failures.iter().collect::<Vec<_>>(), 3);
        assert!(diff::blocked_by(&failures[..2].iter().collect::<Vec<_>>(), 3).is_empty());
        assert_eq!(
            diff::plan(
                TaskKind::Load,
                &desired,
                &HashMap::<String, Vec<LoadStatus>>::new(),
                &[],
                &blocked
            ),
            Plan::default()
        );
    }
}
