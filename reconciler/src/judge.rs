//! Turning resource samples into criterion outcomes for the report: each resource
//! criterion is measured and tested by [`crate::stats::paired::evaluate`] (paired by
//! host; the test that fits the number of hosts), then all tested criteria are decided
//! together with Holm's adjustment, so that the chance of failing a candidate that is
//! within every allowance stays at α across criteria. Units, the "no data" and "no
//! resolution" cases, and the numbers the report shows live here.

use phoenix_wire::report::{CriterionResult, ErrorControl, Outcome, ResourceTest, TestMethod};

use crate::stats::paired::{self, Evaluation, HostSeries, Method, NotJudged};
use crate::stats::{self, Judgement};

/// One resource criterion after measuring, before the decision across criteria.
pub enum Prepared {
    /// Decided without a test (no data, no resolution, too few samples).
    Done(CriterionResult),
    Tested {
        criterion: String,
        unit: &'static str,
        evaluation: Evaluation,
    },
}

/// Measures and tests candidate against baseline for one criterion. `hosts` holds
/// each host's samples of both variants; `min_block` is how many consecutive samples
/// share data (the CPU rate window over the step; 1 for a gauge). Empty samples are
/// `no-data`, equal ones `no-resolution`: never a pass.
pub fn prepare(
    criterion: &str,
    hosts: &[HostSeries],
    allowance: f64,
    unit: &'static str,
    min_block: usize,
) -> Prepared {
    let done = |outcome, reason: String| {
        Prepared::Done(CriterionResult {
            criterion: criterion.to_string(),
            outcome,
            reason,
        })
    };
    let missing = |side: fn(&HostSeries) -> bool| hosts.iter().all(side);
    if let Some(side) = [
        ("baseline", missing(|h| h.baseline.is_empty())),
        ("candidate", missing(|h| h.candidate.is_empty())),
    ]
    .into_iter()
    .find_map(|(side, none)| none.then_some(side))
    {
        return done(
            Outcome::NoData,
            format!(
                "no collector samples for the {side} in Prometheus (Pushgateway series); is the agent pushing?"
            ),
        );
    }
    match paired::evaluate(hosts, allowance, stats::DEFAULT_ALPHA, min_block) {
        Ok(evaluation) => Prepared::Tested {
            criterion: criterion.to_string(),
            unit,
            evaluation,
        },
        Err(NotJudged::NoResolution(reason)) => done(
            Outcome::NoResolution,
            format!("inconclusive: no resolution: {reason}"),
        ),
        Err(NotJudged::TooFew(reason) | NotJudged::Invalid(reason)) => {
            done(Outcome::Inconclusive, reason)
        }
    }
}

/// Decides every prepared criterion at family-wise `alpha`: the one-sided p-values of
/// the tested ones are Holm-adjusted together, then each is judged by
/// [`paired::decide`]. Returns the results in order, with their tests, and the error
/// control applied (`None` when nothing was tested).
pub fn conclude(
    prepared: Vec<Prepared>,
    alpha: f64,
) -> (
    Vec<(CriterionResult, Option<ResourceTest>)>,
    Option<ErrorControl>,
) {
    let raw: Vec<f64> = prepared
        .iter()
        .filter_map(|p| match p {
            Prepared::Tested { evaluation, .. } => Some(evaluation.p_over),
            Prepared::Done(_) => None,
        })
        .collect();
    let mut adjusted = paired::holm(&raw).into_iter();
    let mut tested = Vec::new();
    let results = prepared
        .into_iter()
        .map(|p| match p {
            Prepared::Done(result) => (result, None),
            Prepared::Tested {
                criterion,
                unit,
                evaluation: e,
            } => {
                let p_adjusted = adjusted.next().unwrap_or(e.p_over);
                let (judgement, reason) = paired::decide(&e, p_adjusted, alpha);
                tested.push(criterion.clone());
                let outcome = match judgement {
                    Judgement::Pass => Outcome::Pass,
                    Judgement::Fail => Outcome::Fail,
                    Judgement::Inconclusive => Outcome::Inconclusive,
                };
                let result = CriterionResult {
                    criterion,
                    outcome,
                    reason: format!(
                        "median {:.4} → {:.4} {unit}, change {:+.4} {unit}{}, allowance +{} {unit}: {reason}",
                        e.baseline_median,
                        e.candidate_median,
                        e.estimate,
                        e.ci.map_or(String::new(), |(lo, hi)| format!(
                            " (95% CI {lo:+.4} to {hi:+.4})"
                        )),
                        e.allowance,
                    ),
                };
                (result, Some(resource_test(&e, p_adjusted)))
            }
        })
        .collect();
    let control = (!tested.is_empty()).then(|| ErrorControl {
        method: "holm".into(),
        alpha,
        summary: format!(
            "Holm over {} tested criteria ({}): each one-sided p is adjusted before it is \
             compared with α = {alpha}, so the chance that any of them fails a candidate \
             within all its allowances is at most {alpha}; the other criteria \
             (series, critical processes, cost, top-k recall, total error) are \
             thresholds on measured values, not tests, and are not adjusted",
            tested.len(),
            tested.join(", ")
        ),
        tested,
    });
    (results, control)
}

