//! Declarative apply (`POST /api/v1/apply`): the request's documents and the plan
//! the api answers with.
//!
//! The body is either
//! - a JSON list whose items are `{"file": "experiments/a.yaml", "document": {...}}`
//!   (what `phoenix apply` sends, so errors name the file) or bare documents, or
//! - a YAML stream of documents separated by `---` (errors name the document by its
//!   position, `document 2`).

use serde::{Deserialize, Serialize};

use crate::problem::FieldError;
use crate::resource::DocumentFormat;

/// One document of an apply request, with where it came from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct ApplyItem {
    /// The file the document was read from, for error messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub document: serde_json::Value,
}

/// The body of an apply request as JSON: a list of documents, each bare or as an
/// [`ApplyItem`] (YAML: a stream of documents). Only its schema is used: the api
/// reads the body with [`parse_items`].
pub struct ApplyBody;

impl schemars::JsonSchema for ApplyBody {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ApplyBody".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let item = generator.subschema_for::<ApplyItem>();
        let experiment = generator.subschema_for::<crate::resource::ExperimentDocument>();
        let template = generator.subschema_for::<crate::resource::PipelineTemplateDocument>();
        let deployment = generator.subschema_for::<crate::deployment::PipelineDeploymentDocument>();
        schemars::json_schema!({
            "description": "Documents to apply, all or nothing: each bare, or with the file it came from.",
            "type": "array",
            "items": {"anyOf": [item, experiment, template, deployment]}
        })
    }
}

/// What apply does (or, in a dry run, would do) to one resource.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Unchanged,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Unchanged => "unchanged",
            Action::Delete => "delete",
        }
    }
}

/// One line of the plan.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct PlanEntry {
    pub kind: String,
    pub name: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For an update, each field that changes (`phoenix diff` prints them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
}

/// One field an update changes: its path in the document (`spec.duration`,
/// `metadata.labels.team`) and its value before and after (absent when the field
/// is added or removed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct FieldChange {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<serde_json::Value>,
}

/// The fields that differ between `old` and `new`, in key order, below `prefix`.
/// Objects are compared key by key; anything else (lists included) is one value.
pub fn field_changes(
    prefix: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    diff_into(prefix, Some(old), Some(new), &mut changes);
    changes
}

fn diff_into(
    path: &str,
    old: Option<&serde_json::Value>,
    new: Option<&serde_json::Value>,
    changes: &mut Vec<FieldChange>,
) {
    use serde_json::Value;
    match (old, new) {
        (Some(Value::Object(old)), Some(Value::Object(new))) => {
            let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            for key in keys {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                diff_into(&path, old.get(key), new.get(key), changes);
            }
        }
        (old, new) if old != new => changes.push(FieldChange {
            field: path.to_string(),
            from: old.filter(|v| !v.is_null()).cloned(),
            to: new.filter(|v| !v.is_null()).cloned(),
        }),
        _ => {}
    }
}

/// What the server reports about a resource (`status`, as `phoenix get -o yaml`
/// prints it) is not part of what a user declares: apply ignores it, as kubectl
/// does, so that a fetched resource can be applied again unchanged.
fn without_status(mut document: serde_json::Value) -> serde_json::Value {
    if let Some(map) = document.as_object_mut() {
        map.remove("status");
    }
    document
}

/// Splits an apply body into its documents, each with its origin (`file`, or
/// `document N` counted from 1).
pub fn parse_items(body: &[u8], format: DocumentFormat) -> Result<Vec<ApplyItem>, FieldError> {
    let trees: Vec<serde_json::Value> = match format {
        DocumentFormat::Json => {
            let tree: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| FieldError::new("", format!("malformed JSON: {e}")))?;
            match tree {
                serde_json::Value::Array(items) => items,
                _ => {
                    return Err(FieldError::new(
                        "",
                        "an apply body in JSON is a list of documents or of {\"file\", \"document\"} items",
                    ));
                }
            }
        }
        DocumentFormat::Yaml => {
            let text = std::str::from_utf8(body)
                .map_err(|e| FieldError::new("", format!("malformed YAML: not UTF-8: {e}")))?;
            crate::resource::parse_yaml_documents(text)
                .map_err(|e| FieldError::new("", e))?
                .into_iter()
                .filter(|v| !v.is_null())
                .collect()
        }
    };
    Ok(trees
        .into_iter()
        .enumerate()
        .map(|(i, tree)| match tree {
            serde_json::Value::Object(mut map)
                if map.contains_key("document") && !map.contains_key("kind") =>
            {
                let file = map
                    .remove("file")
                    .and_then(|f| f.as_str().map(str::to_owned));
                ApplyItem {
                    file: file.or_else(|| Some(format!("document {}", i + 1))),
                    document: without_status(map.remove("document").unwrap_or_default()),
                }
            }
            other => ApplyItem {
                file: Some(format!("document {}", i + 1)),
                document: without_status(other),
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_stream_and_json_items() {
        let yaml = b"kind: A\n---\nkind: B\n";
        let items = parse_items(yaml, DocumentFormat::Yaml).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].file.as_deref(), Some("document 2"));
        let json = br#"[{"file": "a.yaml", "document": {"kind": "A"}}, {"kind": "B"}]"#;
        let items = parse_items(json, DocumentFormat::Json).unwrap();
        assert_eq!(items[0].file.as_deref(), Some("a.yaml"));
        assert_eq!(items[0].document["kind"], "A");
        assert_eq!(items[1].file.as_deref(), Some("document 2"));
    }

    #[test]
    fn status_is_ignored() {
        let json =
            br#"[{"file": "a.yaml", "document": {"kind": "A", "status": {"phase": "running"}}}]"#;
        let items = parse_items(json, DocumentFormat::Json).unwrap();
        assert_eq!(items[0].document, serde_json::json!({"kind": "A"}));
    }

    #[test]
    fn field_changes_name_each_leaf() {
        let old = serde_json::json!({"duration": "10m", "hosts": {"selector": {"role": "web"}}, "load": {"profile": "x"}});
        let new = serde_json::json!({"duration": "20m", "hosts": {"selector": {"role": "db"}}, "warmup": "2m"});
        let changes = field_changes("spec", &old, &new);
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.duration",
                "spec.hosts.selector.role",
                "spec.load",
                "spec.warmup"
            ]
        );
        assert_eq!(changes[0].from, Some(serde_json::json!("10m")));
        assert_eq!(changes[0].to, Some(serde_json::json!("20m")));
        assert_eq!(changes[2].to, None);
        assert_eq!(changes[3].from, None);
        assert!(field_changes("spec", &old, &old).is_empty());
    }
}
