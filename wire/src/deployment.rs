//! Pipeline deployments: a standing pipeline for a set of hosts, created by hand
//! (`kind: PipelineDeployment`, `phoenix pipeline deploy`) or by promoting an
//! experiment's candidate, with a revision history so that a rollback can restore
//! the previous standing pipeline.
//!
//! Every host a deployment selects (resolved on every reconcile pass: standing
//! pipelines follow the fleet, unlike experiments) runs one collector with variant
//! `standing`, id `<deployment>.standing` (see [`crate::render::standing_collector`]).
//!
//! - [`PipelineDeploymentDocument`] / [`DeploymentSpec`]: the resource document
//!   and its validation, naming the field that is wrong.
//! - [`PipelineDeployment`], [`DeploymentRevision`], [`DeploymentHost`]: what the
//!   user API returns.
//! - [`PromotionResult`]: the answer to an experiment's promote or rollback.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::agent::CollectorStatus;
use crate::names::{self, Labels};
use crate::problem::FieldError;
use crate::resource::{
    HostTarget, Metadata, PipelineRef, check_envelope, check_process_name, check_variable_name,
    scalar_map,
};
use crate::rollout::{Rollout, RolloutPolicy};
use crate::view::Experiment;

/// `kind: PipelineDeployment`: run a pipeline template as the standing collector of
/// the selected hosts.
///
/// ```yaml
/// apiVersion: phoenix.dev/v1
/// kind: PipelineDeployment
/// metadata: {name: web-standing}
/// spec:
///   hosts: {selector: {role: web}}        # or {names: [web-1, web-2]}
///   pipeline: process-topk
///   vars: {cpu_threshold: "0.05"}
///   criticalProcesses: [nginx, postgres]
///   destinations: [vendor]                # see `kind: Destination`
///   rollout: {maxUnavailable: 2}          # hosts per batch, or "25%" (the default)
/// ```
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PipelineDeploymentDocument {
    /// Always `phoenix.dev/v1`.
    #[schemars(extend("const" = "phoenix.dev/v1"))]
    pub api_version: String,
    /// Always `PipelineDeployment`.
    #[schemars(extend("const" = "PipelineDeployment"))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: DeploymentSpec,
}

/// What a deployment runs, and where.
///
/// Standing collectors export where their template sends them (every catalog
/// template remote-writes to `PHOENIX_REMOTE_WRITE_URL`, the measurement
/// Prometheus, so Phoenix keeps watching what it rolled out) and to each of
/// `destinations`, the user's backends an admin declared (`kind: Destination`):
/// rendering adds one exporter per destination to every pipeline of the config.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeploymentSpec {
    /// The hosts that run it, resolved on every reconcile pass.
    pub hosts: HostTarget,
    /// The pipeline template.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub pipeline: String,
    /// Values for the template's variables.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "scalar_map"
    )]
    #[schemars(with = "BTreeMap<String, crate::schema::Scalar>")]
    pub vars: BTreeMap<String, String>,
    /// Executable names for `PHOENIX_CRITICAL_PROCESSES_REGEX`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9._+@:-]{1,255}$")))]
    pub critical_processes: Vec<String>,
    /// Destinations (by name) the standing collectors export to, besides the
    /// measurement Prometheus.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub destinations: Vec<String>,
    /// How a new revision reaches the hosts: in batches of `maxUnavailable` (see
    /// [`crate::rollout`]).
    #[serde(default, skip_serializing_if = "RolloutPolicy::is_default")]
    pub rollout: RolloutPolicy,
}

impl PipelineDeploymentDocument {
    pub const KIND: &'static str = "PipelineDeployment";

    /// Checks everything the types do not, naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_envelope(&self.api_version, &self.kind, Self::KIND, &self.metadata)?;
        self.spec.validate()
    }
}

impl DeploymentSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        self.hosts.validate("spec.hosts")?;
        names::check_resource_name(&self.pipeline)
            .map_err(|m| FieldError::new("spec.pipeline", m))?;
        for key in self.vars.keys() {
            check_variable_name(key).map_err(|m| FieldError::new(format!("spec.vars.{key}"), m))?;
        }
        for (i, name) in self.critical_processes.iter().enumerate() {
            check_process_name(name)
                .map_err(|m| FieldError::new(format!("spec.criticalProcesses[{i}]"), m))?;
        }
        for (i, name) in self.destinations.iter().enumerate() {
            let field = format!("spec.destinations[{i}]");
            names::check_resource_name(name).map_err(|m| FieldError::new(&field, m))?;
            if self.destinations[..i].contains(name) {
                return Err(FieldError::new(
                    field,
                    format!("destination `{name}` is named twice"),
                ));
            }
        }
        Ok(())
    }

    /// The template and its variables, as an experiment side would name them.
    pub fn pipeline_ref(&self) -> PipelineRef {
        PipelineRef {
            pipeline: self.pipeline.clone(),
            vars: self.vars.clone(),
        }
    }

    /// True when the host with this id and these labels runs this deployment.
    pub fn selects(&self, host_id: &str, labels: &Labels) -> bool {
        self.hosts.matches(host_id, labels)
    }
}

