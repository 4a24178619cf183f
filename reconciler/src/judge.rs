//! Turning resource samples into a criterion outcome for the report: the
//! Mann–Whitney based rule of [`crate::stats::judge_resource`], with units, the
//! "no data" case, and the numbers the report shows.

use phoenix_wire::report::{CriterionResult, Outcome, ResourceTest};

use crate::stats::{self, Judgement};

/// Judges candidate against baseline samples (same units) with `allowance` of
/// extra use allowed. Empty samples are `no-data`, never a pass.
pub fn resource(
    criterion: &str,
    baseline: &[f64],
    candidate: &[f64],
    allowance: f64,
    unit: &str,
) -> (CriterionResult, Option<ResourceTest>) {
    let missing = match (baseline.is_empty(), candidate.is_empty()) {
        (true, _) => Some("baseline"),
        (_, true) => Some("candidate"),
        _ => None,
    };
    if let Some(side) = missing {
        let result = CriterionResult {
            criterion: criterion.to_string(),
            outcome: Outcome::NoData,
            reason: format!(
                "no collector samples for the {side} in Prometheus (Pushgateway series); is the agent pushing?"
            ),
        };
        return (result, None);
    }
    let judged = stats::judge_resource(baseline, candidate, allowance, stats::DEFAULT_ALPHA);
    let outcome = match judged.judgement {
        Judgement::Pass => Outcome::Pass,
        Judgement::Fail => Outcome::Fail,
        Judgement::Inconclusive => Outcome::Inconclusive,
    };
    let medians = match (judged.baseline_median, judged.candidate_median) {
        (Some(b), Some(c)) => {
            format!("median {b:.4} → {c:.4} {unit}, allowance +{allowance} {unit}; ")
        }
        _ => String::new(),
    };
    let result = CriterionResult {
        criterion: criterion.to_string(),
        outcome,
        reason: format!("{medians}{}", judged.reason),
    };
    let test = judged.comparison.as_ref().map(|c| ResourceTest {
        baseline_samples: judged.baseline_samples,
        candidate_samples: judged.candidate_samples,
        p_value: c.p_two_sided,
        p_over_allowance: judged.p_value,
        effect_size: c.rank_biserial,
        shift: c.hodges_lehmann,
        allowance,
    });
    (result, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_samples_are_no_data_never_a_pass() {
        let (result, test) = resource("cpuOverhead", &[], &[0.1; 10], 0.05, "cores");
        assert_eq!(result.outcome, Outcome::NoData);
        assert!(result.reason.contains("baseline"));
        assert!(test.is_none());
    }

    #[test]
    fn a_clear_excess_fails_with_numbers() {
        let baseline = [0.101, 0.098, 0.104, 0.097, 0.102, 0.099, 0.103, 0.100];
        let candidate = [0.181, 0.178, 0.185, 0.177, 0.183, 0.179, 0.182, 0.180];
        let (result, test) = resource("cpuOverhead", &baseline, &candidate, 0.05, "cores");
        assert_eq!(result.outcome, Outcome::Fail, "{}", result.reason);
        let test = test.unwrap();
        assert!(test.shift > 0.07 && test.effect_size > 0.9);
        assert!(test.p_over_allowance.unwrap() < 0.05);
    }
}
