//! Resource documents (`apiVersion: phoenix.dev/v1`) and their validation.
//!
//! A document is parsed in two steps so that every error names a field: the body
//! (JSON or YAML) becomes a generic tree, then the tree becomes the typed document
//! with the path of the first field that did not fit. [`ExperimentDocument::validate`]
//! then checks what types cannot express (names, selectors, ranges).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::API_VERSION;
use crate::duration::HumanDuration;
use crate::names::{self, Labels};
use crate::problem::FieldError;

/// How a request body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentFormat {
    Json,
    Yaml,
}

impl DocumentFormat {
    /// Picks the format from a `Content-Type` header value; anything that is not
    /// YAML is read as JSON.
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        match content_type {
            Some(ct) if ct.contains("yaml") => DocumentFormat::Yaml,
            _ => DocumentFormat::Json,
        }
    }
}

/// Parses one document from `body`, naming the offending field on error.
pub fn parse_document<T: DeserializeOwned>(
    body: &[u8],
    format: DocumentFormat,
) -> Result<T, FieldError> {
    let tree = parse_tree(body, format)?;
    from_tree(tree)
}

/// Parses a body into a generic tree without interpreting it.
pub fn parse_tree(body: &[u8], format: DocumentFormat) -> Result<serde_json::Value, FieldError> {
    match format {
        DocumentFormat::Json => serde_json::from_slice(body)
            .map_err(|e| FieldError::new("", format!("malformed JSON: {e}"))),
        DocumentFormat::Yaml => {
            let text = std::str::from_utf8(body)
                .map_err(|e| FieldError::new("", format!("malformed YAML: not UTF-8: {e}")))?;
            let mut documents: Vec<serde_json::Value> = parse_yaml_documents(text)
                .map_err(|e| FieldError::new("", e))?
                .into_iter()
                .filter(|tree| !tree.is_null())
                .collect();
            match documents.len() {
                0 => Ok(serde_json::Value::Null),
                1 => Ok(documents.remove(0)),
                n => Err(FieldError::new(
                    "",
                    format!(
                        "malformed YAML: the body holds {n} documents, not one (`phoenix apply` takes several)"
                    ),
                )),
            }
        }
    }
}

/// Reads YAML text into its documents (separated by `---`). Text that is JSON (it
/// starts with `{` or `[` and parses as JSON) is read as one JSON document, so a
/// large JSON file never meets the YAML reader's limits. A YAML document over those
/// limits is refused saying which limit and that the document is too large.
pub fn parse_yaml_documents(text: &str) -> Result<Vec<serde_json::Value>, String> {
    let start = text.trim_start();
    if (start.starts_with('{') || start.starts_with('['))
        && let Ok(tree) = serde_json::from_str::<serde_json::Value>(text)
    {
        return Ok(vec![tree]);
    }
    serde_saphyr::from_multiple::<serde_json::Value>(text).map_err(|e| yaml_error(&e))
}

/// How a YAML error reads: `malformed YAML: ...`, or for a document over the
/// reader's limits, that it is too large and which limit it passed.
pub fn yaml_error(err: &serde_saphyr::Error) -> String {
    use serde_saphyr::budget::BudgetBreach;
    let serde_saphyr::Error::Budget { breach, .. } = err.without_snippet() else {
        return format!("malformed YAML: {err}");
    };
    let limits = serde_saphyr::budget::Budget::default();
    let what = match breach {
        BudgetBreach::Nodes { .. } => format!("more than {} nodes", limits.max_nodes),
        BudgetBreach::Events { .. } => format!("more than {} YAML events", limits.max_events),
        BudgetBreach::Depth { .. } => format!("nested deeper than {} levels", limits.max_depth),
        BudgetBreach::ScalarBytes { .. } => {
            format!("more than {} bytes of text", limits.max_total_scalar_bytes)
        }
        other => format!("over the YAML reader's limits ({other:?})"),
    };
    format!("the document is too large to read: {what} (a Phoenix document holds far fewer)")
}

