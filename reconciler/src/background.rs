//! Background jobs, in the omicron Nexus style: each job is a tokio task of its own
//! with one idempotent activation that takes no input, run when a timer fires *and*
//! when something signals it ("constant work": the same activation whether one
//! thing changed or everything did). No job waits for another: the reconcile pass
//! keeps creating tasks while the analyzer waits on a slow Prometheus.
//!
//! Every activation is counted and timed under the job's name
//! (`phoenix_reconciler_job_activations_total{job,result}`,
//! `phoenix_reconciler_job_last_seconds{job}`,
//! `phoenix_reconciler_job_last_success_timestamp_seconds{job}`), so `/metrics`
//! shows each job's status.
//!
//! Jobs that write act only while this replica leads (`leading`); a standby's jobs
//! sleep, and an activation in flight is dropped when leadership or the process
//! ends (activations are idempotent, so the next one simply starts over).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};

use crate::metrics::{JobLabels, JobResultLabels, Metrics};

/// How a job is scheduled.
pub struct Schedule {
    pub name: &'static str,
    /// The timer: an activation at least this often.
    pub period: Duration,
    /// The signal: an activation soon after each notification.
    pub wake: Arc<Notify>,
}

/// Runs `activate` on `schedule` while `leading` is true, until `shutdown`.
/// An activation's error is logged and counted; the next one runs as usual.
pub async fn run_job<F, Fut>(
    schedule: Schedule,
    metrics: Metrics,
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    mut activate: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let name = schedule.name;
    while !*shutdown.borrow() {
        if !*leading.borrow() {
            tokio::select! {
                _ = leading.changed() => continue,
                _ = shutdown.changed() => return,
            }
        }
        let started = Instant::now();
        // Shutdown, or the end of leadership, cancels an activation in flight (say,
        // one waiting on a hung Prometheus); the next activation starts over.
        let result = tokio::select! {
            result = activate() => result,
            _ = shutdown.changed() => return,
            _ = leading.wait_for(|leads| !*leads) => continue,
        };
        record(&metrics, name, started, &result);
        if let Err(err) = result {
            tracing::warn!(
                job = name,
                error = format!("{err:#}"),
                "background job failed"
            );
        }
        tokio::select! {
            _ = schedule.wake.notified() => {
                // Let a burst of changes settle into one activation.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tokio::time::sleep(schedule.period) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Counts and times one activation of `job`.
pub fn record<T, E>(metrics: &Metrics, job: &'static str, started: Instant, result: &Result<T, E>) {
    let seconds = started.elapsed().as_secs_f64();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics
        .job_activations
        .get_or_create(&JobResultLabels {
            job,
            result: outcome,
        })
        .inc();
    metrics
        .job_last_seconds
        .get_or_create(&JobLabels { job })
        .set(seconds);
    if result.is_ok() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        metrics
            .job_last_success
            .get_or_create(&JobLabels { job })
            .set(now);
    }
}
