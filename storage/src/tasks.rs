//! Agent tasks: idempotent, leased units of work for one host.
//!
//! Status: `pending` → `leased` (claimed by the agent, until `lease_until`) →
//! `succeeded` | `failed`; or `cancelled` when the reconciler no longer wants a task
//! that was not yet claimed. A lease that expires unanswered makes the task
//! claimable again; after `max_attempts` deliveries it fails instead. A partial
//! unique index allows one open task per (host, unit, hash, action).
//!
//! One pipeline for every kind of unit ([`TaskKind`]: a collector, or a load run
//! whose unit id is `load.<run id>`): a task names its host, kind, unit id and the
//! hash of the spec it brings about, and carries that spec ([`UnitSpec`]) as JSON
//! text. Rows are read into typed values here, at the storage boundary: kinds,
//! actions and statuses are enums from `phoenix_wire`, never strings compared
//! elsewhere. [`list`] is what users see (`GET /api/v1/tasks`): every kind, newest
//! first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use phoenix_wire::agent::{Task, TaskAction, TaskKind, TaskOutcome, UnitSpec, body_sha256};
use phoenix_wire::view::{AgentTask, TaskFilter, TaskStatus};
use sqlx::FromRow;
use sqlx::postgres::PgConnection;

use crate::hosts::HostFilter;
use crate::{Result, StoreError, corrupt};

/// A task the reconciler wants to exist.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    pub host_id: String,
    pub kind: TaskKind,
    pub unit_id: String,
    pub action: TaskAction,
    /// The hash of `spec` for start/update; empty for stop.
    pub spec_hash: String,
    pub spec: Option<UnitSpec>,
    /// The W3C trace context the task continues (see [`crate::traces`]); the agent
    /// receives it with the task.
    pub traceparent: Option<String>,
}

impl NewTask {
    /// A start or update that brings `spec` about on `host_id`.
    pub fn apply(host_id: &str, action: TaskAction, spec: UnitSpec) -> NewTask {
        NewTask {
            host_id: host_id.to_string(),
            kind: spec.kind(),
            unit_id: spec.unit_id(),
            action,
            spec_hash: spec.hash().to_string(),
            spec: Some(spec),
            traceparent: None,
        }
    }

    /// A stop of the unit `unit_id` of `kind` on `host_id`.
    pub fn stop(host_id: &str, kind: TaskKind, unit_id: &str) -> NewTask {
        NewTask {
            host_id: host_id.to_string(),
            kind,
            unit_id: unit_id.to_string(),
            action: TaskAction::Stop,
            spec_hash: String::new(),
            spec: None,
            traceparent: None,
        }
    }
}

