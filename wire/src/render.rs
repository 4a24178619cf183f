//! Rendering: from an experiment, a variant, a host and a pipeline template to the
//! exact [`CollectorSpec`] that host should run. Pure; same inputs, same hash. The
//! reconciler renders what hosts run; the api renders the same thing to validate it
//! with the real collector before anything is stored. [`standing_collector`] does
//! the same for a pipeline deployment's standing collector.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::agent::{CollectorSpec, ConfigHasher, Variant};
use crate::deployment::DeploymentSpec;
use crate::destination::{self, DestinationSpec, Protocol};
use crate::policy::Destination;
use crate::resource::{ExperimentSpec, PipelineRef, variable_env_name};
use crate::variables::VariableDecl;

/// A pipeline template as rendering needs it: its config and declared variables.
/// The config is shared by every collector rendered from it (the body is the same
/// on every host; only the environment differs).
#[derive(Clone, Debug)]
pub struct Template {
    pub config: Arc<str>,
    pub variables: Vec<VariableDecl>,
    /// Hashes `config` with each host's environment ([`crate::agent::config_hash`]).
    hasher: ConfigHasher,
}

impl Template {
    pub fn new(config: impl Into<Arc<str>>, variables: Vec<VariableDecl>) -> Self {
        let config = config.into();
        Self {
            hasher: ConfigHasher::new(&config),
            config,
            variables,
        }
    }
}

impl Default for Template {
    fn default() -> Self {
        Template::new("", Vec::new())
    }
}

/// Equal when config and variables are (the hasher follows from the config).
impl PartialEq for Template {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config && self.variables == other.variables
    }
}

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
pub fn pipeline_of(spec: &ExperimentSpec, variant: Variant) -> &PipelineRef {
    match variant {
        Variant::Candidate => &spec.candidate,
        Variant::Baseline | Variant::Standing => &spec.baseline,
    }
}

/// The collector a host runs for one side of the experiment `name`.
pub fn experiment_collector(
    name: &str,
    spec: &ExperimentSpec,
    variant: Variant,
    host_id: &str,
    template: &Template,
    remote_write_url: &str,
) -> CollectorSpec {
    let pipeline = pipeline_of(spec, variant);
    collector_spec(
        name,
        variant,
        host_id,
        pipeline,
        &spec.critical_processes,
        template,
        remote_write_url,
        BTreeMap::new(),
    )
}

/// The standing collector a host runs for the pipeline deployment `name`: variant
/// `standing`, id `<name>.standing`, owned by the deployment. The catalog templates
/// stamp `PHOENIX_EXPERIMENT` on every series as `phoenix_experiment` and need it
/// set, so it carries the deployment's name here (with `phoenix_variant="standing"`
/// telling it apart from an experiment of the same name); `PHOENIX_DEPLOYMENT`
/// names the deployment for templates that want to say so.
///
/// Each destination the deployment names (looked up in `destinations`, every
/// declared one by name) becomes one more exporter of every pipeline that can carry
/// it ([`with_destinations`]); the template's own exporters, the measurement
/// Prometheus among them, stay. A name not in `destinations` (deleted since; the
/// api refuses both) is left out.
pub fn standing_collector(
    name: &str,
    spec: &DeploymentSpec,
    host_id: &str,
    template: &Template,
    remote_write_url: &str,
    destinations: &BTreeMap<String, DestinationSpec>,
) -> CollectorSpec {
    let pipeline = PipelineRef {
        pipeline: spec.pipeline.clone(),
        vars: spec.vars.clone(),
    };
    let extra = BTreeMap::from([("PHOENIX_DEPLOYMENT".to_string(), name.to_string())]);
    let chosen: Vec<(&str, &DestinationSpec)> = spec
        .destinations
        .iter()
        .filter_map(|d| destinations.get(d).map(|spec| (d.as_str(), spec)))
        .collect();
    let collector = collector_spec(
        name,
        Variant::Standing,
        host_id,
        &pipeline,
        &spec.critical_processes,
        template,
        remote_write_url,
        extra,
    );
    if chosen.is_empty() {
        return collector;
    }
    with_destinations(collector, &chosen)
}

