//! Early stop: failures decided before an experiment's window ends. While an
//! experiment runs, the analysis job ([`stop_early`]) asks Prometheus which critical
//! processes each variant reported on each target host over the last `lookback`
//! (the early-stop window: N consecutive scrapes of the candidate's collection
//! interval). A critical process that the baseline reported on a host and the
//! candidate did not, for that whole window, fails the experiment at once, with the
//! process and host in the reason; leaving `running` stops its collectors (a failed
//! experiment wants none). Likewise a collector over its memory limit: when every
//! RSS sample the agent pushed for it over the last `lookback` is above the limit
//! its pipeline runs with ([`memory_limit_mib`]: the `memory_limit_mib` variable
//! that every catalog template passes to `memory_limiter.limit_mib`), the
//! experiment fails at once, naming the variant, host, memory and limit. A
//! collector that keeps crashing already fails a running experiment in the
//! reconcile pass (`crate::incidents`).
//!
//! Checks start once the warmup is over and the experiment has run for at least
//! `lookback`, so a collector still starting is not mistaken for one that drops.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use phoenix_storage::{PgPool, Result, StoreError, experiments, templates};
use phoenix_wire::render::pipeline_of;
use phoenix_wire::variables::VariableDecl;
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

/// The template variable holding a collector's memory limit in MiB; every catalog
/// template passes it to `memory_limiter.limit_mib`.
pub const MEMORY_LIMIT_VARIABLE: &str = "memory_limit_mib";

/// A variant's memory limit in MiB: the experiment's `memory_limit_mib` for it, else
/// the template's default; `None` when the template declares no such variable (then
/// it is not checked).
pub fn memory_limit_mib(
    declared: &[VariableDecl],
    given: &BTreeMap<String, String>,
) -> Option<f64> {
    let decl = declared.iter().find(|d| d.name == MEMORY_LIMIT_VARIABLE)?;
    let text = given.get(&decl.name).unwrap_or(&decl.default);
    text.parse::<f64>().ok().filter(|v| *v > 0.0)
}

/// The pure decision: the collectors whose lowest resident memory over the lookback
/// (`lowest_rss`: `(variant, host)` → MiB) was above their variant's limit (`limits`:
/// variant → MiB), as one reason, or `None` when every collector stayed within.
pub fn over_memory_limit(
    limits: &BTreeMap<String, f64>,
    lowest_rss: &BTreeMap<(String, String), f64>,
    lookback: Duration,
) -> Option<String> {
    let over: Vec<String> = lowest_rss
        .iter()
        .filter_map(|((variant, host), rss)| {
            let limit = limits.get(variant)?;
            (rss > limit).then(|| {
                format!(
                    "the {variant}'s collector on {host} used at least {rss:.1} MiB, over its limit of {limit} MiB"
                )
            })
        })
        .collect();
    if over.is_empty() {
        return None;
    }
    Some(format!(
        "stopped early: for the last {}, {} ({MEMORY_LIMIT_VARIABLE}, the memory_limiter's \
         limit_mib); its collectors were stopped",
        phoenix_wire::duration::HumanDuration(lookback),
        over.join("; ")
    ))
}

