//! `phoenix apply -f FILE|DIR [--prune] [--dry-run] [--source NAME]` and
//! `phoenix diff -f FILE|DIR`: declarative apply of Experiment, PipelineTemplate and
//! PipelineDeployment documents. Every `*.yaml`/`*.yml` file (a directory is read
//! recursively, in name order; a file may hold several documents separated by
//! `---`) is sent in one request as a JSON list of `{"file", "document"}` items, so
//! the api's errors name the file; the api applies all of it or nothing.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use phoenix_wire::apply::{ApplyItem, PlanEntry};

use crate::client::Body;
use crate::commands::Context;
use crate::output::{self, Table};

/// Options of `apply` (and of `diff`, which is a dry run).
pub struct ApplyArgs {
    pub path: String,
    pub prune: bool,
    pub dry_run: bool,
    pub source: Option<String>,
}

pub async fn run(ctx: &Context, args: ApplyArgs) -> anyhow::Result<()> {
    let items = read_items(Path::new(&args.path))?;
    let source = args
        .source
        .unwrap_or_else(|| args.path.trim_end_matches('/').to_string());
    let source = if source.is_empty() {
        "/".into()
    } else {
        source
    };
    let path = format!(
        "/api/v1/apply?source={}&prune={}&dryRun={}",
        encode(&source),
        args.prune,
        args.dry_run
    );
    let body = Body {
        bytes: serde_json::to_vec(&items)?,
        content_type: "application/json",
    };
    let plan: Vec<PlanEntry> = ctx.client.post(&path, Some(body)).await?;
    let text = match output::render_object(ctx.output, &plan)? {
        Some(text) => text,
        None => render_plan(&plan, args.dry_run),
    };
    output::print(&text)?;
    Ok(())
}

fn render_plan(plan: &[PlanEntry], dry_run: bool) -> String {
    let mut table = Table::new(&["KIND", "NAME", "ACTION", "REASON"]);
    for entry in plan {
        table.row(vec![
            entry.kind.clone(),
            entry.name.clone(),
            entry.action.as_str().to_string(),
            entry.reason.clone().unwrap_or_default(),
        ]);
    }
    let mut text = table.render();
    if dry_run {
        text.push_str("(dry run: nothing was changed)\n");
    }
    text
}

/// The documents of `path`: a file, or every `*.yaml`/`*.yml` under a directory.
pub fn read_items(path: &Path) -> anyhow::Result<Vec<ApplyItem>> {
    let mut files = Vec::new();
    if path.is_dir() {
        collect(path, &mut files)?;
        if files.is_empty() {
            anyhow::bail!(
                "{} holds no *.yaml or *.yml files; nothing to apply",
                path.display()
            );
        }
    } else {
        files.push(path.to_path_buf());
    }
    let mut items = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .with_context(|| format!("{} is not valid YAML", file.display()))?;
        for document in documents.into_iter().filter(|d| !d.is_null()) {
            items.push(ApplyItem {
                file: Some(file.display().to_string()),
                document,
            });
        }
    }
    Ok(items)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            collect(&entry, files)?;
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
        {
            files.push(entry);
        }
    }
    Ok(())
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_yaml_file_and_every_document() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yaml"), "kind: B\n---\nkind: C\n").unwrap();
        std::fs::write(dir.path().join("a.yml"), "kind: A\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        let items = read_items(dir.path()).unwrap();
        let kinds: Vec<&str> = items
            .iter()
            .map(|i| i.document["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["A", "B", "C"]);
        assert!(items[1].file.as_deref().unwrap().ends_with("b.yaml"));
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("gitops/exp dir&x"), "gitops/exp%20dir%26x");
    }
}
