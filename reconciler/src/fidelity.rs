//! Fidelity: what the candidate still lets an SRE answer, beside what it saves.
//! Dropping every series would score 100 % on series reduction; these KPIs catch
//! it (definitions on [`phoenix_wire::report::Fidelity`], reading in
//! docs/ANALYSIS.md):
//!
//! - **top-k recall** by CPU and by memory: per host and evaluation step, the share
//!   of the baseline's [`TOP_K`] busiest executables that the candidate reports;
//! - **total error** of CPU and memory: per host and step, how far the host's total
//!   process CPU utilization (resp. memory) summed from the candidate's series is
//!   from the baseline's.
//!
//! [`measure`] asks Prometheus, the way the analyzer asks it for the other KPIs
//! (the variants' remote-written series, the experiment's hosts only), one range
//! query per KPI and variant at the analyzer's sample step. Ranking and the set
//! intersection happen in PromQL (`topk by (phoenix_host)`, `and on`), so only the
//! baseline's top-k and the candidate's matching series come back, never every
//! process. The arithmetic ([`recall_by_host`], [`error_by_host`], [`assemble`])
//! and the judgements ([`judge_recall`], [`judge_total_error`]) are pure.
//!
//! Both criteria are thresholds on an estimate (the mean over the window's steps,
//! judged on the worst host), not statistical tests: they carry no p-value and do
//! not enter Holm's adjustment across the tested criteria.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use phoenix_wire::report::{CriterionResult, Fidelity, FidelityKpis, Outcome, TOP_K};
use phoenix_wire::view::Experiment;

use crate::analyzer::selector;
use crate::prometheus::{Prometheus, PrometheusError, Series};

/// Process CPU, as every catalog template exports it: the utilization gauge (a
/// fraction of the host, per state), present in aggregated and rollup forms too
/// (the `process.cpu.time` counter is not: sums of counters reset).
pub const CPU_METRIC: &str = "process_cpu_utilization_ratio";
/// Process resident memory.
pub const MEMORY_METRIC: &str = "process_memory_usage_bytes";
/// The name of the adaptive template's rollup of unselected processes: it counts
/// towards totals but is no process of the top-k.
pub const ROLLUP_NAME: &str = "_other";

/// `(host, step in ms)` → executable names.
pub type NamesAt = BTreeMap<(String, i64), BTreeSet<String>>;
/// `(host, step in ms)` → a host total.
pub type TotalsAt = BTreeMap<(String, i64), f64>;

/// Per host: the mean over steps, in percent, and the number of steps.
pub type PerHost = BTreeMap<String, (f64, usize)>;

/// Recall per host: at every step where the baseline has a top-k, the share of it
/// the candidate reported (`present` holds the candidate's names among them), in
/// percent, averaged over the steps.
pub fn recall_by_host(top: &NamesAt, present: &NamesAt) -> PerHost {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for ((host, at), names) in top {
        if names.is_empty() {
            continue;
        }
        let kept = present
            .get(&(host.clone(), *at))
            .map_or(0, |p| names.intersection(p).count());
        let entry = sums.entry(host.clone()).or_default();
        entry.0 += 100.0 * kept as f64 / names.len() as f64;
        entry.1 += 1;
    }
    mean_per_host(sums)
}

/// Relative error per host: at every step where the baseline's total is above
/// zero, `|candidate − baseline| / baseline` in percent (a candidate with no series
/// at that step sums to zero: 100 %), averaged over the steps.
pub fn error_by_host(baseline: &TotalsAt, candidate: &TotalsAt) -> PerHost {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for ((host, at), b) in baseline {
        if !(*b > 0.0 && b.is_finite()) {
            continue;
        }
        let c = candidate
            .get(&(host.clone(), *at))
            .copied()
            .unwrap_or_default();
        let entry = sums.entry(host.clone()).or_default();
        entry.0 += 100.0 * (c - b).abs() / b;
        entry.1 += 1;
    }
    mean_per_host(sums)
}

fn mean_per_host(sums: BTreeMap<String, (f64, usize)>) -> PerHost {
    sums.into_iter()
        .map(|(host, (sum, n))| (host, (sum / n as f64, n)))
        .collect()
}

/// The four KPIs per target host, and over all hosts the mean of the hosts' values.
pub struct Measured {
    pub cpu_recall: PerHost,
    pub memory_recall: PerHost,
    pub cpu_error: PerHost,
    pub memory_error: PerHost,
}

