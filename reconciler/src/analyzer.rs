//! The analyzer: for every experiment in `analyzing`, measure both variants over the
//! recorded window in Prometheus, judge the candidate against the experiment's
//! criteria, store the report and move the experiment to `completed`.
//!
//! KPIs, per variant, overall and per host:
//! - **series**: true distinct series over the window (Prometheus' series API),
//!   selected by the `phoenix_experiment` / `phoenix_variant` / `phoenix_host` labels
//!   every catalog pipeline stamps on its output;
//! - **datapoints per minute**: `count_over_time` over the window, per metric name
//!   (a range function drops the metric name, so names are counted one by one), and
//!   the **monthly cost** at the configured price per million DPM;
//! - **collector CPU and RSS**: samples every `sample_step` (default 10 s) of what the
//!   agents push to the Pushgateway, per host: CPU is
//!   `rate(phoenix_collector_cpu_seconds_total[W])` with W the CPU rate window
//!   (`--cpu-rate-window`, default 1 m), starting one W into the measurement window so
//!   that every sample covers measured time only; RSS is
//!   `phoenix_collector_rss_bytes`. A shorter W is mostly zeros for a light collector
//!   (the kernel counts CPU in 10 ms ticks), which the judgement refuses as "no
//!   resolution";
//! - **critical processes**: executable names from the critical list that each
//!   variant reported;
//! - **fidelity**: top-10 recall by CPU and memory and the error of the host's
//!   process totals, candidate against baseline, per host and step
//!   ([`crate::fidelity`]).
//!
//! CPU and RSS are judged by [`crate::judge`]: paired by host (both variants sampled
//! at the same instants), the test chosen by the number of hosts, Holm across the
//! two criteria (docs/ANALYSIS.md).
//!
//! The report keeps the samples behind these numbers as its evidence (series and
//! datapoints per minute over the window, CPU and RSS per host: what the tests
//! compared), at most `EVIDENCE_MAX_POINTS` per series, so that the console draws
//! them without Prometheus.
//!
//! Only the experiment's target hosts count: every query selects
//! `phoenix_host=~` (remote-written series) or `host=~` (Pushgateway groups) their
//! exact ids, so samples labelled with the experiment by any other host (a forged
//! push or remote write) are left out, and the report names those hosts in
//! `ignoredHosts`.
//!
//! Missing data is an explicit `no-data` outcome that never passes. When Prometheus
//! cannot be reached the experiment stays in `analyzing` and is retried on every
//! activation of the analysis job; after the analysis timeout it fails with the last
//! error, and nothing is recorded as a pass.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use phoenix_storage::{PgPool, Result, experiments, results};
use phoenix_wire::report::{
    CriterionResult, EVIDENCE_MAX_POINTS, Evidence, ExperimentReport, HostKpis, Outcome, Point,
    VariantEvidence, VariantKpis, Verdict, bounded,
};

use crate::stats::paired::HostSeries;
use phoenix_wire::view::{Experiment, Phase};
use sqlx::Connection;

use crate::metrics::{Metrics, ResultLabels};
use crate::prometheus::{Prometheus, PrometheusError};

/// What the analyzer needs besides the database.
#[derive(Clone)]
pub struct AnalyzerSettings {
    pub prometheus: Prometheus,
    /// Price of one million datapoints per minute for a month.
    pub price_per_million_dpm: f64,
    /// How long an experiment may stay in `analyzing` before it fails.
    pub timeout: Duration,
    /// How long after the window's end to wait for late samples before measuring.
    pub settle: Duration,
    /// The `rate()` window for collector CPU.
    pub rate_window: Duration,
    /// Spacing of the CPU and RSS samples taken from Prometheus.
    pub sample_step: Duration,
    /// How long a critical process may be missing from the candidate before a
    /// running experiment fails early ([`crate::early_stop`]); zero turns it off.
    pub early_stop_after: Duration,
}

