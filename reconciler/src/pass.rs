//! One reconcile pass: load desired and actual state, make due phase transitions,
//! compute every host's desired units (collectors, and load runs from
//! [`crate::load`]), and write the tasks that close the gap, through one diff
//! ([`crate::diff`]) run once per kind of unit. Standing
//! pipelines ([`crate::standing`]: `promotion: auto`, then every host's standing
//! collector) join the experiments' desired collectors before the diff.
//! The whole pass is one transaction on the leader's connection, so it either
//! happens completely or not at all, and never after leadership is lost.
//!
//! A pass has a [`Scope`] ([`crate::changes`]): every host, or only the hosts that
//! changed since the last pass. A scoped pass reads, renders and diffs those hosts
//! only; experiments' phase decisions still see every host they need (a pending
//! experiment, which picks hosts from the whole fleet, makes the pass a full one).
//! A deploying experiment's decision needs every target: the leader keeps what
//! earlier passes found ([`DeployProgress`]), so a scoped pass looks again only at
//! the targets that changed, and the targets join the scope only when nothing is
//! known yet (this leader's first pass, or the experiment began deploying again).
//! A phase change or promotion a scoped pass makes announces itself, so a full
//! pass follows.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use phoenix_storage::leader::Lease;
use phoenix_storage::{PgConnection, Result, experiments, hosts, tasks, templates};
use phoenix_wire::agent::{CollectorSpec, TaskKind, UnitSpec, Variant};
use phoenix_wire::render::Template;
use phoenix_wire::view::{Experiment, Phase};
use sqlx::Connection;

use crate::changes::Scope;
use crate::config::ReconcilerConfig;
use crate::diff::{self, Blocked, DesiredState};
use crate::lifecycle::{self, Decision, DeployLimits, DeployProgress};

/// What a pass did, for logs, metrics and tests.
#[derive(Debug, Default, PartialEq)]
pub struct PassReport {
    /// `full` or `hosts` ([`Scope::label`]), once the pass has settled its scope.
    pub scope: Option<&'static str>,
    /// How many hosts the pass read and diffed.
    pub hosts: usize,
    pub tasks_created: u64,
    pub tasks_cancelled: u64,
    /// New tasks left for the next pass ([`diff::defer_beyond`]), which follows at
    /// once, scoped to `deferred_hosts`.
    pub tasks_deferred: u64,
    pub deferred_hosts: Vec<String>,
    pub transitions: Vec<(String, Phase, Phase)>,
    /// How long each stage of the pass took, in order (logged when a pass is slow).
    pub stages: Vec<(&'static str, std::time::Duration)>,
}

/// Times the stages of a pass.
struct Stopwatch(std::time::Instant);

impl Stopwatch {
    fn start() -> Self {
        Stopwatch(std::time::Instant::now())
    }

