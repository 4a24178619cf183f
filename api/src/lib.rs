//! phoenix-api: the stateless HTTP API.
//!
//! It validates and stores desired state (experiments) and serves the agents (task
//! long-poll, task outcomes, status reports, heartbeats). It never decides what
//! should run; phoenix-reconciler does. Any number of replicas may run.
//!
//! Layout: [`routes`] (thin handlers) → [`app`] (checks that need the database) →
//! `phoenix_storage` (queries). [`auth`] holds tokens and roles, [`error`] the
//! problem+json mapping, [`body`] document parsing, [`collector`] validation with
//! the real collector. For the agents: [`wakeups`] is the LISTEN fan-out for
//! long-polls, [`coalesce`] batches task claims and task outcomes into few
//! statements, [`heartbeats`] is the coalescing heartbeat writer, and
//! [`serve`] the HTTP/1.1 server loop. [`metrics`] holds the process's metrics.
//! [`loadsims`] is the application layer of load simulations, [`deployments`]
//! that of pipeline deployments and of promote and rollback. [`events`] is the
//! event stream: one LISTEN connection fanned out to WebSockets.

pub mod app;
pub mod apply;
pub mod auth;
pub mod body;
pub mod coalesce;
pub mod collector;
pub mod config;
pub mod deployments;
pub mod error;
pub mod events;
pub mod heartbeats;
pub mod loadsims;
pub mod metrics;
pub mod routes;
pub mod serve;
pub mod state;
pub mod wakeups;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::ApiConfig;

use crate::coalesce::{ClaimSettings, Claims, Completions};
use crate::events::EventHub;
use crate::heartbeats::HeartbeatBuffer;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::wakeups::TaskWakeups;

/// Most tasks handed to one agent in one long-poll answer.
const CLAIM_LIMIT: i64 = 64;

/// Runs the API on `listener` until `shutdown` turns true. Applies migrations first.
pub async fn serve(
    config: ApiConfig,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if config.dev_no_auth {
        for _ in 0..3 {
            tracing::warn!(
                "AUTHENTICATION IS OFF (--dev-no-auth): anyone who can reach this port is admin. Development only."
            );
        }
    } else if config.tokens.is_empty() {
        anyhow::bail!(
            "no tokens configured: set PHOENIX_API_TOKENS (e.g. 'admin:<secret>,agent:<secret>'), or --dev-no-auth for local development"
        );
    }
    let pool = phoenix_storage::connect(&config.database_url, config.db_connections)
        .await
        .context("connecting to Postgres")?;
    phoenix_storage::migrate(&pool)
        .await
        .context("migrating the schema")?;

    let metrics = Metrics::new();
    let wakeups = TaskWakeups::default();
    let heartbeats = HeartbeatBuffer::default();
    let (connected_tx, connected_rx) = watch::channel(false);
    let (event_hub, events_connected) = EventHub::new();
    let state = AppState {
        config: Arc::new(config.clone()),
        pool: pool.clone(),
        wakeups: wakeups.clone(),
        claims: Claims::start(
            pool.clone(),
            ClaimSettings {
                lease: config.task_lease.as_duration(),
                max_attempts: config.task_max_attempts,
                limit_per_host: CLAIM_LIMIT,
            },
            metrics.clone(),
        ),
        completions: Completions::start(pool.clone()),
        heartbeats: heartbeats.clone(),
        metrics: metrics.clone(),
        events: event_hub.clone(),
        listener_connected: connected_rx,
        shutdown: shutdown.clone(),
    };
    let listen_task = tokio::spawn(wakeups::listen(
        pool.clone(),
        wakeups,
        metrics.clone(),
        connected_tx,
        shutdown.clone(),
    ));
    let events_task = tokio::spawn(events::listen(
        pool.clone(),
        event_hub,
        metrics.clone(),
        events_connected,
        shutdown.clone(),
    ));
    let flush_task = tokio::spawn(heartbeats::flush_loop(
        heartbeats,
        pool.clone(),
        metrics,
        config.heartbeat_flush.as_duration(),
        shutdown.clone(),
    ));
    tracing::info!(address = %listener.local_addr()?, "phoenix-api listening");
    serve::serve(listener, routes::router(state), shutdown).await;
    let _ = listen_task.await;
    let _ = events_task.await;
    let _ = flush_task.await;
    pool.close().await;
    Ok(())
}
