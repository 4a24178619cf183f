//! Paired statistics for the verdict: baseline and candidate run on the same host over
//! the same windows, so each host is its own control. Pure functions, no I/O.
//!
//! # The design
//!
//! Per host, the analyzer samples both variants at the same instants (one Prometheus
//! range query per variant, same start, end and step). [`pair`] joins them on the
//! timestamp; the paired differences `candidate − baseline` cancel what the host does to
//! both (other load, CPU frequency, noisy neighbours). The question "does the
//! candidate use more than `allowance` above the baseline?" is then answered by
//! [`evaluate`] with the **Wilcoxon signed-rank test** ([`wilcoxon_signed_rank`]) on
//! units that are independent, or nearly so:
//!
//! - **at least [`MIN_HOSTS_SIGNED_RANK`] (6) hosts** with paired samples: one unit per
//!   host, the mean of its paired differences. Hosts are independent of each other
//!   (consecutive scrapes of one host are not). Six is the fewest for which the
//!   smallest exact one-sided p (1/2⁶ ≈ 0.016) lies below α/2 = 0.025, so a real
//!   excess can still fail after Holm's correction for two criteria.
//! - **fewer hosts**: the paired differences themselves, but only every `lag`-th one
//!   ([`decorrelation_lag`]): at least the number of samples a CPU rate window spans
//!   (a 1-minute rate sampled every 10 s shares 5/6 of its data with the next sample),
//!   and further while the differences' autocorrelation exceeds
//!   [`MAX_AUTOCORRELATION`] (a slowly drifting gauge such as RSS). At least
//!   [`MIN_WINDOWS`] (6) such differences are needed.
//! - **no host with both variants at [`MIN_PAIRS`] common instants**: nothing can be
//!   paired, and the pooled **Mann–Whitney** rule of [`super::judge_resource`] is the
//!   fallback; the report says so, with its caveat (it treats samples as independent).
//!
//! The estimate is the Hodges–Lehmann pseudo-median of the units, with its
//! Walsh-average confidence interval at [`CONFIDENCE`].
//!
//! **Why not a block bootstrap** for few hosts? [`block_bootstrap_mean`] (circular,
//! Politis & Romano 1992, seeded) is here and tested, and the simulation in
//! `reconciler/tests/stats_simulation.rs` measures it beside the chosen test: with two
//! hosts and ten minutes of 1-minute CPU rates it failed a candidate identical to its
//! baseline in about 13 % of runs at α = 5 % (too few blocks to see the dependence),
//! while the signed-rank test over separate windows stays near 5 % with the same power.
//!
//! Before any test: a criterion whose samples on one side are all equal (typically a
//! CPU rate of exactly 0 at every scrape, because the window is too short for the
//! clock tick) has **no resolution** and is never judged.
//!
//! # The rule
//!
//! [`decide`] turns an [`Evaluation`] into pass, fail or inconclusive, with a p-value
//! that the caller may have adjusted for multiple criteria ([`holm`]):
//!
//! 1. `p ≤ α` for H1 "change > allowance" → **Fail**;
//! 2. estimated change `≤ allowance` → **Pass**;
//! 3. otherwise → **Inconclusive** (estimated above the allowance, not significantly).
//!
//! Every reference value in the tests is quoted with the R or SciPy call that
//! produced it.

use std::collections::BTreeMap;
use std::fmt;

use super::{Judgement, PValueSource, all_finite, cmp_finite, median, normal_sf, sig, sorted};

/// Fewest hosts for the signed-rank test across hosts; with fewer, the block bootstrap.
pub const MIN_HOSTS_SIGNED_RANK: usize = 6;

/// Fewest paired samples a host needs to take part in a paired test.
pub const MIN_PAIRS: usize = 5;

/// Fewest separate paired windows for the test across windows: with six, the
/// smallest exact one-sided p (1/64) still lies below α/2.
pub const MIN_WINDOWS: usize = 6;

/// Paired differences this far apart are taken as separate units once their
/// autocorrelation is at most this.
pub const MAX_AUTOCORRELATION: f64 = 0.2;

/// Bootstrap replicates: with 1999, the 2.5 % and 97.5 % points are the 50th and
/// 1950th ordered replicates exactly.
pub const BOOTSTRAP_REPLICATES: usize = 1999;

/// The bootstrap's seed ("PHOENIX!"): reports are reproducible.
pub const BOOTSTRAP_SEED: u64 = 0x5048_4f45_4e49_5821;

/// Two-sided confidence level of the intervals in the report.
pub const CONFIDENCE: f64 = 0.95;

/// With no ties or zeros, the signed-rank p-values are exact below this many
/// differences (R's `wilcox.test` rule); otherwise normal.
pub const SIGNED_RANK_EXACT_MAX_N: usize = 50;

// ---- Wilcoxon signed-rank ------------------------------------------------------------

/// The one-sample (paired) Wilcoxon signed-rank test of "the differences are centred
/// on 0".
#[derive(Debug, Clone, PartialEq)]
pub struct SignedRank {
    /// Non-zero differences, the ones ranked (zeros are dropped, as R and SciPy's
    /// default `zero_method="wilcox"` do).
    pub n: usize,
    pub zeros: usize,
    /// Sum of the ranks of |d| over the positive differences (R's `V`).
    pub w_plus: f64,
    pub w_minus: f64,
    /// H1: the differences are not centred on 0.
    pub p_two_sided: f64,
    /// H1: centred above 0.
    pub p_greater: f64,
    /// H1: centred below 0.
    pub p_less: f64,
    pub source: PValueSource,
    /// Whether any two |d| are equal.
    pub ties: bool,
    /// Hodges–Lehmann estimate: the median of the Walsh averages `(d_i + d_j)/2, i ≤ j`.
    pub pseudo_median: f64,
    /// Two-sided interval for the centre at the requested confidence.
    pub ci: (f64, f64),
    /// Matched-pairs rank-biserial correlation `(W+ − W−)/(W+ + W−)` in [−1, 1].
    pub rank_biserial: f64,
}