/// Interprets a generic tree as a typed document, naming the offending field on error.
/// A NUL character anywhere (no name, label or config needs one, and Postgres text
/// cannot hold it) is refused first, naming where it is.
pub fn from_tree<T: DeserializeOwned>(tree: serde_json::Value) -> Result<T, FieldError> {
    reject_nul(&tree, "")?;
    serde_path_to_error::deserialize(tree).map_err(|err| {
        let mut field = err.path().to_string();
        if field == "." {
            field.clear();
        }
        let message = err.inner().to_string();
        // serde reports a missing key at its parent; name the key itself.
        if let Some(rest) = message.strip_prefix("missing field `")
            && let Some(key) = rest.split('`').next()
        {
            field = if field.is_empty() {
                key.to_string()
            } else {
                format!("{field}.{key}")
            };
        }
        FieldError::new(field, message)
    })
}

fn reject_nul(node: &serde_json::Value, path: &str) -> Result<(), FieldError> {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    let nul = |field: String| FieldError::new(field, "holds a NUL character");
    match node {
        serde_json::Value::String(s) if s.contains('\0') => Err(nul(path.to_string())),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| reject_nul(item, &format!("{path}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().try_for_each(|(key, value)| {
            if key.contains('\0') {
                return Err(nul(path.to_string()));
            }
            reject_nul(value, &at(key))
        }),
        _ => Ok(()),
    }
}

/// `metadata` of every resource document.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The resource's name: a DNS-1123 label (lowercase letters, digits and `-`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Labels, Kubernetes style (`key` or `prefix/key`, values up to 63 characters);
    /// `phoenix ... list -l key=value` selects by them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

/// `kind: Experiment`: run a baseline and a candidate pipeline side by side on the
/// selected hosts and judge the candidate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExperimentDocument {
    /// Always `phoenix.dev/v1`.
    #[schemars(extend("const" = "phoenix.dev/v1"))]
    pub api_version: String,
    /// Always `Experiment`.
    #[schemars(extend("const" = "Experiment"))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ExperimentSpec,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExperimentSpec {
    /// The hosts both pipelines run on: a label `selector` or a list of `names`.
    pub hosts: HostTarget,
    /// The pipeline the hosts run today (the yardstick).
    pub baseline: PipelineRef,
    /// The pipeline under test.
    pub candidate: PipelineRef,
    /// Time both collectors run before measuring starts.
    #[serde(default = "default_warmup")]
    pub warmup: HumanDuration,
    /// How long both are measured after the warmup (warmup plus duration: at most 7d).
    pub duration: HumanDuration,
    /// Process load to generate on the target hosts while the experiment runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadSpec>,
    /// Executable names whose metrics the candidate must keep (see
    /// `criteria.minCriticalRetention`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9._+@:-]{1,255}$")))]
    pub critical_processes: Vec<String>,
    /// Run on at most this many of the hosts `hosts` selects, sampled by a stable
    /// hash of the experiment's name and each host id. Every experiment host
    /// remote-writes all its baseline series to Prometheus, so the width of an
    /// experiment is bounded by what Prometheus ingests; the reconciler's
    /// `--max-experiment-hosts` caps it as well (docs/ARCHITECTURE.md, "The
    /// measurement path").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_hosts: Option<u32>,
    /// What the candidate must achieve to pass.
    #[serde(default)]
    pub criteria: Criteria,
    /// `manual`: a passing candidate waits for `phoenix experiment promote`;
    /// `auto`: it is promoted when the verdict is `pass`.
    #[serde(default)]
    pub promotion: Promotion,
}

fn default_warmup() -> HumanDuration {
    HumanDuration::from_secs(60)
}