/// Inserts tasks of any kind in one statement; a task that is already open is
/// skipped. Returns how many were new.
///
/// A collector's config body is stored once in `collector_configs`, keyed by its
/// SHA-256, and the task names it: a rollout over 10,000 hosts writes one body, not
/// 10,000 copies. Specs rendered from one template share one body in memory, so
/// each distinct body is hashed once.
pub async fn insert(conn: &mut PgConnection, tasks: &[NewTask]) -> Result<u64> {
    if tasks.is_empty() {
        return Ok(0);
    }
    // Keyed by where the body lives: specs of one template share it.
    let mut hashed: HashMap<usize, String> = HashMap::new();
    let mut bodies: HashMap<String, &str> = HashMap::new();
    // Sent as text and parsed by the server: a rollout writes thousands of specs,
    // and building a JSON tree for each first costs more than the write.
    let mut payloads: Vec<Option<String>> = Vec::with_capacity(tasks.len());
    let mut config_refs: Vec<Option<String>> = Vec::with_capacity(tasks.len());
    for task in tasks {
        match &task.spec {
            Some(UnitSpec::Collector(spec)) if !spec.config.is_empty() => {
                let sha = hashed
                    .entry(spec.config.as_ptr() as usize)
                    .or_insert_with(|| body_sha256(&spec.config))
                    .clone();
                bodies.entry(sha.clone()).or_insert(&spec.config);
                payloads.push(Some(
                    UnitSpec::Collector(spec.without_body(sha.clone())).to_json(),
                ));
                config_refs.push(Some(sha));
            }
            Some(UnitSpec::Collector(spec)) => {
                payloads.push(Some(UnitSpec::Collector(spec.clone()).to_json()));
                config_refs.push(spec.config_ref.clone());
            }
            spec => {
                payloads.push(spec.as_ref().map(UnitSpec::to_json));
                config_refs.push(None);
            }
        }
    }
    if !bodies.is_empty() {
        let (shas, texts): (Vec<&str>, Vec<&str>) = bodies
            .iter()
            .map(|(sha, body)| (sha.as_str(), *body))
            .unzip();
        sqlx::query(
            "INSERT INTO collector_configs (sha256, body) \
             SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (sha256) DO NOTHING",
        )
        .persistent(false)
        .bind(&shas)
        .bind(&texts)
        .execute(&mut *conn)
        .await?;
    }
    let result = sqlx::query(
        "INSERT INTO agent_tasks (kind, host_id, unit_id, action, spec_hash, payload, config_sha256, traceparent) \
         SELECT k, h, u, a, sh, p::jsonb, c, tp \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) \
         AS x(k, h, u, a, sh, p, c, tp) \
         ON CONFLICT (host_id, unit_id, spec_hash, action) WHERE status IN ('pending', 'leased') DO NOTHING",
    )
    .persistent(false)
    .bind(tasks.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.host_id.as_str()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.unit_id.as_str()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.action.as_str()).collect::<Vec<_>>())
    .bind(tasks.iter().map(|t| t.spec_hash.as_str()).collect::<Vec<_>>())
    .bind(&payloads)
    .bind(&config_refs)
    .bind(
        tasks
            .iter()
            .map(|t| t.traceparent.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// The stored config bodies among `shas` (see [`insert`]), by SHA-256.
pub async fn config_bodies(
    conn: &mut PgConnection,
    shas: &[String],
) -> Result<HashMap<String, Arc<str>>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT sha256, body FROM collector_configs WHERE sha256 = ANY($1)")
            .bind(shas)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(sha, body)| (sha, Arc::from(body)))
        .collect())
}

/// The stored config body named `sha256`, if any.
pub async fn config_body(conn: &mut PgConnection, sha256: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT body FROM collector_configs WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(conn)
            .await?,
    )
}

#[derive(FromRow)]
struct ClaimedRow {
    host_id: String,
    id: i64,
    kind: String,
    action: String,
    unit_id: String,
    attempts: i32,
    /// As text: parsed straight into its spec, with no JSON tree in between.
    payload: Option<String>,
    traceparent: Option<String>,
}

/// Claims up to `limit` open tasks of a host in one atomic statement: pending
/// ones, and leased ones whose lease expired (re-delivery), oldest first. Tasks
/// already delivered `max_attempts` times are left for [`fail_exhausted`].
pub async fn claim(
    conn: &mut PgConnection,
    host_id: &str,
    lease: Duration,
    max_attempts: i32,
    limit: i64,
) -> Result<Vec<Task>> {
    let mut claimed = claim_many(conn, &[host_id.to_string()], lease, max_attempts, limit).await?;
    Ok(claimed.remove(host_id).unwrap_or_default())
}