/// `collector` exporting to `destinations` as well: one exporter each
/// ([`crate::destination::exporter`]), added to every pipeline of its signal
/// (metrics for all; traces and logs for OTLP), and the spec's destinations and
/// credential references set so the agent checks and resolves exactly these. A
/// config that is not a mapping is left as it is (the policy refuses it).
pub fn with_destinations(
    mut collector: CollectorSpec,
    destinations: &[(&str, &DestinationSpec)],
) -> CollectorSpec {
    let Ok(mut tree) = serde_saphyr::from_str::<Value>(&collector.config) else {
        return collector;
    };
    let Some(top) = tree.as_object_mut() else {
        return collector;
    };
    let mut grants = Vec::new();
    let mut credentials = Vec::new();
    let mut added: Vec<(String, Protocol)> = Vec::new();
    for (name, spec) in destinations {
        let (settings, refs) = destination::exporter(name, spec);
        let id = destination::exporter_id(spec.protocol, name);
        let exporters = top
            .entry("exporters")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(exporters) = exporters.as_object_mut() {
            exporters.insert(id.clone(), settings);
        }
        grants.push(Destination {
            name: name.to_string(),
            endpoint: spec.endpoint.clone(),
        });
        credentials.extend(refs);
        added.push((id, spec.protocol));
    }
    if let Some(pipelines) = top
        .get_mut("service")
        .and_then(|s| s.get_mut("pipelines"))
        .and_then(Value::as_object_mut)
    {
        for (pipeline, body) in pipelines.iter_mut() {
            let signal = pipeline.split('/').next().unwrap_or_default();
            let Some(list) = body.get_mut("exporters").and_then(Value::as_array_mut) else {
                continue;
            };
            for (id, protocol) in &added {
                let carries = signal == "metrics" || *protocol != Protocol::PrometheusRemoteWrite;
                if carries && !list.iter().any(|e| e.as_str() == Some(id)) {
                    list.push(Value::String(id.clone()));
                }
            }
        }
    }
    collector.config = serde_json::to_string_pretty(&tree)
        .expect("a JSON tree always serializes")
        .into();
    let collector = CollectorSpec::new(
        collector.collector_id,
        collector.owner,
        collector.variant,
        collector.pipeline,
        collector.config,
        collector.env,
    );
    collector.with_destinations(grants, credentials)
}

