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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApplyItem {
    /// The file the document was read from, for error messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub document: serde_json::Value,
}

/// What apply does (or, in a dry run, would do) to one resource.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PlanEntry {
    pub kind: String,
    pub name: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
            serde_saphyr::from_multiple::<serde_json::Value>(text)
                .map_err(|e| FieldError::new("", format!("malformed YAML: {e}")))?
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
                    document: map.remove("document").unwrap_or_default(),
                }
            }
            other => ApplyItem {
                file: Some(format!("document {}", i + 1)),
                document: other,
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
}
