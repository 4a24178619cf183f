//! The load step of a pass: which load runs each host should have, diffed against
//! what its agent reports and the open load tasks.
//!
//! Desired: an experiment's `load` section on each of its target hosts while it is
//! deploying or running, and every standalone run (`phoenix loadsim start`) that is
//! neither stopped nor expired, on each host resolved when it started. Both end at
//! their `expires_at`, which the spec carries, so an agent stops a run on time even
//! when it hears nothing more.
//!
//! Load units are tasks of kind `load` (unit id `load.<run id>`); this step reads
//! and writes only those, and the collector diff ([`crate::diff`]) only the others,
//! so neither ever stops the other's units. A start that keeps failing on a host
//! (say the run asks for more processes than the host allows) is not retried.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use phoenix_storage::loads::{self, StoredLoadRun};
use phoenix_storage::tasks::{self, FailedTask, NewLoadTask, OpenTask};
use phoenix_storage::{PgConnection, Result};
use phoenix_wire::agent::TaskAction;
use phoenix_wire::duration::HumanDuration;
use phoenix_wire::load::{self as wire_load, LoadRunSpec, LoadStatus};
use phoenix_wire::view::{Experiment, Phase};

use crate::config::ReconcilerConfig;

/// Desired load runs: host id → unit id → spec.
pub type DesiredLoads = BTreeMap<String, BTreeMap<String, LoadRunSpec>>;

/// A (host, unit id, spec hash) whose starts keep failing: not retried.
pub type BlockedLoads = HashSet<(String, String, String)>;

/// What the load step wrote.
#[derive(Debug, Default, PartialEq)]
pub struct LoadReport {
    pub tasks_created: u64,
    pub tasks_cancelled: u64,
}