/// Which hosts an experiment runs on: a label selector or an explicit list.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct HostTarget {
    /// Every host with all these labels (not empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub selector: Option<Labels>,
    /// These host ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), inner(regex(pattern = r"^[A-Za-z0-9._-]{1,253}$")))]
    pub names: Option<Vec<String>>,
}

impl HostTarget {
    /// True when a host with this id and these labels is targeted.
    pub fn matches(&self, host_id: &str, labels: &Labels) -> bool {
        match (&self.selector, &self.names) {
            (Some(selector), _) => names::selector_matches(selector, labels),
            (None, Some(list)) => list.iter().any(|n| n == host_id),
            (None, None) => false,
        }
    }
}

impl HostTarget {
    /// A non-empty selector with valid labels, or a non-empty list of valid host
    /// ids, not both. `field` is where the target sits in its document
    /// (`spec.hosts`, `hosts`); errors name the field below it.
    pub fn validate(&self, field: &str) -> Result<(), FieldError> {
        match (&self.selector, &self.names) {
            (Some(_), Some(_)) => Err(FieldError::new(
                field,
                "give either `selector` or `names`, not both",
            )),
            (None, None) => Err(FieldError::new(
                field,
                "give `selector` (e.g. {role: web}) or `names` (a list of host ids)",
            )),
            (Some(selector), None) => {
                let field = format!("{field}.selector");
                if selector.is_empty() {
                    return Err(FieldError::new(
                        field,
                        "an empty selector would select every host; name at least one label",
                    ));
                }
                names::check_labels(selector).map_err(|m| FieldError::new(field, m))
            }
            (None, Some(list)) => {
                if list.is_empty() {
                    return Err(FieldError::new(
                        format!("{field}.names"),
                        "name at least one host",
                    ));
                }
                for (i, host) in list.iter().enumerate() {
                    names::check_host_id(host)
                        .map_err(|m| FieldError::new(format!("{field}.names[{i}]"), m))?;
                }
                Ok(())
            }
        }
    }
}

/// A pipeline template by name, with values for its variables.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineRef {
    /// The pipeline template's name (`phoenix pipeline list`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub pipeline: String,
    /// Values for the template's variables (lower_snake_case names; strings,
    /// numbers or booleans).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "scalar_map"
    )]
    #[schemars(with = "BTreeMap<String, crate::schema::Scalar>")]
    pub vars: BTreeMap<String, String>,
}

/// Optional load to generate on the target hosts while the experiment runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// The load profile (`phoenix loadsim start --help` lists them), e.g.
    /// `high-cardinality`.
    pub profile: String,
    /// How many processes to run, instead of the profile's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub processes: Option<u32>,
}

impl LoadSpec {
    /// The profile and its parameters (its defaults, with `processes` if given),
    /// checked; errors name `spec.load.<field>`.
    pub fn parameters(
        &self,
    ) -> Result<(crate::load::LoadProfile, crate::load::LoadParameters), FieldError> {
        use crate::load::{LoadOverrides, LoadProfile};
        let profile = LoadProfile::parse(&self.profile).ok_or_else(|| {
            FieldError::new(
                "spec.load.profile",
                format!(
                    "there is no load profile `{}`; the profiles are: {}",
                    self.profile,
                    LoadProfile::names()
                ),
            )
        })?;
        let overrides = LoadOverrides {
            processes: self.processes,
            ..LoadOverrides::default()
        };
        let parameters = overrides
            .resolve(profile)
            .map_err(|e| FieldError::new(format!("spec.load.{}", e.field), e.message))?;
        Ok((profile, parameters))
    }
}

