//! `phoenix apply -f FILE|DIR|- [--prune] [--dry-run] [--source NAME]` and
//! `phoenix diff -f FILE|DIR|-`: declarative apply of Experiment, PipelineTemplate and
//! PipelineDeployment documents. Every `*.yaml`/`*.yml` file (a directory is read
//! recursively, in name order, skipping names that start with `.`; a file, or stdin
//! for `-`, may hold several documents separated by `---`, or be JSON) is sent in
//! one request as a JSON list of `{"file", "document"}` items, so the api's errors
//! name the file; the api applies all of it or nothing. A document's `status`
//! (what `phoenix ... get -o yaml` prints) is ignored. [`apply`] is that request,
//! shared with every round of `phoenix sync`.
//!
//! `diff` prints each field an update changes and exits like `kubectl diff`: 0
//! when nothing would change, 1 when something would, 2 or more on an error.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use phoenix_wire::apply::{Action, ApplyItem, FieldChange, PlanEntry};

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
    /// its trailing `/` (`/` for the root, `stdin` for `-`).
    pub fn source(&self) -> String {
        let source = self
            .source
            .clone()
            .unwrap_or_else(|| crate::document::source(self.path.trim_end_matches('/')));
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

/// `phoenix diff`: the plan of a dry run with each changed field; answers whether
/// anything would change (the exit code 1 of `kubectl diff`).
pub async fn diff(ctx: &Context, args: ApplyArgs) -> anyhow::Result<bool> {
    let plan = apply(&ctx.client, &args).await?;
    let text = match output::render_object(ctx.output, &plan)? {
        Some(text) => text,
        None => render_diff(&plan),
    };
    output::print(&text)?;
    Ok(plan.iter().any(|e| e.action != Action::Unchanged))
}

/// One block per resource that would change, kubectl-diff style:
/// `~ Experiment exp-a (spec changed)` and its fields below, `+` for a create, `-`
/// for a delete; a last line counts what stays unchanged.
fn render_diff(plan: &[PlanEntry]) -> String {
    let mut text = String::new();
    for entry in plan.iter().filter(|e| e.action != Action::Unchanged) {
        let mark = match entry.action {
            Action::Create => "+",
            Action::Delete => "-",
            _ => "~",
        };
        let reason = entry
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_else(|| format!(" ({})", entry.action.as_str()));
        text.push_str(&output::shown(&format!(
            "{mark} {} {}{reason}\n",
            entry.kind, entry.name
        )));
        for change in &entry.changes {
            text.push_str(&change_lines(change));
        }
    }
    let unchanged = plan
        .iter()
        .filter(|e| e.action == Action::Unchanged)
        .count();
    if text.is_empty() {
        text.push_str(&format!("no changes ({unchanged} unchanged)\n"));
    } else {
        text.push_str(&format!("({unchanged} unchanged; nothing was changed)\n"));
    }
    text
}

/// `    spec.duration: "10m" -> "30m"`; a multi-line text (a collector config) as
/// the lines it loses (`-`) and gains (`+`).
fn change_lines(change: &FieldChange) -> String {
    let value = |v: &Option<serde_json::Value>| match v {
        None => "<none>".to_string(),
        Some(v) => serde_json::to_string(v).unwrap_or_default(),
    };
    let multiline = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .and_then(|v| v.as_str())
            .filter(|s| s.contains('\n'))
            .map(str::to_string)
    };
    if let (Some(from), Some(to)) = (multiline(&change.from), multiline(&change.to)) {
        let before: Vec<&str> = from.lines().collect();
        let after: Vec<&str> = to.lines().collect();
        let mut text = format!("    {}:\n", change.field);
        for line in before.iter().filter(|l| !after.contains(l)) {
            text.push_str(&output::shown(&format!("      - {line}\n")));
        }
        for line in after.iter().filter(|l| !before.contains(l)) {
            text.push_str(&output::shown(&format!("      + {line}\n")));
        }
        return text;
    }
    output::shown(&format!(
        "    {}: {} -> {}\n",
        change.field,
        value(&change.from),
        value(&change.to)
    ))
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
        origin: Some(format!(
            "the documents of {}",
            crate::document::source(&args.path)
        )),
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

/// The documents of `path`: a file, stdin for `-`, or every `*.yaml`/`*.yml`
/// under a directory (names starting with `.` skipped).
pub fn read_items(path: &Path) -> anyhow::Result<Vec<ApplyItem>> {
    if path == Path::new("-") {
        let bytes = crate::document::read_bytes("-")?;
        let items = documents_of("stdin", &bytes)?;
        if items.is_empty() {
            anyhow::bail!("stdin holds no document; nothing to apply");
        }
        return Ok(items);
    }
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
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        items.extend(documents_of(&file.display().to_string(), &bytes)?);
    }
    Ok(items)
}

