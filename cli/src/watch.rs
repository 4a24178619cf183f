//! `--watch` of the lists that are read again to be watched (deployments, tasks):
//! after the list, the CLI reads it every `--watch-interval` and prints each object
//! that is new or changed since, as one table row (no header), one JSON object per
//! line, or one YAML document; a deployment no longer listed is printed as deleted.
//! Ctrl-C ends the watch with exit code 0; an error reading the list ends it with 1.
//!
//! Experiments and hosts are watched through the event stream instead
//! ([`crate::stream`]): each change of theirs is an event. A deployment's ready
//! hosts and a task's claim are not, so these lists are read again.
//!
//! What counts as a change is what the output shows: for a table, the row as of
//! the instant the watch started (so ages growing with time are no change, a new
//! revision or a task claimed is); for `-o json|yaml`, the object.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use phoenix_wire::duration::HumanDuration;
use serde::Serialize;

use crate::output::{self, OutputFormat, Table};
use crate::stream;

/// `-w/--watch` and `--watch-interval` of a list that is read again to be watched.
#[derive(Clone, Debug, clap::Args)]
pub struct WatchArgs {
    /// After listing, print each row again when it changes, until Ctrl-C
    #[arg(short, long)]
    pub watch: bool,
    /// How often --watch reads the list again (at least 1s)
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "2s",
        value_parser = crate::commands::sync::parse_interval,
        requires = "watch"
    )]
    pub watch_interval: HumanDuration,
}

/// How one watched list is read and shown.
pub struct Watch<T> {
    pub output: OutputFormat,
    pub interval: Duration,
    /// An object's identity in the list (a name, a task id).
    pub key: fn(&T) -> String,
    /// The object as a table of one row, as of the given instant.
    pub table: fn(&T, DateTime<Utc>) -> Table,
    /// Whether an object no longer listed was deleted (a deployment), rather than
    /// out of the list's window (a task beyond `--limit` or out of `--status`).
    pub gone_is_deleted: bool,
    /// The list is newest first; changes are printed oldest first, as they happened.
    pub newest_first: bool,
}

/// The rows last shown, by key, with what each showed.
#[derive(Debug, Default)]
struct Seen(BTreeMap<String, String>);

/// What changed in a list since it was last read.
#[derive(Debug, PartialEq)]
struct Changes<'a, T> {
    /// New or changed objects, in list order.
    changed: Vec<&'a T>,
    /// Keys no longer listed.
    gone: Vec<String>,
}

impl Seen {
    /// Records `items` as the list now; answers what differs from the last time.
    fn update<'a, T>(
        &mut self,
        items: &'a [T],
        key: impl Fn(&T) -> String,
        content: impl Fn(&T) -> String,
    ) -> Changes<'a, T> {
        let mut now = BTreeMap::new();
        let mut changed = Vec::new();
        for item in items {
            let (key, content) = (key(item), content(item));
            if self.0.get(&key) != Some(&content) {
                changed.push(item);
            }
            now.insert(key, content);
        }
        let gone = self
            .0
            .keys()
            .filter(|key| !now.contains_key(*key))
            .cloned()
            .collect();
        self.0 = now;
        Changes { changed, gone }
    }
}

impl<T: Serialize> Watch<T> {
    /// What the output shows of `item`, apart from the passing of time.
    fn content(&self, item: &T, since: DateTime<Utc>) -> String {
        match self.output {
            OutputFormat::Table => (self.table)(item, since).render(),
            OutputFormat::Json | OutputFormat::Yaml => {
                serde_json::to_string(item).unwrap_or_default()
            }
        }
    }

    /// After `first` was printed: reads the list with `read` every interval and
    /// prints what changed, until Ctrl-C (`Ok`) or a read fails (its error).
    pub async fn follow<F, Fut>(&self, first: &[T], mut read: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Vec<T>>>,
    {
        let since = Utc::now();
        let mut seen = Seen::default();
        seen.update(first, self.key, |item| self.content(item, since));
        let rounds = async {
            loop {
                tokio::time::sleep(self.interval).await;
                let items = read().await?;
                let mut changes = seen.update(&items, self.key, |item| self.content(item, since));
                if self.newest_first {
                    changes.changed.reverse();
                }
                let mut text = String::new();
                for item in changes.changed {
                    text += &stream::watch_line(self.output, item, || {
                        rows((self.table)(item, Utc::now()))
                    })?;
                }
                if self.gone_is_deleted && self.output == OutputFormat::Table {
                    for key in changes.gone {
                        text += &output::shown(&format!("{key}   deleted\n"));
                    }
                }
                output::print(&text)?;
            }
        };
        tokio::select! {
            result = rounds => result,
            Ok(()) = tokio::signal::ctrl_c() => Ok(()),
        }
    }
}

/// A table's rows without its header.
fn rows(table: Table) -> String {
    table
        .render()
        .lines()
        .skip(1)
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize)]
    struct Item {
        name: &'static str,
        revision: u32,
    }

    fn key(item: &Item) -> String {
        item.name.to_string()
    }

    fn content(item: &Item) -> String {
        item.revision.to_string()
    }

    #[test]
    fn only_new_and_changed_rows_are_changes_and_the_missing_are_gone() {
        let mut seen = Seen::default();
        let first = [
            Item {
                name: "a",
                revision: 1,
            },
            Item {
                name: "b",
                revision: 1,
            },
        ];
        let changes = seen.update(&first, key, content);
        assert_eq!(changes.changed.len(), 2, "the first read is all new");
        assert!(
            seen.update(&first, key, content).changed.is_empty(),
            "nothing changed"
        );

        let second = [
            Item {
                name: "a",
                revision: 2,
            },
            Item {
                name: "c",
                revision: 1,
            },
        ];
        let changes = seen.update(&second, key, content);
        assert_eq!(changes.changed, vec![&second[0], &second[1]]);
        assert_eq!(changes.gone, vec!["b".to_string()]);
        // b is forgotten: listed again, it is new again.
        let third = [Item {
            name: "b",
            revision: 1,
        }];
        let changes = seen.update(&third, key, content);
        assert_eq!(changes.changed, vec![&third[0]]);
        assert_eq!(changes.gone, vec!["a".to_string(), "c".to_string()]);
    }

    #[test]
    fn a_table_change_is_what_the_row_shows_apart_from_time() {
        let watch = Watch::<Item> {
            output: OutputFormat::Table,
            interval: Duration::from_secs(1),
            key,
            table: |item, now| {
                let mut table = Table::new(&["NAME", "REVISION", "SECOND"]);
                table.row(vec![
                    item.name.into(),
                    item.revision.to_string(),
                    now.timestamp().to_string(),
                ]);
                table
            },
            gone_is_deleted: true,
            newest_first: false,
        };
        let since = Utc::now();
        let item = Item {
            name: "a",
            revision: 1,
        };
        assert_eq!(watch.content(&item, since), watch.content(&item, since));
        let changed = Item {
            name: "a",
            revision: 2,
        };
        assert_ne!(watch.content(&item, since), watch.content(&changed, since));
        assert_eq!(rows((watch.table)(&item, since)).lines().count(), 1);
        let json = Watch {
            output: OutputFormat::Json,
            ..watch
        };
        assert_eq!(json.content(&item, since), r#"{"name":"a","revision":1}"#);
    }
}
