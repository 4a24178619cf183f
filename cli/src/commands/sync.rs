//! `phoenix sync --dir DIR --interval 30s [--prune] [--source NAME] [--once]`: apply
//! a directory kept current by someone else (a git-sync checkout, a mounted
//! ConfigMap) every interval, through the same request as `phoenix apply`
//! ([`apply::apply`]). This is how the Helm chart consumes a GitOps repository.
//!
//! Each round logs one line to stderr: a timestamp and the plan's counts, followed
//! by the entries that changed something (only when something did). A round that
//! fails (an invalid document, the api unreachable, the directory missing) logs the
//! error and changes nothing, since the api applies all or nothing; the next round
//! tries again. SIGTERM or Ctrl-C ends it at once, with exit code 0, even in the
//! middle of a round (the api then either applied all of it or nothing).

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use phoenix_wire::apply::{Action, PlanEntry};
use phoenix_wire::duration::HumanDuration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::MissedTickBehavior;

use crate::client::ClientError;
use crate::commands::Context;
use crate::commands::apply::{self, ApplyArgs};

/// The shortest `--interval`: a sync is a whole apply, not a busy loop.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Options of `sync`.
pub struct SyncArgs {
    pub dir: String,
    pub interval: Duration,
    pub prune: bool,
    pub source: Option<String>,
    pub once: bool,
}

/// Parses `--interval`: a duration of at least [`MIN_INTERVAL`].
pub fn parse_interval(text: &str) -> Result<HumanDuration, String> {
    let interval = HumanDuration::parse(text)?;
    if interval.as_duration() < MIN_INTERVAL {
        return Err(format!(
            "`{text}` is shorter than {}",
            HumanDuration(MIN_INTERVAL)
        ));
    }
    Ok(interval)
}

pub async fn run(ctx: &Context, args: SyncArgs) -> anyhow::Result<()> {
    let apply_args = ApplyArgs {
        path: args.dir.clone(),
        prune: args.prune,
        dry_run: false,
        source: args.source.clone(),
    };
    // Listening from the start: a signal during the first round must not kill the
    // process with the default action (exit status 143 instead of 0).
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let interval = HumanDuration(args.interval);
    if !args.once {
        log(&format!(
            "{} syncing {} every {interval} (source {}, prune {})\n",
            timestamp(Utc::now()),
            args.dir,
            apply_args.source(),
            if args.prune { "on" } else { "off" }
        ));
    }
    let rounds = async {
        let mut ticks = tokio::time::interval(args.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match apply::apply(&ctx.client, &apply_args).await {
                Ok(plan) => log(&round_applied(Utc::now(), &args.dir, &plan)),
                // One round for CI: the error is the command's error, printed whole
                // (with its hint) by `main`.
                Err(err) if args.once => return Err(err),
                Err(err) => log(&round_failed(Utc::now(), &args.dir, &err, interval)),
            }
            if args.once {
                return Ok(());
            }
        }
    };
    tokio::select! {
        result = rounds => result,
        _ = terminate.recv() => {
            log(&format!("{} SIGTERM: sync stopped\n", timestamp(Utc::now())));
            Ok(())
        }
        _ = interrupt.recv() => {
            log(&format!("{} interrupted: sync stopped\n", timestamp(Utc::now())));
            Ok(())
        }
    }
}

/// Writes finished lines (each ending in `\n`) to stderr.
fn log(text: &str) {
    eprint!("{text}");
}

