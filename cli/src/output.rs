//! How results reach the terminal: the `-o table|json|yaml` choice, JSON and YAML
//! printing of API objects, a column-aligning [`Table`], a `Key: value` [`Details`]
//! block, and small text helpers (ages, labels, truncation).

use std::collections::BTreeMap;
use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Spaces between table columns.
const COLUMN_GAP: usize = 3;

/// The `-o/--output` choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    // No doc comments here: clap would turn them into a long "Possible values"
    // list in every command's help; the flag's own help says what each does.
    #[default]
    Table,
    Json,
    Yaml,
}

/// Writes `text` to stdout. A closed pipe (`phoenix ... | head`) comes back as an
/// `io::Error` of kind `BrokenPipe`, which `main` treats as success.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// Renders an API object exactly as the API sent it, for `-o json` and `-o yaml`.
/// Returns `None` for `-o table`, which each command renders its own way.
pub fn render_object<T: Serialize>(
    format: OutputFormat,
    value: &T,
) -> anyhow::Result<Option<String>> {
    Ok(match format {
        OutputFormat::Table => None,
        OutputFormat::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        OutputFormat::Yaml => {
            let mut text = serde_saphyr::to_string(value)?;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            Some(text)
        }
    })
}

/// A fetched resource as `get -o json|yaml` shows it, kubectl style: `apiVersion`,
/// `kind`, `metadata` (name, labels) and `spec` exactly as a document declares
/// them, and everything else the api reports about it under `status`. `phoenix
/// apply` ignores `status`, so the output applies again as a no-op.
pub fn as_document<T: Serialize>(kind: &str, view: &T) -> anyhow::Result<serde_json::Value> {
    let serde_json::Value::Object(mut fields) = serde_json::to_value(view)? else {
        anyhow::bail!("a {kind} is not an object");
    };
    let mut metadata = serde_json::Map::new();
    if let Some(name) = fields.remove("name") {
        metadata.insert("name".into(), name);
    }
    match fields.remove("labels") {
        Some(serde_json::Value::Object(labels)) if labels.is_empty() => {}
        Some(labels) => {
            metadata.insert("labels".into(), labels);
        }
        None => {}
    }
    let spec = fields.remove("spec").unwrap_or_default();
    Ok(serde_json::json!({
        "apiVersion": phoenix_wire::API_VERSION,
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
        "status": fields,
    }))
}

/// Rows of text printed as left-aligned columns, kubectl style: a header in capitals,
/// columns separated by three spaces, no trailing spaces.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| clean(h)).collect()],
        }
    }

    /// Adds a row; missing cells are empty, extra cells are kept.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| clean(c)).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - width(cell) + COLUMN_GAP;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// A `Key: value` block with the values aligned, for `get` commands.
#[derive(Debug, Default)]
pub struct Details {
    rows: Vec<(String, String)>,
}

impl Details {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn field(&mut self, key: &str, value: impl AsRef<str>) -> &mut Self {
        self.rows.push((clean(key), clean(value.as_ref())));
        self
    }

    pub fn render(&self) -> String {
        let key_width = self.rows.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
        let mut text = String::new();
        for (key, value) in &self.rows {
            let pad = key_width - width(key) + 1;
            let line = format!("{key}:{}{value}", " ".repeat(pad));
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Prefixes every line of `text` with `prefix` (to nest a table under a heading).
pub fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|line| format!("{prefix}{line}\n"))
        .collect()
}

/// Replaces control characters (newlines, tabs, terminal escapes) with spaces, so a
/// value from the API can neither break a table's layout nor drive the terminal.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Words longer than this are cut when shown in a message...
const LONGEST_WORD: usize = 100;
/// ...to this many characters and a note of how many were left out.
const CUT_WORD_TO: usize = 64;

/// A message as it may reach the terminal: control characters other than newline
/// and tab are escaped (`\0`, `\u{1b}`), so a hostile name can neither hide
/// itself nor drive the terminal, and a word longer than 100 characters (a
/// 300-character name, echoed back) is cut to its first 64 with a note.
pub fn shown(text: &str) -> String {
    let escaped: String = text
        .chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => c.escape_default().to_string().replace("\\u{0}", "\\0"),
            c => c.to_string(),
        })
        .collect();
    let mut out = String::with_capacity(escaped.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let n = word.chars().count();
        if n > LONGEST_WORD {
            out.extend(word.chars().take(CUT_WORD_TO));
            out.push_str(&format!("…(+{} characters)", n - CUT_WORD_TO));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in escaped.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn width(text: &str) -> usize {
    text.chars().count()
}

/// Cuts `text` to at most `max` characters, marking the cut with `...`.
pub fn truncate(text: &str, max: usize) -> String {
    if width(text) <= max {
        return text.to_string();
    }
    let keep = max.saturating_sub(3);
    let mut cut: String = text.chars().take(keep).collect();
    cut.push_str("...");
    cut
}

/// `key=value,key=value`, or `<none>`.
pub fn labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// How long ago `then` was, kubectl style: `45s`, `5m12s`, `3h`, `2d4h`, `400d`.
/// A time in the future (clock skew) reads `0s`.
pub fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds().max(0);
    let (mins, hours, days) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 120 {
        format!("{secs}s")
    } else if mins < 10 {
        match secs % 60 {
            0 => format!("{mins}m"),
            s => format!("{mins}m{s}s"),
        }
    } else if hours < 3 {
        format!("{mins}m")
    } else if hours < 8 {
        match mins % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if days < 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        }
    } else {
        format!("{days}d")
    }
}

