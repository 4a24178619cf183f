//! `phoenix apply -f FILE|DIR [--prune] [--dry-run] [--source NAME]` and
//! `phoenix diff -f FILE|DIR`: declarative apply of Experiment, PipelineTemplate and
//! PipelineDeployment documents. Every `*.yaml`/`*.yml` file (a directory is read
//! recursively, in name order, skipping names that start with `.`; a file may hold
//! several documents separated by `---`) is sent in one request as a JSON list of
//! `{"file", "document"}` items, so the api's errors name the file; the api applies
//! all of it or nothing. [`apply`] is that request, shared with every round of
//! `phoenix sync`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use phoenix_wire::apply::{ApplyItem, PlanEntry};

use crate::client::{ApiClient, Body, encode};
use crate::commands::Context;
use crate::output::{self, Table};

/// Options of `apply` (and of `diff`, which is a dry run, and of a `sync` round).
pub struct ApplyArgs {
    pub path: String,
    pub prune: bool,
    pub dry_run: bool,
    pub source: Option<String>,
}

impl ApplyArgs {
    /// Who owns what this apply creates: `--source`, else the path given without
    /// its trailing `/` (`/` for the root).
    pub fn source(&self) -> String {
        let source = self
            .source
            .clone()
            .unwrap_or_else(|| self.path.trim_end_matches('/').to_string());
        if source.is_empty() {
            "/".into()
        } else {
            source
        }
    }
}

pub async fn run(ctx: &Context, args: ApplyArgs) -> anyhow::Result<()> {
    let plan = apply(&ctx.client, &args).await?;
    let text = match output::render_object(ctx.output, &plan)? {
        Some(text) => text,
        None => render_plan(&plan, args.dry_run),
    };
    output::print(&text)?;
    Ok(())
}

/// Reads the documents of `args.path` and applies them in one request; answers the
/// api's plan. Nothing is changed unless every document passed every check.
pub async fn apply(client: &ApiClient, args: &ApplyArgs) -> anyhow::Result<Vec<PlanEntry>> {
    let items = read_items(Path::new(&args.path))?;
    let path = format!(
        "/api/v1/apply?source={}&prune={}&dryRun={}",
        encode(&args.source()),
        args.prune,
        args.dry_run
    );
    let body = Body {
        bytes: serde_json::to_vec(&items)?,
        content_type: "application/json",
    };
    Ok(client.post(&path, Some(body)).await?)
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

/// The documents of `path`: a file, or every `*.yaml`/`*.yml` under a directory
/// (names starting with `.` skipped).
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
        // Hidden names are not documents: `.git`, editors' swap files, and a mounted
        // ConfigMap's `..data` and `..<timestamp>` directories, which hold the same
        // files as the key symlinks beside them (reading both would apply each
        // document twice).
        if entry
            .file_name()
            .is_some_and(|name| name.as_encoded_bytes().starts_with(b"."))
        {
            continue;
        }
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
    fn hidden_files_and_directories_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "kind: Hidden\n").unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/config.yaml"), "kind: Git\n").unwrap();
        std::fs::write(dir.path().join("a.yaml"), "kind: A\n").unwrap();
        let kinds: Vec<String> = read_items(dir.path())
            .unwrap()
            .iter()
            .map(|i| i.document["kind"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kinds, ["A"]);
    }

    /// A mounted ConfigMap: the keys are symlinks into `..data`, itself a symlink to
    /// a `..<timestamp>` directory that holds the files.
    #[test]
    fn a_configmap_volume_gives_each_document_once() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = dir.path().join("..2026_11_27_12_00_00.123456789");
        std::fs::create_dir(&stamp).unwrap();
        std::fs::write(stamp.join("exp.yaml"), "kind: Experiment\n").unwrap();
        std::fs::write(stamp.join("tpl.yml"), "kind: PipelineTemplate\n").unwrap();
        std::os::unix::fs::symlink(stamp.file_name().unwrap(), dir.path().join("..data")).unwrap();
        for key in ["exp.yaml", "tpl.yml"] {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.path().join(key)).unwrap();
        }
        let items = read_items(dir.path()).unwrap();
        let files: Vec<&str> = items.iter().map(|i| i.file.as_deref().unwrap()).collect();
        assert_eq!(
            files,
            [
                dir.path().join("exp.yaml").display().to_string(),
                dir.path().join("tpl.yml").display().to_string()
            ]
        );
    }

    #[test]
    fn the_source_defaults_to_the_path() {
        let args = |path: &str, source: Option<&str>| ApplyArgs {
            path: path.into(),
            prune: false,
            dry_run: false,
            source: source.map(String::from),
        };
        assert_eq!(args("gitops/", None).source(), "gitops");
        assert_eq!(args("/", None).source(), "/");
        assert_eq!(args("gitops/", Some("team-a")).source(), "team-a");
    }
}