    /// Records the time since the previous lap as `stage`.
    fn lap(&mut self, report: &mut PassReport, stage: &'static str) {
        let now = std::time::Instant::now();
        report.stages.push((stage, now - self.0));
        self.0 = now;
    }
}

/// Runs one pass over `scope` as the leader of `epoch` (refused with
/// [`phoenix_storage::StoreError::Deposed`] once a newer leader took over). Time is
/// the database's, like every timestamp it stores. `progress` is what this leader's
/// earlier passes found of deploying experiments; it is updated once the pass
/// commits. `lease`, when `conn` is the leader lock's connection, is renewed after
/// each stage ([`renew`]), so a long pass is bounded by the time the database
/// takes to answer one stage, not by the whole pass.
#[tracing::instrument(name = "reconcile pass", skip_all, fields(epoch = epoch, scope = scope.label()))]
pub async fn run_pass(
    conn: &mut PgConnection,
    config: &ReconcilerConfig,
    epoch: i64,
    scope: Scope,
    progress: &mut DeployProgress,
    lease: Option<&Lease>,
) -> Result<PassReport> {
    let mut report = PassReport::default();
    let mut stopwatch = Stopwatch::start();
    let mut tx = conn.begin().await?;
    phoenix_storage::leader::fence(&mut tx, epoch).await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await?;
    tasks::fail_exhausted(&mut tx, config.task_max_attempts).await?;

    let mut active = experiments::list_in_phases(&mut tx, &Phase::ACTIVE).await?;
    let scope = if active.iter().any(|e| e.phase == Phase::Pending) {
        Scope::Full
    } else {
        scope.widened(
            active
                .iter()
                .filter(|e| e.phase == Phase::Deploying && progress.known(e).is_none())
                .flat_map(|e| &e.target_hosts),
        )
    };
    report.scope = Some(scope.label());
    let host_records = hosts::list_records(&mut tx, scope.filter()).await?;
    report.hosts = host_records.len();
    renew(lease, &mut tx).await?;
    let template_configs: HashMap<String, Template> = templates::list(&mut tx)
        .await?
        .into_iter()
        .map(|t| (t.name, Template::new(t.config, t.variables.0)))
        .collect();
    // Open tasks before reported collectors: each statement sees its own snapshot,
    // and this order never misses a task between its answer and its report.
    let open = tasks::list_open(&mut tx, scope.filter()).await?;
    renew(lease, &mut tx).await?;
    let actual = hosts::collectors_by_host(&mut tx, scope.filter()).await?;
    // Since the oldest creation: crate::incidents reads every failed task of an
    // experiment, the deploying decision those of its current phase.
    let oldest_start = active.iter().map(|e| e.created_at).min().unwrap_or(now);
    let failures = tasks::failures_since(&mut tx, TaskKind::Collector, oldest_start).await?;
    let load_failures = tasks::failures_since(&mut tx, TaskKind::Load, oldest_start).await?;
    renew(lease, &mut tx).await?;
    stopwatch.lap(&mut report, "read");

    let mut desired = DesiredState::new();
    let mut blocked = Blocked::new();
    let mut next_progress = DeployProgress::default();
    let limits = DeployLimits {
        timeout: config.deploy_timeout.as_duration(),
        max_start_failures: config.max_start_failures,
    };

    for experiment in &mut active {
        if experiment.phase == Phase::Pending {
            let decision =
                lifecycle::decide_pending(experiment, &host_records, config.max_experiment_hosts());
            apply(&mut tx, experiment, decision, now, &mut report).await?;
        }
        if !experiment.phase.wants_collectors() {
            continue;
        }
        let judgement = crate::incidents::judge(
            experiment,
            &failures,
            &load_failures,
            config.max_start_failures,
        );
        for (task_id, reason) in &judgement.events {
            experiments::record_task_event(
                &mut tx,
                &experiment.name,
                experiment.phase,
                *task_id,
                reason,
            )
            .await?;
        }
        if let Some(reason) = judgement.fail {
            apply(
                &mut tx,
                experiment,
                Decision::Fail { reason },
                now,
                &mut report,
            )
            .await?;
            continue;
        }
        let rendered = render_experiment(
            experiment,
            &template_configs,
            &config.remote_write_url,
            &scope,
        );
        let specs = match rendered {
            Ok(specs) => specs,
            Err(reason) => {
                let fail = Decision::Fail { reason };
                apply(&mut tx, experiment, fail, now, &mut report).await?;
                continue;
            }
        };
        if experiment.phase == Phase::Deploying {
            let mut not_ready = progress.known(experiment).cloned().unwrap_or_default();
            let decision = lifecycle::decide_deploying(
                experiment,
                &specs,
                &actual,
                &failures,
                &mut not_ready,
                &limits,
                now,
            );
            apply(&mut tx, experiment, decision, now, &mut report).await?;
            if experiment.phase == Phase::Deploying {
                next_progress.remember(experiment, not_ready);
            }
            if !experiment.phase.wants_collectors() {
                continue;
            }
        } else if experiment.phase == Phase::Running {
            let decision = lifecycle::decide_running(experiment, now);
            apply(&mut tx, experiment, decision, now, &mut report).await?;
        }
        for (host, spec) in specs {
            let failed =
                lifecycle::failures_of(&failures, &host, &spec, experiment.phase_changed_at);
            let limit = (failed.len(), config.max_start_failures);
            diff::want(
                &mut desired,
                &mut blocked,
                host,
                UnitSpec::Collector(spec),
                limit,
            );
        }
    }

    renew(lease, &mut tx).await?;
    stopwatch.lap(&mut report, "experiments");
    // Standing pipelines (crate::standing): first `promotion: auto`, so that a
    // promotion's deployment is desired in this same pass; then every host's
    // standing collector, into the same desired state as the experiments'.
    crate::standing::promote_passing(&mut tx, &mut report).await?;
    crate::standing::add_desired(
        &mut tx,
        &host_records,
        &template_configs,
        config,
        now,
        &mut desired,
        &mut blocked,
    )
    .await?;

    renew(lease, &mut tx).await?;
    stopwatch.lap(&mut report, "standing");
    // What agents went back from is the agents' last word until a newer config.
    blocked.extend(diff::rolled_back(&actual));
    let mut plan = diff::plan(TaskKind::Collector, &desired, &actual, &open, &blocked);
    plan.extend(crate::load::plan_loads(&mut tx, &active, &open, config, now, &scope).await?);
    if let Some(max) = config.max_new_tasks_per_pass() {
        let (tasks, hosts) = diff::defer_beyond(&mut plan, max);
        report.tasks_deferred = tasks as u64;
        report.deferred_hosts = hosts;
    }
    renew(lease, &mut tx).await?;
    stopwatch.lap(&mut report, "plan");
    let steps = crate::task_trace::continue_traces(&mut tx, &mut plan.new_tasks).await?;
    report.tasks_created = tasks::insert(&mut tx, &plan.new_tasks).await?;
    report.tasks_cancelled = tasks::cancel_pending(&mut tx, &plan.cancel).await?;
    renew(lease, &mut tx).await?;
    stopwatch.lap(&mut report, "write");
    tx.commit().await?;
    *progress = next_progress;
    stopwatch.lap(&mut report, "commit");
    drop(steps);
    Ok(report)
}

/// Renews the leader's lease from a check on the pass's connection (a round trip
/// of well under a millisecond); nothing without a lease.
async fn renew(lease: Option<&Lease>, conn: &mut PgConnection) -> Result<()> {
    if let Some(lease) = lease {
        lease.renew_on(conn).await?;
    }
    Ok(())
}

/// Every (host, collector) an experiment wants on the hosts in `scope`, or why it
/// cannot be rendered.
fn render_experiment(
    experiment: &Experiment,
    template_configs: &HashMap<String, Template>,
    remote_write_url: &str,
    scope: &Scope,
) -> std::result::Result<Vec<(String, CollectorSpec)>, String> {
    let mut specs = Vec::new();
    for variant in [Variant::Baseline, Variant::Candidate] {
        let pipeline = &phoenix_wire::render::pipeline_of(&experiment.spec, variant).pipeline;
        let config = template_configs.get(pipeline).ok_or_else(|| {
            format!("the {variant} pipeline template `{pipeline}` no longer exists")
        })?;
        for host in experiment.target_hosts.iter().filter(|h| scope.includes(h)) {
            let spec = phoenix_wire::render::experiment_collector(
                &experiment.name,
                &experiment.spec,
                variant,
                host,
                config,
                remote_write_url,
            );
            specs.push((host.clone(), spec));
        }
    }
    Ok(specs)
}

/// Applies a decision: a compare-and-set phase change with its event.
async fn apply(
    conn: &mut PgConnection,
    experiment: &mut Experiment,
    decision: Decision,
    now: DateTime<Utc>,
    report: &mut PassReport,
) -> Result<()> {
    let (to, reason, targets) = match decision {
        Decision::Stay => return Ok(()),
        Decision::Deploy { targets, reason } => (Phase::Deploying, reason, Some(targets)),
        Decision::Run { reason } => (Phase::Running, reason, None),
        Decision::Analyze {
            window_start,
            window_end,
            reason,
        } => {
            phoenix_storage::results::begin(conn, &experiment.name, window_start, window_end)
                .await?;
            (Phase::Analyzing, reason, None)
        }
        Decision::Fail { reason } => (Phase::Failed, reason, None),
    };
    let from = experiment.phase;
    if experiments::transition(
        conn,
        &experiment.name,
        from,
        to,
        &reason,
        targets.as_deref(),
    )
    .await?
    {
        tracing::info!(experiment = %experiment.name, %from, %to, %reason, "phase transition");
        experiment.phase = to;
        experiment.reason = Some(reason);
        experiment.phase_changed_at = now;
        if let Some(targets) = targets {
            experiment.target_hosts = targets;
        }
        report.transitions.push((experiment.name.clone(), from, to));
    }
    Ok(())
}
