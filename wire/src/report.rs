//! An experiment's report: KPIs per variant (overall and per host), the statistical
//! tests behind the resource judgements, the verdict with one reason per criterion,
//! and the [`Evidence`]: the samples behind it, bounded, for the console's charts.
//! Written by the reconciler's analyzer, served by the api, shown by the CLI and
//! the console.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The experiment's answer.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every criterion passed: the candidate is safe to promote.
    Pass,
    /// At least one criterion failed.
    Fail,
    /// Nothing failed, but some criterion could not be decided (no data, a
    /// measurement without resolution, or a resource difference too noisy to call).
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
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
    /// The measurements needed were missing; never counted as a pass.
    NoData,
    /// The criterion does not apply (e.g. no critical processes were listed).
    NotApplicable,
    /// Inconclusive because the measurement cannot tell the variants apart: every
    /// sample of a variant was equal (e.g. a CPU rate of 0 at every scrape). Never a
    /// pass. Reports written before it existed never hold it.
    NoResolution,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
            Outcome::NoData => "no-data",
            Outcome::NotApplicable => "n/a",
            Outcome::NoResolution => "no-resolution",
        }
    }
}

/// One criterion, its outcome and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct CriterionResult {
    /// `seriesReduction`, `criticalRetention`, `cpuOverhead`, `memoryOverhead`,
    /// `costReduction`, `topKRecall` or `totalError`.
    pub criterion: String,
    pub outcome: Outcome,
    pub reason: String,
}

/// What one variant cost over the measurement window.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
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

/// Which test judged a resource criterion (see docs/ANALYSIS.md).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TestMethod {
    /// Paired by host, one mean difference per host, combined across ≥ 6 hosts.
    SignedRankHosts,
    /// Paired by host (fewer than 6), the differences taken far enough apart not to
    /// share a rate window, pooled.
    SignedRankWindows,
    /// Nothing could be paired: pooled samples, treated as independent.
    MannWhitney,
}

impl TestMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            TestMethod::SignedRankHosts => "Wilcoxon signed-rank across hosts",
            TestMethod::SignedRankWindows => "Wilcoxon signed-rank across separate windows",
            TestMethod::MannWhitney => "pooled Mann–Whitney U",
        }
    }
}

/// The test of candidate against baseline samples behind a resource criterion.
/// Reports written before paired tests existed hold a pooled Mann–Whitney test and
/// none of the optional fields.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceTest {
    pub baseline_samples: usize,
    pub candidate_samples: usize,
    /// Two-sided p-value of "the candidate differs from the baseline".
    pub p_value: f64,
    /// One-sided p-value of "the candidate exceeds baseline plus the allowance",
    /// before any adjustment for multiple criteria.
    pub p_over_allowance: Option<f64>,
    /// Rank-biserial correlation (of the paired differences when paired); positive
    /// when the candidate tends to be larger.
    pub effect_size: f64,
    /// Estimated change, candidate minus baseline (cores or MiB): the Hodges–Lehmann
    /// (pseudo-)median.
    pub shift: f64,
    /// The allowance it was judged against (cores or MiB).
    pub allowance: f64,
    /// The test used; `None` in old reports (pooled Mann–Whitney).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<TestMethod>,
    /// Why that test fits the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Hosts in the test, and the paired differences it ranked (0 when unpaired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<usize>,
    /// Confidence interval of the change (same units as `shift`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_low: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_high: Option<f64>,
    /// Its two-sided level, e.g. 0.95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// `p_over_allowance` adjusted for the other tested criteria (Holm): the number
    /// compared with α.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_adjusted: Option<f64>,
    /// For the test across windows: how many samples apart the differences used
    /// are (at least a rate window's worth, so they share no data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spacing: Option<usize>,
}

/// How the verdict controls the error across the criteria that are statistical tests.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorControl {
    /// `holm`.
    pub method: String,
    /// Family-wise α: the chance that any tested criterion fails a candidate that is
    /// in fact within all its allowances is at most this.
    pub alpha: f64,
    /// The criteria in the family.
    pub tested: Vec<String>,
    /// One line for people.
    pub summary: String,
}

