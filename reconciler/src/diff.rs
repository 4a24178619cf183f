//! The diff: the units a host should run against what its agent reports and the
//! open tasks, giving the tasks to create and the unclaimed tasks to cancel. One
//! diff for every kind of unit (collectors, load runs): [`plan`] runs once per
//! [`TaskKind`] and only ever touches units of that kind. Pure and idempotent: run
//! it twice on the same state and the second run asks for nothing new.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use phoenix_storage::tasks::{FailedTask, NewTask, OpenTask};
use phoenix_wire::agent::{CollectorStatus, TaskAction, TaskKind, UnitSpec};
use phoenix_wire::load::{self, LoadStatus};
use phoenix_wire::view::TaskStatus;

/// Desired units of one kind: host id → unit id → spec.
pub type DesiredState = BTreeMap<String, BTreeMap<String, UnitSpec>>;

/// What one pass should write.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub new_tasks: Vec<NewTask>,
    /// Pending (unclaimed) tasks that no longer lead to the desired state.
    pub cancel: Vec<i64>,
}

impl Plan {
    pub fn extend(&mut self, other: Plan) {
        self.new_tasks.extend(other.new_tasks);
        self.cancel.extend(other.cancel);
    }
}

/// Keeps the new tasks of the plan's first hosts, whole hosts at a time, up to `max`
/// tasks (always at least one host's), and returns how many it took out and from
/// which hosts (sorted): the next pass, scoped to those hosts, writes them, as the
/// diff asks for them again. Cancellations all stay. So an experiment starting on
/// 10,000 hosts is written in passes of bounded length, each committed and
/// delivered while the next is written.
pub fn defer_beyond(plan: &mut Plan, max: usize) -> (usize, Vec<String>) {
    let mut admitted: HashSet<String> = HashSet::new();
    let mut deferred: BTreeSet<String> = BTreeSet::new();
    let mut kept = 0;
    let before = plan.new_tasks.len();
    plan.new_tasks.retain(|task| {
        let keep = admitted.contains(&task.host_id)
            || ((kept < max || admitted.is_empty()) && admitted.insert(task.host_id.clone()));
        kept += usize::from(keep);
        if !keep {
            deferred.insert(task.host_id.clone());
        }
        keep
    });
    (
        before - plan.new_tasks.len(),
        deferred.into_iter().collect(),
    )
}

/// A (host, unit, spec hash) whose starts keep failing: not retried.
pub type Blocked = HashSet<(String, String, String)>;

/// The (host, unit, hash) triples among `failures` that failed `max_failures`
/// times or more.
pub fn blocked_by(failures: &[&FailedTask], max_failures: usize) -> Blocked {
    let mut counts: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for f in failures {
        *counts
            .entry((&f.host_id, &f.unit_id, &f.spec_hash))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n >= max_failures)
        .map(|((host, unit, hash), _)| (host.to_string(), unit.to_string(), hash.to_string()))
        .collect()
}

/// The configs agents report they went back from (an update that failed its
/// start or crash-looped; the agent runs its last known good instead): not sent
/// to that host again while the agent reports it, so the reconciler never fights
/// the agent's rollback in a loop. A newer config is sent as usual.
pub fn rolled_back(actual: &HashMap<String, Vec<CollectorStatus>>) -> Blocked {
    actual
        .iter()
        .flat_map(|(host, collectors)| {
            collectors.iter().filter_map(move |c| {
                let failed = c.rolled_back_from.as_ref()?;
                Some((
                    host.clone(),
                    c.collector_id.clone(),
                    failed.config_hash.clone(),
                ))
            })
        })
        .collect()
}

/// Adds `spec` to `host`'s desired units; to `blocked` too when it has failed to
/// start `failed_starts` times and the limit is `max_failures`.
pub fn want(
    desired: &mut DesiredState,
    blocked: &mut Blocked,
    host: String,
    spec: UnitSpec,
    (failed_starts, max_failures): (usize, usize),
) {
    if failed_starts >= max_failures {
        blocked.insert((host.clone(), spec.unit_id(), spec.hash().to_string()));
    }
    desired
        .entry(host)
        .or_default()
        .insert(spec.unit_id(), spec);
}

