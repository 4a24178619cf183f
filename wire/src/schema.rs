//! JSON Schemas of the three document kinds, generated from the types that parse
//! them (so they cannot drift): what `phoenix schema KIND` prints, what
//! `schemas/*.json` publishes for editors (the `yaml-language-server` modeline of
//! the examples), and the field reference `docs/reference.md` is generated from.
//!
//! The schemas are self-contained (no `$ref`) and say what the types and
//! `validate` check: required fields, no unknown fields, defaults, name patterns,
//! lengths and ranges. What a schema cannot say (a pipeline that exists, a config
//! the collector accepts) the api still checks.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::deployment::PipelineDeploymentDocument;
use crate::duration::HumanDuration;
use crate::resource::{ExperimentDocument, PipelineTemplateDocument};
use crate::rollout::MaxUnavailable;

/// The document kinds that have a schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Experiment,
    PipelineTemplate,
    PipelineDeployment,
}

impl Kind {
    pub const ALL: [Kind; 3] = [
        Kind::Experiment,
        Kind::PipelineTemplate,
        Kind::PipelineDeployment,
    ];

    /// The `kind:` of the document.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Experiment => "Experiment",
            Kind::PipelineTemplate => "PipelineTemplate",
            Kind::PipelineDeployment => "PipelineDeployment",
        }
    }

    /// The published file, relative to the repository: `schemas/experiment.json`.
    pub fn file(self) -> &'static str {
        match self {
            Kind::Experiment => "schemas/experiment.json",
            Kind::PipelineTemplate => "schemas/pipeline-template.json",
            Kind::PipelineDeployment => "schemas/pipeline-deployment.json",
        }
    }

    /// The JSON Schema (draft 2020-12) of this kind's documents.
    pub fn schema(self) -> serde_json::Value {
        let mut generator: SchemaGenerator = SchemaSettings::draft2020_12()
            .with(|s| s.inline_subschemas = true)
            .into_generator();
        let mut schema = match self {
            Kind::Experiment => generator.root_schema_for::<ExperimentDocument>(),
            Kind::PipelineTemplate => generator.root_schema_for::<PipelineTemplateDocument>(),
            Kind::PipelineDeployment => generator.root_schema_for::<PipelineDeploymentDocument>(),
        };
        schema.insert("title".into(), self.as_str().into());
        schema.to_value()
    }

    /// The schema as published: pretty JSON with a final newline.
    pub fn schema_text(self) -> String {
        serde_json::to_string_pretty(&self.schema()).expect("a schema serializes") + "\n"
    }
}

/// A YAML scalar a variable value may be written as (`0.05`, `true`, `"10s"`);
/// Phoenix keeps it as text.
pub struct Scalar;

impl JsonSchema for Scalar {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Scalar".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": ["string", "number", "boolean"]})
    }
}

const DURATION_PATTERN: &str = "^(0|([0-9]+(ms|s|m|h|d))+)$";

/// A variable's default: a string or a number.
pub struct ScalarText;

impl JsonSchema for ScalarText {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "ScalarText".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": ["string", "number"]})
    }
}

impl JsonSchema for HumanDuration {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: <integer><unit>... with units ms, s, m, h, d (e.g. 30s, 10m, 1h30m).",
            "pattern": DURATION_PATTERN
        })
    }
}

impl JsonSchema for MaxUnavailable {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "MaxUnavailable".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A number of hosts (e.g. 2) or a percentage of the selected hosts (e.g. \"25%\"); default \"25%\".",
            "oneOf": [
                {"type": "integer", "minimum": 1},
                {"type": "string", "pattern": "^[0-9]+%$"}
            ]
        })
    }
}

/// `docs/reference.md`: every field of every kind, with its type, default, limits
/// and description, generated from the schemas.
pub fn reference_markdown() -> String {
    let mut text = String::from(
        "# Document reference\n\n\
         Generated from the JSON Schemas in `schemas/` (`phoenix schema KIND` prints\n\
         them), which are generated from the types the api parses documents with; a\n\
         test fails when this file is stale (regenerate: `scripts/schemas.sh`).\n\n\
         Every object refuses unknown fields. `required` means required in its\n\
         object, when that object is given; `optional` fields may be left out. What a schema cannot check (a pipeline that\n\
         exists, a config the collector accepts) the api checks when a document is\n\
         sent, naming the field.\n\n\
         The api's own requests and answers (every route, status code, error and the\n\
         role each needs) are in its OpenAPI document, `schemas/openapi.json`, which\n\
         the api also serves at `GET /api/v1/openapi.json`.\n",
    );
    for kind in Kind::ALL {
        let schema = kind.schema();
        text.push_str(&format!(
            "\n## {}\n\nSchema: `{}`\n\n| Field | Type | Default | Limits | Description |\n| --- | --- | --- | --- | --- |\n",
            kind.as_str(),
            kind.file()
        ));
        let mut rows = Vec::new();
        walk(&schema, "", &mut rows);
        for row in rows {
            text.push_str(&row);
        }
    }
    text
}

