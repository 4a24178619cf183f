//! An experiment's report: KPIs per variant (overall and per host), the statistical
//! tests behind the resource judgements, the verdict with one reason per criterion,
//! and the [`Evidence`]: the samples behind it, bounded, for the console's charts.
//! Written by the reconciler's analyzer, served by the api, shown by the CLI and
//! the console.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The experiment's answer.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every criterion passed: the candidate is safe to promote.
    Pass,
    /// At least one criterion failed.
    Fail,
    /// Nothing failed, but some criterion could not be decided (no data, or a
    /// resource difference too noisy to call).
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// How one criterion came out.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
    /// The measurements needed were missing; never counted as a pass.
    NoData,
    /// The criterion does not apply (e.g. no critical processes were listed).
    NotApplicable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
            Outcome::NoData => "no-data",
            Outcome::NotApplicable => "n/a",
        }
    }
}

/// One criterion, its outcome and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CriterionResult {
    /// `seriesReduction`, `criticalRetention`, `cpuOverhead` or `memoryOverhead`.
    pub criterion: String,
    pub outcome: Outcome,
    pub reason: String,
}

/// What one variant cost over the measurement window.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VariantKpis {
    /// Distinct series seen over the window.
    pub series: u64,
    pub datapoints_per_minute: f64,
    /// `datapoints_per_minute / 1e6 * price per million DPM`.
    pub monthly_cost: f64,
    /// Mean collector CPU, in cores; `None` when no samples were found.
    pub cpu_cores: Option<f64>,
    /// Mean collector resident memory, in MiB; `None` when no samples were found.
    pub rss_mib: Option<f64>,
    /// Critical executables this variant reported.
    pub critical_processes: Vec<String>,
}

/// A Mann–Whitney U test of candidate against baseline samples.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceTest {
    pub baseline_samples: usize,
    pub candidate_samples: usize,
    /// Two-sided p-value of "the distributions differ".
    pub p_value: f64,
    /// One-sided p-value of "the candidate exceeds baseline plus the allowance".
    pub p_over_allowance: Option<f64>,
    /// Rank-biserial correlation; positive when the candidate tends to be larger.
    pub effect_size: f64,
    /// Hodges–Lehmann estimate of candidate minus baseline (cores or MiB).
    pub shift: f64,
    /// The allowance it was judged against (cores or MiB).
    pub allowance: f64,
}

/// The report of one experiment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentReport {
    pub experiment: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub analyzed_at: DateTime<Utc>,
    pub verdict: Verdict,
    pub criteria: Vec<CriterionResult>,
    pub baseline: VariantKpis,
    pub candidate: VariantKpis,
    /// Per host: (baseline, candidate).
    pub hosts: BTreeMap<String, HostKpis>,
    pub cpu_test: Option<ResourceTest>,
    pub memory_test: Option<ResourceTest>,
    pub price_per_million_dpm: f64,
    /// The samples behind the numbers; `None` in reports written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// Hosts outside the experiment that sent samples labelled with it (forged, or
    /// left over); none of their samples were counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_hosts: Vec<String>,
    /// What failed on the hosts while the experiment deployed and ran (its collector
    /// and load tasks that failed, from its events), oldest first. Filled when the
    /// report is read, so a report never hides them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incidents: Vec<crate::view::ExperimentEvent>,
}

/// At most this many points are kept per series of [`Evidence`].
pub const EVIDENCE_MAX_POINTS: usize = 1_000;

/// A sample: (Unix time in seconds, value); JSON `[t, v]`.
pub type Point = (f64, f64);

/// The samples behind a report, over its window, so that a reader can draw them
/// without Prometheus. Each series holds at most `max_points` points ([`bounded`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// Spacing of the samples, in seconds.
    pub step_seconds: f64,
    pub max_points: usize,
    pub baseline: VariantEvidence,
    pub candidate: VariantEvidence,
}

/// One variant's samples.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VariantEvidence {
    /// Distinct series present at each step (all hosts).
    pub series: Vec<Point>,
    /// Datapoints received in the minute before each step (all hosts).
    pub datapoints_per_minute: Vec<Point>,
    /// Collector CPU in cores, per host: the samples the Mann–Whitney test compared.
    pub cpu_cores: BTreeMap<String, Vec<Point>>,
    /// Collector resident memory in MiB, per host: likewise.
    pub rss_mib: BTreeMap<String, Vec<Point>>,
}

/// `points` thinned evenly to at most `max` (the first and last kept), in order.
pub fn bounded(points: Vec<Point>, max: usize) -> Vec<Point> {
    if points.len() <= max {
        return points;
    }
    if max < 2 {
        return points.into_iter().take(max).collect();
    }
    let last = points.len() - 1;
    (0..max).map(|i| points[i * last / (max - 1)]).collect()
}

/// Both variants on one host.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HostKpis {
    pub baseline: VariantKpis,
    pub candidate: VariantKpis,
}

impl ExperimentReport {
    /// The series reduction of the candidate, in percent; `None` without baseline data.
    pub fn series_reduction(&self) -> Option<f64> {
        (self.baseline.series > 0)
            .then(|| 100.0 * (1.0 - self.candidate.series as f64 / self.baseline.series as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_is_bounded_evenly_keeping_both_ends() {
        let points: Vec<Point> = (0..2_500).map(|i| (i as f64, i as f64 * 2.0)).collect();
        let kept = bounded(points.clone(), EVIDENCE_MAX_POINTS);
        assert_eq!(kept.len(), EVIDENCE_MAX_POINTS);
        assert_eq!(kept.first(), points.first());
        assert_eq!(kept.last(), points.last());
        assert!(
            kept.windows(2).all(|w| w[0].0 < w[1].0),
            "in order, no repeats"
        );
        let short: Vec<Point> = points[..10].to_vec();
        assert_eq!(bounded(short.clone(), EVIDENCE_MAX_POINTS), short);
        assert_eq!(bounded(points.clone(), 1).len(), 1);
        assert!(bounded(points, 0).is_empty());
    }

    #[test]
    fn reports_without_evidence_still_read() {
        let json = serde_json::json!({
            "experiment": "topk-web", "windowStart": "2025-06-01T12:00:00Z",
            "windowEnd": "2025-06-01T12:01:00Z", "analyzedAt": "2025-06-01T12:01:10Z",
            "verdict": "pass", "criteria": [],
            "baseline": {"series": 10, "datapointsPerMinute": 5.0, "monthlyCost": 0.0,
                         "cpuCores": null, "rssMib": null, "criticalProcesses": []},
            "candidate": {"series": 4, "datapointsPerMinute": 2.0, "monthlyCost": 0.0,
                          "cpuCores": null, "rssMib": null, "criticalProcesses": []},
            "hosts": {}, "cpuTest": null, "memoryTest": null, "pricePerMillionDpm": 1.0
        });
        let report: ExperimentReport = serde_json::from_value(json).unwrap();
        assert_eq!(report.evidence, None);
        let again = serde_json::to_value(&report).unwrap();
        assert!(again.get("evidence").is_none(), "{again}");
    }
}