fn timestamp(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `<time> applied DIR: 1 created, 0 updated, 3 unchanged, 0 deleted`, then one
/// indented line per entry that changed something.
pub fn round_applied(now: DateTime<Utc>, dir: &str, plan: &[PlanEntry]) -> String {
    let count = |action: Action| plan.iter().filter(|e| e.action == action).count();
    let mut text = format!(
        "{} applied {dir}: {} created, {} updated, {} unchanged, {} deleted\n",
        timestamp(now),
        count(Action::Create),
        count(Action::Update),
        count(Action::Unchanged),
        count(Action::Delete),
    );
    for entry in plan.iter().filter(|e| e.action != Action::Unchanged) {
        let done = match entry.action {
            Action::Create => "created",
            Action::Update => "updated",
            Action::Delete => "deleted",
            Action::Unchanged => "unchanged",
        };
        text.push_str(&format!("  {done} {} {}", entry.kind, entry.name));
        if let Some(reason) = &entry.reason {
            text.push_str(&format!(" ({reason})"));
        }
        text.push('\n');
    }
    text
}

/// `<time> sync of DIR failed, nothing changed; next try in 30s: <error>` on one
/// line (the api's detail names the file and the field).
pub fn round_failed(
    now: DateTime<Utc>,
    dir: &str,
    err: &anyhow::Error,
    interval: HumanDuration,
) -> String {
    let rendered = crate::render_error(err);
    let message = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    // The api applies all or nothing; only an answer that never arrived leaves open
    // which of the two it was.
    let outcome = match err.downcast_ref::<ClientError>() {
        Some(ClientError::Timeout { .. } | ClientError::Transport { .. }) => {
            "it may or may not have been applied"
        }
        _ => "nothing changed",
    };
    format!(
        "{} sync of {dir} failed, {outcome}; next try in {interval}: {message}\n",
        timestamp(now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use phoenix_wire::problem::Problem;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
    }

    fn entry(kind: &str, name: &str, action: Action, reason: Option<&str>) -> PlanEntry {
        PlanEntry {
            kind: kind.into(),
            name: name.into(),
            action,
            reason: reason.map(String::from),
            changes: Vec::new(),
        }
    }

    #[test]
    fn a_round_that_changed_nothing_is_one_line() {
        let plan = [
            entry("Experiment", "a", Action::Unchanged, None),
            entry("PipelineTemplate", "t", Action::Unchanged, None),
        ];
        assert_eq!(
            round_applied(now(), "gitops/", &plan),
            "2026-11-27T12:00:00Z applied gitops/: 0 created, 0 updated, 2 unchanged, 0 deleted\n"
        );
    }

    #[test]
    fn a_round_that_changed_something_lists_the_changes() {
        let plan = [
            entry("Experiment", "a", Action::Create, None),
            entry("Experiment", "b", Action::Update, Some("spec changed")),
            entry("Experiment", "c", Action::Unchanged, None),
            entry(
                "Experiment",
                "d",
                Action::Delete,
                Some("no longer in source `gitops`"),
            ),
        ];
        assert_eq!(
            round_applied(now(), "gitops", &plan),
            "2026-11-27T12:00:00Z applied gitops: 1 created, 1 updated, 1 unchanged, 1 deleted\n  \
             created Experiment a\n  \
             updated Experiment b (spec changed)\n  \
             deleted Experiment d (no longer in source `gitops`)\n"
        );
    }

    #[test]
    fn a_failed_round_is_one_line_naming_file_and_field() {
        let err = anyhow::Error::new(ClientError::Api {
            method: "POST".into(),
            path: "/api/v1/apply".into(),
            problem: Box::new(Problem {
                problem_type: "about:blank".into(),
                title: "Invalid document".into(),
                status: 422,
                detail: Some("gitops/bad.yaml: Experiment x: `soon` is not a duration".into()),
                field: Some("spec.warmup".into()),
            }),
        });
        assert_eq!(
            round_failed(now(), "gitops", &err, HumanDuration::from_secs(30)),
            "2026-11-27T12:00:00Z sync of gitops failed, nothing changed; next try in 30s: \
             Invalid document: gitops/bad.yaml: Experiment x: `soon` is not a duration; \
             field: spec.warmup\n"
        );
    }

    #[test]
    fn intervals_have_a_floor() {
        assert_eq!(
            parse_interval("30s").unwrap().as_duration(),
            Duration::from_secs(30)
        );
        assert!(parse_interval("1s").is_ok());
        assert!(parse_interval("500ms").unwrap_err().contains("shorter"));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