/// One row per property below `schema`, depth first, in name order. `required`
/// means required in its object (when the object itself is given).
fn walk(schema: &serde_json::Value, path: &str, rows: &mut Vec<String>) {
    let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) else {
        return;
    };
    let required_keys: Vec<&str> = schema
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|k| k.as_str()).collect())
        .unwrap_or_default();
    for (key, property) in properties {
        let field = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let is_required = required_keys.contains(&key.as_str());
        let property = non_null(property);
        let default = match property.get("default") {
            Some(value) => format!("`{}`", compact(value)),
            None if is_required => "required".to_string(),
            None => "optional".to_string(),
        };
        rows.push(format!(
            "| `{field}` | {} | {default} | {} | {} |\n",
            type_of(property),
            limits(property),
            property
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("")
                .replace('\n', " ")
                .replace('|', "\\|")
        ));
        walk(property, &field, rows);
        if let Some(items) = property.get("items") {
            walk(non_null(items), &format!("{field}[]"), rows);
        }
    }
}

/// An optional field's schema is `anyOf [T, null]`; the reference shows `T`.
fn non_null(schema: &serde_json::Value) -> &serde_json::Value {
    let Some(options) = schema.get("anyOf").and_then(|a| a.as_array()) else {
        return schema;
    };
    let mut rest = options
        .iter()
        .filter(|o| o.get("type") != Some(&"null".into()));
    match (rest.next(), rest.next()) {
        (Some(only), None) => only,
        _ => schema,
    }
}

fn type_of(schema: &serde_json::Value) -> String {
    if let Some(values) = schema.get("enum").and_then(|e| e.as_array()) {
        return values.iter().map(compact).collect::<Vec<_>>().join(" \\| ");
    }
    if let Some(value) = schema.get("const") {
        return compact(value);
    }
    if let Some(options) = schema.get("oneOf").and_then(|o| o.as_array()) {
        return options.iter().map(type_of).collect::<Vec<_>>().join(" or ");
    }
    let base = match schema.get("type") {
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(serde_json::Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str())
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    };
    match base.as_str() {
        "array" => format!(
            "list of {}",
            schema
                .get("items")
                .map_or("any".into(), |i| type_of(non_null(i)))
        ),
        "object" if schema.get("properties").is_none() => {
            match schema.get("additionalProperties") {
                Some(values) if values.is_object() => format!("map of {}", type_of(values)),
                _ => "object".into(),
            }
        }
        _ if schema.get("pattern").and_then(|p| p.as_str()) == Some(DURATION_PATTERN) => {
            "duration".into()
        }
        _ => base,
    }
}

fn limits(schema: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    for (key, label) in [
        ("minimum", ">="),
        ("maximum", "<="),
        ("minLength", "length >="),
        ("maxLength", "length <="),
        ("minItems", "items >="),
        ("maxItems", "items <="),
        ("minProperties", "keys >="),
        ("maxProperties", "keys <="),
    ] {
        if let Some(value) = schema.get(key) {
            parts.push(format!("{label} {}", compact(value)));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(|p| p.as_str()) {
        parts.push(format!("pattern `{}`", pattern.replace('|', "\\|")));
    }
    if let Some(pattern) = schema
        .get("items")
        .and_then(|i| i.get("pattern"))
        .and_then(|p| p.as_str())
    {
        parts.push(format!("each matches `{}`", pattern.replace('|', "\\|")));
    }
    parts.join(", ")
}

fn compact(value: &serde_json::Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_require_the_envelope_and_refuse_unknown_fields() {
        let schema = Kind::Experiment.schema();
        assert_eq!(schema["title"], "Experiment");
        assert_eq!(schema["properties"]["kind"]["const"], "Experiment");
        assert_eq!(schema["additionalProperties"], false);
        let spec = &schema["properties"]["spec"];
        assert_eq!(spec["additionalProperties"], false);
        assert_eq!(spec["properties"]["warmup"]["default"], "1m");
        assert_eq!(
            spec["properties"]["criteria"]["properties"]["minSeriesReduction"]["maximum"],
            100
        );
        assert!(!schema.to_string().contains("$ref"), "{schema:#}");
    }

    #[test]
    fn the_reference_lists_fields_with_defaults_and_limits() {
        let text = reference_markdown();
        assert!(
            text.contains("| `spec.warmup` | duration | `\"1m\"` |"),
            "{text}"
        );
        assert!(
            text.contains("| `spec.duration` | duration | required |"),
            "{text}"
        );
        assert!(
            text.contains("| `spec.load.processes` | integer | optional | >= 1, <= 10000 |"),
            "{text}"
        );
        assert!(
            text.contains("| `spec.load.profile` | string | required |"),
            "{text}"
        );
        assert!(text.contains("## PipelineDeployment"), "{text}");
        assert!(text.contains("`spec.rollout.maxUnavailable`"), "{text}");
    }
}