/// The documents of one file's text (YAML, `---` separated, or JSON).
fn documents_of(file: &str, bytes: &[u8]) -> anyhow::Result<Vec<ApplyItem>> {
    let text = std::str::from_utf8(bytes).with_context(|| format!("{file} is not UTF-8 text"))?;
    let documents = phoenix_wire::resource::parse_yaml_documents(text)
        .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let segments = document_texts(text);
    let mut items = Vec::new();
    for (i, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        let document = crate::document::without_status(document);
        if let Some((first_line, segment)) = segments.get(i).filter(|_| segments.len() > 1) {
            crate::document::check_locally(file, segment, &document).map_err(|err| {
                anyhow::anyhow!("{}", shift_line(&err.to_string(), file, *first_line))
            })?;
        } else {
            crate::document::check_locally(file, text, &document)?;
        }
        items.push(ApplyItem {
            file: Some(file.to_string()),
            document,
        });
    }
    Ok(items)
}

/// The text of each `---`-separated document with the line (counted from 0) it
/// starts after.
fn document_texts(text: &str) -> Vec<(usize, String)> {
    let mut segments = vec![(0, String::new())];
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            segments.push((i + 1, String::new()));
            continue;
        }
        let current = &mut segments.last_mut().expect("one segment").1;
        current.push_str(line);
        current.push('\n');
    }
    // A leading `---` leaves an empty first segment that holds no document.
    if segments.len() > 1 && segments[0].1.trim().is_empty() {
        segments.remove(0);
    }
    segments
}

/// `file:3: ...` of a document that starts after line `offset` of its file.
fn shift_line(message: &str, file: &str, offset: usize) -> String {
    let prefix = format!("{file}:");
    if let Some(rest) = message.strip_prefix(&prefix)
        && let Some((line, rest)) = rest.split_once(':')
        && let Ok(line) = line.parse::<usize>()
    {
        return format!("{file}:{}:{rest}", line + offset);
    }
    message.to_string()
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
        std::fs::write(stamp.join("exp.yaml"), "kind: A\n").unwrap();
        std::fs::write(stamp.join("tpl.yml"), "kind: B\n").unwrap();
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
        assert_eq!(args("-", None).source(), "stdin");
    }

    #[test]
    fn an_invalid_document_is_named_by_file_line_and_field() {
        let text = "kind: Other\n---\napiVersion: phoenix.dev/v1\nkind: Experiment\nmetadata: {name: a}\nspec:\n  hosts: {names: [h]}\n  baseline: {pipeline: b}\n  candidate: {pipeline: c}\n  duration: 10m\n  colour: red\n";
        let err = documents_of("exp.yaml", text.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("exp.yaml:11: spec.colour: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn a_large_json_file_is_read_as_json() {
        let list: Vec<u32> = (0..300_000).collect();
        let json = serde_json::to_vec(&serde_json::json!({"kind": "Big", "spec": list})).unwrap();
        let items = documents_of("big.json", &json).unwrap();
        assert_eq!(items[0].document["spec"].as_array().unwrap().len(), 300_000);
        // The same in YAML passes the reader's limits and says so.
        let yaml = format!("kind: Big\nspec:\n{}", "- 1\n".repeat(300_000));
        let err = documents_of("big.yaml", yaml.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("big.yaml: the document is too large to read: more than"),
            "{err}"
        );
    }

    #[test]
    fn the_diff_names_each_changed_field() {
        let plan = [
            PlanEntry {
                kind: "Experiment".into(),
                name: "exp-a".into(),
                action: Action::Update,
                reason: Some("spec changed (generation 2)".into()),
                changes: vec![FieldChange {
                    field: "spec.duration".into(),
                    from: Some("10m".into()),
                    to: Some("30m".into()),
                }],
            },
            PlanEntry {
                kind: "PipelineTemplate".into(),
                name: "t".into(),
                action: Action::Unchanged,
                reason: None,
                changes: Vec::new(),
            },
        ];
        assert_eq!(
            render_diff(&plan),
            "~ Experiment exp-a (spec changed (generation 2))\n    spec.duration: \"10m\" -> \"30m\"\n(1 unchanged; nothing was changed)\n"
        );
        assert_eq!(render_diff(&plan[1..]), "no changes (1 unchanged)\n");
    }
}
