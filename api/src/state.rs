//! The state every handler shares.

use std::sync::Arc;

use phoenix_storage::{PgPool, StoreError};
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use tokio::sync::watch;

use crate::app::credentials::CredentialCache;
use crate::config::ApiConfig;
use crate::fanout::coalesce::{Claims, Completions};
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
    pub heartbeats: HeartbeatBuffer,
    pub metrics: Metrics,
    /// Collector validations running at once (`POST /api/v1/pipelines/validate`
    /// starts a collector process each); see [`MAX_VALIDATIONS`].
    pub validations: Arc<tokio::sync::Semaphore>,
    /// The event stream's fan-out (`GET /api/v1/events`).
    pub events: EventHub,
    /// Recently checked host credentials (agent routes).
    pub credentials: CredentialCache,
    /// True while the task listener is connected (part of readiness).
    pub listener_connected: watch::Receiver<bool>,
    /// Turns true when the server shuts down; long-polls return early.
    pub shutdown: watch::Receiver<bool>,
}

impl AppState {
    /// A pooled connection for one request; released when dropped.
    pub async fn conn(&self) -> Result<PoolConnection<Postgres>, crate::error::ApiError> {
        Ok(self.pool.acquire().await.map_err(StoreError::from)?)
    }
}
