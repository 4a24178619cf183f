//! An experiment's report: KPIs per variant (overall and per host), the statistical
//! tests behind the resource judgements, and the verdict with one reason per
//! criterion. Written by the reconciler's analyzer, served by the api, shown by the CLI.

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
