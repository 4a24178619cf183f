//! The state every handler shares.

use std::sync::Arc;

use phoenix_storage::PgPool;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use tokio::sync::watch;

use crate::app::credentials::CredentialCache;
use crate::config::ApiConfig;
use crate::fanout::coalesce::{Claims, Completions, StatusReports};
use crate::fanout::events::EventHub;
use crate::fanout::heartbeats::HeartbeatBuffer;
use crate::fanout::wakeups::TaskWakeups;
use crate::metrics::Metrics;

/// How many template validations (collector processes) one api runs at once.
pub const MAX_VALIDATIONS: usize = 2;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ApiConfig>,
    pub pool: PgPool,
    pub wakeups: TaskWakeups,
    /// Task claims of waiting long-polls and task outcomes, each coalesced into
    /// few statements.
    pub claims: Claims,
    pub completions: Completions,
    /// Full status reports, coalesced into one transaction per batch.
    pub status_reports: StatusReports,
    pub heartbeats: HeartbeatBuffer,
    pub metrics: Metrics,
    /// Collector validations running at once (`POST /api/v1/pipelines/validate`
    /// starts a collector process each); see [`MAX_VALIDATIONS`].
    pub validations: Arc<tokio::sync::Semaphore>,
    /// The event stream's fan-out (`GET /api/v1/events`).
    pub events: EventHub,
    /// Recently checked host credentials (agent routes).
    pub credentials: CredentialCache,
    /// Collector config bodies agents fetched, by SHA-256 (immutable, so cached).
    pub config_bodies: ConfigBodies,
    /// True while the task listener is connected (part of readiness).
    pub listener_connected: watch::Receiver<bool>,
    /// Turns true when the server shuts down; long-polls return early.
    pub shutdown: watch::Receiver<bool>,
}

/// Config bodies by SHA-256, as agents fetch them (`GET …/configs/{sha256}`): a
/// body never changes under its name, so a rollout over 10,000 hosts reads each
/// body from the database once per replica. Bounded: emptied when full.
#[derive(Clone, Default)]
pub struct ConfigBodies(Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<str>>>>);

/// Bodies a replica keeps (a handful are in use at a time).
const CONFIG_BODIES_KEPT: usize = 256;

impl ConfigBodies {
    pub fn get(&self, sha256: &str) -> Option<Arc<str>> {
        self.0.lock().expect("bodies lock").get(sha256).cloned()
    }

    pub fn keep(&self, sha256: &str, body: Arc<str>) {
        let mut bodies = self.0.lock().expect("bodies lock");
        if bodies.len() >= CONFIG_BODIES_KEPT {
            bodies.clear();
        }
        bodies.insert(sha256.to_string(), body);
    }
}

impl AppState {
    /// A pooled connection for one request; released when dropped.
    pub async fn conn(&self) -> Result<PoolConnection<Postgres>, crate::error::ApiError> {
        Ok(phoenix_storage::acquire(&self.pool).await?)
    }
}
