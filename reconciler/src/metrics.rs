//! The reconciler's own metrics, served on `/metrics`. Every background job,
//! the pass among them, is counted and timed under its name
//! ([`crate::background::record`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// A background job ([`crate::background`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub job: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobResultLabels {
    pub job: &'static str,
    pub result: &'static str,
}

/// What came of one experiment's analysis.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Labels of the retention job's counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: &'static str,
}

/// A pass's scope ([`crate::changes::Scope::label`]): `full` or `hosts`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    pub scope: &'static str,
}

type GaugeF64 = Gauge<f64, AtomicU64>;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub pass_seconds: Histogram,
    pub passes_by_scope: Family<ScopeLabels, Counter>,
    pub tasks_emitted: Counter,
    pub tasks_cancelled: Counter,
    pub transitions: Counter,
    pub is_leader: Gauge,
    pub leader_epoch: Gauge,
    pub pruned_rows: Family<TableLabels, Counter>,
    pub job_activations: Family<JobResultLabels, Counter>,
    pub job_last_seconds: Family<JobLabels, GaugeF64>,
    pub job_last_success: Family<JobLabels, GaugeF64>,
    pub analyses: Family<ResultLabels, Counter>,
}

/// Registers `metric` under `name` and hands it back.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("phoenix_reconciler");
        let pass_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        Metrics {
            pass_seconds: registered(
                &mut r,
                "pass_seconds",
                "Duration of one reconcile pass",
                pass_seconds,
            ),
            passes_by_scope: registered(
                &mut r,
                "passes",
                "Reconcile passes done, by scope: full (every host) or hosts (only those that changed)",
                Family::default(),
            ),
            tasks_emitted: registered(
                &mut r,
                "tasks_emitted",
                "Agent tasks created",
                Counter::default(),
            ),
            tasks_cancelled: registered(
                &mut r,
                "tasks_cancelled",
                "Unclaimed agent tasks cancelled",
                Counter::default(),
            ),
            transitions: registered(
                &mut r,
                "transitions",
                "Experiment phase transitions",
                Counter::default(),
            ),
            is_leader: registered(
                &mut r,
                "is_leader",
                "1 while this replica leads",
                Gauge::default(),
            ),
            leader_epoch: registered(
                &mut r,
                "leader_epoch",
                "The leadership epoch this replica last led in (every write of that leadership is fenced by it)",
                Gauge::default(),
            ),
            pruned_rows: registered(
                &mut r,
                "pruned_rows",
                "Rows removed by the retention job, by table",
                Family::default(),
            ),
            job_activations: registered(
                &mut r,
                "job_activations",
                "Activations of each background job (the pass among them), by result",
                Family::default(),
            ),
            job_last_seconds: registered(
                &mut r,
                "job_last_seconds",
                "Duration of each background job's latest activation",
                Family::default(),
            ),
            job_last_success: registered(
                &mut r,
                "job_last_success_timestamp_seconds",
                "When each background job last finished without error (Unix time)",
                Family::default(),
            ),
            analyses: registered(
                &mut r,
                "analyses",
                "Experiments analyzed, by result (completed, retrying, failed)",
                Family::default(),
            ),
            registry: Arc::new(r),
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
