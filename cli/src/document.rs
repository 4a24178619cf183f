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
}
