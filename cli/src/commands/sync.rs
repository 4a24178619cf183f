//! `phoenix sync --dir DIR --interval 30s [--prune] [--source NAME] [--once]`: apply
//! a directory kept current by someone else (a git-sync checkout, a mounted
//! ConfigMap) every interval, through the same request as `phoenix apply`
//! ([`apply::apply`]). This is how the Helm chart consumes a GitOps repository.
//!
//! It logs through `tracing` (set up by `phoenix_telemetry`: text or JSON lines on
//! stderr, spans exported over OTLP when configured). Each round is a "sync round"
//! span, which the api's apply continues (the client sends its `traceparent`), and
//! logs one line with the plan's counts, followed by a line for each entry that
//! changed something (only when something did). A round that fails (an invalid
//! document, the api unreachable, the directory missing) logs the error and changes
//! nothing, since the api applies all or nothing; the next round tries again.
//! SIGTERM or Ctrl-C ends it at once, with exit code 0, even in the middle of a
//! round (the api then either applied all of it or nothing).

use std::time::Duration;

use anyhow::Context as _;
use phoenix_wire::apply::{Action, PlanEntry};
use phoenix_wire::duration::HumanDuration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::MissedTickBehavior;
use tracing::Instrument;

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
        tracing::info!(
            "syncing {} every {interval} (source {}, prune {})",
            args.dir,
            apply_args.source(),
            if args.prune { "on" } else { "off" }
        );
    }
    let rounds = async {
        let mut ticks = tokio::time::interval(args.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let round = tracing::info_span!("sync round");
            let applied = apply::apply(&ctx.client, &apply_args)
                .instrument(round.clone())
                .await;
            let _round = round.enter();
            match applied {
                Ok(plan) => {
                    for line in round_applied(&args.dir, &plan) {
                        tracing::info!("{line}");
                    }
                }
                // One round for CI: the error is the command's error, printed whole
                // (with its hint) by `main`.
                Err(err) if args.once => return Err(err),
                Err(err) => tracing::warn!("{}", round_failed(&args.dir, &err, interval)),
            }
            if args.once {
                return Ok(());
            }
        }
    };
    tokio::select! {
        result = rounds => result,
        _ = terminate.recv() => {
            tracing::info!("SIGTERM: sync stopped");
            Ok(())
        }
        _ = interrupt.recv() => {
            tracing::info!("interrupted: sync stopped");
            Ok(())
        }
    }
}

/// `applied DIR: 1 created, 0 updated, 3 unchanged, 0 deleted`, then one line per
/// entry that changed something (`created Experiment web`).
pub fn round_applied(dir: &str, plan: &[PlanEntry]) -> Vec<String> {
    let count = |action: Action| plan.iter().filter(|e| e.action == action).count();
    let mut lines = vec![format!(
        "applied {dir}: {} created, {} updated, {} unchanged, {} deleted",
        count(Action::Create),
        count(Action::Update),
        count(Action::Unchanged),
        count(Action::Delete),
    )];
    for entry in plan.iter().filter(|e| e.action != Action::Unchanged) {
        let done = match entry.action {
            Action::Create => "created",
            Action::Update => "updated",
            Action::Delete => "deleted",
            Action::Unchanged => "unchanged",
        };
        let mut line = format!("{done} {} {}", entry.kind, entry.name);
        if let Some(reason) = &entry.reason {
            line.push_str(&format!(" ({reason})"));
        }
        lines.push(line);
    }
    lines
}

/// `sync of DIR failed, nothing changed; next try in 30s: <error>` on one line (the
/// api's detail names the file and the field).
pub fn round_failed(dir: &str, err: &anyhow::Error, interval: HumanDuration) -> String {
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
    format!("sync of {dir} failed, {outcome}; next try in {interval}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_wire::problem::Problem;

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
            round_applied("gitops/", &plan),
            ["applied gitops/: 0 created, 0 updated, 2 unchanged, 0 deleted"]
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
            round_applied("gitops", &plan),
            [
                "applied gitops: 1 created, 1 updated, 1 unchanged, 1 deleted",
                "created Experiment a",
                "updated Experiment b (spec changed)",
                "deleted Experiment d (no longer in source `gitops`)",
            ]
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
            round_failed("gitops", &err, HumanDuration::from_secs(30)),
            "sync of gitops failed, nothing changed; next try in 30s: \
             Invalid document: gitops/bad.yaml: Experiment x: `soon` is not a duration; \
             field: spec.warmup"
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
