//! `phoenix task list [--host H] [--status S] [--limit N] [--watch]`: the agent
//! tasks Phoenix wrote (starts, updates and stops of collectors and load runs),
//! newest first, with what they work for, how often they were delivered and why
//! they failed; `--watch` prints each new or changed one after.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use phoenix_wire::names;
use phoenix_wire::view::{AgentTask, List};

use crate::client::encode;
use crate::commands::Context;
use crate::output::{self, Table};
use crate::watch::{Watch, WatchArgs};

const TASKS: &str = "/api/v1/tasks";

/// The ERROR column is cut to this many characters; `-o yaml` shows it whole.
const ERROR_WIDTH: usize = 60;

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// List agent tasks, newest first: host, action, unit, owner, status, attempts, error
    #[command(after_help = "\
Examples:
  phoenix task list --host web-1
  phoenix task list --status failed
  phoenix tasks list --host web-1 --status pending -o json
  phoenix task list --host web-1 --watch

--watch prints the list, then reads it again every --watch-interval (default 2s)
and prints each task that is new or changed since (claimed, answered, delivered
again), oldest first, as one more row or one JSON object per line with -o json.
Ctrl-C stops it (exit 0).

Statuses: pending (not yet claimed), leased (delivered to the agent, until its
lease ends), succeeded, failed, cancelled (no longer wanted before it was claimed).
A task whose lease ends unanswered is delivered again (ATTEMPTS counts deliveries).")]
    List {
        /// Only this host's tasks
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Only tasks in this status: pending, leased, succeeded, failed or cancelled
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// At most this many (1 to 1000)
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        watch: WatchArgs,
    },
}

pub async fn run(ctx: &Context, command: TaskCommand) -> anyhow::Result<()> {
    match command {
        TaskCommand::List {
            host,
            status,
            limit,
            watch,
        } => {
            if let Some(host) = &host {
                names::check_host_id(host).map_err(|m| anyhow::anyhow!("invalid host id: {m}"))?;
            }
            let path = list_path(host.as_deref(), status.as_deref(), limit);
            let list: List<AgentTask> = ctx.client.get(&path).await?;
            match output::render_object(ctx.output, &list)? {
                Some(text) => output::print(&text)?,
                None if list.items.is_empty() => {
                    eprintln!("{}", nothing_found(host.as_deref(), status.as_deref()))
                }
                None => output::print(&task_table(&list.items, ctx.now).render())?,
            }
            if !watch.watch {
                return Ok(());
            }
            let watch = Watch {
                output: ctx.output,
                interval: watch.watch_interval.as_duration(),
                key: |t: &AgentTask| t.id.to_string(),
                table: |t, now| task_table(std::slice::from_ref(t), now),
                // Tasks are not deleted; they leave the newest --limit or the --status.
                gone_is_deleted: false,
                newest_first: true,
            };
            watch
                .follow(&list.items, || async {
                    let list: List<AgentTask> = ctx.client.get(&path).await?;
                    Ok(list.items)
                })
                .await
        }
    }
}

fn list_path(host: Option<&str>, status: Option<&str>, limit: u32) -> String {
    let mut query = vec![format!("limit={limit}")];
    if let Some(host) = host {
        query.push(format!("host={}", encode(host)));
    }
    if let Some(status) = status {
        query.push(format!("status={}", encode(status)));
    }
    format!("{TASKS}?{}", query.join("&"))
}

fn nothing_found(host: Option<&str>, status: Option<&str>) -> String {
    let mut text = "No tasks".to_string();
    if let Some(status) = status {
        text.push_str(&format!(" in status {status}"));
    }
    if let Some(host) = host {
        text.push_str(&format!(" for host {host}"));
    }
    text.push_str(
        ". Tasks appear when an experiment, pipeline deployment or load simulation \
         needs a host to start, change or stop something.",
    );
    text
}

/// `experiment/topk-web`, `deployment/web-standing`, `loadsim/hc`, or `-`.
fn owner(task: &AgentTask) -> String {
    match (&task.experiment, &task.deployment, &task.loadsim) {
        (Some(name), _, _) => format!("experiment/{name}"),
        (_, Some(name), _) => format!("deployment/{name}"),
        (_, _, Some(name)) => format!("loadsim/{name}"),
        _ => "-".into(),
    }
}

fn task_table(tasks: &[AgentTask], now: DateTime<Utc>) -> Table {
    let mut table = Table::new(&[
        "ID", "HOST", "KIND", "ACTION", "UNIT", "OWNER", "STATUS", "ATTEMPTS", "AGE", "UPDATED",
        "ERROR",
    ]);
    for task in tasks {
        table.row(vec![
            task.id.to_string(),
            task.host.clone(),
            task.kind.as_str().to_string(),
            task.action.as_str().to_string(),
            task.unit.clone(),
            owner(task),
            task.status.as_str().to_string(),
            task.attempts.to_string(),
            output::age(task.created_at, now),
            output::age(task.updated_at, now),
            output::truncate(task.error.as_deref().unwrap_or(""), ERROR_WIDTH),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn task(now: DateTime<Utc>, json: serde_json::Value) -> AgentTask {
        let mut base = serde_json::json!({
            "id": 12, "host": "web-1", "kind": "collector", "action": "start",
            "unit": "topk-web.candidate", "status": "failed", "attempts": 3,
            "createdAt": (now - chrono::Duration::seconds(300)).to_rfc3339(),
            "updatedAt": (now - chrono::Duration::seconds(20)).to_rfc3339(),
        });
        for (key, value) in json.as_object().unwrap() {
            base[key] = value.clone();
        }
        let mut task: AgentTask = serde_json::from_value(base).unwrap();
        task.set_owner();
        task
    }

    #[test]
    fn the_task_table_names_owner_status_and_error() {
        let now = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let tasks = [
            task(now, serde_json::json!({"error": "bind: address in use"})),
            task(
                now,
                serde_json::json!({"id": 9, "kind": "load", "unit": "load.run.hc",
                    "action": "stop", "status": "succeeded", "attempts": 1}),
            ),
        ];
        assert_eq!(
            task_table(&tasks, now).render(),
            "ID   HOST    KIND        ACTION   UNIT                 OWNER                 STATUS      ATTEMPTS   AGE   UPDATED   ERROR\n\
             12   web-1   collector   start    topk-web.candidate   experiment/topk-web   failed      3          5m    20s       bind: address in use\n\
             9    web-1   load        stop     load.run.hc          loadsim/hc            succeeded   1          5m    20s\n"
        );
    }

    #[test]
    fn the_query_carries_each_filter() {
        assert_eq!(list_path(None, None, 100), "/api/v1/tasks?limit=100");
        assert_eq!(
            list_path(Some("web-1"), Some("failed"), 5),
            "/api/v1/tasks?limit=5&host=web-1&status=failed"
        );
        assert_eq!(
            list_path(None, Some("a b&c"), 1),
            "/api/v1/tasks?limit=1&status=a%20b%26c"
        );
    }

    #[test]
    fn an_empty_list_says_what_was_asked() {
        assert!(
            nothing_found(Some("web-1"), Some("failed"))
                .starts_with("No tasks in status failed for host web-1.")
        );
        assert!(nothing_found(None, None).starts_with("No tasks. "));
    }
}