/// Analyzes every experiment that is in `analyzing`, then checks the running ones for
/// an early stop ([`crate::early_stop`]). It runs as a background job of
/// its own ([`crate::background`]), never inside the reconcile pass, and holds no
/// database connection while it waits for Prometheus: it reads what is due, measures,
/// then writes each result in a short transaction whose phase change is a
/// compare-and-set, fenced by the leadership `epoch` (a deposed leader's late
/// result is refused).
pub async fn analyze_due(
    pool: &PgPool,
    settings: &AnalyzerSettings,
    metrics: &Metrics,
    epoch: i64,
) -> Result<()> {
    let due = {
        let mut conn = pool.acquire().await?;
        let mut due = Vec::new();
        for experiment in experiments::list_in_phases(&mut conn, &[Phase::Analyzing]).await? {
            // The window is recorded with the transition; missing only in a race.
            if let Some(state) = results::state(&mut conn, &experiment.name).await? {
                due.push((experiment, state));
            }
        }
        due
    };
    for (experiment, state) in due {
        let now = database_now(pool).await?;
        let ready_at =
            state.window_end + chrono::Duration::from_std(settings.settle).unwrap_or_default();
        if now < ready_at {
            continue; // samples of the window's last seconds may still be on their way
        }
        let measured = measure(
            settings,
            &experiment,
            state.window_start,
            state.window_end,
            now,
        )
        .await;
        let mut conn = pool.acquire().await?;
        let outcome = match measured {
            Ok(report) => {
                let mut tx = conn.begin().await?;
                phoenix_storage::leader::fence(&mut tx, epoch).await?;
                results::store(&mut tx, &report).await?;
                let reason = verdict_reason(&report);
                experiments::transition(
                    &mut tx,
                    &experiment.name,
                    Phase::Analyzing,
                    Phase::Completed,
                    &reason,
                    None,
                )
                .await?;
                tx.commit().await?;
                tracing::info!(experiment = %experiment.name, verdict = report.verdict.as_str(), "analyzed");
                "completed"
            }
            Err(err) => {
                let error = err.to_string();
                let mut tx = conn.begin().await?;
                phoenix_storage::leader::fence(&mut tx, epoch).await?;
                let attempts = results::record_failure(&mut tx, &experiment.name, &error).await?;
                // Counted from when measuring could first start, not from the phase change.
                let waited = now
                    .signed_duration_since(ready_at)
                    .to_std()
                    .unwrap_or_default();
                if waited > settings.timeout {
                    let reason = format!(
                        "analysis failed after {attempts} attempts over {}: {error}; no verdict was recorded",
                        phoenix_wire::duration::HumanDuration(Duration::from_secs(
                            waited.as_secs()
                        ))
                    );
                    experiments::transition(
                        &mut tx,
                        &experiment.name,
                        Phase::Analyzing,
                        Phase::Failed,
                        &reason,
                        None,
                    )
                    .await?;
                    tx.commit().await?;
                    "failed"
                } else {
                    tx.commit().await?;
                    tracing::warn!(experiment = %experiment.name, attempts, %error, "analysis failed; will retry");
                    "retrying"
                }
            }
        };
        metrics
            .analyses
            .get_or_create(&ResultLabels { result: outcome })
            .inc();
    }
    crate::early_stop::stop_early(pool, settings, epoch).await
}

async fn database_now(pool: &PgPool) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT now()").fetch_one(pool).await?)
}

/// The finite samples of `series` times `scale`, per host, in time order; the series
/// of one host at the same instant are summed (a variant's collectors on a host).
/// These are the samples the tests compare and the report's evidence.
fn points_by_host(
    series: &[crate::prometheus::Series],
    scale: f64,
) -> BTreeMap<String, Vec<Point>> {
    let mut by_host: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for s in series {
        let host = s.labels.get("host").cloned().unwrap_or_default();
        let at = by_host.entry(host).or_default();
        for (t, v) in &s.values {
            let v = v * scale;
            if v.is_finite() {
                *at.entry((t * 1000.0).round() as i64).or_default() += v;
            }
        }
    }
    by_host
        .into_iter()
        .map(|(host, at)| {
            let points = at
                .into_iter()
                .map(|(ms, v)| (ms as f64 / 1000.0, v))
                .collect();
            (host, points)
        })
        .collect()
}