/// The Wilcoxon signed-rank test of `d` with a two-sided `confidence` interval.
///
/// P-values: exact (the distribution of W+ counted over all 2ⁿ sign patterns) without
/// ties or zeros when `n <` [`SIGNED_RANK_EXACT_MAX_N`], otherwise the normal
/// approximation with the tie correction `σ² = n(n+1)(2n+1)/24 − Σ(t³−t)/48` and a
/// continuity correction of ½ (R's `wilcox.test(d, exact = FALSE, correct = TRUE)`).
///
/// Interval: exact, the Walsh averages of order `q` and `N − q + 1`, `N = n(n+1)/2`, `q`
/// the `α/2` quantile of W+ (as R's `conf.int = TRUE`); in the normal case the same
/// order statistics with `q = ⌊n(n+1)/4 − z·σ⌋` (the large-sample interval of
/// Hollander & Wolfe; R refines it by root-finding).
///
/// `None` when `d` is empty, holds a NaN or ±∞, has no non-zero value, or the
/// confidence is not in (0, 1).
pub fn wilcoxon_signed_rank(d: &[f64], confidence: f64) -> Option<SignedRank> {
    if d.is_empty() || !all_finite(d) || !(confidence > 0.0 && confidence < 1.0) {
        return None;
    }
    let nonzero: Vec<f64> = d.iter().copied().filter(|x| *x != 0.0).collect();
    let zeros = d.len() - nonzero.len();
    let n = nonzero.len();
    if n == 0 {
        return None;
    }
    // Rank |d| with average ranks for ties.
    let mut by_abs: Vec<(f64, bool)> = nonzero.iter().map(|x| (x.abs(), *x > 0.0)).collect();
    by_abs.sort_by(|a, b| cmp_finite(a.0, b.0));
    let (mut w_plus, mut tie_term) = (0.0, 0.0);
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && by_abs[end].0 == by_abs[start].0 {
            end += 1;
        }
        let t = (end - start) as f64;
        let rank = (start + 1 + end) as f64 / 2.0;
        w_plus += rank * by_abs[start..end].iter().filter(|x| x.1).count() as f64;
        tie_term += t * t * t - t;
        start = end;
    }
    let ties = tie_term > 0.0;
    let total = (n * (n + 1)) as f64 / 2.0;
    let w_minus = total - w_plus;
    let walsh = walsh_averages(&nonzero);
    let alpha = 1.0 - confidence;

    let exact = !ties && zeros == 0 && n < SIGNED_RANK_EXACT_MAX_N;
    let mean = total / 2.0;
    let sd = ((n * (n + 1) * (2 * n + 1)) as f64 / 24.0 - tie_term / 48.0).sqrt();
    let (p_greater, p_less, p_two_sided, source, q) = if exact {
        let counts = signed_rank_counts(n);
        let all: f64 = counts.iter().sum();
        let w = w_plus.round() as usize;
        let greater = (counts[w..].iter().sum::<f64>() / all).min(1.0);
        let less = (counts[..=w].iter().sum::<f64>() / all).min(1.0);
        // q: the smallest x with P(W ≤ x) ≥ α/2 (R's qsignrank), at least 1.
        let mut cumulative = 0.0;
        let mut q = 0;
        for (x, c) in counts.iter().enumerate() {
            cumulative += c / all;
            if cumulative >= alpha / 2.0 {
                q = x;
                break;
            }
        }
        let two = (2.0 * greater.min(less)).min(1.0);
        (greater, less, two, PValueSource::Exact, q.max(1))
    } else if sd > 0.0 {
        let greater = normal_sf((w_plus - mean - 0.5) / sd);
        let less = normal_sf((mean - w_plus - 0.5) / sd);
        let two = (2.0 * normal_sf(((w_plus - mean).abs() - 0.5) / sd)).min(1.0);
        let q = (mean - normal_quantile(1.0 - alpha / 2.0) * sd).floor();
        (
            greater,
            less,
            two,
            PValueSource::Normal,
            q.max(1.0) as usize,
        )
    } else {
        (1.0, 1.0, 1.0, PValueSource::Normal, 1)
    };
    let q = q.min(walsh.len());
    let ci = (walsh[q - 1], walsh[walsh.len() - q]);
    Some(SignedRank {
        n,
        zeros,
        w_plus,
        w_minus,
        p_two_sided,
        p_greater,
        p_less,
        source,
        ties,
        pseudo_median: median(&walsh)?,
        ci,
        rank_biserial: (w_plus - w_minus) / total,
    })
}

/// All `(d_i + d_j)/2` for `i ≤ j`, sorted.
fn walsh_averages(d: &[f64]) -> Vec<f64> {
    let mut walsh = Vec::with_capacity(d.len() * (d.len() + 1) / 2);
    for i in 0..d.len() {
        for j in i..d.len() {
            walsh.push(d[i] + (d[j] - d[i]) / 2.0);
        }
    }
    sorted(&walsh)
}

/// `counts[k]`: how many of the 2ⁿ sign patterns of ranks 1..=n give W+ = k (the
/// subsets of {1..n} summing to k).
fn signed_rank_counts(n: usize) -> Vec<f64> {
    let mut counts = vec![0.0; n * (n + 1) / 2 + 1];
    counts[0] = 1.0;
    let mut top = 0;
    for i in 1..=n {
        top += i;
        for k in (i..=top).rev() {
            counts[k] += counts[k - i];
        }
    }
    counts
}

