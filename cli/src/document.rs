//! Reading resource documents from a file or stdin (`-`), unchanged: the API parses
//! and validates them and names the field that is wrong. Every `-f` reads here.

use std::io::Read;

use anyhow::Context as _;

use crate::client::Body;

/// Reads `file` (or stdin for `-`) as a request body; `.json` files and text that
/// is JSON are sent as JSON (so a large JSON file never meets the YAML reader's
/// limits), everything else as YAML. `what` and `help` make the empty-file error
/// say what was expected and where to read more.
pub fn read(file: &str, what: &str, help: &str) -> anyhow::Result<Body> {
    let bytes = read_bytes(file)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        let source = source(file);
        anyhow::bail!("{source} is empty; it should hold {what} document (see `{help}`)");
    }
    if let Ok(text) = std::str::from_utf8(&bytes) {
        let tree = phoenix_wire::resource::parse_yaml_documents(text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", source(file)))?
            .into_iter()
            .find(|tree| !tree.is_null());
        if let Some(tree) = tree {
            check_locally(&source(file), text, &tree)?;
        }
    }
    let content_type = if is_json(&bytes) {
        "application/json"
    } else {
        content_type_for(file)
    };
    Ok(Body {
        bytes,
        content_type,
        origin: Some(source(file)),
    })
}

/// Checks a document of a kind Phoenix knows with the api's own types and rules
/// before it is sent (the api checks it again, and more: catalog, fleet,
/// collector), so a misspelled or invalid field is named with the same path the
/// api would use, and with its line: `exp.yaml:9: spec.duraton: unknown field`.
/// `text` is the document's text (lines count from its start).
pub fn check_locally(origin: &str, text: &str, tree: &serde_json::Value) -> anyhow::Result<()> {
    use phoenix_wire::deployment::PipelineDeploymentDocument;
    use phoenix_wire::resource::{ExperimentDocument, PipelineTemplateDocument, from_tree};
    let result = match tree.get("kind").and_then(|k| k.as_str()) {
        Some(ExperimentDocument::KIND) => {
            from_tree::<ExperimentDocument>(tree.clone()).and_then(|d| d.validate())
        }
        Some(PipelineTemplateDocument::KIND) => {
            from_tree::<PipelineTemplateDocument>(tree.clone()).and_then(|d| d.validate())
        }
        Some(PipelineDeploymentDocument::KIND) => {
            from_tree::<PipelineDeploymentDocument>(tree.clone()).and_then(|d| d.validate())
        }
        _ => return Ok(()),
    };
    let Err(err) = result else {
        return Ok(());
    };
    let at = match line_of(text, &err.field) {
        Some(line) => format!("{origin}:{line}"),
        None => origin.to_string(),
    };
    if err.field.is_empty() {
        anyhow::bail!("{at}: {} (nothing was sent)", err.message);
    }
    anyhow::bail!("{at}: {}: {} (nothing was sent)", err.field, err.message)
}

/// The line (counted from 1) where `field` (`spec.hosts.selector`,
/// `spec.criticalProcesses[2]`) is written in block-style YAML or pretty JSON
/// `text`; for a field that is not there (a missing one), the line of the
/// deepest parent that is. List indexes are not followed (the list's line is
/// given). `None` when not even the first key is found.
pub fn line_of(text: &str, field: &str) -> Option<usize> {
    let keys: Vec<&str> = field
        .split('.')
        .map(|segment| segment.split('[').next().unwrap_or(segment))
        .filter(|key| !key.is_empty())
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    let mut found: Option<usize> = None;
    let mut parent_indent: Option<usize> = None;
    let mut next = 0;
    'keys: for key in keys {
        for (i, line) in lines.iter().enumerate().skip(next) {
            let content = line.trim_start();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let indent = line.len() - content.len();
            if found.is_some() && parent_indent.is_some_and(|p| indent <= p) {
                break 'keys;
            }
            let content = content.strip_prefix("- ").unwrap_or(content);
            let unquoted = content.trim_start_matches(['"', '\'']);
            if let Some(rest) = unquoted.strip_prefix(key)
                && rest.trim_start_matches(['"', '\'']).starts_with(':')
            {
                found = Some(i + 1);
                parent_indent = Some(indent);
                next = i + 1;
                continue 'keys;
            }
        }
        break;
    }
    found
}

/// A document without its `status` (what `get -o yaml` prints beside the spec),
/// which apply ignores.
pub fn without_status(mut document: serde_json::Value) -> serde_json::Value {
    if let Some(map) = document.as_object_mut() {
        map.remove("status");
    }
    document
}

/// How a `-f` argument is named in messages: `stdin` for `-`.
pub fn source(file: &str) -> String {
    if file == "-" {
        "stdin".into()
    } else {
        file.to_string()
    }
}

/// Reads `-f FILE`: the file, or stdin for `-`.
pub fn read_bytes(file: &str) -> anyhow::Result<Vec<u8>> {
    if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read the document from stdin")?;
        Ok(bytes)
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {file}"))
    }
}

/// Text that starts like JSON and parses as JSON.
fn is_json(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{' || *b == b'[')
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

fn content_type_for(file: &str) -> &'static str {
    if file.to_ascii_lowercase().ends_with(".json") {
        "application/json"
    } else {
        "application/yaml"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_files_are_json_and_everything_else_yaml() {
        assert_eq!(content_type_for("x.json"), "application/json");
        assert_eq!(content_type_for("X.JSON"), "application/json");
        assert_eq!(content_type_for("x.yaml"), "application/yaml");
        assert_eq!(content_type_for("-"), "application/yaml");
        assert!(is_json(b" [1, 2, 3]"));
        assert!(is_json(b"{\"kind\": \"Experiment\"}"));
        assert!(!is_json(b"[1, 2"));
        assert!(!is_json(b"kind: Experiment"));
    }

    const EXPERIMENT: &str = "\
apiVersion: phoenix.dev/v1
kind: Experiment
metadata:
  name: topk-web
spec:
  # where
  hosts:
    selector: {role: web}
  baseline: {pipeline: process-baseline}
  candidate: {pipeline: process-topk}
  duraton: 10m
";

    #[test]
    fn fields_are_found_at_their_line() {
        assert_eq!(line_of(EXPERIMENT, "spec.duraton"), Some(11));
        assert_eq!(line_of(EXPERIMENT, "spec.hosts.selector"), Some(8));
        assert_eq!(line_of(EXPERIMENT, "metadata.name"), Some(4));
        // Missing: the parent's line.
        assert_eq!(line_of(EXPERIMENT, "spec.duration"), Some(5));
        assert_eq!(line_of(EXPERIMENT, "nothing"), None);
        let json =
            "{\n  \"kind\": \"Experiment\",\n  \"spec\": {\n    \"warmup\": \"1m\"\n  }\n}\n";
        assert_eq!(line_of(json, "spec.warmup"), Some(4));
    }

    #[test]
    fn a_misspelled_field_is_named_with_its_line_before_sending() {
        let tree = phoenix_wire::resource::parse_yaml_documents(EXPERIMENT).unwrap();
        let err = check_locally("exp.yaml", EXPERIMENT, &tree[0])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("exp.yaml:11: spec.duraton: unknown field `duraton`"),
            "{err}"
        );
        let fixed = EXPERIMENT.replace("duraton", "duration");
        let tree = phoenix_wire::resource::parse_yaml_documents(&fixed).unwrap();
        check_locally("exp.yaml", &fixed, &tree[0]).unwrap();
    }
}