/// Both variants' samples of one resource, per target host, for the paired tests.
fn host_series(
    baseline: &BTreeMap<String, Vec<Point>>,
    candidate: &BTreeMap<String, Vec<Point>>,
) -> Vec<HostSeries> {
    let hosts: BTreeSet<&String> = baseline
        .keys()
        .chain(candidate.keys())
        .filter(|h| !h.is_empty())
        .collect();
    hosts
        .into_iter()
        .map(|h| HostSeries {
            baseline: baseline.get(h).cloned().unwrap_or_default(),
            candidate: candidate.get(h).cloned().unwrap_or_default(),
        })
        .collect()
}

fn verdict_reason(report: &ExperimentReport) -> String {
    let decisive: Vec<String> = report
        .criteria
        .iter()
        .filter(|c| report.verdict == Verdict::Pass || c.outcome != Outcome::Pass)
        .map(|c| format!("{}: {}", c.criterion, c.reason))
        .collect();
    format!(
        "verdict {}: {}",
        report.verdict.as_str(),
        decisive.join("; ")
    )
}

/// A PromQL regex (inside a double-quoted string) matching exactly these hosts.
/// Host ids hold letters, digits, `.`, `_` and `-`, of which only `.` is special.
pub(crate) fn hosts_regex(hosts: &[String]) -> String {
    hosts
        .iter()
        .map(|h| h.replace('.', "\\\\."))
        .collect::<Vec<_>>()
        .join("|")
}

/// The remote-written series of one variant, on the experiment's hosts only.
pub(crate) fn selector(experiment: &Experiment, variant: &str) -> String {
    format!(
        r#"{{phoenix_experiment="{}",phoenix_variant="{variant}",phoenix_host=~"{}"}}"#,
        experiment.name,
        hosts_regex(&experiment.target_hosts)
    )
}

