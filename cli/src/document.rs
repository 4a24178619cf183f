//! Reading resource documents from a file or stdin (`-`), unchanged: the API parses
//! and validates them and names the field that is wrong.

use std::io::Read;

use anyhow::Context as _;

use crate::client::Body;

/// Reads `file` (or stdin for `-`) as a request body; `.json` files are sent as
/// JSON, everything else as YAML (of which JSON is a subset). `what` and `help`
/// make the empty-file error say what was expected and where to read more.
pub fn read(file: &str, what: &str, help: &str) -> anyhow::Result<Body> {
    let bytes = if file == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read the document from stdin")?;
        bytes
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {file}"))?
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        let source = if file == "-" { "stdin" } else { file };
        anyhow::bail!("{source} is empty; it should hold {what} document (see `{help}`)");
    }
    Ok(Body {
        bytes,
        content_type: content_type_for(file),
    })
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
    }
}
