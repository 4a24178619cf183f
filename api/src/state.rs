//! The state every handler shares.

use std::sync::Arc;

use phoenix_storage::PgPool;
use tokio::sync::watch;

use crate::config::ApiConfig;
use crate::heartbeats::HeartbeatBuffer;
use crate::metrics::Metrics;
use crate::wakeups::TaskWakeups;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ApiConfig>,
    pub pool: PgPool,
    pub wakeups: TaskWakeups,
    pub heartbeats: HeartbeatBuffer,
    pub metrics: Metrics,
    /// True while the task listener is connected (part of readiness).
    pub listener_connected: watch::Receiver<bool>,
    /// Turns true when the server shuts down; long-polls return early.
    pub shutdown: watch::Receiver<bool>,
}