/// What the candidate must achieve to pass.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Criteria {
    /// Minimum reduction of distinct series versus the baseline, in percent.
    #[serde(default = "default_min_series_reduction")]
    #[schemars(range(min = 0, max = 100))]
    pub min_series_reduction: f64,
    /// Minimum share of the baseline's critical processes the candidate keeps, in percent.
    #[serde(default = "default_min_critical_retention")]
    #[schemars(range(min = 0, max = 100))]
    pub min_critical_retention: f64,
    /// Maximum extra CPU of the candidate over the baseline, in cores.
    #[serde(default = "default_max_cpu_overhead")]
    #[schemars(range(min = 0))]
    pub max_cpu_overhead_cores: f64,
    /// Maximum extra resident memory of the candidate over the baseline, in MiB.
    #[serde(default = "default_max_memory_overhead")]
    #[schemars(range(min = 0))]
    pub max_memory_overhead_mib: f64,
    /// Minimum reduction of the monthly cost versus the baseline, in percent (not
    /// judged when absent). The cost is datapoints per minute times the price per
    /// million datapoints that Phoenix is configured with
    /// (`--price-per-million-dpm`, the chart's `reconciler.pricePerMillionDatapoints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub min_cost_reduction: Option<f64>,
    /// Minimum recall of the baseline's top-10 processes, in percent, by CPU and by
    /// memory, on every host (not judged when absent): of the 10 executables the
    /// baseline shows using the most, the share the candidate still reports at the
    /// same step, averaged over the window (docs/ANALYSIS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_top_k_recall: Option<f64>,
    /// Maximum error of the host's total process CPU and total process memory as
    /// summed from the candidate's series against the baseline's, in percent, on
    /// every host (not judged when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_error: Option<f64>,
}

fn default_min_series_reduction() -> f64 {
    50.0
}
fn default_min_critical_retention() -> f64 {
    100.0
}
fn default_max_cpu_overhead() -> f64 {
    0.05
}
fn default_max_memory_overhead() -> f64 {
    100.0
}

impl Default for Criteria {
    fn default() -> Self {
        Self {
            min_series_reduction: default_min_series_reduction(),
            min_critical_retention: default_min_critical_retention(),
            max_cpu_overhead_cores: default_max_cpu_overhead(),
            max_memory_overhead_mib: default_max_memory_overhead(),
            min_cost_reduction: None,
            min_top_k_recall: None,
            max_total_error: None,
        }
    }
}

/// Whether a passing candidate is promoted by hand or automatically.
#[derive(
    Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Promotion {
    #[default]
    Manual,
    Auto,
}

/// Reads a map whose values may be written as YAML scalars of any type
/// (`cpu_threshold: 0.05`) and keeps them as strings.
pub(crate) fn scalar_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "variable `{key}` must be a string, number or boolean, not {other}"
                    )));
                }
            };
            Ok((key, text))
        })
        .collect()
}

/// The longest experiment Phoenix accepts (warmup plus duration).
pub const MAX_EXPERIMENT_LENGTH: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

pub(crate) fn check_envelope(
    api_version: &str,
    kind: &str,
    expected_kind: &str,
    metadata: &Metadata,
) -> Result<(), FieldError> {
    if api_version != API_VERSION {
        return Err(FieldError::new(
            "apiVersion",
            format!("must be `{API_VERSION}`, not `{api_version}`"),
        ));
    }
    if kind != expected_kind {
        return Err(FieldError::new(
            "kind",
            format!("must be `{expected_kind}`, not `{kind}`"),
        ));
    }
    names::check_resource_name(&metadata.name).map_err(|m| FieldError::new("metadata.name", m))?;
    names::check_labels(&metadata.labels).map_err(|m| FieldError::new("metadata.labels", m))?;
    Ok(())
}

impl ExperimentDocument {
    pub const KIND: &'static str = "Experiment";

    /// Checks everything the types do not, naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_envelope(&self.api_version, &self.kind, Self::KIND, &self.metadata)?;
        self.spec.validate()
    }
}