/// Whether `experiment` has run long enough at `now` to be checked.
pub fn due(experiment: &Experiment, lookback: Duration, now: DateTime<Utc>) -> bool {
    if experiment.phase != Phase::Running {
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

/// Each variant's memory limit (MiB) from its template's declared variables.
async fn memory_limits(pool: &PgPool, experiment: &Experiment) -> Result<BTreeMap<String, f64>> {
    use phoenix_wire::agent::Variant;
    let mut conn = pool.acquire().await?;
    let mut limits = BTreeMap::new();
    for (name, variant) in [
        ("baseline", Variant::Baseline),
        ("candidate", Variant::Candidate),
    ] {
        let pipeline = pipeline_of(&experiment.spec, variant);
        let template = match templates::get(&mut conn, &pipeline.pipeline).await {
            Ok(t) => t,
            Err(StoreError::NotFound(_)) => continue,
            Err(err) => return Err(err),
        };
        if let Some(limit) = memory_limit_mib(&template.variables, &pipeline.vars) {
            limits.insert(name.to_string(), limit);
        }
    }
    Ok(limits)
}

/// Each collector's lowest RSS (MiB) over `[now − lookback, now]`, by
/// `(variant, host)`, from what the agents pushed, on the experiment's hosts only.
async fn lowest_rss(
    prom: &Prometheus,
    experiment: &Experiment,
    lookback: Duration,
    now: DateTime<Utc>,
) -> std::result::Result<BTreeMap<(String, String), f64>, PrometheusError> {
    let query = format!(
        r#"min by (variant, host) (min_over_time(phoenix_collector_rss_bytes{{job="phoenix_collectors",experiment="{}",host=~"{}"}}[{}ms])) / 1048576"#,
        experiment.name,
        crate::analyzer::hosts_regex(&experiment.target_hosts),
        lookback.as_millis()
    );
    Ok(prom
        .query(&query, Some(now))
        .await?
        .into_iter()
        .filter_map(|s| {
            Some((
                (
                    s.labels.get("variant")?.clone(),
                    s.labels.get("host")?.clone(),
                ),
                s.value,
            ))
        })
        .collect())
}

/// Checks every running experiment that is due and fails those whose candidate
/// dropped a critical process or whose collector is over its memory limit, fenced
/// by the leadership `epoch`. Prometheus errors
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
        let limits = memory_limits(pool, &experiment).await?;
        let check = async {
            if !limits.is_empty() {
                let rss = lowest_rss(prom, &experiment, lookback, now).await?;
                if let Some(reason) = over_memory_limit(&limits, &rss, lookback) {
                    return Ok(Some(reason));
                }
            }
            if experiment.spec.critical_processes.is_empty() {
                return Ok(None);
            }
            let baseline = seen(prom, &experiment, "baseline", lookback, now).await?;
            let candidate = seen(prom, &experiment, "candidate", lookback, now).await?;
            Ok::<_, PrometheusError>(missing_critical(
                &experiment.spec.critical_processes,
                &baseline,
                &candidate,
                lookback,
            ))
        };
        let reason = match check.await {
            Ok(Some(reason)) => reason,
            Ok(None) => continue,
            Err(err) => {
                tracing::warn!(experiment = %experiment.name, %err, "early-stop check skipped");
                continue;
            }
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
    fn a_collector_over_its_memory_limit_stops_the_experiment() {
        use phoenix_wire::variables::VariableType;
        let declared = vec![VariableDecl {
            name: MEMORY_LIMIT_VARIABLE.into(),
            kind: VariableType::Integer,
            default: "256".into(),
            doc: String::new(),
            min: Some(32.0),
            max: None,
        }];
        let given = BTreeMap::from([(MEMORY_LIMIT_VARIABLE.to_string(), "32".to_string())]);
        assert_eq!(memory_limit_mib(&declared, &BTreeMap::new()), Some(256.0));
        assert_eq!(memory_limit_mib(&declared, &given), Some(32.0));
        assert_eq!(
            memory_limit_mib(&[], &given),
            None,
            "not declared: not checked"
        );

        let limits = BTreeMap::from([
            ("baseline".to_string(), 256.0),
            ("candidate".to_string(), 32.0),
        ]);
        let rss = |pairs: &[(&str, &str, f64)]| -> BTreeMap<(String, String), f64> {
            pairs
                .iter()
                .map(|(v, h, r)| ((v.to_string(), h.to_string()), *r))
                .collect()
        };
        let lookback = Duration::from_secs(120);
        let within = rss(&[("baseline", "web-1", 80.0), ("candidate", "web-1", 31.5)]);
        assert_eq!(over_memory_limit(&limits, &within, lookback), None);
        let over = rss(&[
            ("baseline", "web-1", 80.0),
            ("candidate", "web-1", 75.25),
            ("candidate", "web-2", 20.0),
        ]);
        let reason = over_memory_limit(&limits, &over, lookback).unwrap();
        assert!(
            reason.starts_with("stopped early: for the last 2m, the candidate's collector on web-1 used at least 75.2 MiB, over its limit of 32 MiB (memory_limit_mib"),
            "{reason}"
        );
        assert!(
            !reason.contains("web-2") && !reason.contains("baseline"),
            "{reason}"
        );
        // A variant without a known limit is not checked.
        let unknown = rss(&[("standing", "web-1", 1e6)]);
        assert_eq!(over_memory_limit(&limits, &unknown, lookback), None);
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
