//! phoenix-api: the stateless HTTP API.
//!
//! It validates and stores desired state (experiments, templates, deployments, load
//! runs) and serves the agents (task long-poll, task outcomes, status reports,
//! heartbeats). It never decides what should run; phoenix-reconciler does. Any number
//! of replicas may run.
//!
//! Three layers, one folder each:
//! - [`http`]: the HTTP surface. Thin handlers (authorize by extractor, parse, call
//!   one application function, convert to a view), the router, [`http::auth`]
//!   (tokens and roles), [`http::body`] (document bodies) and [`http::serve`] (the
//!   HTTP/1.1 server loop).
//! - [`app`]: what a request means. Checks that need the database, validation with
//!   the real collector ([`app::collector`]), declarative apply, load simulations,
//!   pipeline deployments and the promotion policy (promote, rollback).
//! - [`fanout`]: serving many agents and subscribers cheaply. [`fanout::wakeups`]
//!   (long-poll wake-ups), [`fanout::coalesce`] (task claims, outcomes and status reports batched into
//!   few statements), [`fanout::heartbeats`] (the coalescing heartbeat writer) and
//!   [`fanout::events`] (the event stream's fan-out to WebSockets).
//!
//! Beside them: [`migrate`] (the `phoenix-api migrate` admin command), [`config`],
//! [`state`] (what every handler shares), [`error`] (every error as problem+json,
//! with one status per kind) and [`metrics`].

pub mod app;
pub mod config;
pub mod error;
pub mod fanout;
pub mod http;
pub mod metrics;
pub mod migrate;
pub mod state;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::ApiConfig;

use crate::fanout::coalesce::{ClaimSettings, Claims, Completions, StatusReports};
use crate::fanout::events::EventHub;
use crate::fanout::heartbeats::HeartbeatBuffer;
use crate::fanout::wakeups::TaskWakeups;
use crate::metrics::Metrics;
use crate::state::AppState;

/// Most tasks handed to one agent in one long-poll answer.
const CLAIM_LIMIT: i64 = 64;

/// Runs the API on `listener` until `shutdown` turns true. Brings the schema up to
/// date first (or refuses one behind, with `--no-migrate`).
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
            "no tokens configured: set PHOENIX_API_TOKENS (e.g. 'admin:<secret>,viewer:<secret>'), or --dev-no-auth for local development"
        );
    }
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(http::serve::tls_acceptor(cert, key)?),
        _ => None,
    };
    let settings = http::serve::ServeSettings {
        tls,
        max_connections: config.max_connections,
    };
    let pool = phoenix_storage::connect_warm(
        &config.database_url,
        config.db_connections,
        config.db_acquire_timeout.as_duration(),
    )
    .context("connecting to Postgres")?;
    phoenix_storage::schema::prepare(&pool, "phoenix-api", config.on_start())
        .await
        .context("preparing the schema")?;
    if let Some(token) = config.bootstrap_token()? {
        app::credentials::seed_configured_bootstrap(&pool, &token)
            .await
            .context("storing the configured bootstrap token")?;
    }

    let metrics = Metrics::new();
    let wakeups = TaskWakeups::default();
    let heartbeats = HeartbeatBuffer::new(config.liveness_renewal());
    let (event_hub, listener_connected) = EventHub::new();
    let credential_cache = app::credentials::CredentialCache::new(listener_connected.subscribe());
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
        status_reports: StatusReports::start(pool.clone()),
        heartbeats: heartbeats.clone(),
        metrics: metrics.clone(),
        validations: Arc::new(tokio::sync::Semaphore::new(state::MAX_VALIDATIONS)),
        events: event_hub.clone(),
        credentials: credential_cache.clone(),
        config_bodies: state::ConfigBodies::default(),
        listener_connected: listener_connected.subscribe(),
        shutdown: shutdown.clone(),
    };
    let listen_task = tokio::spawn(fanout::listen(
        pool.clone(),
        wakeups,
        event_hub,
        credential_cache,
        metrics.clone(),
        listener_connected,
        shutdown.clone(),
    ));
    let flush_task = tokio::spawn(fanout::heartbeats::flush_loop(
        heartbeats,
        pool.clone(),
        metrics,
        config.heartbeat_flush.as_duration(),
        shutdown.clone(),
    ));
    tracing::info!(address = %listener.local_addr()?, tls = settings.tls.is_some(), "phoenix-api listening");
    http::serve::serve(listener, http::router(state), settings, shutdown).await;
    let _ = listen_task.await;
    let _ = flush_task.await;
    pool.close().await;
    Ok(())
}