fn resource_test(e: &Evaluation, p_adjusted: f64) -> ResourceTest {
    ResourceTest {
        baseline_samples: e.baseline_samples,
        candidate_samples: e.candidate_samples,
        p_value: e.p_two_sided,
        p_over_allowance: Some(e.p_over),
        effect_size: e.effect_size,
        shift: e.estimate,
        allowance: e.allowance,
        method: Some(match e.method {
            Method::SignedRankHosts => TestMethod::SignedRankHosts,
            Method::SignedRankWindows => TestMethod::SignedRankWindows,
            Method::MannWhitney => TestMethod::MannWhitney,
        }),
        why: Some(e.why.clone()),
        hosts: Some(e.hosts),
        pairs: Some(e.pairs),
        ci_low: e.ci.map(|c| c.0),
        ci_high: e.ci.map(|c| c.1),
        confidence: e.ci.map(|_| paired::CONFIDENCE),
        p_adjusted: Some(p_adjusted),
        spacing: e.block,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    const BASELINE: [f64; 8] = [0.101, 0.098, 0.104, 0.097, 0.102, 0.099, 0.103, 0.100];

    #[test]
    fn empty_samples_are_no_data_never_a_pass() {
        let hosts = [host(&[], &[0.1; 10])];
        let (results, control) =
            conclude(vec![prepare("cpuOverhead", &hosts, 0.05, "cores", 1)], 0.05);
        assert_eq!(results[0].0.outcome, Outcome::NoData);
        assert!(results[0].0.reason.contains("baseline"));
        assert!(results[0].1.is_none() && control.is_none());
    }

    #[test]
    fn zeros_everywhere_have_no_resolution_never_a_pass() {
        let hosts = [host(&[0.0; 30], &[0.0; 30]), host(&[0.0; 30], &[0.0; 30])];
        let (results, _) = conclude(vec![prepare("cpuOverhead", &hosts, 0.05, "cores", 6)], 0.05);
        let (result, test) = &results[0];
        assert_eq!(result.outcome, Outcome::NoResolution, "{}", result.reason);
        assert!(
            result.reason.starts_with("inconclusive: no resolution"),
            "{}",
            result.reason
        );
        assert!(test.is_none());
    }

    #[test]
    fn a_clear_excess_fails_with_numbers_and_an_interval() {
        let candidate = [0.181, 0.178, 0.185, 0.177, 0.183, 0.179, 0.182, 0.180];
        let hosts = [host(&BASELINE, &candidate)];
        let (results, control) =
            conclude(vec![prepare("cpuOverhead", &hosts, 0.05, "cores", 1)], 0.05);
        let (result, test) = &results[0];
        assert_eq!(result.outcome, Outcome::Fail, "{}", result.reason);
        assert!(result.reason.contains("95% CI"), "{}", result.reason);
        let test = test.as_ref().unwrap();
        assert_eq!(test.method, Some(TestMethod::SignedRankWindows));
        assert!(test.shift > 0.07 && test.effect_size > 0.9);
        assert!(test.ci_low.unwrap() > 0.07 && test.ci_high.unwrap() < 0.09);
        assert!(test.p_over_allowance.unwrap() < 0.05);
        assert_eq!(
            test.p_adjusted, test.p_over_allowance,
            "alone in its family"
        );
        assert_eq!(control.unwrap().tested, ["cpuOverhead"]);
    }

    #[test]
    fn holm_adjusts_across_the_resource_criteria() {
        // Eight hosts, every one above the allowance: exact one-sided p = 1/256 each;
        // Holm doubles the smaller of the two, and both still fail.
        let above: Vec<HostSeries> = (0..8)
            .map(|i| {
                let c: Vec<f64> = BASELINE
                    .iter()
                    .map(|b| b + 0.08 + i as f64 * 1e-3)
                    .collect();
                host(&BASELINE, &c)
            })
            .collect();
        // Memory: a tiny, noisy change, well within its allowance.
        let within: Vec<HostSeries> = (0..8)
            .map(|i| {
                let c: Vec<f64> = BASELINE
                    .iter()
                    .map(|b| b + if i % 2 == 0 { 0.001 } else { -0.001 })
                    .collect();
                host(&BASELINE, &c)
            })
            .collect();
        let (results, control) = conclude(
            vec![
                prepare("cpuOverhead", &above, 0.05, "cores", 1),
                prepare("memoryOverhead", &within, 0.05, "MiB", 1),
            ],
            0.05,
        );
        let cpu = results[0].1.as_ref().unwrap();
        assert_eq!(cpu.method, Some(TestMethod::SignedRankHosts));
        assert!((cpu.p_over_allowance.unwrap() - 1.0 / 256.0).abs() < 1e-12);
        assert!((cpu.p_adjusted.unwrap() - 2.0 / 256.0).abs() < 1e-12);
        assert_eq!(
            results[0].0.outcome,
            Outcome::Fail,
            "{}",
            results[0].0.reason
        );
        assert!(
            results[0].0.reason.contains("Holm-adjusted"),
            "{}",
            results[0].0.reason
        );
        assert_eq!(
            results[1].0.outcome,
            Outcome::Pass,
            "{}",
            results[1].0.reason
        );
        let control = control.unwrap();
        assert_eq!(control.tested, ["cpuOverhead", "memoryOverhead"]);
        assert!(control.summary.starts_with("Holm over 2 tested criteria"));
    }
}