/// The standard normal quantile, by bisection on the upper tail (only used for
/// large-sample intervals; accurate to ~1e-12).
pub fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0, 40.0);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if 1.0 - normal_sf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

// ---- Block bootstrap -----------------------------------------------------------------

/// The bootstrap distribution of the mean over series of each series' mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// The statistic on the data: mean over series of the series' means.
    pub estimate: f64,
    /// The statistic on each resample, sorted ascending.
    pub replicates: Vec<f64>,
    /// Block length used (the longest series' block; shorter series use their length).
    pub block: usize,
    pub seed: u64,
}

impl Bootstrap {
    /// Percentile interval at two-sided `confidence`: the `⌈(R+1)·α/2⌉`-th and
    /// `⌊(R+1)·(1−α/2)⌋`-th ordered replicates.
    pub fn ci(&self, confidence: f64) -> (f64, f64) {
        let r = self.replicates.len();
        let alpha = 1.0 - confidence;
        let lo = (((r + 1) as f64 * alpha / 2.0).ceil() as usize).clamp(1, r);
        let hi = (((r + 1) as f64 * (1.0 - alpha / 2.0)).floor() as usize).clamp(1, r);
        (self.replicates[lo - 1], self.replicates[hi - 1])
    }

    /// P for H1 "the statistic exceeds `threshold`": the share of replicates,
    /// centred on the null, at least as far above as the estimate is, `(1 + #)/(R + 1)`.
    pub fn p_greater(&self, threshold: f64) -> f64 {
        let excess = self.estimate - threshold;
        let count = self
            .replicates
            .iter()
            .filter(|t| **t - self.estimate >= excess)
            .count();
        (1 + count) as f64 / (self.replicates.len() + 1) as f64
    }

    /// P for H1 "the statistic is below `threshold`".
    pub fn p_less(&self, threshold: f64) -> f64 {
        let excess = self.estimate - threshold;
        let count = self
            .replicates
            .iter()
            .filter(|t| **t - self.estimate <= excess)
            .count();
        (1 + count) as f64 / (self.replicates.len() + 1) as f64
    }

    /// Two-sided p for "the statistic differs from `threshold`".
    pub fn p_two_sided(&self, threshold: f64) -> f64 {
        (2.0 * self.p_greater(threshold).min(self.p_less(threshold))).min(1.0)
    }
}

/// The block length for a series of `n` samples whose neighbours within `min_block`
/// share data: at least `min_block`, at least `⌈n^(1/3)⌉` (the usual rate for the
/// variance of a mean), at most `n`.
pub fn block_length(n: usize, min_block: usize) -> usize {
    let cube_root = (n as f64).cbrt().ceil() as usize;
    min_block.max(cube_root).max(1).min(n.max(1))
}

/// Circular block bootstrap (Politis & Romano 1992) of the mean over `series` of each
/// series' mean: each replicate rebuilds every series from blocks of `block`
/// consecutive values (wrapping at the end) starting at uniformly drawn positions,
/// cut to the series' length. `None` when a series is empty or non-finite, or there are
/// no series or no replicates.
pub fn block_bootstrap_mean(
    series: &[Vec<f64>],
    block: usize,
    replicates: usize,
    seed: u64,
) -> Option<Bootstrap> {
    if series.is_empty() || replicates == 0 || series.iter().any(|s| s.is_empty()) {
        return None;
    }
    if !series.iter().all(|s| all_finite(s)) {
        return None;
    }
    let statistic = |means: &mut dyn Iterator<Item = f64>| means.sum::<f64>() / series.len() as f64;
    let series_mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let estimate = statistic(&mut series.iter().map(|s| series_mean(s)));
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(replicates);
    for _ in 0..replicates {
        let mut total = 0.0;
        for s in series {
            let n = s.len();
            let b = block.clamp(1, n);
            let mut sum = 0.0;
            let mut taken = 0;
            while taken < n {
                let start = rng.below(n);
                let len = b.min(n - taken);
                for k in 0..len {
                    sum += s[(start + k) % n];
                }
                taken += len;
            }
            total += sum / n as f64;
        }
        out.push(total / series.len() as f64);
    }
    out.sort_by(|a, b| cmp_finite(*a, *b));
    Some(Bootstrap {
        estimate,
        replicates: out,
        block: block.clamp(1, series.iter().map(Vec::len).max().unwrap_or(1)),
        seed,
    })
}

/// SplitMix64 (Steele, Lea & Flood 2014): small, fast, and the same on every platform.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2⁻³² for our n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit(); // (0, 1]
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

// ---- Multiple criteria ---------------------------------------------------------------

/// Holm's step-down adjustment (Holm 1979) of `p`, in the input's order: the i-th
/// smallest p is multiplied by `m − i + 1`, made monotone, capped at 1. Rejecting
/// where the adjusted p ≤ α keeps the family-wise error rate at α across all of them.
/// As R's `p.adjust(p, "holm")`.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| cmp_finite(p[*a], p[*b]));
    let mut adjusted = vec![0.0; m];
    let mut running = 0.0f64;
    for (i, &index) in order.iter().enumerate() {
        running = running.max(((m - i) as f64 * p[index]).min(1.0));
        adjusted[index] = running;
    }
    adjusted
}

// ---- The paired judgement ------------------------------------------------------------

/// One host's samples of one resource: `(unix seconds, value)` per variant, each
/// variant's collectors summed per instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSeries {
    pub baseline: Vec<(f64, f64)>,
    pub candidate: Vec<(f64, f64)>,
}

