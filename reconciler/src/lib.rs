//! phoenix-reconciler: a level-triggered control loop.
//!
//! Replicas compete for leadership ([`phoenix_storage::leader`]); the leader runs
//! [`pass::run_pass`] whenever the database announces a change (`NOTIFY
//! phoenix_reconcile`, a hint) and at least every resync interval (the truth), so a
//! lost wake-up, a crashed agent or a deleted row only delays convergence. Slow work
//! runs beside the pass as background jobs of its own ([`background`]): the
//! analysis of experiments, which waits on Prometheus, never holds up a pass.
//!
//! Modules: [`diff`] (desired vs reported vs open tasks → tasks to write, for every
//! kind of unit), [`incidents`] (failed tasks of an experiment as its events, and
//! when they fail it), [`lifecycle`] (phase decisions), [`load`] (the load runs each host
//! should have), [`pass`] (one transactional pass), [`standing`] (pipeline
//! deployments' standing collectors and `promotion: auto`, steps of the pass),
//! [`analyzer`] (KPIs from [`prometheus`], judged by [`judge`]), [`stats`]
//! (Mann–Whitney U, Hodges–Lehmann, the resource pass/fail/inconclusive rule),
//! [`background`] (how jobs are scheduled and observed), [`metrics`], [`config`].

pub mod analyzer;
pub mod background;
pub mod config;
pub mod diff;
pub mod incidents;
pub mod judge;
pub mod lifecycle;
pub mod load;
pub mod metrics;
pub mod pass;
pub mod prometheus;
pub mod standing;
pub mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use phoenix_storage::leader::LeaderLock;
use phoenix_storage::listen::Heard;
use phoenix_storage::{PgPool, RECONCILE_CHANNEL};
use phoenix_wire::view::Phase;
use tokio::sync::{Notify, watch};

use background::Schedule;
pub use config::ReconcilerConfig;
use metrics::Metrics;

/// Runs the reconciler until `shutdown` turns true: the schema (see
/// [`phoenix_storage::schema::prepare`]), the wake-up listener, the background
/// jobs, then leader election and passes.
pub async fn run(
    config: ReconcilerConfig,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pool = phoenix_storage::connect(&config.database_url, 4).await?;
    let on_start = if config.no_migrate {
        phoenix_storage::schema::OnStart::Refuse
    } else {
        phoenix_storage::schema::OnStart::Migrate
    };
    phoenix_storage::schema::prepare(&pool, "phoenix-reconciler", on_start).await?;
    let wake = Arc::new(Notify::new());
    let analyze = Arc::new(Notify::new());
    let (leading_tx, leading) = watch::channel(false);
    let listener = tokio::spawn(listen_for_changes(
        pool.clone(),
        wake.clone(),
        shutdown.clone(),
    ));
    let analysis = tokio::spawn(background::run_job(
        Schedule {
            name: "analysis",
            period: config.resync_interval.as_duration(),
            wake: analyze.clone(),
        },
        metrics.clone(),
        leading.clone(),
        shutdown.clone(),
        {
            let (pool, settings, metrics) =
                (pool.clone(), config.analyzer_settings(), metrics.clone());
            move || {
                let (pool, settings, metrics) = (pool.clone(), settings.clone(), metrics.clone());
                async move { Ok(analyzer::analyze_due(&pool, &settings, &metrics).await?) }
            }
        },
    ));

    while !*shutdown.borrow() {
        match LeaderLock::try_acquire(&config.database_url).await {
            Ok(Some(lock)) => {
                tracing::info!("leading: this replica now reconciles");
                metrics.is_leader.set(1);
                let _ = leading_tx.send(true);
                lead(lock, &config, &metrics, &wake, &analyze, &mut shutdown).await;
                let _ = leading_tx.send(false);
                metrics.is_leader.set(0);
                tracing::info!("no longer leading");
            }
            Ok(None) => tracing::debug!("another replica leads; standing by"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot reach the database for leader election")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.standby_retry.as_duration()) => {}
            _ = shutdown.changed() => {}
        }
    }
    listener.abort();
    let _ = analysis.await;
    pool.close().await;
    Ok(())
}

/// Runs passes while the lock holds; returns when it is lost or on shutdown.
async fn lead(
    mut lock: LeaderLock,
    config: &ReconcilerConfig,
    metrics: &Metrics,
    wake: &Notify,
    analyze: &Notify,
    shutdown: &mut watch::Receiver<bool>,
) {
    let resync = config.resync_interval.as_duration();
    while !*shutdown.borrow() {
        match lock.still_held().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                tracing::warn!(error = %err, "leader connection failed");
                return;
            }
        }
        let started = Instant::now();
        let result = pass::run_pass(lock.connection(), config).await;
        background::record(metrics, "pass", started, &result);
        match result {
            Ok(report) => {
                metrics.tasks_emitted.inc_by(report.tasks_created);
                metrics.tasks_cancelled.inc_by(report.tasks_cancelled);
                metrics.transitions.inc_by(report.transitions.len() as u64);
                if report
                    .transitions
                    .iter()
                    .any(|(_, _, to)| *to == Phase::Analyzing)
                {
                    analyze.notify_one();
                }
                if report.tasks_created > 0 || report.tasks_cancelled > 0 {
                    tracing::info!(
                        created = report.tasks_created,
                        cancelled = report.tasks_cancelled,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "reconcile pass"
                    );
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "reconcile pass failed");
                if matches!(err, phoenix_storage::StoreError::Database(_)) {
                    return; // the connection may be gone; re-elect
                }
            }
        }
        metrics
            .pass_seconds
            .observe(started.elapsed().as_secs_f64());
        tokio::select! {
            _ = wake.notified() => {
                // Let a burst of changes settle into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tokio::time::sleep(resync) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Turns `NOTIFY phoenix_reconcile` into wake-ups, through the process's one
/// listener ([`phoenix_storage::listen`]). Every (re)connection wakes once, since
/// changes may have been missed meanwhile.
async fn listen_for_changes(pool: PgPool, wake: Arc<Notify>, shutdown: watch::Receiver<bool>) {
    phoenix_storage::listen::listen(pool, &[RECONCILE_CHANNEL], shutdown, |heard| {
        if !matches!(heard, Heard::Disconnected) {
            wake.notify_one();
        }
    })
    .await
}

/// Serves `/metrics` and `/healthz` on `listener` until shutdown.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.encode() }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}