/// A timestamp with its age: `2025-01-02T03:04:05Z (5m ago)`.
pub fn timestamp(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{} ({} ago)",
        then.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        age(then, now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn messages_escape_control_characters_and_cut_long_words() {
        assert_eq!(
            shown("`a\0b` is bad\n  hint: x"),
            "`a\\0b` is bad\n  hint: x"
        );
        assert_eq!(shown("esc \u{1b}[31m"), "esc \\u{1b}[31m");
        let long = "a".repeat(300);
        let text = shown(&format!("`{long}` is longer than 63 characters"));
        assert_eq!(
            text,
            format!(
                "`{}…(+238 characters) is longer than 63 characters",
                "a".repeat(63)
            )
        );
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(&["NAME", "PHASE", "REASON"]);
        table.row(vec![
            "topk-web".into(),
            "running".into(),
            "all hosts healthy".into(),
        ]);
        table.row(vec!["a".into(), "pending".into(), String::new()]);
        assert_eq!(
            table.render(),
            "NAME       PHASE     REASON\n\
             topk-web   running   all hosts healthy\n\
             a          pending\n"
        );
    }

    #[test]
    fn tables_count_characters_not_bytes() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["héllo".into(), "x".into()]);
        assert_eq!(table.render(), "A       B\nhéllo   x\n");
    }

    #[test]
    fn tables_tolerate_ragged_rows_and_control_characters() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["1".into()]);
        table.row(vec![
            "2".into(),
            "line\nbreak\x1b[31m".into(),
            "extra".into(),
        ]);
        assert_eq!(table.render(), "A   B\n1\n2   line break [31m   extra\n");
    }

    #[test]
    fn details_align_values() {
        let mut details = Details::new();
        details
            .field("Name", "topk-web")
            .field("Target hosts", "a, b")
            .field("Reason", "");
        assert_eq!(
            details.render(),
            "Name:         topk-web\nTarget hosts: a, b\nReason:\n"
        );
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("exactly-10", 10), "exactly-10");
        assert_eq!(truncate("a much longer reason", 10), "a much ...");
    }

    #[test]
    fn labels_read_like_selectors() {
        let map: BTreeMap<String, String> =
            [("zone".into(), "a".into()), ("role".into(), "web".into())].into();
        assert_eq!(labels(&map), "role=web,zone=a");
        assert_eq!(labels(&BTreeMap::new()), "<none>");
    }

    #[test]
    fn ages_are_compact() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let ago = |secs: i64| age(now - chrono::Duration::seconds(secs), now);
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(-30), "0s");
        assert_eq!(ago(119), "119s");
        assert_eq!(ago(125), "2m5s");
        assert_eq!(ago(300), "5m");
        assert_eq!(ago(2 * 3600), "120m");
        assert_eq!(ago(5 * 3600 + 60), "5h1m");
        assert_eq!(ago(30 * 3600), "30h");
        assert_eq!(ago(3 * 86_400 + 7200), "3d2h");
        assert_eq!(ago(400 * 86_400), "400d");
    }

    #[test]
    fn objects_render_as_json_and_yaml() {
        let value = serde_json::json!({"items": [{"name": "a"}]});
        assert_eq!(render_object(OutputFormat::Table, &value).unwrap(), None);
        let json = render_object(OutputFormat::Json, &value).unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap(),
            value
        );
        let yaml = render_object(OutputFormat::Yaml, &value).unwrap().unwrap();
        assert_eq!(
            serde_saphyr::from_str::<serde_json::Value>(&yaml).unwrap(),
            value
        );
    }
}