/// The paired differences `candidate − baseline` at the instants both variants have,
/// in time order.
pub fn pair(host: &HostSeries) -> Vec<f64> {
    let key = |t: f64| (t * 1000.0).round() as i64;
    let baseline: BTreeMap<i64, f64> = host.baseline.iter().map(|(t, v)| (key(*t), *v)).collect();
    let mut out: Vec<(i64, f64)> = host
        .candidate
        .iter()
        .filter_map(|(t, c)| baseline.get(&key(*t)).map(|b| (key(*t), c - b)))
        .collect();
    out.sort_by_key(|(t, _)| *t);
    out.dedup_by_key(|(t, _)| *t);
    out.into_iter().map(|(_, d)| d).collect()
}

/// Lag-`k` autocorrelation of the series pooled (each around its own mean).
fn autocorrelation(series: &[Vec<f64>], k: usize) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for s in series {
        let m = s.iter().sum::<f64>() / s.len() as f64;
        den += s.iter().map(|x| (x - m) * (x - m)).sum::<f64>();
        num += s
            .iter()
            .zip(s.iter().skip(k))
            .map(|(a, b)| (a - m) * (b - m))
            .sum::<f64>();
    }
    if den > 0.0 { num / den } else { 0.0 }
}

/// How far apart paired samples must be to count as separate units: at least
/// `min_lag` (samples within a rate window share data), and further while the
/// differences' autocorrelation stays above [`MAX_AUTOCORRELATION`] (a gauge such as
/// RSS drifts slowly), but never so far that a host keeps fewer than 5 samples.
pub fn decorrelation_lag(series: &[Vec<f64>], min_lag: usize) -> usize {
    let longest = series.iter().map(Vec::len).max().unwrap_or(0);
    let max_lag = (longest / 5).max(min_lag).max(1);
    let mut lag = min_lag.max(1);
    while lag < max_lag && autocorrelation(series, lag) > MAX_AUTOCORRELATION {
        lag += 1;
    }
    lag
}

/// Every `lag`-th sample, counted back from the last (whose window is the latest).
fn thin(series: &[f64], lag: usize) -> Vec<f64> {
    let mut out: Vec<f64> = series.iter().rev().step_by(lag.max(1)).copied().collect();
    out.reverse();
    out
}

/// Which test an [`Evaluation`] used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// One mean difference per host, hosts as the units.
    SignedRankHosts,
    /// Differences far enough apart not to share data, pooled over the hosts.
    SignedRankWindows,
    MannWhitney,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::SignedRankHosts => "Wilcoxon signed-rank across hosts",
            Method::SignedRankWindows => "Wilcoxon signed-rank across separate windows",
            Method::MannWhitney => "pooled Mann–Whitney",
        })
    }
}

/// Fills `e` from a signed-rank test of `units` (the paired differences the chosen
/// design counts): the change's estimate, interval and two-sided p, and from the
/// same test of `units − e.allowance`, the one-sided p over and within it.
fn signed_rank_into(e: &mut Evaluation, units: &[f64]) {
    match wilcoxon_signed_rank(units, CONFIDENCE) {
        Some(w) => {
            e.estimate = w.pseudo_median;
            e.ci = Some(w.ci);
            e.p_two_sided = w.p_two_sided;
            e.effect_size = w.rank_biserial;
        }
        None => {
            // Every unit is exactly 0.
            e.estimate = 0.0;
            e.ci = Some((0.0, 0.0));
        }
    }
    let shifted: Vec<f64> = units.iter().map(|d| d - e.allowance).collect();
    // A unit exactly at the allowance carries no sign; all of them: no evidence.
    if let Some(w) = wilcoxon_signed_rank(&shifted, CONFIDENCE) {
        e.p_over = w.p_greater;
        e.p_within = w.p_less;
    }
}

/// A resource difference measured and tested, before the decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub method: Method,
    /// Why this test: the design the data allowed.
    pub why: String,
    /// Hosts in the test (for Mann–Whitney: hosts with samples).
    pub hosts: usize,
    /// Paired samples in the test (0 for Mann–Whitney).
    pub pairs: usize,
    pub baseline_samples: usize,
    pub candidate_samples: usize,
    pub baseline_median: f64,
    pub candidate_median: f64,
    /// Estimated change, candidate − baseline.
    pub estimate: f64,
    /// Interval for the change at [`CONFIDENCE`]; `None` for Mann–Whitney.
    pub ci: Option<(f64, f64)>,
    /// One-sided p for H1: change > allowance. Decides Fail (after adjustment).
    pub p_over: f64,
    /// One-sided p for H1: change < allowance.
    pub p_within: f64,
    /// Two-sided p for H1: change ≠ 0.
    pub p_two_sided: f64,
    /// Rank-biserial correlation of the differences (matched pairs) or the samples
    /// (Mann–Whitney); positive when the candidate tends to use more.
    pub effect_size: f64,
    /// For the test across windows: the spacing of the differences used, in samples.
    pub block: Option<usize>,
    pub allowance: f64,
}

/// Why a criterion was not tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotJudged {
    /// Invalid α or allowance, or non-finite samples.
    Invalid(String),
    /// Fewer than [`super::MIN_SAMPLES`] samples on a side.
    TooFew(String),
    /// A side's samples are all equal: the signal cannot tell the variants apart.
    NoResolution(String),
}