/// [`claim`] for many hosts in one statement (up to `limit` tasks each): what a
/// burst of woken long-polls costs the database. Hosts with nothing to claim are
/// absent from the answer; each host's tasks are oldest first.
pub async fn claim_many(
    conn: &mut PgConnection,
    host_ids: &[String],
    lease: Duration,
    max_attempts: i32,
    limit: i64,
) -> Result<HashMap<String, Vec<Task>>> {
    let rows: Vec<ClaimedRow> = sqlx::query_as(
        "UPDATE agent_tasks t SET status = 'leased', attempts = t.attempts + 1, \
         lease_until = now() + $2 * interval '1 millisecond', updated_at = now() \
         FROM (SELECT c.id FROM unnest($1::text[]) AS h(host_id) \
               CROSS JOIN LATERAL (SELECT id FROM agent_tasks \
                 WHERE host_id = h.host_id AND attempts < $3 \
                 AND (status = 'pending' OR (status = 'leased' AND lease_until < now())) \
                 ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) c) claimable \
         WHERE t.id = claimable.id \
         RETURNING t.host_id, t.id, t.kind, t.action, t.unit_id, t.attempts, t.payload::text AS payload, \
         t.traceparent",
    )
    .persistent(false)
    .bind(host_ids)
    .bind(lease.as_millis() as f64)
    .bind(max_attempts)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    let mut claimed: HashMap<String, Vec<Task>> = HashMap::new();
    for row in rows {
        let host_id = row.host_id.clone();
        let task = claimed_task(row)?;
        claimed.entry(host_id).or_default().push(task);
    }
    for tasks in claimed.values_mut() {
        tasks.sort_by_key(|t| t.id);
    }
    Ok(claimed)
}

fn claimed_task(row: ClaimedRow) -> Result<Task> {
    let what = format!("task {}", row.id);
    let kind = parse_kind(&what, &row.kind)?;
    let spec = row
        .payload
        .map(|payload| UnitSpec::from_json(kind, &payload))
        .transpose()
        .map_err(|e| corrupt(&what, e))?;
    let (collector, load) = match spec {
        None => (None, None),
        Some(UnitSpec::Collector(spec)) => (Some(spec), None),
        Some(UnitSpec::Load(spec)) => (None, Some(spec)),
    };
    Ok(Task {
        id: row.id,
        action: parse_action(&what, &row.action)?,
        collector_id: row.unit_id,
        attempt: row.attempts,
        collector,
        kind,
        load,
        traceparent: row.traceparent,
    })
}

fn parse_kind(what: &str, text: &str) -> Result<TaskKind> {
    TaskKind::parse(text).ok_or_else(|| corrupt(what, format!("unknown kind {text}")))
}

fn parse_action(what: &str, text: &str) -> Result<TaskAction> {
    TaskAction::parse(text).ok_or_else(|| corrupt(what, format!("unknown action {text}")))
}

fn parse_status(what: &str, text: &str) -> Result<TaskStatus> {
    TaskStatus::parse(text).ok_or_else(|| corrupt(what, format!("unknown status {text}")))
}

/// Records an agent's answer. Answering a task that is already finished changes
/// nothing (a re-delivered task may be answered twice) and returns `false`.
pub async fn complete(
    conn: &mut PgConnection,
    host_id: &str,
    task_id: i64,
    outcome: &TaskOutcome,
) -> Result<bool> {
    let answer = (host_id.to_string(), task_id, outcome.clone());
    match complete_many(conn, std::slice::from_ref(&answer)).await?[0] {
        Completion::First => Ok(true),
        Completion::Again => Ok(false),
        Completion::Unknown => Err(StoreError::NotFound(format!(
            "task {task_id} of host {host_id}"
        ))),
    }
}

/// What became of one answer given to [`complete_many`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The task's first answer: recorded.
    First,
    /// The task was already finished; nothing changed.
    Again,
    /// No such task for that host.
    Unknown,
}

