//! phoenix-reconciler: a level-triggered control loop.
//!
//! Replicas compete for leadership ([`phoenix_storage::leader`]: an advisory lock,
//! a lease the leader renews, and an epoch that fences every write); the leader runs
//! [`pass::run_pass`] whenever the database announces a change (`NOTIFY
//! phoenix_reconcile`, a hint) and at least every resync interval (the truth), so a
//! lost wake-up, a crashed agent or a deleted row only delays convergence. Slow work
//! runs beside the pass as background jobs of its own ([`background`]): the
//! analysis of experiments, which waits on Prometheus, never holds up a pass.
//!
//! Passes are incremental ([`changes`]): a pass woken by announcements that name
//! hosts looks at those hosts only; any other change, a reconnection of the
//! listener and the resync make a full pass.
//!
//! Modules: [`diff`] (desired vs reported vs open tasks → tasks to write, for every
//! kind of unit), [`incidents`] (failed tasks of an experiment as its events, and
//! when they fail it), [`lifecycle`] (phase decisions), [`load`] (the load runs each host
//! should have), [`pass`] (one transactional pass), [`standing`] (pipeline
//! deployments' standing collectors and `promotion: auto`, steps of the pass),
//! [`rollout`] (staged roll-outs of deployment revisions, a background job),
//! [`analyzer`] (KPIs from [`prometheus`], judged by [`judge`]), [`early_stop`]
//! (a running experiment failed at once when its candidate drops a critical
//! process or a collector is over its memory limit), [`fidelity`] (top-k recall
//! and total error, candidate against baseline), [`stats`] (the paired signed-rank tests by host, Mann–Whitney U,
//! Hodges–Lehmann, Holm, the resource pass/fail/inconclusive rule), [`changes`]
//! (what the next pass looks at), [`background`] (how jobs are scheduled and
//! observed), [`task_trace`] (the trace context each new task carries), [`metrics`],
//! [`config`].

pub mod analyzer;
pub mod background;
pub mod changes;
pub mod config;
pub mod diff;
pub mod early_stop;
pub mod fidelity;
pub mod incidents;
pub mod judge;
pub mod lifecycle;
pub mod load;
pub mod metrics;
pub mod pass;
pub mod prometheus;
pub mod rollout;
pub mod standing;
pub mod stats;
pub mod task_trace;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phoenix_storage::leader::LeaderLock;
use phoenix_storage::listen::Heard;
use phoenix_storage::{PgPool, RECONCILE_CHANNEL};
use phoenix_wire::view::Phase;
use tokio::sync::{Notify, watch};