impl ExperimentSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        self.hosts.validate("spec.hosts")?;
        if self.max_hosts == Some(0) {
            return Err(FieldError::new(
                "spec.maxHosts",
                "must be at least 1 (leave it out to run on every selected host)",
            ));
        }
        for (field, pipeline) in [
            ("spec.baseline", &self.baseline),
            ("spec.candidate", &self.candidate),
        ] {
            names::check_resource_name(&pipeline.pipeline)
                .map_err(|m| FieldError::new(format!("{field}.pipeline"), m))?;
            for key in pipeline.vars.keys() {
                check_variable_name(key)
                    .map_err(|m| FieldError::new(format!("{field}.vars.{key}"), m))?;
            }
        }
        if self.duration.0.is_zero() {
            return Err(FieldError::new("spec.duration", "must be longer than 0s"));
        }
        let length = self.warmup.0.checked_add(self.duration.0);
        if length.is_none_or(|length| length > MAX_EXPERIMENT_LENGTH) {
            return Err(FieldError::new(
                "spec.duration",
                "warmup plus duration must not exceed 7d",
            ));
        }
        for (i, name) in self.critical_processes.iter().enumerate() {
            check_process_name(name)
                .map_err(|m| FieldError::new(format!("spec.criticalProcesses[{i}]"), m))?;
        }
        let c = &self.criteria;
        for (field, value) in [
            ("spec.criteria.minSeriesReduction", c.min_series_reduction),
            (
                "spec.criteria.minCriticalRetention",
                c.min_critical_retention,
            ),
            (
                "spec.criteria.minCostReduction",
                c.min_cost_reduction.unwrap_or(0.0),
            ),
            (
                "spec.criteria.minTopKRecall",
                c.min_top_k_recall.unwrap_or(0.0),
            ),
        ] {
            if !(0.0..=100.0).contains(&value) {
                return Err(FieldError::new(
                    field,
                    format!("must be a percentage between 0 and 100, not {value}"),
                ));
            }
        }
        for (field, value) in [
            (
                "spec.criteria.maxCpuOverheadCores",
                c.max_cpu_overhead_cores,
            ),
            (
                "spec.criteria.maxMemoryOverheadMib",
                c.max_memory_overhead_mib,
            ),
            (
                "spec.criteria.maxTotalError",
                c.max_total_error.unwrap_or(0.0),
            ),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(FieldError::new(
                    field,
                    format!("must be zero or more, not {value}"),
                ));
            }
        }
        if let Some(load) = &self.load {
            load.parameters()?;
        }
        Ok(())
    }
}

/// `kind: PipelineTemplate`: a collector config users pick for an experiment's
/// baseline or candidate. Variables are declared in `spec.variables` (typed, see
/// `variables`) and read in the config as `${env:PHOENIX_VAR_<NAME>}` (optionally
/// with the declared default, `${env:PHOENIX_VAR_<NAME>:-<default>}`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PipelineTemplateDocument {
    /// Always `phoenix.dev/v1`.
    #[schemars(extend("const" = "phoenix.dev/v1"))]
    pub api_version: String,
    /// Always `PipelineTemplate`.
    #[schemars(extend("const" = "PipelineTemplate"))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PipelineTemplateSpec,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineTemplateSpec {
    /// One line for `phoenix pipeline list`.
    #[serde(default)]
    pub description: String,
    /// The variables the config reads (`${env:PHOENIX_VAR_<NAME>}`), typed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<crate::variables::VariableDecl>,
    /// The OpenTelemetry Collector config, as YAML text; checked against the
    /// template policy and by the real collector before it is stored.
    #[schemars(length(min = 1))]
    pub config: String,
}

impl PipelineTemplateDocument {
    pub const KIND: &'static str = "PipelineTemplate";

    pub fn validate(&self) -> Result<(), FieldError> {
        check_envelope(&self.api_version, &self.kind, Self::KIND, &self.metadata)?;
        if self.spec.config.trim().is_empty() {
            return Err(FieldError::new(
                "spec.config",
                "must hold a collector config",
            ));
        }
        crate::variables::check_declarations(&self.spec.config, &self.spec.variables)
    }

