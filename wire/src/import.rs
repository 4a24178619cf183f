//! Bring your own baseline: a user's existing collector config turned into a
//! pipeline template (`phoenix pipeline import -f otelcol.yaml --name current`), so
//! an experiment can compare a candidate against what the team runs today.
//!
//! [`import`] is pure. It
//! - refuses every component outside the Phoenix collector build
//!   (`collector/manifest.yaml`, i.e. [`crate::policy::ALLOWED_COMPONENTS`]) and every
//!   connector that a metrics pipeline would run, naming each
//!   (`receivers.prometheus`, …); exporters, the debugging-page extensions `zpages`
//!   and `pprof`, traces and logs pipelines, and components only they use are
//!   removed instead (Phoenix compares metrics pipelines);
//! - keeps the user's receivers (listening on loopback, `host_metrics` reading the
//!   host's / through `${env:PHOENIX_HOSTFS}`) and processors as they are;
//! - swaps the user's exporters for the measurement slot (remote write to
//!   `${env:PHOENIX_REMOTE_WRITE_URL}`, labelled by a `transform/phoenix` processor
//!   as every catalog template is) and, in a standing collector, the deployment's
//!   destinations (added when it is rendered);
//! - keeps metrics pipelines only, and reports every change it made, one line each.
//!
//! The result still goes through the template policy and the collector's own
//! `validate` when it is stored, like any template.

use serde_json::{Map, Value, json};

use crate::policy::ALLOWED_COMPONENTS;

/// The measurement exporter an imported template writes to.
pub const MEASUREMENT_EXPORTER: &str = "prometheus_remote_write/phoenix";
/// The processor that stamps the Phoenix identity on every resource.
pub const IDENTITY_PROCESSOR: &str = "transform/phoenix";

/// Extensions that only serve debugging pages: removed, not refused.
const DEBUG_EXTENSIONS: &[&str] = &["zpages", "pprof"];

/// An imported config and what was changed to make it one.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    /// The template's collector config (YAML).
    pub config: String,
    /// One line per change, naming the config path.
    pub changes: Vec<String>,
}