/// A unit as its agent reports it: its id and the hash of the spec it runs.
pub trait ReportedUnit {
    fn unit_id(&self) -> String;
    fn spec_hash(&self) -> &str;
}

impl ReportedUnit for CollectorStatus {
    fn unit_id(&self) -> String {
        self.collector_id.clone()
    }
    fn spec_hash(&self) -> &str {
        &self.config_hash
    }
}

/// A run the agent reports as finished with the desired hash counts as done: it
/// is not started again.
impl ReportedUnit for LoadStatus {
    fn unit_id(&self) -> String {
        load::unit_id(&self.run_id)
    }
    fn spec_hash(&self) -> &str {
        &self.spec_hash
    }
}

/// Desired units of `kind` against reported ones and the open tasks (of every
/// kind; only `kind`'s are read).
pub fn plan<R: ReportedUnit>(
    kind: TaskKind,
    desired: &DesiredState,
    actual: &HashMap<String, Vec<R>>,
    open: &[OpenTask],
    blocked: &Blocked,
) -> Plan {
    let mut plan = Plan::default();
    let no_desired = BTreeMap::new();
    let no_actual = Vec::new();
    // Grouped once: looking them up per host keeps a pass linear in the fleet.
    let mut open_by_host: HashMap<&str, Vec<&OpenTask>> = HashMap::new();
    for task in open.iter().filter(|t| t.kind == kind) {
        open_by_host.entry(&task.host_id).or_default().push(task);
    }
    let hosts: BTreeSet<&str> = desired
        .keys()
        .chain(actual.keys())
        .map(String::as_str)
        .chain(open_by_host.keys().copied())
        .collect();
    let no_open = Vec::new();

    for host in hosts {
        let want = desired.get(host).unwrap_or(&no_desired);
        let have: HashMap<String, &str> = actual
            .get(host)
            .unwrap_or(&no_actual)
            .iter()
            .map(|unit| (unit.unit_id(), unit.spec_hash()))
            .collect();
        let host_open = open_by_host.get(host).unwrap_or(&no_open);
        // The one task per unit that leads to the desired state, if any.
        let mut wanted: HashMap<&str, (TaskAction, &str)> = HashMap::new();

        for (id, spec) in want {
            let action = match have.get(id) {
                Some(hash) if *hash == spec.hash() => continue,
                Some(_) => TaskAction::Update,
                None => TaskAction::Start,
            };
            if !blocked.is_empty()
                && blocked.contains(&(host.to_string(), id.clone(), spec.hash().to_string()))
            {
                continue;
            }
            wanted.insert(id, (action, spec.hash()));
            let already_open = host_open.iter().any(|t| {
                &t.unit_id == id && t.spec_hash == spec.hash() && t.action != TaskAction::Stop
            });
            if !already_open {
                plan.new_tasks
                    .push(NewTask::apply(host, action, spec.clone()));
            }
        }
        for id in have.keys() {
            if want.contains_key(id) {
                continue;
            }
            wanted.insert(id, (TaskAction::Stop, ""));
            let already_open = host_open
                .iter()
                .any(|t| &t.unit_id == id && t.action == TaskAction::Stop);
            if !already_open {
                plan.new_tasks.push(NewTask::stop(host, kind, id));
            }
        }
        for task in host_open {
            if task.status != TaskStatus::Pending {
                // In flight (leased), or answered and not yet in a status report:
                // its outcome will be reported and diffed in a later pass.
                continue;
            }
            let still_useful = match wanted.get(task.unit_id.as_str()) {
                Some((TaskAction::Stop, _)) => task.action == TaskAction::Stop,
                Some((_, hash)) => task.action != TaskAction::Stop && task.spec_hash == *hash,
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

    #[test]
    fn a_plan_over_its_limit_keeps_whole_hosts_and_defers_the_rest() {
        let stop = |host: &str, unit: &str| NewTask::stop(host, TaskKind::Collector, unit);
        let mut plan = Plan {
            new_tasks: vec![
                stop("h1", "a"),
                stop("h1", "b"),
                stop("h2", "a"),
                stop("h2", "b"),
                stop("h3", "a"),
                stop("h1", "load"),
            ],
            cancel: vec![7, 8],
        };
        // Three tasks fit: h1 and then h2 whole (a host is never split), h3 waits;
        // h1's later task stays with its host.
        assert_eq!(defer_beyond(&mut plan, 3), (1, vec!["h3".to_string()]));
        let kept: Vec<(&str, &str)> = plan
            .new_tasks
            .iter()
            .map(|t| (t.host_id.as_str(), t.unit_id.as_str()))
            .collect();
        assert_eq!(
            kept,
            [
                ("h1", "a"),
                ("h1", "b"),
                ("h2", "a"),
                ("h2", "b"),
                ("h1", "load")
            ]
        );
        assert_eq!(plan.cancel, [7, 8], "cancellations are never deferred");
        // One host is always written, however low the limit.
        let mut one = Plan {
            new_tasks: vec![stop("h1", "a"), stop("h1", "b"), stop("h2", "a")],
            cancel: vec![],
        };
        assert_eq!(defer_beyond(&mut one, 1), (1, vec!["h2".to_string()]));
        assert_eq!(one.new_tasks.len(), 2);
        // Under the limit nothing moves.
        let mut small = Plan {
            new_tasks: vec![stop("h1", "a")],
            cancel: vec![],
        };
        assert_eq!(defer_beyond(&mut small, 2_000), (0, vec![]));
        assert_eq!(small.new_tasks.len(), 1);
    }
    use phoenix_wire::agent::{CollectorSpec, Health, Variant};

    fn spec(id: &str, config: &str) -> CollectorSpec {
        CollectorSpec::new(
            id.into(),
            "exp".into(),
            Variant::Baseline,
            "p".into(),
            config,
            BTreeMap::new(),
        )
    }

    fn none() -> HashMap<String, Vec<CollectorStatus>> {
        HashMap::new()
    }

    fn running(spec: &CollectorSpec) -> CollectorStatus {
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

    fn open(
        id: i64,
        host: &str,
        collector: &str,
        action: TaskAction,
        hash: &str,
        status: &str,
    ) -> OpenTask {
        OpenTask {
            id,
            host_id: host.into(),
            kind: TaskKind::Collector,
            unit_id: collector.into(),
            action,
            spec_hash: hash.into(),
            status: TaskStatus::parse(status).unwrap(),
        }
    }

    fn desired(host: &str, specs: &[&CollectorSpec]) -> DesiredState {
        let mut d = DesiredState::new();
        d.insert(
            host.into(),
            specs
                .iter()
                .map(|s| (s.collector_id.clone(), UnitSpec::Collector((*s).clone())))
                .collect(),
        );
        d
    }

    #[test]
    fn starts_what_is_missing_once() {
        let a = spec("e.baseline", "a");
        let d = desired("h1", &[&a]);
        let p = plan(TaskKind::Collector, &d, &none(), &[], &Blocked::new());
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Start);
        // With the task open, the same pass asks for nothing.
        let o = [open(
            1,
            "h1",
            "e.baseline",
            TaskAction::Start,
            &a.config_hash,
            "pending",
        )];
        assert_eq!(
            plan(TaskKind::Collector, &d, &none(), &o, &Blocked::new()),
            Plan::default()
        );
        // Once running with the right hash, nothing either.
        let actual = HashMap::from([("h1".to_string(), vec![running(&a)])]);
        assert_eq!(
            plan(TaskKind::Collector, &d, &actual, &[], &Blocked::new()),
            Plan::default()
        );
    }

    #[test]
    fn a_reported_rollback_is_not_fought_but_a_newer_config_is_sent() {
        let good = spec("standing.web", "good");
        let broken = spec("standing.web", "crashes");
        let mut back = running(&good);
        back.rolled_back_from = Some(phoenix_wire::agent::RolledBack {
            config_hash: broken.config_hash.clone(),
            pipeline: "p".into(),
            error: "crash-looped".into(),
        });
        let actual = HashMap::from([("h1".to_string(), vec![back])]);
        let blocked = rolled_back(&actual);
        // Still desired: no update is sent, and the last known good keeps running.
        let p = plan(
            TaskKind::Collector,
            &desired("h1", &[&broken]),
            &actual,
            &[],
            &blocked,
        );
        assert_eq!(p, Plan::default());
        // Without the report it would be sent again (the loop this prevents).
        let p = plan(
            TaskKind::Collector,
            &desired("h1", &[&broken]),
            &actual,
            &[],
            &Blocked::new(),
        );
        assert_eq!(p.new_tasks.len(), 1);
        // A newer config is an update as usual.
        let fixed = spec("standing.web", "fixed");
        let p = plan(
            TaskKind::Collector,
            &desired("h1", &[&fixed]),
            &actual,
            &[],
            &blocked,
        );
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Update);
        assert_eq!(p.new_tasks[0].spec_hash, fixed.config_hash);
    }

    #[test]
    fn updates_on_new_hash_and_cancels_the_stale_pending_task() {
        let old = spec("e.baseline", "old");
        let new = spec("e.baseline", "new");
        let actual = HashMap::from([("h1".to_string(), vec![running(&old)])]);
        let o = [open(
            7,
            "h1",
            "e.baseline",
            TaskAction::Update,
            "stale",
            "pending",
        )];
        let p = plan(
            TaskKind::Collector,
            &desired("h1", &[&new]),
            &actual,
            &o,
            &Blocked::new(),
        );
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Update);
        assert_eq!(p.new_tasks[0].spec_hash, new.config_hash);
        assert_eq!(p.cancel, vec![7]);
    }

    #[test]
    fn stops_what_nobody_wants_and_keeps_leased_tasks() {
        let a = spec("e.candidate", "a");
        let actual = HashMap::from([("h2".to_string(), vec![running(&a)])]);
        let p = plan(
            TaskKind::Collector,
            &DesiredState::new(),
            &actual,
            &[],
            &Blocked::new(),
        );
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Stop);
        // A leased start for a collector nobody wants is left to finish; a pending one is cancelled.
        let o = [
            open(1, "h3", "x.baseline", TaskAction::Start, "h", "leased"),
            open(2, "h3", "y.baseline", TaskAction::Start, "h", "pending"),
        ];
        let p = plan(
            TaskKind::Collector,
            &DesiredState::new(),
            &none(),
            &o,
            &Blocked::new(),
        );
        assert!(p.new_tasks.is_empty());
        assert_eq!(p.cancel, vec![2]);
    }

    #[test]
    fn blocked_collectors_are_not_retried() {
        let a = spec("e.baseline", "a");
        let blocked = Blocked::from([(
            "h1".to_string(),
            "e.baseline".to_string(),
            a.config_hash.clone(),
        )]);
        assert_eq!(
            plan(
                TaskKind::Collector,
                &desired("h1", &[&a]),
                &none(),
                &[],
                &blocked
            ),
            Plan::default()
        );
    }

    #[test]
    fn an_answered_task_not_yet_in_a_status_report_is_not_asked_again() {
        // The agent answered the start (succeeded) but its status report has not
        // arrived: the pass waits for the report instead of starting it twice.
        let a = spec("e.baseline", "a");
        let answered = [open(
            3,
            "h1",
            "e.baseline",
            TaskAction::Start,
            &a.config_hash,
            "succeeded",
        )];
        let p = plan(
            TaskKind::Collector,
            &desired("h1", &[&a]),
            &none(),
            &answered,
            &Blocked::new(),
        );
        assert_eq!(p, Plan::default());
        // Nor does it block a stop once nobody wants the collector any more.
        let actual = HashMap::from([("h1".to_string(), vec![running(&a)])]);
        let p = plan(
            TaskKind::Collector,
            &DesiredState::new(),
            &actual,
            &answered,
            &Blocked::new(),
        );
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Stop);
    }
}
