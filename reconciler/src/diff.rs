//! The diff: desired collectors against reported ones and open tasks, giving the
//! tasks to create and the unclaimed tasks to cancel. Pure and idempotent: run it
//! twice on the same state and the second run asks for nothing new.

use std::collections::{BTreeMap, HashMap, HashSet};

use phoenix_storage::tasks::{NewTask, OpenTask};
use phoenix_wire::agent::{CollectorSpec, CollectorStatus, TaskAction};

/// Desired collectors: host id → collector id → spec.
pub type DesiredState = BTreeMap<String, BTreeMap<String, CollectorSpec>>;

/// What one pass should write.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub new_tasks: Vec<NewTask>,
    /// Pending (unclaimed) tasks that no longer lead to the desired state.
    pub cancel: Vec<i64>,
}

/// A (host, collector, config hash) whose starts keep failing: not retried.
pub type Blocked = HashSet<(String, String, String)>;

pub fn plan(
    desired: &DesiredState,
    actual: &HashMap<String, Vec<CollectorStatus>>,
    open: &[OpenTask],
    blocked: &Blocked,
) -> Plan {
    let mut plan = Plan::default();
    let no_desired = BTreeMap::new();
    let no_actual = Vec::new();
    let hosts: std::collections::BTreeSet<&String> = desired
        .keys()
        .chain(actual.keys())
        .chain(open.iter().map(|t| &t.host_id))
        .collect();
    // Grouped once: looking them up per host keeps a pass linear in the fleet.
    let mut open_by_host: HashMap<&str, Vec<&OpenTask>> = HashMap::new();
    for task in open {
        open_by_host.entry(&task.host_id).or_default().push(task);
    }
    let no_open = Vec::new();

    for host in hosts {
        let want = desired.get(host).unwrap_or(&no_desired);
        let have: HashMap<&str, &CollectorStatus> = actual
            .get(host)
            .unwrap_or(&no_actual)
            .iter()
            .map(|c| (c.collector_id.as_str(), c))
            .collect();
        let host_open = open_by_host.get(host.as_str()).unwrap_or(&no_open);
        // The one task per collector that leads to the desired state, if any.
        let mut wanted: HashMap<&str, (TaskAction, &str)> = HashMap::new();

        for (id, spec) in want {
            let action = match have.get(id.as_str()) {
                Some(running) if running.config_hash == spec.config_hash => continue,
                Some(_) => TaskAction::Update,
                None => TaskAction::Start,
            };
            if blocked.contains(&(host.clone(), id.clone(), spec.config_hash.clone())) {
                continue;
            }
            wanted.insert(id, (action, &spec.config_hash));
            let already_open = host_open.iter().any(|t| {
                &t.collector_id == id
                    && t.config_hash == spec.config_hash
                    && t.action != TaskAction::Stop.as_str()
            });
            if !already_open {
                plan.new_tasks.push(NewTask {
                    host_id: host.clone(),
                    collector_id: id.clone(),
                    action,
                    config_hash: spec.config_hash.clone(),
                    collector: Some(spec.clone()),
                });
            }
        }
        for id in have.keys() {
            if want.contains_key(*id) {
                continue;
            }
            wanted.insert(id, (TaskAction::Stop, ""));
            let already_open = host_open
                .iter()
                .any(|t| t.collector_id == *id && t.action == TaskAction::Stop.as_str());
            if !already_open {
                plan.new_tasks.push(NewTask {
                    host_id: host.clone(),
                    collector_id: id.to_string(),
                    action: TaskAction::Stop,
                    config_hash: String::new(),
                    collector: None,
                });
            }
        }
        for task in host_open {
            if task.status != "pending" {
                // In flight (leased), or answered and not yet in a status report:
                // its outcome will be reported and diffed in a later pass.
                continue;
            }
            let still_useful = match wanted.get(task.collector_id.as_str()) {
                Some((TaskAction::Stop, _)) => task.action == TaskAction::Stop.as_str(),
                Some((_, hash)) => {
                    task.action != TaskAction::Stop.as_str() && task.config_hash == *hash
                }
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
    use phoenix_wire::agent::{Health, Variant};

    fn spec(id: &str, config: &str) -> CollectorSpec {
        CollectorSpec::new(
            id.into(),
            "exp".into(),
            Variant::Baseline,
            "p".into(),
            config.into(),
            BTreeMap::new(),
        )
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
            collector_id: collector.into(),
            action: action.as_str().into(),
            config_hash: hash.into(),
            status: status.into(),
        }
    }

    fn desired(host: &str, specs: &[&CollectorSpec]) -> DesiredState {
        let mut d = DesiredState::new();
        d.insert(
            host.into(),
            specs
                .iter()
                .map(|s| (s.collector_id.clone(), (*s).clone()))
                .collect(),
        );
        d
    }

    #[test]
    fn starts_what_is_missing_once() {
        let a = spec("e.baseline", "a");
        let d = desired("h1", &[&a]);
        let p = plan(&d, &HashMap::new(), &[], &Blocked::new());
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
            plan(&d, &HashMap::new(), &o, &Blocked::new()),
            Plan::default()
        );
        // Once running with the right hash, nothing either.
        let actual = HashMap::from([("h1".to_string(), vec![running(&a)])]);
        assert_eq!(plan(&d, &actual, &[], &Blocked::new()), Plan::default());
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
        let p = plan(&desired("h1", &[&new]), &actual, &o, &Blocked::new());
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Update);
        assert_eq!(p.new_tasks[0].config_hash, new.config_hash);
        assert_eq!(p.cancel, vec![7]);
    }

    #[test]
    fn stops_what_nobody_wants_and_keeps_leased_tasks() {
        let a = spec("e.candidate", "a");
        let actual = HashMap::from([("h2".to_string(), vec![running(&a)])]);
        let p = plan(&DesiredState::new(), &actual, &[], &Blocked::new());
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Stop);
        // A leased start for a collector nobody wants is left to finish; a pending one is cancelled.
        let o = [
            open(1, "h3", "x.baseline", TaskAction::Start, "h", "leased"),
            open(2, "h3", "y.baseline", TaskAction::Start, "h", "pending"),
        ];
        let p = plan(&DesiredState::new(), &HashMap::new(), &o, &Blocked::new());
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
            plan(&desired("h1", &[&a]), &HashMap::new(), &[], &blocked),
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
            &desired("h1", &[&a]),
            &HashMap::new(),
            &answered,
            &Blocked::new(),
        );
        assert_eq!(p, Plan::default());
        // Nor does it block a stop once nobody wants the collector any more.
        let actual = HashMap::from([("h1".to_string(), vec![running(&a)])]);
        let p = plan(&DesiredState::new(), &actual, &answered, &Blocked::new());
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].action, TaskAction::Stop);
    }
}