/// Turns a collector config into a Phoenix template config, or says every
/// component it cannot run (each naming its path).
pub fn import(text: &str) -> Result<Imported, Vec<String>> {
    let tree: Value =
        serde_saphyr::from_str(text).map_err(|e| vec![format!("not valid YAML: {e}")])?;
    let Value::Object(mut top) = tree else {
        return Err(vec!["a collector config is a mapping".into()]);
    };
    let mut refusals = Vec::new();
    let mut changes = Vec::new();
    for key in top.keys() {
        if !matches!(
            key.as_str(),
            "receivers" | "processors" | "exporters" | "extensions" | "service" | "connectors"
        ) {
            refusals.push(format!("`{key}` is not a collector config section"));
        }
    }
    if let Some(Value::Object(connectors)) = top.get("connectors") {
        for id in connectors.keys() {
            refusals.push(format!(
                "connectors.{id}: connectors are not in the Phoenix collector build"
            ));
        }
    }
    top.remove("connectors");

    // Pipelines: metrics only, exporters swapped.
    let mut service = match top.remove("service") {
        Some(Value::Object(service)) => service,
        _ => {
            return Err(vec![
                "service.pipelines: the config has no pipelines".into(),
            ]);
        }
    };
    let Some(Value::Object(pipelines)) = service.remove("pipelines") else {
        return Err(vec![
            "service.pipelines: the config has no pipelines".into(),
        ]);
    };
    let mut kept = Map::new();
    let mut used_receivers = Vec::new();
    let mut used_processors = Vec::new();
    for (id, body) in pipelines {
        if id.split('/').next() != Some("metrics") {
            changes.push(format!(
                "service.pipelines.{id}: removed (Phoenix compares metrics pipelines)"
            ));
            continue;
        }
        let list = |key: &str| -> Vec<Value> {
            body.get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let receivers = list("receivers");
        let mut processors = list("processors");
        for r in &receivers {
            used_receivers.push(r.as_str().unwrap_or_default().to_string());
        }
        for p in &processors {
            used_processors.push(p.as_str().unwrap_or_default().to_string());
        }
        // The identity before a trailing batch, so each batch is labelled.
        let at = match processors.last().and_then(Value::as_str) {
            Some(last) if last.split('/').next() == Some("batch") => processors.len() - 1,
            _ => processors.len(),
        };
        processors.insert(at, Value::String(IDENTITY_PROCESSOR.into()));
        let exporters: Vec<String> = list("exporters")
            .iter()
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect();
        changes.push(format!(
            "service.pipelines.{id}.exporters: [{}] → [{MEASUREMENT_EXPORTER}] (plus the deployment's destinations in a standing collector); {IDENTITY_PROCESSOR} added to its processors",
            exporters.join(", ")
        ));
        kept.insert(
            id,
            json!({"receivers": receivers, "processors": processors, "exporters": [MEASUREMENT_EXPORTER]}),
        );
    }
    if kept.is_empty() {
        return Err(vec![
            "service.pipelines: no metrics pipeline; Phoenix compares metrics pipelines".into(),
        ]);
    }

    // Receivers: used ones only, listening on loopback.
    let mut receivers = match top.remove("receivers") {
        Some(Value::Object(r)) => r,
        _ => Map::new(),
    };
    receivers.retain(|id, _| {
        let used = used_receivers.contains(id);
        if !used {
            changes.push(format!(
                "receivers.{id}: removed (no metrics pipeline uses it)"
            ));
        }
        used
    });
    for (id, settings) in receivers.iter_mut() {
        let kind = id.split('/').next().unwrap_or_default();
        if settings.is_null() {
            *settings = Value::Object(Map::new());
        }
        if matches!(kind, "host_metrics" | "hostmetrics") {
            if settings.get("root_path").and_then(Value::as_str) != Some("${env:PHOENIX_HOSTFS}") {
                settings["root_path"] = json!("${env:PHOENIX_HOSTFS}");
                changes.push(format!(
                    "receivers.{id}.root_path: set to ${{env:PHOENIX_HOSTFS}} (where the agent sees the host's /)"
                ));
            }
        } else if kind == "otlp"
            && let Some(Value::Object(protocols)) = settings.get_mut("protocols")
        {
            for (name, protocol) in protocols.iter_mut() {
                if protocol.is_null() {
                    *protocol = Value::Object(Map::new());
                }
                let default_port = if name == "http" { "4318" } else { "4317" };
                let endpoint = protocol.get("endpoint").and_then(Value::as_str);
                let port = endpoint
                    .and_then(|e| e.rsplit(':').next())
                    .filter(|p| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty())
                    .unwrap_or(default_port)
                    .to_string();
                let loopback = format!("127.0.0.1:{port}");
                if endpoint != Some(loopback.as_str()) {
                    changes.push(format!(
                        "receivers.{id}.protocols.{name}.endpoint: {} → {loopback} (collectors listen on loopback only)",
                        endpoint.unwrap_or("(default)")
                    ));
                    protocol["endpoint"] = json!(loopback);
                }
            }
        }
    }

    // Processors: the user's, as they are (used ones), and the identity.
    let mut processors = match top.remove("processors") {
        Some(Value::Object(p)) => p,
        _ => Map::new(),
    };
    processors.retain(|id, _| {
        let used = used_processors.contains(id);
        if !used {
            changes.push(format!(
                "processors.{id}: removed (no metrics pipeline uses it)"
            ));
        }
        used
    });
    // What is left must be in the build.
    refuse_outside_build("receivers", &receivers, &mut refusals);
    refuse_outside_build("processors", &processors, &mut refusals);
    if let Some(Value::Object(extensions)) = top.get_mut("extensions") {
        extensions.retain(|id, _| {
            let kind = id.split('/').next().unwrap_or_default();
            let debug_page = DEBUG_EXTENSIONS.contains(&kind);
            if debug_page {
                changes.push(format!(
                    "extensions.{id}: removed (a debugging page; Phoenix collectors serve none)"
                ));
            }
            !debug_page
        });
        refuse_outside_build("extensions", extensions, &mut refusals);
    }
    if !refusals.is_empty() {
        return Err(refusals);
    }
    processors.insert(
        IDENTITY_PROCESSOR.into(),
        json!({
            "error_mode": "ignore",
            "metric_statements": [{
                "context": "resource",
                "statements": [
                    "set(resource.attributes[\"phoenix.experiment\"], \"${env:PHOENIX_EXPERIMENT}\")",
                    "set(resource.attributes[\"phoenix.variant\"], \"${env:PHOENIX_VARIANT}\")",
                    "set(resource.attributes[\"phoenix.host\"], \"${env:PHOENIX_HOST}\")"
                ]
            }]
        }),
    );

    if let Some(Value::Object(exporters)) = top.remove("exporters") {
        for id in exporters.keys() {
            changes.push(format!(
                "exporters.{id}: removed; Phoenix writes to its measurement Prometheus, and a standing collector to the destinations its deployment names (`phoenix destination create`)"
            ));
        }
    }
    let exporters = json!({
        MEASUREMENT_EXPORTER: {
            "endpoint": "${env:PHOENIX_REMOTE_WRITE_URL}",
            "resource_constant_labels": {"included": ["*"]},
            "target_info": {"enabled": false},
        }
    });

    match top.remove("extensions") {
        Some(Value::Object(ext)) => {
            for id in ext.keys().filter(|id| id.as_str() != "health_check") {
                changes.push(format!("extensions.{id}: removed"));
            }
        }
        _ => changes.push(
            "extensions.health_check: added (the agent checks a collector's health there)".into(),
        ),
    }
    if service.contains_key("telemetry") {
        changes.push(
            "service.telemetry: replaced by Phoenix's (own metrics pulled on loopback, logs to stderr)"
                .into(),
        );
    }
    for key in service
        .keys()
        .filter(|k| !matches!(k.as_str(), "telemetry" | "extensions"))
    {
        changes.push(format!("service.{key}: removed"));
    }

    let config = json!({
        "receivers": receivers,
        "processors": processors,
        "exporters": exporters,
        "extensions": {"health_check": {"endpoint": "127.0.0.1:${env:PHOENIX_HEALTH_PORT}"}},
        "service": {
            "extensions": ["health_check"],
            "telemetry": {"metrics": {"readers": [{"pull": {"exporter": {"prometheus": {
                "host": "127.0.0.1",
                "port": "${env:PHOENIX_TELEMETRY_PORT}",
            }}}}]}},
            "pipelines": kept,
        },
    });
    let config = serde_saphyr::to_string(&config)
        .map_err(|e| vec![format!("cannot write the config as YAML: {e}")])?;
    Ok(Imported { config, changes })
}

/// Adds a refusal for every component of `section` the build does not have.
fn refuse_outside_build(
    section: &str,
    components: &Map<String, Value>,
    refusals: &mut Vec<String>,
) {
    let allowed = allowed(section);
    for id in components.keys() {
        let kind = id.split('/').next().unwrap_or_default();
        if !allowed.contains(&kind) {
            refusals.push(format!(
                "{section}.{id}: `{kind}` is not in the Phoenix collector build (collector/manifest.yaml); built {section}: {}",
                allowed.join(", ")
            ));
        }
    }
}

fn allowed(section: &str) -> &'static [&'static str] {
    ALLOWED_COMPONENTS
        .iter()
        .find(|(kind, _)| *kind == section)
        .map(|(_, types)| *types)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    /// The default config of the OpenTelemetry Collector's `otelcol` distribution.
    pub const DEFAULT: &str = include_str!("../../docs/import-examples/otelcol-default.yaml");
    pub const OTLP_BATCH: &str = include_str!("../../docs/import-examples/node-collector.yaml");
    pub const UNSUPPORTED: &str = include_str!("../../docs/import-examples/unsupported.yaml");

    fn passes_policy(config: &str) {
        let mut env = policy::placeholder_environment();
        env.insert("PHOENIX_HEALTH_PORT".into(), "13133".into());
        env.insert("PHOENIX_TELEMETRY_PORT".into(), "8888".into());
        env.insert("PHOENIX_HOSTFS".into(), "/hostfs".into());
        policy::check(config, &env, &policy::Allowances::default())
            .unwrap_or_else(|r| panic!("{r}\n{config}"));
    }

    #[test]
    fn the_default_config_imports() {
        let imported = import(DEFAULT).unwrap();
        passes_policy(&imported.config);
        let report = imported.changes.join("\n");
        assert!(report.contains("extensions.zpages: removed"), "{report}");
        assert!(
            report.contains("service.pipelines.traces: removed"),
            "{report}"
        );
        assert!(report.contains("exporters.debug: removed"), "{report}");
        assert!(report.contains("receivers.jaeger: removed"), "{report}");
        assert!(
            report
                .contains("receivers.otlp.protocols.grpc.endpoint: 0.0.0.0:4317 → 127.0.0.1:4317"),
            "{report}"
        );
        let tree: Value = serde_saphyr::from_str(&imported.config).unwrap();
        // The user's processors stay, the identity before the batch.
        assert_eq!(
            tree["service"]["pipelines"]["metrics"]["processors"],
            json!(["transform/phoenix", "batch"])
        );
        assert!(tree["service"]["pipelines"].get("traces").is_none());
    }

    #[test]
    fn a_node_collector_with_otlp_and_batch_imports() {
        let imported = import(OTLP_BATCH).unwrap();
        passes_policy(&imported.config);
        let tree: Value = serde_saphyr::from_str(&imported.config).unwrap();
        let metrics = &tree["service"]["pipelines"]["metrics"];
        assert_eq!(metrics["exporters"], json!([MEASUREMENT_EXPORTER]));
        assert_eq!(metrics["receivers"], json!(["hostmetrics", "otlp"]));
        assert_eq!(
            tree["receivers"]["hostmetrics"]["root_path"],
            "${env:PHOENIX_HOSTFS}"
        );
        assert_eq!(
            tree["processors"]["resourcedetection/system"]["detectors"],
            json!(["system"])
        );
        assert_eq!(tree["processors"]["batch"]["send_batch_size"], json!(1024));
        let report = imported.changes.join("\n");
        assert!(
            report.contains("exporters.otlphttp/vendor: removed"),
            "{report}"
        );
        assert!(
            report
                .contains("receivers.otlp.protocols.grpc.endpoint: 0.0.0.0:4317 → 127.0.0.1:4317"),
            "{report}"
        );
    }

    #[test]
    fn unsupported_components_are_refused_each_by_name() {
        let refused = import(UNSUPPORTED).unwrap_err();
        let text = refused.join("\n");
        assert_eq!(refused.len(), 3, "{text}");
        assert!(
            text.contains(
                "receivers.prometheus: `prometheus` is not in the Phoenix collector build"
            ),
            "{text}"
        );
        assert!(text.contains("processors.k8sattributes:"), "{text}");
        assert!(text.contains("connectors.spanmetrics:"), "{text}");
    }
}