    /// Checks the config against the template policy, with every variable at its
    /// default and placeholders for what a host fills in; a refusal names
    /// `spec.config` and the path inside it.
    pub fn check_policy(&self, allow: &crate::policy::Allowances) -> Result<(), FieldError> {
        let mut env = crate::variables::resolve(
            &self.metadata.name,
            &self.spec.variables,
            &BTreeMap::new(),
            "spec.variables",
        )?;
        for (name, value) in crate::policy::placeholder_environment() {
            env.entry(name).or_insert(value);
        }
        crate::policy::check(&self.spec.config, &env, allow)
            .map(drop)
            .map_err(|refusal| refusal.into_field_error("spec.config"))
    }
}

/// A template's variable as the API shows it: its lower-snake name and default,
/// and (when the template declares it, see [`crate::variables::VariableDecl`]) its
/// type, doc and bounds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct TemplateVariable {
    pub name: String,
    pub default: String,
    /// Absent for a template stored before variables were declared.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::variables::VariableType>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub doc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl From<&crate::variables::VariableDecl> for TemplateVariable {
    fn from(decl: &crate::variables::VariableDecl) -> Self {
        TemplateVariable {
            name: decl.name.clone(),
            default: decl.default.clone(),
            kind: Some(decl.kind),
            doc: decl.doc.clone(),
            min: decl.min,
            max: decl.max,
        }
    }
}

/// The variables a collector config uses, in order of first use:
/// every `${env:PHOENIX_VAR_<NAME>:-<default>}`.
pub fn template_variables(config: &str) -> Vec<TemplateVariable> {
    static PATTERN: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let pattern = PATTERN.get_or_init(|| {
        regex::Regex::new(r"\$\{env:PHOENIX_VAR_([A-Z0-9_]+)(?::-([^}]*))?\}").expect("valid regex")
    });
    let mut found: Vec<TemplateVariable> = Vec::new();
    for caps in pattern.captures_iter(config) {
        let name = caps[1].to_ascii_lowercase();
        let default = caps
            .get(2)
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        match found.iter_mut().find(|v| v.name == name) {
            // A later use may be the one that spells out the default.
            Some(known) if known.default.is_empty() => known.default = default,
            Some(_) => {}
            None => found.push(TemplateVariable {
                name,
                default,
                ..TemplateVariable::default()
            }),
        }
    }
    found
}

/// The environment variable that carries a template variable to the collector.
pub fn variable_env_name(name: &str) -> String {
    format!("PHOENIX_VAR_{}", name.to_ascii_uppercase())
}

/// Critical process names are executable names: letters, digits and `. _ - + @ :`.
/// (They end up inside a regular expression inside an OTTL string, where quotes and
/// backslashes would change meaning; no real executable name needs them.)
pub fn check_process_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'@' | b':')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not an executable name: use letters, digits and . _ - + @ :"
        ))
    }
}

/// Variable names are lower snake case; they reach the collector as
/// `PHOENIX_VAR_<UPPER_SNAKE>` environment variables.
pub fn check_variable_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.as_bytes()[0].is_ascii_lowercase();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a variable name: use lower_snake_case"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata:
  name: topk-web
  labels: {team: sre}
spec:
  hosts: {selector: {role: web}}
  baseline: {pipeline: process-baseline}
  candidate: {pipeline: process-topk, vars: {cpu_threshold: 0.05}}
  warmup: 1m
  duration: 10m
  load: {profile: high-cardinality, processes: 500}
  criticalProcesses: [nginx, postgres, java]
  criteria: {minSeriesReduction: 50, minCriticalRetention: 100}
  promotion: manual