/// The one place a collector's environment is put together: what every catalog
/// template expects (owner, variant, host, remote-write URL, critical regex), the
/// pipeline's variables (each declared one parsed by its type, or its default), and
/// `extra`. A value that does not parse (the api refuses those before storing) is
/// passed as written, and so is a variable the template does not declare (templates
/// stored before declarations existed): the agent's policy check refuses what could
/// do harm.
#[allow(clippy::too_many_arguments)]
fn collector_spec(
    owner: &str,
    variant: Variant,
    host_id: &str,
    pipeline: &PipelineRef,
    critical_processes: &[String],
    template: &Template,
    remote_write_url: &str,
    mut env: BTreeMap<String, String>,
) -> CollectorSpec {
    env.insert("PHOENIX_EXPERIMENT".to_string(), owner.to_string());
    env.insert("PHOENIX_VARIANT".to_string(), variant.as_str().to_string());
    env.insert("PHOENIX_HOST".to_string(), host_id.to_string());
    env.insert(
        "PHOENIX_REMOTE_WRITE_URL".to_string(),
        remote_write_url.to_string(),
    );
    env.insert(
        "PHOENIX_CRITICAL_PROCESSES_REGEX".to_string(),
        critical_processes_regex(critical_processes),
    );
    for (var, value) in &pipeline.vars {
        env.insert(variable_env_name(var), value.clone());
    }
    for decl in &template.variables {
        let given = pipeline.vars.get(&decl.name).unwrap_or(&decl.default);
        if let Ok(value) = decl.parse(given) {
            env.insert(variable_env_name(&decl.name), value);
        }
    }
    let config_hash = template.hasher.hash(&env);
    CollectorSpec::hashed(
        CollectorSpec::id_for(owner, variant),
        owner.to_string(),
        variant,
        pipeline.pipeline.clone(),
        template.config.clone(),
        env,
        config_hash,
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

    #[test]
    fn a_standing_collector_carries_the_deployment_and_its_variables() {
        let spec: DeploymentSpec = serde_json::from_value(serde_json::json!({
            "hosts": {"selector": {"role": "web"}},
            "pipeline": "process-topk",
            "vars": {"cpu_threshold": "0.2"},
            "criticalProcesses": ["nginx"]
        }))
        .unwrap();
        let cfg = Template::new("cfg", vec![]);
        let c = standing_collector(
            "web",
            &spec,
            "web-1",
            &cfg,
            "http://prom/api/v1/write",
            &BTreeMap::new(),
        );
        assert_eq!(c.collector_id, "web.standing");
        assert_eq!(c.owner, "web");
        assert_eq!(c.variant, Variant::Standing);
        assert_eq!(c.pipeline, "process-topk");
        assert_eq!(c.env["PHOENIX_VARIANT"], "standing");
        assert_eq!(c.env["PHOENIX_EXPERIMENT"], "web");
        assert_eq!(c.env["PHOENIX_DEPLOYMENT"], "web");
        assert_eq!(c.env["PHOENIX_HOST"], "web-1");
        assert_eq!(c.env["PHOENIX_VAR_CPU_THRESHOLD"], "0.2");
        assert_eq!(c.env["PHOENIX_CRITICAL_PROCESSES_REGEX"], "^(nginx)$");
        assert_eq!(
            c.env["PHOENIX_REMOTE_WRITE_URL"],
            "http://prom/api/v1/write"
        );
        // Same inputs, same hash; another host, another hash.
        let again = standing_collector(
            "web",
            &spec,
            "web-1",
            &cfg,
            "http://prom/api/v1/write",
            &BTreeMap::new(),
        );
        assert_eq!(again.config_hash, c.config_hash);
        let other = standing_collector(
            "web",
            &spec,
            "web-2",
            &cfg,
            "http://prom/api/v1/write",
            &BTreeMap::new(),
        );
        assert_ne!(other.config_hash, c.config_hash);
    }
}

#[cfg(test)]
mod typed_tests {
    use super::*;
    use crate::variables::VariableType;

    #[test]
    fn declared_variables_get_their_typed_value_or_default() {
        let spec: DeploymentSpec = serde_json::from_value(serde_json::json!({
            "hosts": {"names": ["web-1"]},
            "pipeline": "keep",
            "vars": {"keep": "nginx, php-fpm"}
        }))
        .unwrap();
        let decl = |name: &str, kind, default: &str| VariableDecl {
            name: name.into(),
            kind,
            default: default.into(),
            doc: String::new(),
            min: None,
            max: None,
        };
        let template = Template::new(
            "cfg",
            vec![
                decl("keep", VariableType::IdentifierList, ""),
                decl("interval", VariableType::Duration, "10s"),
            ],
        );
        let c = standing_collector(
            "d",
            &spec,
            "web-1",
            &template,
            "http://p/w",
            &BTreeMap::new(),
        );
        assert_eq!(c.env["PHOENIX_VAR_KEEP"], "^(nginx|php-fpm)$");
        assert_eq!(c.env["PHOENIX_VAR_INTERVAL"], "10s");
    }
}

#[cfg(test)]
mod destination_tests {
    use super::*;
    use crate::policy;

    fn catalog_config() -> String {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../pipelines/process-topk.yaml"
        ))
        .unwrap();
        let doc: crate::resource::PipelineTemplateDocument =
            crate::resource::parse_document(text.as_bytes(), crate::resource::DocumentFormat::Yaml)
                .unwrap();
        doc.spec.config
    }

    fn destination(yaml: &str) -> DestinationSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn a_standing_collector_exports_to_its_destinations_and_measurement() {
        let spec: DeploymentSpec = serde_json::from_value(serde_json::json!({
            "hosts": {"names": ["web-1"]},
            "pipeline": "process-topk",
            "destinations": ["vendor", "prom"]
        }))
        .unwrap();
        let all = BTreeMap::from([
            (
                "vendor".to_string(),
                destination(
                    "{protocol: otlp_grpc, endpoint: '127.0.0.1:4317', tls: {insecure: true}, \
                     credentials: [{header: authorization, file: vendor/token}]}",
                ),
            ),
            (
                "prom".to_string(),
                destination(
                    "{protocol: prometheus_remote_write, endpoint: 'https://prom.example/api/v1/write'}",
                ),
            ),
            (
                "unused".to_string(),
                destination("{protocol: otlp_http, endpoint: 'https://x.example'}"),
            ),
        ]);
        let template = Template::new(catalog_config(), vec![]);
        let c = standing_collector("web", &spec, "web-1", &template, "http://m/w", &all);
        let tree: Value = serde_json::from_str(&c.config).unwrap();
        let exporters = tree["service"]["pipelines"]["metrics"]["exporters"].clone();
        assert_eq!(
            exporters,
            serde_json::json!([
                "prometheus_remote_write",
                "otlp_grpc/destination-vendor",
                "prometheus_remote_write/destination-prom"
            ])
        );
        assert_eq!(
            tree["exporters"]["otlp_grpc/destination-vendor"]["headers"]["authorization"],
            "${env:PHOENIX_CREDENTIAL_VENDOR_0}"
        );
        assert_eq!(c.destinations.len(), 2);
        assert_eq!(c.credentials[0].variable, "PHOENIX_CREDENTIAL_VENDOR_0");
        assert_eq!(c.credentials[0].file.as_deref(), Some("vendor/token"));
        assert!(!c.env.contains_key("PHOENIX_CREDENTIAL_VENDOR_0"));
        // The api's check (no credential value yet) and the agent's (with it) pass
        // with the spec's own allowances, and nothing else does.
        policy::check_environment(&c.env).unwrap();
        policy::check(&c.config, &c.env, &c.allowances()).unwrap();
        let mut env = c.env.clone();
        env.insert(
            "PHOENIX_CREDENTIAL_VENDOR_0".into(),
            "Bearer s3cr3t-token".into(),
        );
        policy::check(&c.config, &env, &c.allowances()).unwrap();
        let refusal = policy::check(&c.config, &env, &policy::Allowances::default()).unwrap_err();
        assert!(refusal.path.ends_with(".endpoint"), "{refusal}");
        // A credential value that would become YAML structure is refused, unquoted.
        env.insert("PHOENIX_CREDENTIAL_VENDOR_0".into(), "{a: b}".into());
        let refusal = policy::check(&c.config, &env, &c.allowances()).unwrap_err();
        assert!(!refusal.reason.contains("{a: b}"), "{refusal}");
        // A different destination list is a different collector.
        let none = standing_collector(
            "web",
            &DeploymentSpec {
                destinations: vec![],
                ..spec.clone()
            },
            "web-1",
            &template,
            "http://m/w",
            &all,
        );
        assert_ne!(none.config_hash, c.config_hash);
        assert_eq!(
            none.config, template.config,
            "no destination, config untouched"
        );
    }
}