/// Runs the load step inside the pass's transaction. `experiments` are the active
/// experiments with the phases this pass gave them.
pub async fn reconcile(
    conn: &mut PgConnection,
    experiments: &[Experiment],
    config: &ReconcilerConfig,
    now: DateTime<Utc>,
) -> Result<LoadReport> {
    let runs = loads::active_runs(conn).await?;
    // Open tasks first, as in the collector pass (see `tasks::list_open`).
    let open = tasks::list_open_load(conn).await?;
    let actual = loads::reported_by_host(conn).await?;
    let since =
        now - chrono::Duration::from_std(wire_load::MAX_DURATION).expect("seven days fit a chrono");
    let failures = tasks::load_failures_since(conn, since).await?;

    let desired = desired_loads(experiments, &runs, config.deploy_timeout.as_duration(), now);
    let blocked = blocked_loads(&failures, config.max_start_failures);
    let plan = plan(&desired, &actual, &open, &blocked);
    Ok(LoadReport {
        tasks_created: tasks::insert_load(conn, &plan.new_tasks).await?,
        tasks_cancelled: tasks::cancel_pending(conn, &plan.cancel).await?,
    })
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
) -> DesiredLoads {
    let mut desired = DesiredLoads::new();
    let mut add = |hosts: &[String], spec: LoadRunSpec| {
        if spec.expires_at <= now {
            return;
        }
        for host in hosts {
            desired
                .entry(host.clone())
                .or_default()
                .insert(spec.unit_id(), spec.clone());
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

/// The (host, unit, hash) triples that failed to start `max_failures` times or more.
pub fn blocked_loads(failures: &[FailedTask], max_failures: usize) -> BlockedLoads {
    let mut counts: HashMap<(String, String, String), usize> = HashMap::new();
    for f in failures {
        *counts
            .entry((
                f.host_id.clone(),
                f.collector_id.clone(),
                f.config_hash.clone(),
            ))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n >= max_failures)
        .map(|(key, _)| key)
        .collect()
}

/// What the load step should write.
#[derive(Debug, Default, PartialEq)]
pub struct LoadPlan {
    pub new_tasks: Vec<NewLoadTask>,
    /// Pending (unclaimed) load tasks that no longer lead to the desired state.
    pub cancel: Vec<i64>,
}

/// Desired against reported against open tasks. Pure and idempotent: with the
/// tasks it asks for open, it asks for nothing more. A run the agent reports as
/// finished with the desired hash counts as done: it is not started again.
pub fn plan(
    desired: &DesiredLoads,
    actual: &HashMap<String, Vec<LoadStatus>>,
    open: &[OpenTask],
    blocked: &BlockedLoads,
) -> LoadPlan {
    let mut plan = LoadPlan::default();
    let no_desired = BTreeMap::new();
    let no_actual = Vec::new();
    let hosts: BTreeSet<&String> = desired
        .keys()
        .chain(actual.keys())
        .chain(open.iter().map(|t| &t.host_id))
        .collect();
    let stop = TaskAction::Stop.as_str();

    for host in hosts {
        let want = desired.get(host).unwrap_or(&no_desired);
        let have: BTreeMap<String, &LoadStatus> = actual
            .get(host)
            .unwrap_or(&no_actual)
            .iter()
            .map(|s| (wire_load::unit_id(&s.run_id), s))
            .collect();
        let host_open: Vec<&OpenTask> = open.iter().filter(|t| &t.host_id == host).collect();
        // The one task per unit that leads to the desired state: (is stop, hash).
        let mut wanted: HashMap<&str, (bool, &str)> = HashMap::new();

        for (unit, spec) in want {
            let action = match have.get(unit) {
                Some(reported) if reported.spec_hash == spec.spec_hash => continue,
                Some(_) => TaskAction::Update,
                None => TaskAction::Start,
            };
            if blocked.contains(&(host.clone(), unit.clone(), spec.spec_hash.clone())) {
                continue;
            }
            wanted.insert(unit, (false, &spec.spec_hash));
            let already_open = host_open.iter().any(|t| {
                &t.collector_id == unit && t.config_hash == spec.spec_hash && t.action != stop
            });
            if !already_open {
                plan.new_tasks.push(NewLoadTask {
                    host_id: host.clone(),
                    unit_id: unit.clone(),
                    action,
                    spec_hash: spec.spec_hash.clone(),
                    load: Some(spec.clone()),
                });
            }
        }
        for unit in have.keys() {
            if want.contains_key(unit) {
                continue;
            }
            wanted.insert(unit, (true, ""));
            let already_open = host_open
                .iter()
                .any(|t| &t.collector_id == unit && t.action == stop);
            if !already_open {
                plan.new_tasks.push(NewLoadTask {
                    host_id: host.clone(),
                    unit_id: unit.clone(),
                    action: TaskAction::Stop,
                    spec_hash: String::new(),
                    load: None,
                });
            }
        }
        for task in &host_open {
            if task.status != "pending" {
                continue; // in flight; its outcome is reported and diffed next pass
            }
            let still_useful = match wanted.get(task.collector_id.as_str()) {
                Some((true, _)) => task.action == stop,
                Some((false, hash)) => task.action != stop && task.config_hash == *hash,
                None => false,
            };
            if !still_useful {
                plan.cancel.push(task.id);
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_wire::load::{LoadProfile, LoadState};
    use phoenix_wire::resource::{ExperimentSpec, HostTarget, LoadSpec, PipelineRef};

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
            collector_id: unit.into(),
            action: action.as_str().into(),
            config_hash: hash.into(),
            status: "pending".into(),
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
        let desired = DesiredLoads::from([(
            "h1".to_string(),
            BTreeMap::from([(spec.unit_id(), spec.clone())]),
        )]);
        let none = HashMap::new();
        let p = plan(&desired, &none, &[], &BlockedLoads::new());
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
            plan(&desired, &none, &o, &BlockedLoads::new()),
            LoadPlan::default()
        );
        // Reported (running or finished) with the hash: nothing.
        let mut status = reported(&spec);
        let actual = HashMap::from([("h1".to_string(), vec![status.clone()])]);
        assert_eq!(
            plan(&desired, &actual, &[], &BlockedLoads::new()),
            LoadPlan::default()
        );
        status.state = LoadState::Finished;
        let actual = HashMap::from([("h1".to_string(), vec![status])]);
        assert_eq!(
            plan(&desired, &actual, &[], &BlockedLoads::new()),
            LoadPlan::default()
        );
        // No longer desired: stop, and cancel a pending start.
        let p = plan(&DesiredLoads::new(), &actual, &o, &BlockedLoads::new());
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Stop);
        assert_eq!(p.cancel, vec![1]);
    }

    #[test]
    fn a_new_hash_updates_and_blocked_starts_are_not_retried() {
        let old = run("churn", "running", at(100)).spec();
        let new = run("churn", "running", at(200)).spec();
        let desired = DesiredLoads::from([(
            "h1".to_string(),
            BTreeMap::from([(new.unit_id(), new.clone())]),
        )]);
        let actual = HashMap::from([("h1".to_string(), vec![reported(&old)])]);
        let p = plan(&desired, &actual, &[], &BlockedLoads::new());
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Update);
        assert_eq!(p.new_tasks[0].spec_hash, new.spec_hash);

        let failure = |at_s| FailedTask {
            host_id: "h1".into(),
            collector_id: new.unit_id(),
            config_hash: new.spec_hash.clone(),
            error: Some("too many processes".into()),
            created_at: at(at_s),
        };
        let blocked = blocked_loads(&[failure(1), failure(2), failure(3)], 3);
        assert!(blocked_loads(&[failure(1), failure(2)], 3).is_empty());
        assert_eq!(
            plan(&desired, &HashMap::new(), &[], &blocked),
            LoadPlan::default()
        );
    }
}
