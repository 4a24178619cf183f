//! The agent's own Prometheus metrics (served on `/metrics`): collectors by health,
//! restarts per collector, tasks handled, and errors talking to the API.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use phoenix_wire::agent::{CollectorStatus, Health, TaskAction};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CollectorLabels {
    collector_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    action: &'static str,
    /// `ok` or `error`.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiErrorLabels {
    endpoint: &'static str,
    kind: &'static str,
}

/// Every metric the agent exports, cheap to clone (the metrics are shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    collectors_by_health: Family<HealthLabels, Gauge>,
    collector_restarts: Family<CollectorLabels, Gauge>,
    /// Collector ids that have a restarts series, so vanished ones can be removed.
    restart_series: Arc<Mutex<BTreeSet<String>>>,
    tasks: Family<TaskLabels, Counter>,
    api_errors: Family<ApiErrorLabels, Counter>,
}

const ALL_HEALTH: [Health; 4] = [
    Health::Starting,
    Health::Healthy,
    Health::Unhealthy,
    Health::Restarting,
];

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let collectors_by_health = Family::<HealthLabels, Gauge>::default();
        registry.register(
            "phoenix_agent_collectors",
            "Collectors supervised by this agent, by health",
            collectors_by_health.clone(),
        );
        let collector_restarts = Family::<CollectorLabels, Gauge>::default();
        registry.register(
            "phoenix_agent_collector_restarts",
            "Times the agent restarted a collector after it died",
            collector_restarts.clone(),
        );
        let tasks = Family::<TaskLabels, Counter>::default();
        registry.register(
            "phoenix_agent_tasks",
            "Tasks handled, by action and result",
            tasks.clone(),
        );
        let api_errors = Family::<ApiErrorLabels, Counter>::default();
        registry.register(
            "phoenix_agent_api_errors",
            "Failed requests to the Phoenix API, by endpoint and kind (transport, client, server, decode)",
            api_errors.clone(),
        );
        Self {
            registry: Arc::new(registry),
            collectors_by_health,
            collector_restarts,
            restart_series: Arc::default(),
            tasks,
            api_errors,
        }
    }

    /// Sets the collector gauges from the current collector statuses.
    pub fn observe_collectors(&self, statuses: &[CollectorStatus]) {
        for health in ALL_HEALTH {
            let count = statuses.iter().filter(|s| s.health == health).count();
            self.collectors_by_health
                .get_or_create(&HealthLabels {
                    health: health.as_str(),
                })
                .set(count as i64);
        }
        let mut series = self.restart_series.lock().expect("metrics lock");
        let current: BTreeSet<String> = statuses.iter().map(|s| s.collector_id.clone()).collect();
        for gone in series.difference(&current) {
            self.collector_restarts.remove(&CollectorLabels {
                collector_id: gone.clone(),
            });
        }
        for status in statuses {
            self.collector_restarts
                .get_or_create(&CollectorLabels {
                    collector_id: status.collector_id.clone(),
                })
                .set(i64::from(status.restarts));
        }
        *series = current;
    }

    /// Counts one handled task.
    pub fn task_handled(&self, action: TaskAction, ok: bool) {
        self.tasks
            .get_or_create(&TaskLabels {
                action: action.as_str(),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Counts one failed API request.
    pub fn api_error(&self, endpoint: &'static str, kind: &'static str) {
        self.api_errors
            .get_or_create(&ApiErrorLabels { endpoint, kind })
            .inc();
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use phoenix_wire::agent::Variant;

    use super::*;

    fn status(id: &str, health: Health, restarts: u32) -> CollectorStatus {
        CollectorStatus {
            collector_id: id.into(),
            owner: "exp".into(),
            variant: Variant::Baseline,
            pipeline: "p".into(),
            config_hash: "h".into(),
            pid: None,
            health,
            restarts,
            cpu_seconds: 0.0,
            rss_bytes: 0,
            last_error: None,
            rolled_back_from: None,
        }
    }

    #[test]
    fn exposes_collectors_tasks_and_errors() {
        let metrics = Metrics::new();
        metrics.observe_collectors(&[
            status("a", Health::Healthy, 0),
            status("b", Health::Restarting, 3),
        ]);
        metrics.task_handled(TaskAction::Start, true);
        metrics.api_error("tasks", "transport");
        let text = metrics.encode();
        assert!(
            text.contains(r#"phoenix_agent_collectors{health="healthy"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"phoenix_agent_collector_restarts{collector_id="b"} 3"#));
        assert!(text.contains(r#"phoenix_agent_tasks_total{action="start",result="ok"} 1"#));
        assert!(
            text.contains(r#"phoenix_agent_api_errors_total{endpoint="tasks",kind="transport"} 1"#)
        );

        metrics.observe_collectors(&[status("a", Health::Healthy, 0)]);
        assert!(!metrics.encode().contains(r#"collector_id="b""#));
    }
}