use background::Schedule;
use changes::Changes;
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
    let changes = Arc::new(Mutex::new(Changes::unknown()));
    let analyze = Arc::new(Notify::new());
    let roll = Arc::new(Notify::new());
    let (leading_tx, leading) = watch::channel(false);
    // The epoch of this replica's leadership while it leads: every write of a
    // background job is fenced by it (phoenix_storage::leader::fence).
    let epoch = Arc::new(AtomicI64::new(0));
    let listener = tokio::spawn(listen_for_changes(
        pool.clone(),
        changes.clone(),
        [wake.clone(), roll.clone()],
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
            let (pool, settings, metrics, epoch) = (
                pool.clone(),
                config.analyzer_settings(),
                metrics.clone(),
                epoch.clone(),
            );
            move || {
                let (pool, settings, metrics) = (pool.clone(), settings.clone(), metrics.clone());
                let epoch = epoch.load(Ordering::SeqCst);
                async move { Ok(analyzer::analyze_due(&pool, &settings, &metrics, epoch).await?) }
            }
        },
    ));

    let retention = tokio::spawn(background::run_job(
        Schedule {
            name: "retention",
            period: config.retention_interval.as_duration(),
            wake: Arc::new(Notify::new()),
        },
        metrics.clone(),
        leading.clone(),
        shutdown.clone(),
        {
            let (pool, settings, metrics, epoch) = (
                pool.clone(),
                config.retention_settings(),
                metrics.clone(),
                epoch.clone(),
            );
            move || {
                let (pool, metrics) = (pool.clone(), metrics.clone());
                let epoch = epoch.load(Ordering::SeqCst);
                async move { Ok(prune(&pool, &settings, &metrics, epoch).await?) }
            }
        },
    ));

    // Roll-outs move on what agents report (announced changes) and on time (health
    // timeouts, the series window).
    let rollout = tokio::spawn(background::run_job(
        Schedule {
            name: "rollout",
            period: config.rollout_interval.as_duration(),
            wake: roll,
        },
        metrics.clone(),
        leading.clone(),
        shutdown.clone(),
        {
            let (pool, settings, epoch) = (pool.clone(), config.rollout_settings(), epoch.clone());
            move || {
                let (pool, settings) = (pool.clone(), settings.clone());
                let epoch = epoch.load(Ordering::SeqCst);
                async move { Ok(rollout::advance(&pool, &settings, epoch).await?) }
            }
        },
    ));

    let settings = config.leader_settings();
    let holder = holder_name();
    while !*shutdown.borrow() {
        match LeaderLock::try_acquire(&config.database_url, settings, &holder).await {
            Ok(Some(lock)) => {
                tracing::info!(
                    epoch = lock.epoch(),
                    lease_ms = settings.lease.as_millis() as u64,
                    "leading: this replica now reconciles"
                );
                epoch.store(lock.epoch(), Ordering::SeqCst);
                metrics.is_leader.set(1);
                metrics.leader_epoch.set(lock.epoch());
                let _ = leading_tx.send(true);
                // A new leader knows nothing of what the last one did: all of it.
                changes.lock().expect("changes lock").everything();
                let signals = Signals {
                    wake: &wake,
                    changes: &changes,
                    analyze: &analyze,
                };
                let why = lead(lock, &config, &metrics, signals, &mut shutdown).await;
                let _ = leading_tx.send(false);
                metrics.is_leader.set(0);
                tracing::warn!(reason = why, "no longer leading: stopped acting");
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
    let _ = retention.await;
    let _ = rollout.await;
    pool.close().await;
    Ok(())
}

/// The retention job's activation: prunes in batches, each in a transaction
/// fenced by the leadership epoch, until every table is done.
async fn prune(
    pool: &PgPool,
    settings: &phoenix_storage::retention::RetentionSettings,
    metrics: &Metrics,
    epoch: i64,
) -> phoenix_storage::Result<()> {
    use phoenix_storage::retention::BATCH;
    use sqlx::Connection;
    let mut conn = pool.acquire().await?;
    loop {
        let mut tx = conn.begin().await?;
        phoenix_storage::leader::fence(&mut tx, epoch).await?;
        let pruned = phoenix_storage::retention::prune(&mut tx, settings).await?;
        tx.commit().await?;
        let by_table = pruned.by_table();
        for (table, rows) in by_table {
            metrics
                .pruned_rows
                .get_or_create(&metrics::TableLabels { table })
                .inc_by(rows);
        }
        if by_table.iter().any(|(_, rows)| *rows > 0) {
            tracing::info!(
                tasks = pruned.tasks,
                events = pruned.events,
                hosts = pruned.hosts,
                configs = pruned.configs,
                "retention: pruned old rows"
            );
        }
        if by_table.iter().all(|(_, rows)| *rows < BATCH as u64) {
            return Ok(());
        }
    }
}

/// A pass slower than this is logged with the time of each of its stages.
const SLOW_PASS: Duration = Duration::from_secs(1);

/// How this replica names itself in `reconciler_leadership.holder`: its host name
/// (a pod's name on Kubernetes) and process id.
fn holder_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{host} pid {}", std::process::id())
}

/// Runs passes while the lock holds and its lease is renewed; returns why it
/// stopped (leadership lost, or shutdown). The lease is renewed at least every
/// third of its length, also while no pass is due, and after each stage of a pass;
/// no pass outlives it: a leader cut off from the database stops acting within the
/// lease, before the database frees the lock for another replica
/// ([`phoenix_storage::leader::LeaderSettings::server_gives_up`]).
async fn lead(
    mut lock: LeaderLock,
    config: &ReconcilerConfig,
    metrics: &Metrics,
    signals: Signals<'_>,
    shutdown: &mut watch::Receiver<bool>,
) -> &'static str {
    let Signals {
        wake,
        changes,
        analyze,
    } = signals;
    let resync = config.resync_interval.as_duration();
    let renew_every = config.leader_settings().lease / 3;
    let mut next_resync = Instant::now() + resync;
    // What this leadership's passes found of deploying experiments.
    let mut progress = lifecycle::DeployProgress::default();
    while !*shutdown.borrow() {
        match lock.confirm().await {
            Ok(true) => {}
            Ok(false) => return "the lock could not be confirmed within the lease",
            Err(err) => {
                tracing::warn!(error = %err, "leader connection failed");
                return "the leader connection failed";
            }
        }
        if Instant::now() >= next_resync {
            changes.lock().expect("changes lock").everything();
        }
        let scope = {
            let mut changes = changes.lock().expect("changes lock");
            changes.any().then(|| changes.take())
        };
        if let Some(scope) = scope {
            if scope == changes::Scope::Full {
                next_resync = Instant::now() + resync;
            }
            let started = Instant::now();
            let epoch = lock.epoch();
            let lease = lock.lease();
            let pass = pass::run_pass(
                lock.connection(),
                config,
                epoch,
                scope,
                &mut progress,
                Some(&lease),
            );
            let Some(result) = lease.bound(pass).await else {
                return "a pass outlived the lease";
            };
            background::record(metrics, "pass", started, &result);
            if result.is_err() {
                // What it was to look at is not done: look at everything next time.
                changes.lock().expect("changes lock").everything();
            }
            let deferred = result
                .as_ref()
                .map(|report| report.deferred_hosts.clone())
                .unwrap_or_default();
            match result {
                Ok(report) => {
                    if let Some(scope) = report.scope {
                        metrics
                            .passes_by_scope
                            .get_or_create(&metrics::ScopeLabels { scope })
                            .inc();
                    }
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
                    let elapsed = started.elapsed();
                    if elapsed > SLOW_PASS {
                        let stages: Vec<String> = report
                            .stages
                            .iter()
                            .map(|(stage, took)| format!("{stage} {} ms", took.as_millis()))
                            .collect();
                        tracing::warn!(
                            scope = report.scope.unwrap_or("none"),
                            hosts = report.hosts,
                            created = report.tasks_created,
                            deferred = report.tasks_deferred,
                            elapsed_ms = elapsed.as_millis() as u64,
                            stages = %stages.join(", "),
                            "slow reconcile pass"
                        );
                    } else if report.tasks_created > 0 || report.tasks_cancelled > 0 {
                        tracing::info!(
                            created = report.tasks_created,
                            cancelled = report.tasks_cancelled,
                            deferred = report.tasks_deferred,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "reconcile pass"
                        );
                    }
                }
                Err(phoenix_storage::StoreError::Deposed { .. }) => {
                    return "another replica took over (a newer leadership epoch)";
                }
                Err(err) => {
                    tracing::warn!(error = %err, "reconcile pass failed");
                    if matches!(err, phoenix_storage::StoreError::Database(_)) {
                        return "a pass failed on the leader connection"; // re-elect
                    }
                }
            }
            metrics
                .pass_seconds
                .observe(started.elapsed().as_secs_f64());
            if !deferred.is_empty() {
                // The rest of a large write: the next pass at once, on those hosts.
                changes.lock().expect("changes lock").deferred(deferred);
                continue;
            }
        }
        let until_resync = next_resync.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = wake.notified() => {
                // Let a burst of changes settle into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tokio::time::sleep(until_resync.min(renew_every)) => {}
            _ = shutdown.changed() => {}
        }
    }
    "shutdown"
}

/// What the pass loop of a leader waits on: wake-ups, the changes they announce,
/// and the analysis job it wakes when an experiment enters `analyzing`.
struct Signals<'a> {
    wake: &'a Notify,
    changes: &'a Mutex<Changes>,
    analyze: &'a Notify,
}

/// Turns `NOTIFY phoenix_reconcile` into [`Changes`] and wake-ups, through the
/// process's one listener ([`phoenix_storage::listen`]), for the pass and the
/// roll-out job. Every (re)connection asks for a full pass, since changes may have
/// been missed meanwhile.
async fn listen_for_changes(
    pool: PgPool,
    changes: Arc<Mutex<Changes>>,
    wake: [Arc<Notify>; 2],
    shutdown: watch::Receiver<bool>,
) {
    phoenix_storage::listen::listen(pool, &[RECONCILE_CHANNEL], shutdown, |heard| {
        match heard {
            Heard::Disconnected => return,
            Heard::Connected => changes.lock().expect("changes lock").everything(),
            Heard::Notification { payload, .. } => {
                changes.lock().expect("changes lock").heard(payload)
            }
        }
        wake.iter().for_each(|w| w.notify_one());
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
