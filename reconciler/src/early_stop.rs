//! Early stop: failures decided before an experiment's window ends. While an
//! experiment runs, the analysis job ([`stop_early`]) asks Prometheus which critical
//! processes each variant reported on each target host over the last `lookback`
//! (the early-stop window: N consecutive scrapes of the candidate's collection
//! interval). A critical process that the baseline reported on a host and the
//! candidate did not, for that whole window, fails the experiment at once, with the
//! process and host in the reason; leaving `running` stops its collectors (a failed
//! experiment wants none). A collector that keeps crashing already fails a running
//! experiment in the reconcile pass (`crate::incidents`).
//!
//! Checks start once the warmup is over and the experiment has run for at least
//! `lookback`, so a collector still starting is not mistaken for one that drops.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use phoenix_storage::{PgPool, Result, experiments};
use phoenix_wire::view::{Experiment, Phase};
use sqlx::Connection;

use crate::analyzer::{AnalyzerSettings, selector};
use crate::prometheus::{Prometheus, PrometheusError};

/// `(host, executable)` pairs a variant reported.
pub type Seen = BTreeSet<(String, String)>;

/// The pure decision: the critical processes the baseline reported and the candidate
/// did not, as one reason, or `None` when nothing is missing.
pub fn missing_critical(
    critical: &[String],
    baseline: &Seen,
    candidate: &Seen,
    lookback: Duration,
) -> Option<String> {
    let critical: BTreeSet<&str> = critical.iter().map(String::as_str).collect();
    let mut missing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (host, exe) in baseline.difference(candidate) {
        if critical.contains(exe.as_str()) {
            missing.entry(exe).or_default().push(host);
        }
    }
    if missing.is_empty() {
        return None;
    }
    let listed: Vec<String> = missing
        .iter()
        .map(|(exe, hosts)| format!("{exe} on {}", hosts.join(", ")))
        .collect();
    Some(format!(
        "stopped early: the candidate reported no samples of critical process {} for \
         the last {} while the baseline did; its collectors were stopped",
        listed.join("; "),
        phoenix_wire::duration::HumanDuration(lookback)
    ))
}

/// Whether `experiment` has run long enough at `now` to be checked.
pub fn due(experiment: &Experiment, lookback: Duration, now: DateTime<Utc>) -> bool {
    if experiment.phase != Phase::Running || experiment.spec.critical_processes.is_empty() {
        return false;
    }
    let since = now.signed_duration_since(experiment.phase_changed_at);
    let warmup = experiment.spec.warmup.as_duration();
    since.to_std().is_ok_and(|ran| ran >= warmup.max(lookback))
}

/// Which `(host, executable)` pairs `variant` reported over `[now − lookback, now]`.
async fn seen(
    prom: &Prometheus,
    experiment: &Experiment,
    variant: &str,
    lookback: Duration,
    now: DateTime<Utc>,
) -> std::result::Result<Seen, PrometheusError> {
    // The series API, as for the report: a range function over every metric name at
    // once would drop the names and collide.
    let inner = selector(experiment, variant);
    let selector = format!(
        r#"{{{},process_executable_name!=""}}"#,
        &inner[1..inner.len() - 1]
    );
    let since = now - chrono::Duration::from_std(lookback).unwrap_or_default();
    Ok(prom
        .series(&selector, since, now)
        .await?
        .into_iter()
        .filter_map(|labels| {
            Some((
                labels.get("phoenix_host")?.clone(),
                labels.get("process_executable_name")?.clone(),
            ))
        })
        .collect())
}

/// Checks every running experiment that is due and fails those whose candidate
/// dropped a critical process, fenced by the leadership `epoch`. Prometheus errors
/// are logged and skipped: the next activation checks again, and the analysis after
/// the window still judges critical retention.
pub async fn stop_early(pool: &PgPool, settings: &AnalyzerSettings, epoch: i64) -> Result<()> {
    let lookback = settings.early_stop_after;
    if lookback.is_zero() {
        return Ok(());
    }
    let running = {
        let mut conn = pool.acquire().await?;
        experiments::list_in_phases(&mut conn, &[Phase::Running]).await?
    };
    for experiment in running {
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
        if !due(&experiment, lookback, now) {
            continue;
        }
        let prom = &settings.prometheus;
        let both = async {
            let baseline = seen(prom, &experiment, "baseline", lookback, now).await?;
            let candidate = seen(prom, &experiment, "candidate", lookback, now).await?;
            Ok::<_, PrometheusError>((baseline, candidate))
        };
        let (baseline, candidate) = match both.await {
            Ok(seen) => seen,
            Err(err) => {
                tracing::warn!(experiment = %experiment.name, %err, "early-stop check skipped");
                continue;
            }
        };
        let Some(reason) = missing_critical(
            &experiment.spec.critical_processes,
            &baseline,
            &candidate,
            lookback,
        ) else {
            continue;
        };
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        phoenix_storage::leader::fence(&mut tx, epoch).await?;
        let moved = experiments::transition(
            &mut tx,
            &experiment.name,
            Phase::Running,
            Phase::Failed,
            &reason,
            None,
        )
        .await?;
        tx.commit().await?;
        if moved {
            tracing::warn!(experiment = %experiment.name, %reason, "failed early");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pairs: &[(&str, &str)]) -> Seen {
        pairs
            .iter()
            .map(|(h, e)| (h.to_string(), e.to_string()))
            .collect()
    }

    #[test]
    fn a_critical_process_only_the_baseline_reported_stops_the_experiment() {
        let critical = vec!["postgres".to_string(), "nginx".to_string()];
        let baseline = seen(&[
            ("web-1", "postgres"),
            ("web-2", "postgres"),
            ("web-1", "nginx"),
            ("web-1", "bash"),
        ]);
        let lookback = Duration::from_secs(60);
        // The candidate kept everything critical (dropping bash is its job).
        let kept = seen(&[
            ("web-1", "postgres"),
            ("web-2", "postgres"),
            ("web-1", "nginx"),
        ]);
        assert_eq!(
            missing_critical(&critical, &baseline, &kept, lookback),
            None
        );
        // It lost postgres on web-2 and nginx on web-1.
        let dropped = seen(&[("web-1", "postgres")]);
        let reason = missing_critical(&critical, &baseline, &dropped, lookback).unwrap();
        assert!(
            reason.contains("critical process nginx on web-1; postgres on web-2 for the last 1m"),
            "{reason}"
        );
        // A process the baseline did not see either is no evidence against the candidate.
        assert_eq!(
            missing_critical(&critical, &Seen::new(), &Seen::new(), lookback),
            None
        );
    }
}