/// Measures and tests the change of a resource from baseline to candidate over
/// `hosts`, choosing the test as the module documentation says. `min_block` is the
/// number of consecutive samples that share data (a rate window over the step), the
/// least block length of the bootstrap.
pub fn evaluate(
    hosts: &[HostSeries],
    allowance: f64,
    alpha: f64,
    min_block: usize,
) -> Result<Evaluation, NotJudged> {
    if !(alpha > 0.0 && alpha < 1.0 && allowance.is_finite()) {
        return Err(NotJudged::Invalid(format!(
            "invalid criterion: alpha {alpha} must lie in (0, 1) and the allowance \
             {allowance} must be finite"
        )));
    }
    let values = |side: fn(&HostSeries) -> &Vec<(f64, f64)>| -> Vec<f64> {
        hosts
            .iter()
            .flat_map(|h| side(h).iter().map(|p| p.1))
            .collect()
    };
    let baseline = values(|h| &h.baseline);
    let candidate = values(|h| &h.candidate);
    if !all_finite(&baseline) || !all_finite(&candidate) {
        return Err(NotJudged::Invalid(
            "samples contain NaN or infinite values".into(),
        ));
    }
    if baseline.len() < super::MIN_SAMPLES || candidate.len() < super::MIN_SAMPLES {
        return Err(NotJudged::TooFew(format!(
            "too few samples: {} baseline, {} candidate (need at least {} each)",
            baseline.len(),
            candidate.len(),
            super::MIN_SAMPLES
        )));
    }
    for (side, xs) in [("baseline", &baseline), ("candidate", &candidate)] {
        if xs.iter().all(|x| *x == xs[0]) {
            return Err(NotJudged::NoResolution(format!(
                "all {} {side} samples equal {}: the measurement does not resolve a \
                 difference at this granularity (lengthen the rate window)",
                xs.len(),
                sig(xs[0])
            )));
        }
    }
    let baseline_median = median(&baseline).unwrap_or(f64::NAN);
    let candidate_median = median(&candidate).unwrap_or(f64::NAN);

    let paired: Vec<Vec<f64>> = hosts
        .iter()
        .map(pair)
        .filter(|d| d.len() >= MIN_PAIRS)
        .collect();
    let pairs: usize = paired.iter().map(Vec::len).sum();
    let mut e = Evaluation {
        method: Method::MannWhitney,
        why: String::new(),
        hosts: paired.len(),
        pairs,
        baseline_samples: baseline.len(),
        candidate_samples: candidate.len(),
        baseline_median,
        candidate_median,
        estimate: f64::NAN,
        ci: None,
        p_over: 1.0,
        p_within: 1.0,
        p_two_sided: 1.0,
        effect_size: 0.0,
        block: None,
        allowance,
    };
    if paired.len() >= MIN_HOSTS_SIGNED_RANK {
        let host_means: Vec<f64> = paired
            .iter()
            .map(|d| d.iter().sum::<f64>() / d.len() as f64)
            .collect();
        e.method = Method::SignedRankHosts;
        e.why = format!(
            "{} hosts ran both variants at the same instants (≥ {MIN_HOSTS_SIGNED_RANK}): \
             one mean paired difference per host, hosts independent",
            paired.len()
        );
        signed_rank_into(&mut e, &host_means);
        return Ok(e);
    }
    if !paired.is_empty() {
        let lag = decorrelation_lag(&paired, min_block);
        let windows: Vec<f64> = paired.iter().flat_map(|d| thin(d, lag)).collect();
        if windows.len() < MIN_WINDOWS {
            return Err(NotJudged::TooFew(format!(
                "{} paired samples {lag} apart (far enough apart not to share data) on {} \
                 host{}, fewer than {MIN_WINDOWS}: measure for longer, on more hosts, or with \
                 a shorter rate window",
                windows.len(),
                paired.len(),
                if paired.len() == 1 { "" } else { "s" }
            )));
        }
        e.method = Method::SignedRankWindows;
        e.pairs = windows.len();
        e.why = format!(
            "{} host{} ran both variants at the same instants (fewer than \
             {MIN_HOSTS_SIGNED_RANK} for a test across hosts): the paired differences, taken \
             {lag} samples apart so that they are nearly uncorrelated (no shared rate \
             window, autocorrelation at most {MAX_AUTOCORRELATION}), {} of them, are the units",
            paired.len(),
            if paired.len() == 1 { "" } else { "s" },
            windows.len()
        );
        signed_rank_into(&mut e, &windows);
        e.block = Some(lag);
        return Ok(e);
    }
    let judged = super::judge_resource(&baseline, &candidate, allowance, alpha);
    let (Some(test), Some(comparison)) = (judged.test, judged.comparison) else {
        return Err(NotJudged::Invalid(judged.reason));
    };
    e.method = Method::MannWhitney;
    e.hosts = hosts
        .iter()
        .filter(|h| !h.baseline.is_empty() || !h.candidate.is_empty())
        .count();
    e.why = format!(
        "no host had both variants at {MIN_PAIRS} common instants, so nothing could be \
         paired: the samples are pooled and treated as independent (optimistic for a \
         time series)"
    );
    e.estimate = comparison.hodges_lehmann;
    e.p_over = test.p_greater;
    e.p_within = test.p_less;
    e.p_two_sided = comparison.p_two_sided;
    e.effect_size = comparison.rank_biserial;
    Ok(e)
}