/// The report of one experiment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
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
    /// How the verdict controls the error across tested criteria; `None` in reports
    /// written before it was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_control: Option<ErrorControl>,
    /// What the candidate still lets an SRE answer: top-k recall and total error;
    /// `None` in reports written before it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<Fidelity>,
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

/// How many of the baseline's busiest processes the fidelity KPIs look at.
pub const TOP_K: usize = 10;

/// Fidelity: what the candidate still shows of the processes, measured at every
/// evaluation step from the process series both variants wrote (docs/ANALYSIS.md):
///
/// - **top-k recall** (by CPU, by memory): on a host at a step, the baseline's
///   [`TOP_K`] executables with the highest non-zero CPU utilization (resp. resident
///   memory), summed per executable name; the recall is the share of them for which
///   the candidate has a series at that step (in any form: per pid, aggregated by
///   name). Present, not "in the candidate's own top-k": the two collectors scrape at
///   different instants, so ranks near the 10th swap even between identical
///   pipelines, while a process the candidate dropped is one an SRE cannot see.
/// - **total error** (CPU, memory): `|candidate − baseline| / baseline` of the host's
///   total process CPU utilization (resp. memory) summed over every process series
///   of each variant (a rollup such as `_other` counts).
///
/// Every value is in percent, the mean over the steps of the window.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fidelity {
    /// `k` of the recall (10).
    pub top_k: usize,
    /// The spacing of the evaluation steps, in seconds.
    pub step_seconds: f64,
    /// A series counts at a step when it has a sample in the window before it of this
    /// many seconds (one and a half of the longer of the variants' scrape intervals,
    /// the same for both: a scrape of thousands of processes spreads its samples'
    /// timestamps). A process that exited within it still counts, so under churn a
    /// per-pid variant's totals run above a rollup's.
    pub freshness_seconds: f64,
    /// Over all hosts: the mean of the per-host values.
    pub overall: FidelityKpis,
    pub hosts: BTreeMap<String, FidelityKpis>,
}

/// Fidelity on one host (or all), in percent; `None` where nothing was measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FidelityKpis {
    pub cpu_top_k_recall: Option<f64>,
    pub memory_top_k_recall: Option<f64>,
    pub cpu_total_error: Option<f64>,
    pub memory_total_error: Option<f64>,
    /// The evaluation steps at which the baseline had data.
    pub steps: usize,
}

/// At most this many points are kept per series of [`Evidence`].
pub const EVIDENCE_MAX_POINTS: usize = 1_000;

/// A sample: (Unix time in seconds, value); JSON `[t, v]`.
pub type Point = (f64, f64);

/// The samples behind a report, over its window, so that a reader can draw them
/// without Prometheus. Each series holds at most `max_points` points ([`bounded`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// Spacing of the samples, in seconds.
    pub step_seconds: f64,
    pub max_points: usize,
    pub baseline: VariantEvidence,
    pub candidate: VariantEvidence,
}

/// One variant's samples.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VariantEvidence {
    /// Distinct series present at each step (all hosts).
    pub series: Vec<Point>,
    /// Datapoints received in the minute before each step (all hosts).
    pub datapoints_per_minute: Vec<Point>,
    /// Collector CPU in cores (a rate over the CPU rate window), per host: the samples
    /// the test compared.
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
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
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

    #[test]
    fn old_resource_tests_still_read_and_new_outcomes_round_trip() {
        // A cpuTest as reports stored it before paired tests: no method, no interval.
        let old = serde_json::json!({
            "baselineSamples": 62, "candidateSamples": 62, "pValue": 1.0,
            "pOverAllowance": 1.0, "effectSize": 0.0, "shift": 0.0, "allowance": 0.05
        });
        let test: ResourceTest = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(
            (test.method, test.ci_low, test.p_adjusted),
            (None, None, None)
        );
        assert_eq!(
            serde_json::to_value(&test).unwrap(),
            old,
            "written back unchanged"
        );
        let outcome: Outcome = serde_json::from_value(serde_json::json!("no-resolution")).unwrap();
        assert_eq!(outcome, Outcome::NoResolution);
        assert_eq!(Outcome::NoResolution.as_str(), "no-resolution");
        assert_eq!(
            serde_json::to_value(TestMethod::SignedRankWindows).unwrap(),
            "signed-rank-windows"
        );
    }
}