/// The report's [`Fidelity`] for `hosts` (the experiment's targets).
pub fn assemble(
    hosts: &[String],
    measured: &Measured,
    step: Duration,
    freshness: Duration,
) -> Fidelity {
    let get = |m: &PerHost, h: &str| m.get(h).map(|v| v.0);
    let mut per_host = BTreeMap::new();
    for host in hosts {
        let steps = [
            &measured.cpu_recall,
            &measured.memory_recall,
            &measured.cpu_error,
            &measured.memory_error,
        ]
        .iter()
        .filter_map(|m| m.get(host).map(|v| v.1))
        .max()
        .unwrap_or(0);
        per_host.insert(
            host.clone(),
            FidelityKpis {
                cpu_top_k_recall: get(&measured.cpu_recall, host),
                memory_top_k_recall: get(&measured.memory_recall, host),
                cpu_total_error: get(&measured.cpu_error, host),
                memory_total_error: get(&measured.memory_error, host),
                steps,
            },
        );
    }
    let mean = |pick: fn(&FidelityKpis) -> Option<f64>| {
        let values: Vec<f64> = per_host.values().filter_map(pick).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let overall = FidelityKpis {
        cpu_top_k_recall: mean(|k| k.cpu_top_k_recall),
        memory_top_k_recall: mean(|k| k.memory_top_k_recall),
        cpu_total_error: mean(|k| k.cpu_total_error),
        memory_total_error: mean(|k| k.memory_total_error),
        steps: per_host.values().map(|k| k.steps).sum(),
    };
    Fidelity {
        top_k: TOP_K,
        step_seconds: step.as_secs_f64(),
        freshness_seconds: freshness.as_secs_f64(),
        overall,
        hosts: per_host,
    }
}

/// One KPI of a host: what it is called in a reason, and how to read it.
type Pick = (&'static str, fn(&FidelityKpis) -> Option<f64>);

/// A KPI of every host, for a threshold: `(host, what, value)`, and the hosts
/// without it.
fn per_host_values(
    fidelity: &Fidelity,
    picks: [Pick; 2],
) -> (Vec<(String, &'static str, f64)>, Vec<String>) {
    let mut values = Vec::new();
    let mut missing = Vec::new();
    for (host, kpis) in &fidelity.hosts {
        for (what, pick) in picks {
            match pick(kpis) {
                Some(v) => values.push((host.clone(), what, v)),
                None => missing.push(format!("{what} on {host}")),
            }
        }
    }
    (values, missing)
}

/// `minTopKRecall`: on every host, the candidate's top-k recall by CPU and by memory
/// (mean over the window) must be at least `min` percent.
pub fn judge_recall(fidelity: &Fidelity, min: f64) -> CriterionResult {
    let (values, missing) = per_host_values(
        fidelity,
        [
            ("CPU", |k| k.cpu_top_k_recall),
            ("memory", |k| k.memory_top_k_recall),
        ],
    );
    judge_threshold(
        "topKRecall",
        fidelity,
        &values,
        &missing,
        |v| v >= min,
        format!("needs at least {min}% on every host"),
        format!(
            "top-{} recall (share of the baseline's busiest executables the candidate reports)",
            fidelity.top_k
        ),
        true,
    )
}

/// `maxTotalError`: on every host, the error of the total process CPU and memory
/// summed from the candidate's series (mean over the window) must be at most `max`
/// percent.
pub fn judge_total_error(fidelity: &Fidelity, max: f64) -> CriterionResult {
    let (values, missing) = per_host_values(
        fidelity,
        [
            ("CPU", |k| k.cpu_total_error),
            ("memory", |k| k.memory_total_error),
        ],
    );
    judge_threshold(
        "totalError",
        fidelity,
        &values,
        &missing,
        |v| v <= max,
        format!("allows at most {max}% on every host"),
        "error of the host's total process CPU and memory".to_string(),
        false,
    )
}

#[allow(clippy::too_many_arguments)]
fn judge_threshold(
    criterion: &str,
    fidelity: &Fidelity,
    values: &[(String, &'static str, f64)],
    missing: &[String],
    ok: impl Fn(f64) -> bool,
    needs: String,
    what: String,
    higher_is_better: bool,
) -> CriterionResult {
    let result = |outcome, reason| CriterionResult {
        criterion: criterion.to_string(),
        outcome,
        reason,
    };
    if values.is_empty() {
        return result(
            Outcome::NoData,
            format!(
                "no process CPU or memory from the baseline over the window ({CPU_METRIC}, \
                 {MEMORY_METRIC}); are the collectors exporting?"
            ),
        );
    }
    let worst = |resource: &str| {
        values
            .iter()
            .filter(|v| v.1 == resource)
            .min_by(|a, b| {
                if higher_is_better {
                    a.2.total_cmp(&b.2)
                } else {
                    b.2.total_cmp(&a.2)
                }
            })
            .map(|(host, _, v)| format!("{resource} {v:.1}% (worst host {host})"))
    };
    let summary: Vec<String> = ["CPU", "memory"].into_iter().filter_map(worst).collect();
    let failed: Vec<String> = values
        .iter()
        .filter(|v| !ok(v.2))
        .map(|(host, resource, v)| format!("{resource} on {host} {v:.1}%"))
        .collect();
    let steps = fidelity.overall.steps;
    let base = format!(
        "{what}: {}; {needs}; mean over {steps} host-steps of {}s",
        summary.join(", "),
        fidelity.step_seconds
    );
    if !failed.is_empty() {
        return result(
            Outcome::Fail,
            format!("{base}; failed: {}", failed.join(", ")),
        );
    }
    if !missing.is_empty() {
        return result(
            Outcome::NoData,
            format!("{base}; not measured: {}", missing.join(", ")),
        );
    }
    result(Outcome::Pass, base)
}

/// A variant's scrape interval as seen in Prometheus: the window over the most
/// samples any one of its memory series holds (a process alive all along).
fn interval(max_samples: f64, window: Duration) -> Option<Duration> {
    (max_samples >= 2.0 && max_samples.is_finite())
        .then(|| Duration::from_secs_f64(window.as_secs_f64() / max_samples))
}

/// How old a sample may be and still count at a step: one and a half of the longer
/// scrape interval, so every live series has a sample in it; at least a second.
pub fn freshness(intervals: &[Option<Duration>]) -> Option<Duration> {
    let longest = intervals.iter().flatten().max()?;
    Some(longest.mul_f64(1.5).max(Duration::from_secs(1)))
}

fn ms(t: f64) -> i64 {
    (t * 1000.0).round() as i64
}

fn names_at(series: &[Series]) -> NamesAt {
    let mut at = NamesAt::new();
    for s in series {
        let (Some(host), Some(name)) = (
            s.labels.get("phoenix_host"),
            s.labels.get("process_executable_name"),
        ) else {
            continue;
        };
        for (t, v) in &s.values {
            if v.is_finite() {
                at.entry((host.clone(), ms(*t)))
                    .or_default()
                    .insert(name.clone());
            }
        }
    }
    at
}

fn totals_at(series: &[Series]) -> TotalsAt {
    let mut at = TotalsAt::new();
    for s in series {
        let Some(host) = s.labels.get("phoenix_host") else {
            continue;
        };
        for (t, v) in &s.values {
            if v.is_finite() {
                *at.entry((host.clone(), ms(*t))).or_default() += v;
            }
        }
    }
    at
}

/// Measures fidelity over `[start, end]` every `step`; `None` when neither variant
/// wrote process memory series (nothing to compare).
pub async fn measure(
    prom: &Prometheus,
    experiment: &Experiment,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    step: Duration,
) -> Result<Option<Fidelity>, PrometheusError> {
    let inner = |variant: &str| {
        let s = selector(experiment, variant);
        s[1..s.len() - 1].to_string()
    };
    let window = (end - start).to_std().unwrap_or_default();
    let window_ms = window.as_millis().max(1);
    let mut intervals = Vec::new();
    for variant in ["baseline", "candidate"] {
        let query = format!(
            r#"max(count_over_time({{__name__="{MEMORY_METRIC}",{}}}[{window_ms}ms]))"#,
            inner(variant)
        );
        let most = prom
            .query(&query, Some(end))
            .await?
            .first()
            .map_or(0.0, |s| s.value);
        intervals.push(interval(most, window));
    }
    let Some(fresh) = freshness(&intervals) else {
        return Ok(None);
    };
    let fresh_ms = fresh.as_millis();
    let first = (start + chrono::Duration::from_std(fresh).unwrap_or_default()).min(end);
    let per_name = |metric: &str, variant: &str| {
        format!(
            r#"sum by (phoenix_host, process_executable_name) (last_over_time({{__name__="{metric}",{},process_executable_name!="",process_executable_name!="{ROLLUP_NAME}"}}[{fresh_ms}ms]))"#,
            inner(variant)
        )
    };
    let total = |metric: &str, variant: &str| {
        format!(
            r#"sum by (phoenix_host) (last_over_time({{__name__="{metric}",{}}}[{fresh_ms}ms]))"#,
            inner(variant)
        )
    };
    let mut recall = Vec::new();
    let mut error = Vec::new();
    for metric in [CPU_METRIC, MEMORY_METRIC] {
        let top = format!(
            "topk by (phoenix_host) ({TOP_K}, {} > 0)",
            per_name(metric, "baseline")
        );
        let present = format!(
            "{} and on (phoenix_host, process_executable_name) {top}",
            per_name(metric, "candidate")
        );
        let top = names_at(&prom.query_range(&top, first, end, step).await?);
        let present = names_at(&prom.query_range(&present, first, end, step).await?);
        recall.push(recall_by_host(&top, &present));
        let baseline = totals_at(
            &prom
                .query_range(&total(metric, "baseline"), first, end, step)
                .await?,
        );
        let candidate = totals_at(
            &prom
                .query_range(&total(metric, "candidate"), first, end, step)
                .await?,
        );
        error.push(error_by_host(&baseline, &candidate));
    }
    let (memory_recall, cpu_recall) = (recall.pop().unwrap(), recall.pop().unwrap());
    let (memory_error, cpu_error) = (error.pop().unwrap(), error.pop().unwrap());
    Ok(Some(assemble(
        &experiment.target_hosts,
        &Measured {
            cpu_recall,
            memory_recall,
            cpu_error,
            memory_error,
        },
        step,
        fresh,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(entries: &[(&str, i64, &[&str])]) -> NamesAt {
        entries
            .iter()
            .map(|(h, t, n)| {
                (
                    (h.to_string(), *t),
                    n.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect()
    }

    fn totals(entries: &[(&str, i64, f64)]) -> TotalsAt {
        entries
            .iter()
            .map(|(h, t, v)| ((h.to_string(), *t), *v))
            .collect()
    }

    const TOP: [&str; 10] = [
        "postgres", "nginx", "java", "node", "python3", "redis", "dockerd", "sshd", "cron",
        "rsyslogd",
    ];

    #[test]
    fn recall_is_the_share_of_the_baselines_top_the_candidate_reports_per_step() {
        let top = names(&[
            ("web-1", 0, &TOP),
            ("web-1", 10_000, &TOP),
            ("web-2", 0, &TOP),
        ]);
        // web-1: all ten at the first step, four at the second; web-2: nothing.
        let present = names(&[
            ("web-1", 0, &TOP),
            ("web-1", 10_000, &TOP[..4]),
            ("web-2", 10_000, &TOP),
        ]);
        let recall = recall_by_host(&top, &present);
        assert_eq!(recall["web-1"], (70.0, 2));
        assert_eq!(
            recall["web-2"],
            (0.0, 1),
            "a step without the candidate is 0"
        );
        // A host whose baseline had no busy process has no recall, not 100 %.
        assert!(!recall_by_host(&names(&[("web-3", 0, &[])]), &present).contains_key("web-3"));
    }

    #[test]
    fn total_error_is_relative_to_the_baseline_and_missing_candidate_is_all_error() {
        let baseline = totals(&[
            ("web-1", 0, 100.0),
            ("web-1", 10_000, 200.0),
            ("web-2", 0, 0.0),
        ]);
        let candidate = totals(&[("web-1", 0, 90.0), ("web-2", 0, 5.0)]);
        let error = error_by_host(&baseline, &candidate);
        // |90-100|/100 = 10 %, then nothing where the baseline had 200: 100 %.
        assert_eq!(error["web-1"], (55.0, 2));
        assert!(
            !error.contains_key("web-2"),
            "a zero baseline gives no ratio"
        );
    }

    fn fidelity(hosts: &[(&str, [Option<f64>; 4])]) -> Fidelity {
        let mut m = Measured {
            cpu_recall: PerHost::new(),
            memory_recall: PerHost::new(),
            cpu_error: PerHost::new(),
            memory_error: PerHost::new(),
        };
        for (host, [cr, mr, ce, me]) in hosts {
            for (map, v) in [
                (&mut m.cpu_recall, cr),
                (&mut m.memory_recall, mr),
                (&mut m.cpu_error, ce),
                (&mut m.memory_error, me),
            ] {
                if let Some(v) = v {
                    map.insert(host.to_string(), (*v, 6));
                }
            }
        }
        let names: Vec<String> = hosts.iter().map(|h| h.0.to_string()).collect();
        assemble(&names, &m, Duration::from_secs(10), Duration::from_secs(15))
    }

    #[test]
    fn overall_is_the_mean_of_the_hosts() {
        let f = fidelity(&[
            ("web-1", [Some(100.0), Some(80.0), Some(2.0), Some(10.0)]),
            ("web-2", [Some(90.0), Some(60.0), None, Some(30.0)]),
        ]);
        assert_eq!(f.top_k, 10);
        assert_eq!(f.overall.cpu_top_k_recall, Some(95.0));
        assert_eq!(f.overall.memory_top_k_recall, Some(70.0));
        assert_eq!(f.overall.cpu_total_error, Some(2.0));
        assert_eq!(f.overall.memory_total_error, Some(20.0));
        assert_eq!((f.hosts["web-1"].steps, f.overall.steps), (6, 12));
    }

    #[test]
    fn recall_is_judged_on_the_worst_host_and_resource() {
        let f = fidelity(&[
            ("web-1", [Some(100.0), Some(95.0), Some(2.0), Some(1.0)]),
            ("web-2", [Some(92.0), Some(40.0), Some(3.0), Some(4.0)]),
        ]);
        let r = judge_recall(&f, 90.0);
        assert_eq!(r.outcome, Outcome::Fail, "{}", r.reason);
        assert!(
            r.reason.contains("memory on web-2 40.0%")
                && r.reason.contains("CPU 92.0% (worst host web-2)")
                && r.reason.contains("needs at least 90%"),
            "{}",
            r.reason
        );
        assert_eq!(judge_recall(&f, 40.0).outcome, Outcome::Pass);
        let r = judge_total_error(&f, 5.0);
        assert_eq!(r.outcome, Outcome::Pass, "{}", r.reason);
        assert!(
            r.reason.contains("memory 4.0% (worst host web-2)"),
            "{}",
            r.reason
        );
        let r = judge_total_error(&f, 3.5);
        assert_eq!(r.outcome, Outcome::Fail, "{}", r.reason);
        assert!(
            r.reason.contains("failed: memory on web-2 4.0%"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn missing_measurements_are_no_data_never_a_pass() {
        let nothing = fidelity(&[("web-1", [None; 4])]);
        assert_eq!(judge_recall(&nothing, 50.0).outcome, Outcome::NoData);
        assert_eq!(judge_total_error(&nothing, 50.0).outcome, Outcome::NoData);
        // One host measured and fine, the other not measured: no data, not a pass.
        let half = fidelity(&[
            ("web-1", [Some(100.0), Some(100.0), Some(1.0), Some(1.0)]),
            ("web-2", [None; 4]),
        ]);
        let r = judge_recall(&half, 50.0);
        assert_eq!(r.outcome, Outcome::NoData, "{}", r.reason);
        assert!(
            r.reason.contains("not measured: CPU on web-2"),
            "{}",
            r.reason
        );
        // A failure elsewhere still fails.
        let failing = fidelity(&[
            ("web-1", [Some(10.0), Some(100.0), Some(1.0), Some(1.0)]),
            ("web-2", [None; 4]),
        ]);
        assert_eq!(judge_recall(&failing, 50.0).outcome, Outcome::Fail);
    }

    #[test]
    fn freshness_covers_the_slower_variant() {
        let window = Duration::from_secs(60);
        let baseline = interval(20.0, window); // 3 s
        let candidate = interval(2.0, window); // 30 s
        assert_eq!(baseline, Some(Duration::from_secs(3)));
        assert_eq!(
            freshness(&[baseline, candidate]),
            Some(Duration::from_secs(45))
        );
        assert_eq!(interval(1.0, window), None, "one sample has no interval");
        assert_eq!(freshness(&[None, None]), None);
        assert_eq!(
            freshness(&[Some(Duration::from_millis(100))]),
            Some(Duration::from_secs(1))
        );
    }
}
