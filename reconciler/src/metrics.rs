//! The reconciler's own metrics, served on `/metrics`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    pub result: &'static str,
}

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

type GaugeF64 = Gauge<f64, AtomicU64>;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub passes: Family<PassLabels, Counter>,
    pub pass_seconds: Histogram,
    pub last_pass_seconds: Gauge<f64, AtomicU64>,
    pub tasks_emitted: Counter,
    pub tasks_cancelled: Counter,
    pub transitions: Counter,
    pub is_leader: Gauge,
    pub job_activations: Family<JobResultLabels, Counter>,
    pub job_last_seconds: Family<JobLabels, GaugeF64>,
    pub job_last_success: Family<JobLabels, GaugeF64>,
    pub analyses: Family<PassLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("phoenix_reconciler");
        let passes = Family::<PassLabels, Counter>::default();
        registry.register("passes", "Reconcile passes by result", passes.clone());
        let pass_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "pass_seconds",
            "Duration of one reconcile pass",
            pass_seconds.clone(),
        );
        let last_pass_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_pass_seconds",
            "Duration of the latest reconcile pass",
            last_pass_seconds.clone(),
        );
        let tasks_emitted = Counter::default();
        registry.register(
            "tasks_emitted",
            "Agent tasks created",
            tasks_emitted.clone(),
        );
        let tasks_cancelled = Counter::default();
        registry.register(
            "tasks_cancelled",
            "Unclaimed agent tasks cancelled",
            tasks_cancelled.clone(),
        );
        let transitions = Counter::default();
        registry.register(
            "transitions",
            "Experiment phase transitions",
            transitions.clone(),
        );
        let is_leader = Gauge::default();
        registry.register("is_leader", "1 while this replica leads", is_leader.clone());
        let job_activations = Family::<JobResultLabels, Counter>::default();
        registry.register(
            "job_activations",
            "Activations of each background job, by result",
            job_activations.clone(),
        );
        let job_last_seconds = Family::<JobLabels, GaugeF64>::default();
        registry.register(
            "job_last_seconds",
            "Duration of each background job's latest activation",
            job_last_seconds.clone(),
        );
        let job_last_success = Family::<JobLabels, GaugeF64>::default();
        registry.register(
            "job_last_success_timestamp_seconds",
            "When each background job last finished without error (Unix time)",
            job_last_success.clone(),
        );
        let analyses = Family::<PassLabels, Counter>::default();
        registry.register(
            "analyses",
            "Experiments analyzed, by result (completed, retrying, failed)",
            analyses.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            passes,
            pass_seconds,
            last_pass_seconds,
            tasks_emitted,
            tasks_cancelled,
            transitions,
            is_leader,
            job_activations,
            job_last_seconds,
            job_last_success,
            analyses,
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