/// Hosts that sent samples labelled with the experiment although it does not
/// target them, through remote write or the Pushgateway, during the window.
async fn foreign_hosts(
    prom: &Prometheus,
    experiment: &Experiment,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> std::result::Result<Vec<String>, PrometheusError> {
    let targets = hosts_regex(&experiment.target_hosts);
    let mut found = BTreeSet::new();
    for (selector, label) in [
        (
            format!(
                r#"{{phoenix_experiment="{}",phoenix_host!~"{targets}"}}"#,
                experiment.name
            ),
            "phoenix_host",
        ),
        (
            format!(
                r#"{{job="phoenix_collectors",experiment="{}",host!~"{targets}"}}"#,
                experiment.name
            ),
            "host",
        ),
    ] {
        for labels in prom.series(&selector, start, end).await? {
            found.insert(labels.get(label).cloned().unwrap_or_default());
        }
    }
    Ok(found.into_iter().collect())
}

/// Measured numbers of one variant, before judging.
#[derive(Default)]
struct Measured {
    overall: VariantKpis,
    per_host: BTreeMap<String, VariantKpis>,
    /// Collector CPU (cores) and RSS (MiB) per host, unbounded: what the tests compare.
    cpu_by_host: BTreeMap<String, Vec<Point>>,
    rss_by_host: BTreeMap<String, Vec<Point>>,
    evidence: VariantEvidence,
}

async fn measure_variant(
    settings: &AnalyzerSettings,
    experiment: &Experiment,
    variant: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> std::result::Result<Measured, PrometheusError> {
    let prom = &settings.prometheus;
    let critical: BTreeSet<&str> = experiment
        .spec
        .critical_processes
        .iter()
        .map(String::as_str)
        .collect();
    let mut measured = Measured::default();
    for host in &experiment.target_hosts {
        measured
            .per_host
            .insert(host.clone(), VariantKpis::default());
    }

    // Distinct series, and which critical processes appear among them.
    let series = prom
        .series(&selector(experiment, variant), start, end)
        .await?;
    let mut names = BTreeSet::new();
    let mut critical_overall = BTreeSet::new();
    let mut critical_by_host: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for labels in &series {
        let host = labels.get("phoenix_host").cloned().unwrap_or_default();
        measured.per_host.entry(host.clone()).or_default().series += 1;
        measured.overall.series += 1;
        if let Some(name) = labels.get("__name__") {
            names.insert(name.clone());
        }
        if let Some(exe) = labels.get("process_executable_name")
            && critical.contains(exe.as_str())
        {
            critical_overall.insert(exe.clone());
            critical_by_host
                .entry(host)
                .or_default()
                .insert(exe.clone());
        }
    }
    measured.overall.critical_processes = critical_overall.into_iter().collect();
    for (host, found) in critical_by_host {
        measured
            .per_host
            .entry(host)
            .or_default()
            .critical_processes = found.into_iter().collect();
    }

    // Datapoints per minute, counted per metric name.
    let minutes = (end - start).num_milliseconds() as f64 / 60_000.0;
    let window = format!("{}ms", (end - start).num_milliseconds().max(1));
    for name in &names {
        let inner = selector(experiment, variant);
        let query = format!(
            "sum by (phoenix_host) (count_over_time({{__name__=\"{name}\",{}}}[{window}]))",
            &inner[1..inner.len() - 1]
        );
        for sample in prom.query(&query, Some(end)).await? {
            let dpm = sample.value / minutes;
            let host = sample
                .labels
                .get("phoenix_host")
                .cloned()
                .unwrap_or_default();
            measured
                .per_host
                .entry(host)
                .or_default()
                .datapoints_per_minute += dpm;
            measured.overall.datapoints_per_minute += dpm;
        }
    }

    // Evidence: distinct series at each step, and datapoints received in the minute
    // before it (counted per metric name, as above, and summed).
    let inner = selector(experiment, variant);
    let count = prom
        .query_range(&format!("count({inner})"), start, end, settings.sample_step)
        .await?;
    measured.evidence.series = count
        .into_iter()
        .next()
        .map(|s| s.values)
        .unwrap_or_default();
    let mut dpm: BTreeMap<i64, f64> = BTreeMap::new();
    for name in &names {
        let query = format!(
            "sum(count_over_time({{__name__=\"{name}\",{}}}[1m]))",
            &inner[1..inner.len() - 1]
        );
        for s in prom
            .query_range(&query, start, end, settings.sample_step)
            .await?
        {
            for (t, v) in s.values {
                *dpm.entry((t * 1000.0).round() as i64).or_default() += v;
            }
        }
    }
    measured.evidence.datapoints_per_minute = dpm
        .into_iter()
        .map(|(ms, v)| (ms as f64 / 1000.0, v))
        .collect();

    // Collector CPU (cores) and RSS (MiB), per step, from the Pushgateway series. CPU
    // is the increase of the cumulative CPU seconds over the rate window, per second:
    // long enough to resolve a light collector (a per-scrape rate of a 10 ms clock
    // tick is mostly 0). Samples start one rate window into the measurement window, so
    // that each covers only measured time (no warmup, no start-up).
    let group = format!(
        r#"job="phoenix_collectors",experiment="{}",variant="{variant}",host=~"{}""#,
        experiment.name,
        hosts_regex(&experiment.target_hosts)
    );
    let rate_window = format!("{}ms", settings.rate_window.as_millis());
    let cpu_start = cpu_start(start, end, settings.rate_window);
    let cpu = prom
        .query_range(
            &format!("rate(phoenix_collector_cpu_seconds_total{{{group}}}[{rate_window}])"),
            cpu_start,
            end,
            settings.sample_step,
        )
        .await?;
    let rss = prom
        .query_range(
            &format!("phoenix_collector_rss_bytes{{{group}}}"),
            start,
            end,
            settings.sample_step,
        )
        .await?;
    let mut cpu_by_host = points_by_host(&cpu, 1.0);
    let mut rss_by_host = points_by_host(&rss, 1.0 / 1_048_576.0);
    cpu_by_host.remove("");
    rss_by_host.remove("");
    let values = |m: &BTreeMap<String, Vec<Point>>| -> Vec<f64> {
        m.values().flatten().map(|p| p.1).collect()
    };
    measured.overall.cpu_cores = mean(&values(&cpu_by_host));
    measured.overall.rss_mib = mean(&values(&rss_by_host));
    for (host, points) in &cpu_by_host {
        let values: Vec<f64> = points.iter().map(|p| p.1).collect();
        measured.per_host.entry(host.clone()).or_default().cpu_cores = mean(&values);
    }
    for (host, points) in &rss_by_host {
        let values: Vec<f64> = points.iter().map(|p| p.1).collect();
        measured.per_host.entry(host.clone()).or_default().rss_mib = mean(&values);
    }
    measured.evidence.cpu_cores = cpu_by_host.clone();
    measured.evidence.rss_mib = rss_by_host.clone();
    measured.cpu_by_host = cpu_by_host;
    measured.rss_by_host = rss_by_host;
    measured.per_host.remove("");
    measured.evidence = bound_evidence(std::mem::take(&mut measured.evidence));
    Ok(measured)
}

/// Every series of `evidence` cut to at most [`EVIDENCE_MAX_POINTS`].
fn bound_evidence(evidence: VariantEvidence) -> VariantEvidence {
    let per_host = |map: BTreeMap<String, Vec<Point>>| {
        map.into_iter()
            .filter(|(host, _)| !host.is_empty())
            .map(|(host, points)| (host, bounded(points, EVIDENCE_MAX_POINTS)))
            .collect()
    };
    VariantEvidence {
        series: bounded(evidence.series, EVIDENCE_MAX_POINTS),
        datapoints_per_minute: bounded(evidence.datapoints_per_minute, EVIDENCE_MAX_POINTS),
        cpu_cores: per_host(evidence.cpu_cores),
        rss_mib: per_host(evidence.rss_mib),
    }
}

/// Where CPU samples start: one rate window into the measurement window, or its end
/// when the window is shorter (then there is one sample per host, too few to judge).
fn cpu_start(start: DateTime<Utc>, end: DateTime<Utc>, rate_window: Duration) -> DateTime<Utc> {
    let offset = chrono::Duration::from_std(rate_window).unwrap_or_default();
    (start + offset).min(end)
}

/// How many consecutive CPU samples share data: the rate window over the step.
fn cpu_overlap(rate_window: Duration, step: Duration) -> usize {
    if step.is_zero() {
        return 1;
    }
    (rate_window.as_secs_f64() / step.as_secs_f64())
        .ceil()
        .max(1.0) as usize
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn cost(kpis: &mut VariantKpis, price: f64) {
    kpis.monthly_cost = kpis.datapoints_per_minute / 1e6 * price;
}

/// Measures both variants and judges the candidate.
pub async fn measure(
    settings: &AnalyzerSettings,
    experiment: &Experiment,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
) -> std::result::Result<ExperimentReport, PrometheusError> {
    let mut baseline = measure_variant(settings, experiment, "baseline", start, end).await?;
    let mut candidate = measure_variant(settings, experiment, "candidate", start, end).await?;
    let price = settings.price_per_million_dpm;
    for m in [&mut baseline, &mut candidate] {
        cost(&mut m.overall, price);
        for kpis in m.per_host.values_mut() {
            cost(kpis, price);
        }
    }
    let criteria = &experiment.spec.criteria;
    let mut results = vec![
        judge_series(
            &baseline.overall,
            &candidate.overall,
            criteria.min_series_reduction,
        ),
        judge_critical(
            experiment,
            &baseline,
            &candidate,
            criteria.min_critical_retention,
        ),
    ];
    let prepared = vec![
        crate::judge::prepare(
            "cpuOverhead",
            &host_series(&baseline.cpu_by_host, &candidate.cpu_by_host),
            criteria.max_cpu_overhead_cores,
            "cores",
            cpu_overlap(settings.rate_window, settings.sample_step),
        ),
        crate::judge::prepare(
            "memoryOverhead",
            &host_series(&baseline.rss_by_host, &candidate.rss_by_host),
            criteria.max_memory_overhead_mib,
            "MiB",
            1,
        ),
    ];
    let (judged, error_control) = crate::judge::conclude(prepared, crate::stats::DEFAULT_ALPHA);
    let mut tests = Vec::new();
    for (result, test) in judged {
        results.push(result);
        tests.push(test);
    }
    let memory_test = tests.pop().flatten();
    let cpu_test = tests.pop().flatten();
    if let Some(min_reduction) = criteria.min_cost_reduction {
        results.push(judge_cost(
            &baseline.overall,
            &candidate.overall,
            min_reduction,
            price,
        ));
    }
    let fidelity = crate::fidelity::measure(
        &settings.prometheus,
        experiment,
        start,
        end,
        settings.sample_step,
    )
    .await?;
    let no_fidelity = |criterion: &str| CriterionResult {
        criterion: criterion.to_string(),
        outcome: Outcome::NoData,
        reason: format!(
            "neither variant wrote process memory series ({}) over the window; are the collectors exporting?",
            crate::fidelity::MEMORY_METRIC
        ),
    };
    if let Some(min) = criteria.min_top_k_recall {
        results.push(match &fidelity {
            Some(f) => crate::fidelity::judge_recall(f, min),
            None => no_fidelity("topKRecall"),
        });
    }
    if let Some(max) = criteria.max_total_error {
        results.push(match &fidelity {
            Some(f) => crate::fidelity::judge_total_error(f, max),
            None => no_fidelity("totalError"),
        });
    }
    let verdict = if results.iter().any(|c| c.outcome == Outcome::Fail) {
        Verdict::Fail
    } else if results
        .iter()
        .all(|c| matches!(c.outcome, Outcome::Pass | Outcome::NotApplicable))
    {
        Verdict::Pass
    } else {
        Verdict::Inconclusive
    };
    let mut hosts = BTreeMap::new();
    for host in baseline.per_host.keys().chain(candidate.per_host.keys()) {
        hosts.insert(
            host.clone(),
            HostKpis {
                baseline: baseline.per_host.get(host).cloned().unwrap_or_default(),
                candidate: candidate.per_host.get(host).cloned().unwrap_or_default(),
            },
        );
    }
    let ignored_hosts = foreign_hosts(&settings.prometheus, experiment, start, end).await?;
    if !ignored_hosts.is_empty() {
        tracing::warn!(experiment = %experiment.name, ?ignored_hosts, "samples from hosts outside the experiment were left out");
    }
    Ok(ExperimentReport {
        experiment: experiment.name.clone(),
        window_start: start,
        window_end: end,
        analyzed_at: now,
        verdict,
        criteria: results,
        baseline: baseline.overall,
        candidate: candidate.overall,
        hosts,
        cpu_test,
        memory_test,
        price_per_million_dpm: price,
        error_control,
        fidelity,
        evidence: Some(Evidence {
            step_seconds: settings.sample_step.as_secs_f64(),
            max_points: EVIDENCE_MAX_POINTS,
            baseline: baseline.evidence,
            candidate: candidate.evidence,
        }),
        ignored_hosts,
        incidents: Vec::new(),
    })
}

fn judge_series(
    baseline: &VariantKpis,
    candidate: &VariantKpis,
    min_reduction: f64,
) -> CriterionResult {
    let criterion = "seriesReduction".to_string();
    if baseline.series == 0 || candidate.series == 0 {
        return CriterionResult {
            criterion,
            outcome: Outcome::NoData,
            reason: format!(
                "no series in Prometheus for the {} over the window; are the collectors exporting?",
                if baseline.series == 0 {
                    "baseline"
                } else {
                    "candidate"
                }
            ),
        };
    }
    let reduction = 100.0 * (1.0 - candidate.series as f64 / baseline.series as f64);
    let outcome = if reduction >= min_reduction {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    CriterionResult {
        criterion,
        outcome,
        reason: format!(
            "series cut by {reduction:.1}% ({} → {}); needs at least {min_reduction}%",
            baseline.series, candidate.series
        ),
    }
}

/// `minCostReduction`: the candidate's monthly cost (datapoints per minute times the
/// configured price) must be at least `min_reduction` percent below the baseline's.
fn judge_cost(
    baseline: &VariantKpis,
    candidate: &VariantKpis,
    min_reduction: f64,
    price: f64,
) -> CriterionResult {
    let criterion = "costReduction".to_string();
    if price.is_nan() || price <= 0.0 {
        return CriterionResult {
            criterion,
            outcome: Outcome::NoData,
            reason:
                "no price is configured (--price-per-million-dpm, PHOENIX_PRICE_PER_MILLION_DPM, \
                     the chart's reconciler.pricePerMillionDatapoints), so cost cannot be judged"
                    .into(),
        };
    }
    if baseline.monthly_cost <= 0.0 {
        return CriterionResult {
            criterion,
            outcome: Outcome::NoData,
            reason:
                "the baseline sent no datapoints over the window; are the collectors exporting?"
                    .into(),
        };
    }
    let reduction = 100.0 * (1.0 - candidate.monthly_cost / baseline.monthly_cost);
    let outcome = if reduction >= min_reduction {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    CriterionResult {
        criterion,
        outcome,
        reason: format!(
            "monthly cost cut by {reduction:.1}% ({:.2} → {:.2} at {price} per million datapoints per minute); needs at least {min_reduction}%",
            baseline.monthly_cost, candidate.monthly_cost
        ),
    }
}

fn judge_critical(
    experiment: &Experiment,
    baseline: &Measured,
    candidate: &Measured,
    min_retention: f64,
) -> CriterionResult {
    let criterion = "criticalRetention".to_string();
    if experiment.spec.critical_processes.is_empty() {
        return CriterionResult {
            criterion,
            outcome: Outcome::NotApplicable,
            reason: "no critical processes listed".into(),
        };
    }
    let seen: BTreeSet<&String> = baseline.overall.critical_processes.iter().collect();
    if seen.is_empty() {
        return CriterionResult {
            criterion,
            outcome: Outcome::NoData,
            reason: format!(
                "the baseline saw none of the critical processes ({}); are they running on the target hosts?",
                experiment.spec.critical_processes.join(", ")
            ),
        };
    }
    let kept: BTreeSet<&String> = candidate.overall.critical_processes.iter().collect();
    let dropped: Vec<String> = seen
        .difference(&kept)
        .map(|name| {
            let hosts: Vec<&str> = baseline
                .per_host
                .iter()
                .filter(|(_, k)| k.critical_processes.contains(name))
                .map(|(h, _)| h.as_str())
                .collect();
            format!("{name} (seen by the baseline on {})", hosts.join(", "))
        })
        .collect();
    let retention = 100.0 * (seen.len() - dropped.len()) as f64 / seen.len() as f64;
    let outcome = if retention >= min_retention {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    let reason = if dropped.is_empty() {
        format!(
            "kept all {} critical processes the baseline saw",
            seen.len()
        )
    } else {
        format!(
            "kept {retention:.0}% of critical processes (needs {min_retention}%); the candidate dropped {}",
            dropped.join(", ")
        )
    };
    CriterionResult {
        criterion,
        outcome,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_judged_against_the_configured_price() {
        let kpis = |dpm: f64| {
            let mut k = VariantKpis {
                datapoints_per_minute: dpm,
                ..Default::default()
            };
            cost(&mut k, 100.0);
            k
        };
        let r = judge_cost(&kpis(10_000.0), &kpis(2_000.0), 50.0, 100.0);
        assert_eq!(r.outcome, Outcome::Pass, "{}", r.reason);
        assert!(
            r.reason.contains("80.0%") && r.reason.contains("1.00 → 0.20"),
            "{}",
            r.reason
        );
        let r = judge_cost(&kpis(10_000.0), &kpis(8_000.0), 50.0, 100.0);
        assert_eq!(r.outcome, Outcome::Fail, "{}", r.reason);
        let r = judge_cost(&kpis(10_000.0), &kpis(2_000.0), 50.0, 0.0);
        assert_eq!(r.outcome, Outcome::NoData);
        assert!(r.reason.contains("price"));
        let r = judge_cost(&kpis(0.0), &kpis(0.0), 50.0, 100.0);
        assert_eq!(r.outcome, Outcome::NoData);
    }

    #[test]
    fn the_hosts_regex_matches_exactly_the_targets() {
        let hosts = vec!["web-1".to_string(), "db.eu-2".to_string()];
        // In a PromQL string `\\.` is the regex `\.`: a literal dot.
        assert_eq!(hosts_regex(&hosts), r"web-1|db\\.eu-2");
        let regex = regex::Regex::new(&format!(
            "^(?:{})$",
            hosts_regex(&hosts).replace(r"\\", r"\")
        ))
        .unwrap();
        assert!(regex.is_match("web-1") && regex.is_match("db.eu-2"));
        assert!(!regex.is_match("dbxeu-2") && !regex.is_match("web-10"));
    }
}