"#;

    fn parse(yaml: &str) -> Result<ExperimentDocument, FieldError> {
        let doc: ExperimentDocument = parse_document(yaml.as_bytes(), DocumentFormat::Yaml)?;
        doc.validate()?;
        Ok(doc)
    }

    #[test]
    fn the_brief_example_parses() {
        let doc = parse(YAML).unwrap();
        assert_eq!(doc.metadata.name, "topk-web");
        assert_eq!(doc.spec.candidate.vars["cpu_threshold"], "0.05");
        assert_eq!(doc.spec.duration.to_string(), "10m");
        assert_eq!(doc.spec.criteria.max_memory_overhead_mib, 100.0);
        // JSON round trip gives the same document.
        let json = serde_json::to_vec(&doc).unwrap();
        let again: ExperimentDocument = parse_document(&json, DocumentFormat::Json).unwrap();
        assert_eq!(again, doc);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                YAML.replace("  promotion: manual", "  promotion: manual\n  colour: red"),
                "spec.colour",
            ),
            (YAML.replace("  name: topk-web\n", ""), "metadata.name"),
            (
                YAML.replace("name: topk-web", "name: Topk_Web"),
                "metadata.name",
            ),
            (
                YAML.replace("{selector: {role: web}}", "{selector: {}}"),
                "spec.hosts.selector",
            ),
            (
                YAML.replace("{selector: {role: web}}", "{selector: {'ro le': web}}"),
                "spec.hosts.selector",
            ),
            (
                YAML.replace("duration: 10m", "duration: ten"),
                "spec.duration",
            ),
            (
                YAML.replace("minSeriesReduction: 50", "minSeriesReduction: 150"),
                "spec.criteria.minSeriesReduction",
            ),
            (
                YAML.replace("minSeriesReduction: 50", "minCostReduction: -5"),
                "spec.criteria.minCostReduction",
            ),
            (
                YAML.replace("minSeriesReduction: 50", "minTopKRecall: 101"),
                "spec.criteria.minTopKRecall",
            ),
            (
                YAML.replace("minSeriesReduction: 50", "maxTotalError: -1"),
                "spec.criteria.maxTotalError",
            ),
            (YAML.replace("kind: Experiment", "kind: Pipeline"), "kind"),
        ];
        for (yaml, field) in cases {
            let err = parse(&yaml).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn template_variables_are_found_with_defaults() {
        let config = "z: ${env:PHOENIX_VAR_CPU_THRESHOLD}\na: ${env:PHOENIX_VAR_CPU_THRESHOLD:-0.05}\nb: ${env:PHOENIX_VAR_INTERVAL:-10s}\nc: ${env:PHOENIX_HOST}";
        let vars = template_variables(config);
        assert_eq!(
            vars,
            vec![
                TemplateVariable {
                    name: "cpu_threshold".into(),
                    default: "0.05".into(),
                    ..TemplateVariable::default()
                },
                TemplateVariable {
                    name: "interval".into(),
                    default: "10s".into(),
                    ..TemplateVariable::default()
                },
            ]
        );
        assert_eq!(
            variable_env_name("cpu_threshold"),
            "PHOENIX_VAR_CPU_THRESHOLD"
        );
    }

    #[test]
    fn nul_characters_and_overlong_experiments_are_refused() {
        let err = parse(&YAML.replace("name: topk-web", "name: \"topk\\0web\"")).unwrap_err();
        assert_eq!(err.field, "metadata.name", "{err}");
        assert!(err.message.contains("NUL"), "{err}");
        let huge = YAML.replace("warmup: 1m", "warmup: 18446744073709551615s");
        let huge = huge.replace("duration: 10m", "duration: 18446744073709551615s");
        assert_eq!(parse(&huge).unwrap_err().field, "spec.duration");
    }

    #[test]
    fn malformed_bodies_say_so() {
        let err =
            parse_document::<ExperimentDocument>(b"{not json", DocumentFormat::Json).unwrap_err();
        assert!(err.message.starts_with("malformed JSON"), "{err}");
        let err =
            parse_document::<ExperimentDocument>(b"a: [1, 2", DocumentFormat::Yaml).unwrap_err();
        assert!(err.message.starts_with("malformed YAML"), "{err}");
    }
}