/// Records many agents' answers (host, task, outcome) in one statement; one
/// [`Completion`] per answer, in order. Of two answers to one task, the first wins.
pub async fn complete_many(
    conn: &mut PgConnection,
    answers: &[(String, i64, TaskOutcome)],
) -> Result<Vec<Completion>> {
    let hosts: Vec<&str> = answers.iter().map(|(host, _, _)| host.as_str()).collect();
    let ids: Vec<i64> = answers.iter().map(|(_, id, _)| *id).collect();
    let recorded: Vec<i64> = sqlx::query_scalar(
        "UPDATE agent_tasks t SET status = a.status, error = a.error, lease_until = NULL, updated_at = now() \
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS a(id, host_id, status, error) \
         WHERE t.id = a.id AND t.host_id = a.host_id AND t.status IN ('pending', 'leased') \
         RETURNING t.id",
    )
    .persistent(false)
    .bind(&ids)
    .bind(&hosts)
    .bind(
        answers
            .iter()
            .map(|(_, _, o)| if o.ok { "succeeded" } else { "failed" })
            .collect::<Vec<_>>(),
    )
    .bind(
        answers
            .iter()
            .map(|(_, _, o)| o.error.as_deref())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut first: std::collections::HashSet<i64> = recorded.into_iter().collect();
    let mut completions = vec![Completion::Again; answers.len()];
    let mut unsure = Vec::new();
    for (i, (_, id, _)) in answers.iter().enumerate() {
        if first.remove(id) {
            completions[i] = Completion::First;
        } else {
            unsure.push(i);
        }
    }
    if !unsure.is_empty() {
        let known: std::collections::HashSet<(i64, String)> = sqlx::query_as::<_, (i64, String)>(
            "SELECT t.id, t.host_id FROM agent_tasks t \
             JOIN unnest($1::bigint[], $2::text[]) AS a(id, host_id) ON t.id = a.id AND t.host_id = a.host_id",
        )
        .persistent(false)
        .bind(unsure.iter().map(|&i| ids[i]).collect::<Vec<_>>())
        .bind(unsure.iter().map(|&i| hosts[i]).collect::<Vec<_>>())
        .fetch_all(conn)
        .await?
        .into_iter()
        .collect();
        for i in unsure {
            if !known.contains(&(ids[i], hosts[i].to_string())) {
                completions[i] = Completion::Unknown;
            }
        }
    }
    Ok(completions)
}

/// Fails leased tasks whose lease expired after their last allowed delivery.
///
/// Run by every pass on the leader's long-lived session, where a plan prepared
/// while the table was empty is a scan of every task: planned for each run, it
/// reads the expired leases by their index (migration 0019).
pub async fn fail_exhausted(conn: &mut PgConnection, max_attempts: i32) -> Result<u64> {
    let result = sqlx::query(
        "UPDATE agent_tasks SET status = 'failed', updated_at = now(), \
         error = 'the agent did not answer within the lease, ' || attempts || ' times' \
         WHERE status = 'leased' AND lease_until < now() AND attempts >= $1",
    )
    .persistent(false)
    .bind(max_attempts)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Cancels tasks that were not yet claimed.
pub async fn cancel_pending(conn: &mut PgConnection, ids: &[i64]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let result = sqlx::query(
        "UPDATE agent_tasks SET status = 'cancelled', updated_at = now() WHERE id = ANY($1) AND status = 'pending'",
    )
    .persistent(false)
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// An open (pending or leased) task, as the reconciler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenTask {
    pub id: i64,
    pub host_id: String,
    pub kind: TaskKind,
    pub unit_id: String,
    pub action: TaskAction,
    pub spec_hash: String,
    pub status: TaskStatus,
}

#[derive(FromRow)]
struct OpenRow {
    id: i64,
    host_id: String,
    kind: String,
    unit_id: String,
    action: String,
    spec_hash: String,
    status: String,
}

/// Open tasks of every kind: pending and leased ones, and succeeded ones whose
/// host has not reported a status since (within [`UNREPORTED_SUCCESS_WINDOW`]),
/// which are still in flight as far as the diff can tell: without them, a pass
/// between an agent's answer and its status report would ask for the same unit
/// again.
///
/// Read open tasks *before* what hosts report: work moves from "open task" to
/// "reported", so the later read then sees everything the earlier one missed
/// (at worst something twice, which the diff takes in its stride).
pub async fn list_open(conn: &mut PgConnection, filter: HostFilter<'_>) -> Result<Vec<OpenTask>> {
    let sql = format!(
        "SELECT id, host_id, kind, unit_id, action, spec_hash, status FROM agent_tasks \
         WHERE status IN ('pending', 'leased') AND {} \
         UNION ALL \
         SELECT t.id, t.host_id, t.kind, t.unit_id, t.action, t.spec_hash, t.status FROM agent_tasks t \
         JOIN hosts h ON h.host_id = t.host_id \
         WHERE t.status = 'succeeded' AND {} \
         AND t.updated_at > now() - $1 * interval '1 second' AND t.updated_at > h.status_at \
         ORDER BY id",
        // Both halves by an index on host_id (of open tasks, of successes): one
        // lookup per host.
        filter.index_condition("host_id", 2),
        filter.index_condition("t.host_id", 2)
    );
    let query =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(UNREPORTED_SUCCESS_WINDOW.as_secs_f64());
    let rows: Vec<OpenRow> = filter.bind(query).fetch_all(conn).await?;
    rows.into_iter()
        .map(|row| {
            let what = format!("task {}", row.id);
            Ok(OpenTask {
                id: row.id,
                host_id: row.host_id,
                kind: parse_kind(&what, &row.kind)?,
                unit_id: row.unit_id,
                action: parse_action(&what, &row.action)?,
                spec_hash: row.spec_hash,
                status: parse_status(&what, &row.status)?,
            })
        })
        .collect()
}

/// How long a succeeded task waits for its host's status report before the diff
/// stops counting it as in flight (an agent that never reports again).
pub const UNREPORTED_SUCCESS_WINDOW: Duration = Duration::from_secs(600);

/// A failed start or update, for judging whether a unit keeps failing.
#[derive(Clone, Debug, FromRow)]
pub struct FailedTask {
    pub id: i64,
    pub host_id: String,
    pub unit_id: String,
    pub spec_hash: String,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Failed starts and updates of units of `kind` created since `since`, oldest first.
pub async fn failures_since(
    conn: &mut PgConnection,
    kind: TaskKind,
    since: DateTime<Utc>,
) -> Result<Vec<FailedTask>> {
    Ok(sqlx::query_as(
        "SELECT id, host_id, unit_id, spec_hash, error, created_at FROM agent_tasks \
         WHERE status = 'failed' AND action <> 'stop' AND kind = $1 AND created_at >= $2 ORDER BY id",
    )
    .bind(kind.as_str())
    .bind(since)
    .fetch_all(conn)
    .await?)
}

#[derive(FromRow)]
struct TaskRow {
    id: i64,
    host_id: String,
    kind: String,
    unit_id: String,
    action: String,
    spec_hash: String,
    status: String,
    attempts: i32,
    lease_until: Option<DateTime<Utc>>,
    error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Tasks of every kind that match `filter` (a host, a status), newest first, at most
/// `filter.limit`; each names the experiment, deployment or load run it works for.
pub async fn list(conn: &mut PgConnection, filter: &TaskFilter) -> Result<Vec<AgentTask>> {
    let rows: Vec<TaskRow> = sqlx::query_as(
        "SELECT id, host_id, kind, unit_id, action, spec_hash, status, attempts, \
         lease_until, error, created_at, updated_at FROM agent_tasks \
         WHERE ($1::text IS NULL OR host_id = $1) AND ($2::text IS NULL OR status = $2) \
         ORDER BY id DESC LIMIT $3",
    )
    .bind(filter.host.as_deref())
    .bind(filter.status.map(|s| s.as_str()))
    .bind(i64::from(filter.limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            let what = format!("task {}", row.id);
            let mut task = AgentTask {
                id: row.id,
                host: row.host_id,
                kind: parse_kind(&what, &row.kind)?,
                action: parse_action(&what, &row.action)?,
                unit: row.unit_id,
                experiment: None,
                deployment: None,
                loadsim: None,
                status: parse_status(&what, &row.status)?,
                attempts: row.attempts,
                config_hash: row.spec_hash,
                lease_until: row.lease_until,
                error: row.error,
                created_at: row.created_at,
                updated_at: row.updated_at,
            };
            task.set_owner();
            Ok(task)
        })
        .collect()
}
