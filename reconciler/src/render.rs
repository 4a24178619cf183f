//! Rendering: from an experiment, a variant, a host and a pipeline template to the
//! exact [`CollectorSpec`] that host should run. Pure; same inputs, same hash.

use std::collections::BTreeMap;

use phoenix_wire::agent::{CollectorSpec, Variant};
use phoenix_wire::resource::{PipelineRef, variable_env_name};
use phoenix_wire::view::Experiment;

/// A regular expression (RE2 and Rust syntax alike) that matches nothing, for
/// experiments without critical processes: a character, then the start of the
/// text, cannot both match. Free of backslashes, like every regex we render.
pub const MATCH_NOTHING: &str = "x^";

/// The anchored alternation of the critical process names. Names are validated to
/// letters, digits and `. _ - + @ :`; `.` and `+` become `[.]` and `[+]`, so the
/// regex holds no backslash or quote and can sit inside an OTTL string literal.
pub fn critical_processes_regex(names: &[String]) -> String {
    if names.is_empty() {
        return MATCH_NOTHING.to_string();
    }
    let escaped: Vec<String> = names
        .iter()
        .map(|n| {
            n.chars()
                .map(|c| {
                    if matches!(c, '.' | '+') {
                        format!("[{c}]")
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        })
        .collect();
    format!("^({})$", escaped.join("|"))
}

/// The pipeline reference of one side of an experiment.
pub fn pipeline_of(experiment: &Experiment, variant: Variant) -> &PipelineRef {
    match variant {
        Variant::Candidate => &experiment.spec.candidate,
        Variant::Baseline | Variant::Standing => &experiment.spec.baseline,
    }
}

/// The collector a host runs for one side of an experiment.
pub fn experiment_collector(
    experiment: &Experiment,
    variant: Variant,
    host_id: &str,
    template_config: &str,
    remote_write_url: &str,
) -> CollectorSpec {
    let pipeline = pipeline_of(experiment, variant);
    let mut env = BTreeMap::new();
    env.insert("PHOENIX_EXPERIMENT".to_string(), experiment.name.clone());
    env.insert("PHOENIX_VARIANT".to_string(), variant.as_str().to_string());
    env.insert("PHOENIX_HOST".to_string(), host_id.to_string());
    env.insert(
        "PHOENIX_REMOTE_WRITE_URL".to_string(),
        remote_write_url.to_string(),
    );
    env.insert(
        "PHOENIX_CRITICAL_PROCESSES_REGEX".to_string(),
        critical_processes_regex(&experiment.spec.critical_processes),
    );
    for (name, value) in &pipeline.vars {
        env.insert(variable_env_name(name), value.clone());
    }
    CollectorSpec::new(
        CollectorSpec::id_for(&experiment.name, variant),
        experiment.name.clone(),
        variant,
        pipeline.pipeline.clone(),
        template_config.to_string(),
        env,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_regex_is_anchored_and_escaped() {
        let re = critical_processes_regex(&[
            "nginx".into(),
            "java".into(),
            "a.b+".into(),
            "phoenix-agent".into(),
        ]);
        assert_eq!(re, "^(nginx|java|a[.]b[+]|phoenix-agent)$");
        assert!(!re.contains('\\') && !re.contains('"'));
        let compiled = regex::Regex::new(&re).unwrap();
        assert!(compiled.is_match("nginx"));
        assert!(compiled.is_match("a.b+"));
        assert!(!compiled.is_match("nginx-worker"));
        assert!(!compiled.is_match("axb+"));
        let nothing = regex::Regex::new(&critical_processes_regex(&[])).unwrap();
        assert!(!nothing.is_match("") && !nothing.is_match("nginx"));
    }
}
