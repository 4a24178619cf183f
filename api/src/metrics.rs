//! The API's own metrics, served on `/metrics` in the OpenMetrics text format.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

/// Every metric of the process, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub tasks_delivered: Counter,
    /// Claim statements run, and the hosts they claimed for (coalescing at work).
    pub claim_statements: Counter,
    pub claim_hosts: Counter,
    pub task_notifications: Counter,
    pub long_polls_waiting: Gauge,
    pub heartbeats_received: Counter,
    pub heartbeats_written: Counter,
    pub heartbeats_buffered: Gauge,
    pub heartbeat_flush_seconds: Histogram,
    pub status_reports: Counter,
    pub events_received: Counter,
    pub event_streams: Gauge,
    pub event_streams_resubscribe: Counter,
    pub event_streams_refused: Counter,
    pub event_listener_connected: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("phoenix_api");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let tasks_delivered = Counter::default();
        registry.register(
            "tasks_delivered",
            "Tasks handed to agents",
            tasks_delivered.clone(),
        );
        let task_notifications = Counter::default();
        registry.register(
            "task_notifications",
            "New-task notifications received",
            task_notifications.clone(),
        );
        let long_polls_waiting = Gauge::default();
        registry.register(
            "long_polls_waiting",
            "Agent long-polls currently waiting",
            long_polls_waiting.clone(),
        );
        let heartbeats_received = Counter::default();
        registry.register(
            "heartbeats_received",
            "Heartbeats counted: explicit ones, agent requests, and a waiting long-poll every beat interval",
            heartbeats_received.clone(),
        );
        let heartbeats_written = Counter::default();
        registry.register(
            "heartbeats_written",
            "Heartbeats written to the database (at most one per host and liveness renewal)",
            heartbeats_written.clone(),
        );
        let heartbeats_buffered = Gauge::default();
        registry.register(
            "heartbeats_buffered",
            "Heartbeats waiting for the next flush",
            heartbeats_buffered.clone(),
        );
        let heartbeat_flush_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "heartbeat_flush_seconds",
            "Time to write one heartbeat batch",
            heartbeat_flush_seconds.clone(),
        );
        let status_reports = Counter::default();
        registry.register(
            "status_reports",
            "Full host status reports stored",
            status_reports.clone(),
        );
        let events_received = Counter::default();
        registry.register(
            "events_received",
            "Stream events received from the database",
            events_received.clone(),
        );
        let event_streams = Gauge::default();
        registry.register(
            "event_streams",
            "Event stream (WebSocket) subscribers connected",
            event_streams.clone(),
        );
        let event_streams_resubscribe = Counter::default();
        registry.register(
            "event_streams_resubscribe",
            "Event streams closed because events were dropped (subscriber behind, listener reconnected)",
            event_streams_resubscribe.clone(),
        );
        let event_streams_refused = Counter::default();
        registry.register(
            "event_streams_refused",
            "Event-stream subscriptions refused because the replica serves its maximum",
            event_streams_refused.clone(),
        );
        let claim_statements = Counter::default();
        registry.register(
            "claim_statements",
            "Task claim statements run for waiting long-polls",
            claim_statements.clone(),
        );
        let claim_hosts = Counter::default();
        registry.register(
            "claim_hosts",
            "Hosts claimed for by those statements (hosts per statement = this / claim_statements)",
            claim_hosts.clone(),
        );
        let event_listener_connected = Gauge::default();
        registry.register(
            "event_listener_connected",
            "1 while the event stream's LISTEN connection is up",
            event_listener_connected.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            requests,
            tasks_delivered,
            claim_statements,
            claim_hosts,
            task_notifications,
            long_polls_waiting,
            heartbeats_received,
            heartbeats_written,
            heartbeats_buffered,
            heartbeat_flush_seconds,
            status_reports,
            events_received,
            event_streams,
            event_streams_resubscribe,
            event_streams_refused,
            event_listener_connected,
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