/// The rule of the module documentation, with `p_over` possibly adjusted for
/// multiple criteria (pass `e.p_over` when there is one). Returns the judgement and a
/// line naming the test and its p-values (the estimate and interval are the caller's
/// to show, with units).
pub fn decide(e: &Evaluation, p_over: f64, alpha: f64) -> (Judgement, String) {
    let adjusted = if p_over != e.p_over {
        format!(" (Holm-adjusted {})", sig(p_over))
    } else {
        String::new()
    };
    let evidence = |relation: &str| {
        format!(
            "{}: one-sided p = {}{adjusted} {relation} α = {alpha}",
            e.method,
            sig(e.p_over)
        )
    };
    if p_over <= alpha {
        (
            Judgement::Fail,
            format!("significantly above the allowance; {}", evidence("≤")),
        )
    } else if e.estimate <= e.allowance {
        (
            Judgement::Pass,
            format!("within the allowance; {}", evidence(">")),
        )
    } else {
        (
            Judgement::Inconclusive,
            format!(
                "estimated above the allowance but not significantly (noisy); {}",
                evidence(">")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64, tol: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= tol,
            "{what}: got {actual}, expected {expected} ± {tol}"
        );
    }

    // R's ?wilcox.test, paired example (Hollander & Wolfe 1973, p. 29: depression scale
    // before and after the first therapy visit), R 4.2.2:
    //   x <- c(1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30)
    //   y <- c(0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29)
    //   wilcox.test(x, y, paired = TRUE, conf.int = TRUE)
    //     -> V = 40, p-value = 0.0390625, 95% CI [0.010, 0.786], (pseudo)median 0.46
    //   alternative = "greater" -> 0.01953125; "less" -> 0.986328125
    // SciPy 1.17.1 scipy.stats.wilcoxon(x, y, alternative=..., method="exact") agrees.
    #[test]
    #[allow(clippy::approx_constant)] // 3.14 is a measurement in R's data, not π
    fn signed_rank_r_paired_example() {
        let x = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30];
        let y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29];
        let d: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
        let w = wilcoxon_signed_rank(&d, 0.95).unwrap();
        assert_eq!((w.n, w.zeros, w.ties), (9, 0, false));
        assert_eq!(w.source, PValueSource::Exact);
        assert_eq!((w.w_plus, w.w_minus), (40.0, 5.0));
        close(w.p_two_sided, 0.0390625, 1e-12, "two-sided");
        close(w.p_greater, 0.01953125, 1e-12, "greater");
        close(w.p_less, 0.986328125, 1e-12, "less");
        close(w.pseudo_median, 0.46, 1e-12, "pseudo-median");
        close(w.ci.0, 0.010, 1e-12, "CI low");
        close(w.ci.1, 0.786, 1e-12, "CI high");
        close(w.rank_biserial, 35.0 / 45.0, 1e-12, "r");
    }

    // Six host means, exact (R 4.2.2):
    //   d6 <- c(0.012, 0.018, -0.003, 0.025, 0.009, 0.015)
    //   wilcox.test(d6, conf.int = TRUE) -> V = 20, p-value = 0.0625,
    //     95% CI [-0.003, 0.025] (qsignrank(0.025, 6) = 0, so the extreme Walsh
    //     averages), (pseudo)median 0.0135
    //   wilcox.test(d6, alternative = "greater")$p.value -> 0.03125
    #[test]
    fn signed_rank_six_hosts() {
        let d = [0.012, 0.018, -0.003, 0.025, 0.009, 0.015];
        let w = wilcoxon_signed_rank(&d, 0.95).unwrap();
        assert_eq!(w.w_plus, 20.0);
        close(w.p_two_sided, 0.0625, 1e-12, "two-sided");
        close(w.p_greater, 0.03125, 1e-12, "greater");
        close(w.pseudo_median, 0.0135, 1e-12, "pseudo-median");
        close(w.ci.0, -0.003, 1e-12, "CI low");
        close(w.ci.1, 0.025, 1e-12, "CI high");
    }

    // Ties and a zero: the zero is dropped (n = 11), normal approximation with tie and
    // continuity correction. R 4.2.2:
    //   d <- c(0.5, -0.25, 1.5, 0.5, 2.0, -1.0, 0.0, 0.75, 1.25, 0.5, 3.0, -0.5)
    //   wilcox.test(d, exact = FALSE, correct = TRUE, alternative = ...)$p.value
    //     two.sided 0.0605974085764, greater 0.0302987042882, less 0.975337698135; V = 54.5
    // SciPy 1.17.1 wilcoxon(d, zero_method="wilcox", correction=True, method="approx",
    //   alternative=...) -> 0.06059740857636107, 0.030298704288180534, 0.9753376981350111
    #[test]
    fn signed_rank_ties_and_zeros_use_the_corrected_normal() {
        let d = [
            0.5, -0.25, 1.5, 0.5, 2.0, -1.0, 0.0, 0.75, 1.25, 0.5, 3.0, -0.5,
        ];
        let w = wilcoxon_signed_rank(&d, 0.95).unwrap();
        assert_eq!((w.n, w.zeros, w.ties), (11, 1, true));
        assert_eq!(w.source, PValueSource::Normal);
        assert_eq!(w.w_plus, 54.5);
        close(w.p_two_sided, 0.0605974085764, 1e-10, "two-sided");
        close(w.p_greater, 0.0302987042882, 1e-10, "greater");
        close(w.p_less, 0.975337698135, 1e-10, "less");
        assert!(w.ci.0 < w.pseudo_median && w.pseudo_median < w.ci.1);
    }

    // n = 60 (beyond the exact limit): numpy.random.default_rng(19).normal(0.01, 0.05, 60)
    // rounded to 5 decimals. SciPy 1.17.1 wilcoxon(big, correction=True, method="approx",
    //   alternative=...): W+ = 1063, two-sided 0.277551360128688, greater
    //   0.138775680064344, less 0.8628465725475558.
    #[test]
    fn signed_rank_large_sample_normal() {
        let d = [
            -0.0085, 0.0597, 0.03079, -0.02091, 0.04361, -0.0625, 0.03967, -0.01809, 0.04157,
            0.03195, -0.02836, 0.03642, 0.0271, -0.02231, 0.11006, 0.0501, -0.0491, -0.0394,
            0.02584, 0.0256, -0.02634, 0.07079, 0.01485, -0.03313, -0.00873, 0.00106, -0.06767,
            -0.03161, -0.0805, -0.00468, 0.04063, -0.05429, 0.0261, -0.04913, 0.00182, -0.01581,
            -0.05061, -0.01745, -0.05127, 0.02468, 0.01231, 0.07, -0.06316, 0.06464, 0.00606,
            0.03027, 0.00058, 0.08735, 0.0793, 0.06343, 0.02297, -0.10689, 0.03782, 0.00836,
            0.0033, 0.03173, 0.06967, 0.02336, -0.01332, -0.02889,
        ];
        let w = wilcoxon_signed_rank(&d, 0.95).unwrap();
        assert_eq!(w.source, PValueSource::Normal);
        assert_eq!(w.w_plus, 1063.0);
        close(w.p_two_sided, 0.277551360128688, 1e-10, "two-sided");
        close(w.p_greater, 0.138775680064344, 1e-10, "greater");
        close(w.p_less, 0.8628465725475558, 1e-10, "less");
        assert!(w.ci.0 < 0.0 && w.ci.1 > 0.0, "{:?}", w.ci);
    }

    #[test]
    fn signed_rank_rejects_what_it_cannot_rank() {
        assert!(wilcoxon_signed_rank(&[], 0.95).is_none());
        assert!(wilcoxon_signed_rank(&[0.0, 0.0], 0.95).is_none());
        assert!(wilcoxon_signed_rank(&[1.0, f64::NAN], 0.95).is_none());
        assert!(wilcoxon_signed_rank(&[1.0, 2.0], 1.0).is_none());
        // The null distribution: subsets of {1, 2, 3} by sum.
        assert_eq!(
            signed_rank_counts(3),
            vec![1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0]
        );
        assert_eq!(signed_rank_counts(20).iter().sum::<f64>(), 1_048_576.0);
    }

    // R 4.2.2: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") -> 0.03 0.06 0.06 0.02;
    //          p.adjust(c(0.2, 0.001), "holm") -> 0.200 0.002
    #[test]
    fn holm_matches_r() {
        let got = holm(&[0.01, 0.04, 0.03, 0.005]);
        for (g, want) in got.iter().zip([0.03, 0.06, 0.06, 0.02]) {
            close(*g, want, 1e-15, "holm");
        }
        let got = holm(&[0.2, 0.001]);
        close(got[0], 0.2, 1e-15, "holm");
        close(got[1], 0.002, 1e-15, "holm");
        assert_eq!(holm(&[0.7]), vec![0.7]);
        assert_eq!(holm(&[0.6, 0.9]), vec![1.0, 1.0]);
    }

    #[test]
    fn normal_quantile_inverts_the_tail() {
        // qnorm(0.975) = 1.959963984540054 (R 4.2.2).
        close(normal_quantile(0.975), 1.959963984540054, 1e-9, "q 0.975");
        close(normal_quantile(0.5), 0.0, 1e-12, "median");
    }

    // The circular block bootstrap against what it must give in closed form:
    // - with blocks as long as the series every resample is a rotation, so every
    //   replicate equals the estimate;
    // - with blocks of 1 it is the ordinary bootstrap, whose variance of the mean is
    //   the plug-in variance over n: for 1..=10, 8.25/10 = 0.825.
    #[test]
    fn block_bootstrap_agrees_with_closed_forms() {
        let s: Vec<f64> = (1..=10).map(f64::from).collect();
        let b = block_bootstrap_mean(std::slice::from_ref(&s), 10, 999, 1).unwrap();
        assert_eq!(b.estimate, 5.5);
        assert!(b.replicates.iter().all(|r| (r - 5.5).abs() < 1e-12));
        let b = block_bootstrap_mean(std::slice::from_ref(&s), 1, 20_000, 7).unwrap();
        let mean = b.replicates.iter().sum::<f64>() / b.replicates.len() as f64;
        let var = b.replicates.iter().map(|r| (r - mean).powi(2)).sum::<f64>()
            / (b.replicates.len() - 1) as f64;
        close(mean, 5.5, 0.03, "bootstrap mean");
        close(var, 0.825, 0.04, "bootstrap variance of the mean");
        // Seeded: the same seed gives the same replicates, another seed others.
        let again = block_bootstrap_mean(std::slice::from_ref(&s), 1, 20_000, 7).unwrap();
        assert_eq!(b, again);
        let other = block_bootstrap_mean(std::slice::from_ref(&s), 1, 20_000, 8).unwrap();
        assert_ne!(b.replicates, other.replicates);
        // Percentile interval and shifted-null p-values.
        let (lo, hi) = b.ci(0.95);
        assert!(lo < 5.5 && hi > 5.5 && hi - lo > 2.0 * 1.6 * 0.825f64.sqrt());
        assert!(b.p_greater(0.0) < 1e-3 && b.p_less(0.0) > 0.999);
        assert!(b.p_two_sided(5.5) > 0.9);
        // Two series: the statistic weighs hosts equally.
        let b = block_bootstrap_mean(&[vec![1.0; 4], vec![3.0; 40]], 2, 99, 1).unwrap();
        assert_eq!(b.estimate, 2.0);
        assert!(block_bootstrap_mean(&[], 2, 99, 1).is_none());
        assert!(block_bootstrap_mean(&[vec![]], 2, 99, 1).is_none());
        assert_eq!(block_length(60, 6), 6);
        assert_eq!(block_length(1000, 1), 10);
        assert_eq!(block_length(3, 6), 3);
    }

    fn host(base: &[f64], cand: &[f64]) -> HostSeries {
        let points = |xs: &[f64]| {
            xs.iter()
                .enumerate()
                .map(|(i, v)| (i as f64 * 10.0, *v))
                .collect()
        };
        HostSeries {
            baseline: points(base),
            candidate: points(cand),
        }
    }

    #[test]
    fn separate_windows_are_far_enough_apart() {
        let mut rng = SplitMix64(3);
        // Independent noise: the rate window's overlap decides the lag.
        let noise: Vec<f64> = (0..200).map(|_| rng.normal()).collect();
        assert_eq!(decorrelation_lag(std::slice::from_ref(&noise), 1), 1);
        assert_eq!(decorrelation_lag(std::slice::from_ref(&noise), 6), 6);
        // A slow drift (AR(1), φ = 0.95: autocorrelation 0.95^k) needs k ≥ 32 for
        // 0.2, capped so that 200 samples keep 5: lag 32 at most 40.
        let mut x = 0.0;
        let drift: Vec<f64> = (0..200)
            .map(|_| {
                x = 0.95 * x + rng.normal();
                x
            })
            .collect();
        let lag = decorrelation_lag(std::slice::from_ref(&drift), 1);
        assert!((10..=40).contains(&lag), "lag {lag}");
        assert_eq!(
            thin(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 3),
            vec![1.0, 4.0, 7.0]
        );
        assert_eq!(thin(&[1.0, 2.0, 3.0, 4.0], 3), vec![1.0, 4.0]);
    }

    #[test]
    fn pairing_joins_on_the_instant() {
        let h = HostSeries {
            baseline: vec![(0.0, 1.0), (10.0, 2.0), (20.0, 3.0)],
            candidate: vec![(10.0, 2.5), (20.0, 3.5), (30.0, 9.0)],
        };
        assert_eq!(pair(&h), vec![0.5, 0.5]);
    }

    #[test]
    fn equal_samples_have_no_resolution() {
        let zeros = [0.0; 12];
        let busy: Vec<f64> = (0..12).map(|i| 0.01 + i as f64 * 1e-3).collect();
        let e = evaluate(&[host(&zeros, &busy)], 0.05, 0.05, 1).unwrap_err();
        let NotJudged::NoResolution(reason) = e else {
            panic!("{e:?}")
        };
        assert!(
            reason.contains("all 12 baseline samples equal 0"),
            "{reason}"
        );
        assert!(matches!(
            evaluate(&[host(&[1.0; 3], &[2.0; 3])], 0.05, 0.05, 1),
            Err(NotJudged::TooFew(_))
        ));
    }

    #[test]
    fn the_design_picks_the_test() {
        let base: Vec<f64> = (0..20).map(|i| 0.10 + (i % 5) as f64 * 0.002).collect();
        let plus = |x: f64| {
            base.iter()
                .map(|b| b + x + 0.0001 * b.sin())
                .collect::<Vec<_>>()
        };
        // Two hosts: signed-rank over differences 6 apart (samples 19, 13, 7, 1 of
        // each host: 8 units, exact one-sided p = 1/256); clearly above an allowance
        // of 0.01 → fail.
        let two = [host(&base, &plus(0.05)), host(&base, &plus(0.06))];
        let e = evaluate(&two, 0.01, 0.05, 6).unwrap();
        assert_eq!(e.method, Method::SignedRankWindows);
        assert_eq!((e.hosts, e.pairs, e.block), (2, 8, Some(6)));
        close(e.p_over, 1.0 / 256.0, 1e-12, "p over");
        let (lo, hi) = e.ci.unwrap();
        assert!(lo > 0.04 && hi < 0.07, "{lo} {hi}");
        let (j, reason) = decide(&e, e.p_over, 0.05);
        assert_eq!(j, Judgement::Fail, "{reason}");
        assert!(reason.contains("across separate windows"), "{reason}");
        // Too short to hold six separate windows: inconclusive, saying why.
        let short = [host(&base[..10], &plus(0.05)[..10])];
        let Err(NotJudged::TooFew(reason)) = evaluate(&short, 0.01, 0.05, 6) else {
            panic!("two windows judged")
        };
        assert!(reason.contains("fewer than 6"), "{reason}");
        // Within a generous allowance → pass.
        let e = evaluate(&two, 0.1, 0.05, 6).unwrap();
        assert_eq!(decide(&e, e.p_over, 0.05).0, Judgement::Pass);
        // Eight hosts: signed-rank across hosts, exact p = 1/256 one-sided.
        let eight: Vec<HostSeries> = (0..8)
            .map(|i| host(&base, &plus(0.05 + i as f64 * 0.001)))
            .collect();
        let e = evaluate(&eight, 0.01, 0.05, 6).unwrap();
        assert_eq!(e.method, Method::SignedRankHosts);
        close(e.p_over, 1.0 / 256.0, 1e-12, "p over");
        let (j, reason) = decide(&e, 0.02, 0.05);
        assert_eq!(j, Judgement::Fail);
        assert!(reason.contains("Holm-adjusted 0.02"), "{reason}");
        // A p that Holm lifts above α: estimated above the allowance, not significant.
        assert_eq!(decide(&e, 0.08, 0.05).0, Judgement::Inconclusive);
        // No common instants: pooled Mann–Whitney, and the report says why.
        let mut shifted = host(&base, &plus(0.05));
        for p in &mut shifted.candidate {
            p.0 += 5.0;
        }
        let e = evaluate(&[shifted], 0.01, 0.05, 6).unwrap();
        assert_eq!(e.method, Method::MannWhitney);
        assert!(e.why.contains("nothing could be paired"), "{}", e.why);
        assert!(e.ci.is_none());
    }
}