/// A pipeline deployment as the API shows it: its current revision, and the hosts
/// it selects now with what each reports for its standing collector.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineDeployment {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    /// The current revision's spec.
    pub spec: DeploymentSpec,
    /// The current revision's number (they count up from 1 and are never reused).
    pub revision: i64,
    /// The experiment whose promotion made the current revision, if one did.
    #[serde(default)]
    pub promoted_from: Option<String>,
    /// What made the current revision (e.g. `deployed by user`).
    pub change: String,
    #[serde(default)]
    pub managed_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The registered hosts the deployment selects now.
    #[serde(default)]
    pub hosts: Vec<DeploymentHost>,
    /// Every revision, newest first (only when one deployment is fetched).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<DeploymentRevision>,
    /// The latest roll-out (of the current revision, or the one that failed and
    /// was rolled back), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

impl PipelineDeployment {
    /// The collector id each of its hosts runs.
    pub fn collector_id(&self) -> String {
        crate::agent::CollectorSpec::id_for(&self.name, crate::agent::Variant::Standing)
    }
}

/// One selected host and its standing collector as its agent last reported it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentHost {
    pub host_id: String,
    /// The deployment's collector on this host; `None` while it is not running.
    #[serde(default)]
    pub collector: Option<CollectorStatus>,
    /// An older deployment that also selects this host, and which the host runs
    /// instead (a host runs one standing pipeline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadowed_by: Option<String>,
}

/// One revision of a deployment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRevision {
    pub revision: i64,
    pub spec: DeploymentSpec,
    #[serde(default)]
    pub promoted_from: Option<String>,
    pub change: String,
    pub created_at: DateTime<Utc>,
    /// When a rollback undid this revision; it is never current again.
    #[serde(default)]
    pub rolled_back_at: Option<DateTime<Utc>>,
}

/// The answer to `POST /api/v1/experiments/{name}/promote` and `.../rollback`: the
/// experiment in its new phase, and the deployment as it is now (`None` when the
/// rollback removed it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromotionResult {
    pub experiment: Experiment,
    pub deployment: Option<PipelineDeployment>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{DocumentFormat, parse_document};

    const YAML: &str = r#"
apiVersion: phoenix.dev/v1
kind: PipelineDeployment
metadata:
  name: web-standing
spec:
  hosts: {selector: {role: web}}
  pipeline: process-topk
  vars: {cpu_threshold: 0.05}
  criticalProcesses: [nginx, postgres]
"#;

    fn parse(yaml: &str) -> Result<PipelineDeploymentDocument, FieldError> {
        let doc: PipelineDeploymentDocument =
            parse_document(yaml.as_bytes(), DocumentFormat::Yaml)?;
        doc.validate()?;
        Ok(doc)
    }

    #[test]
    fn a_document_parses_and_round_trips() {
        let doc = parse(YAML).unwrap();
        assert_eq!(doc.metadata.name, "web-standing");
        assert_eq!(doc.spec.vars["cpu_threshold"], "0.05");
        assert_eq!(doc.spec.pipeline_ref().pipeline, "process-topk");
        let json = serde_json::to_vec(&doc).unwrap();
        let again: PipelineDeploymentDocument =
            parse_document(&json, DocumentFormat::Json).unwrap();
        assert_eq!(again, doc);
        let labels: Labels = [("role".to_string(), "web".to_string())].into();
        assert!(doc.spec.selects("any", &labels));
        assert!(!doc.spec.selects("any", &Labels::new()));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                YAML.replace("kind: PipelineDeployment", "kind: Experiment"),
                "kind",
            ),
            (
                YAML.replace("name: web-standing", "name: Web_Standing"),
                "metadata.name",
            ),
            (
                YAML.replace("{selector: {role: web}}", "{selector: {}}"),
                "spec.hosts.selector",
            ),
            (
                YAML.replace("{selector: {role: web}}", "{names: []}"),
                "spec.hosts.names",
            ),
            (
                YAML.replace("{selector: {role: web}}", "{names: ['web 1']}"),
                "spec.hosts.names[0]",
            ),
            (YAML.replace("{selector: {role: web}}", "{}"), "spec.hosts"),
            (
                YAML.replace("pipeline: process-topk", "pipeline: Process_Topk"),
                "spec.pipeline",
            ),
            (
                YAML.replace("cpu_threshold: 0.05", "CPU: 0.05"),
                "spec.vars.CPU",
            ),
            (
                YAML.replace("[nginx, postgres]", "[nginx, 'a\"b']"),
                "spec.criticalProcesses[1]",
            ),
            (
                YAML.replace(
                    "  pipeline: process-topk\n",
                    "  pipeline: process-topk\n  colour: red\n",
                ),
                "spec.colour",
            ),
            (
                YAML.replace("  pipeline: process-topk\n", ""),
                "spec.pipeline",
            ),
            (
                YAML.replace(
                    "  pipeline: process-topk\n",
                    "  pipeline: process-topk\n  rollout: {maxUnavailable: 0}\n",
                ),
                "spec.rollout.maxUnavailable",
            ),
            (
                YAML.replace(
                    "  pipeline: process-topk\n",
                    "  pipeline: process-topk\n  rollout: {maxUnavailable: \"150%\"}\n",
                ),
                "spec.rollout.maxUnavailable",
            ),
            (
                YAML.replace(
                    "  pipeline: process-topk\n",
                    "  pipeline: process-topk\n  rollout: {maxSurge: 1}\n",
                ),
                "spec.rollout.maxSurge",
            ),
        ];
        for (yaml, field) in cases {
            let err = parse(&yaml).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }
}
