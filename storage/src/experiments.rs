//! Experiments (desired state) and their event history.

use chrono::{DateTime, Utc};
use phoenix_wire::names::Labels;
use phoenix_wire::resource::ExperimentSpec;
use phoenix_wire::view::{Experiment, ExperimentEvent, Phase};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, FromRow};

use crate::{Result, StoreError, corrupt};

const COLUMNS: &str = "name, uid::text AS uid, labels, spec, generation, observed_generation, phase, reason, \
                       target_hosts, managed_by, created_at, updated_at, phase_changed_at";

#[derive(FromRow)]
struct ExperimentRow {
    name: String,
    uid: String,
    labels: serde_json::Value,
    spec: serde_json::Value,
    generation: i64,
    observed_generation: i64,
    phase: String,
    reason: Option<String>,
    target_hosts: Vec<String>,
    managed_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    phase_changed_at: DateTime<Utc>,
}

impl TryFrom<ExperimentRow> for Experiment {
    type Error = StoreError;

    fn try_from(row: ExperimentRow) -> Result<Self> {
        let what = format!("experiment {}", row.name);
        Ok(Experiment {
            labels: serde_json::from_value::<Labels>(row.labels).map_err(|e| corrupt(&what, e))?,
            spec: serde_json::from_value::<ExperimentSpec>(row.spec)
                .map_err(|e| corrupt(&what, e))?,
            phase: Phase::parse(&row.phase)
                .ok_or_else(|| corrupt(&what, format!("unknown phase {}", row.phase)))?,
            name: row.name,
            uid: row.uid,
            generation: row.generation,
            observed_generation: row.observed_generation,
            reason: row.reason,
            target_hosts: row.target_hosts,
            managed_by: row.managed_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
            phase_changed_at: row.phase_changed_at,
        })
    }
}

/// An experiment to create, already validated.
pub struct NewExperiment<'a> {
    pub name: &'a str,
    pub labels: &'a Labels,
    pub spec: &'a ExperimentSpec,
    pub managed_by: Option<&'a str>,
    /// The W3C trace context of the request that creates it (see
    /// [`crate::traces`]).
    pub traceparent: Option<&'a str>,
}

/// Creates an experiment in phase `pending`, with its first event, atomically.
pub async fn create(conn: &mut PgConnection, new: NewExperiment<'_>) -> Result<Experiment> {
    let mut tx = conn.begin().await?;
    let sql = format!(
        "INSERT INTO experiments (name, labels, spec, managed_by, traceparent) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (name) DO NOTHING RETURNING {COLUMNS}"
    );
    let row: Option<ExperimentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(new.name)
        .bind(serde_json::to_value(new.labels).expect("labels serialize"))
        .bind(serde_json::to_value(new.spec).expect("spec serializes"))
        .bind(new.managed_by)
        .bind(new.traceparent)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Err(StoreError::AlreadyExists(format!(
            "experiment {}",
            new.name
        )));
    };
    record_event(&mut tx, new.name, None, Phase::Pending, "created").await?;
    tx.commit().await?;
    row.try_into()
}

pub async fn get(conn: &mut PgConnection, name: &str) -> Result<Experiment> {
    let sql = format!("SELECT {COLUMNS} FROM experiments WHERE name = $1");
    let row: Option<ExperimentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(conn)
        .await?;
    row.ok_or_else(|| StoreError::NotFound(format!("experiment {name}")))?
        .try_into()
}

/// Locks an experiment's row (a concurrent promote, rollback or reconciler
/// transition waits) and reads it. Lock order: an experiment's row before a
/// deployment's.
pub async fn lock(conn: &mut PgConnection, name: &str) -> Result<Experiment> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT name FROM experiments WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    if found.is_none() {
        return Err(StoreError::NotFound(format!("experiment {name}")));
    }
    get(conn, name).await
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<Experiment>> {
    let sql = format!("SELECT {COLUMNS} FROM experiments ORDER BY created_at, name");
    let rows: Vec<ExperimentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(Experiment::try_from).collect()
}

/// Experiments in the given phases (the reconciler's working set).
pub async fn list_in_phases(conn: &mut PgConnection, phases: &[Phase]) -> Result<Vec<Experiment>> {
    let phases: Vec<&str> = phases.iter().map(|p| p.as_str()).collect();
    let sql = format!(
        "SELECT {COLUMNS} FROM experiments WHERE phase = ANY($1) ORDER BY created_at, name"
    );
    let rows: Vec<ExperimentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&phases)
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(Experiment::try_from).collect()
}

/// Deletes an experiment. Its collectors go away because nothing desires them any
/// more; its events stay as history.
pub async fn delete(conn: &mut PgConnection, name: &str) -> Result<()> {
    let mut tx = conn.begin().await?;
    let phase: Option<String> =
        sqlx::query_scalar("DELETE FROM experiments WHERE name = $1 RETURNING phase")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(phase) = phase else {
        return Err(StoreError::NotFound(format!("experiment {name}")));
    };
    sqlx::query("INSERT INTO experiment_events (experiment, from_phase, to_phase, reason) VALUES ($1, $2, $2, $3)")
        .bind(name)
        .bind(&phase)
        .bind("deleted by user")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Moves an experiment from `from` to `to`, recording the event, only if it is
/// still in `from` (a compare-and-set, so a user's stop and the reconciler never
/// overwrite each other). Returns whether the transition happened.
pub async fn transition(
    conn: &mut PgConnection,
    name: &str,
    from: Phase,
    to: Phase,
    reason: &str,
    target_hosts: Option<&[String]>,
) -> Result<bool> {
    let mut tx = conn.begin().await?;
    let updated = sqlx::query(
        "UPDATE experiments SET phase = $3, reason = $4, target_hosts = COALESCE($5, target_hosts), \
         observed_generation = generation, phase_changed_at = now(), updated_at = now() \
         WHERE name = $1 AND phase = $2",
    )
    .bind(name)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(reason)
    .bind(target_hosts)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 1 {
        record_event(&mut tx, name, Some(from), to, reason).await?;
    }
    tx.commit().await?;
    Ok(updated == 1)
}

/// A user's stop: any phase that is not terminal becomes `stopped`. The row is
/// locked first, so a concurrent reconciler transition waits and then finds the
/// phase changed (its compare-and-set fails) instead of the user's stop failing.
pub async fn stop(conn: &mut PgConnection, name: &str, reason: &str) -> Result<Experiment> {
    let mut tx = conn.begin().await?;
    let phase: Option<String> =
        sqlx::query_scalar("SELECT phase FROM experiments WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let phase = phase.ok_or_else(|| StoreError::NotFound(format!("experiment {name}")))?;
    let phase = Phase::parse(&phase)
        .ok_or_else(|| corrupt(&format!("experiment {name}"), "unknown phase"))?;
    if phase.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "experiment {name} is already {phase}; only an experiment that is still pending, deploying, running or analyzing can be stopped"
        )));
    }
    transition(&mut tx, name, phase, Phase::Stopped, reason, None).await?;
    tx.commit().await?;
    get(conn, name).await
}

async fn record_event(
    conn: &mut PgConnection,
    name: &str,
    from: Option<Phase>,
    to: Phase,
    reason: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO experiment_events (experiment, from_phase, to_phase, reason) VALUES ($1, $2, $3, $4)")
        .bind(name)
        .bind(from.map(Phase::as_str))
        .bind(to.as_str())
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records that task `task_id` of experiment `name` failed (an event in its
/// current `phase`), once: the same task again is a no-op. True when recorded now.
pub async fn record_task_event(
    conn: &mut PgConnection,
    name: &str,
    phase: Phase,
    task_id: i64,
    reason: &str,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO experiment_events (experiment, from_phase, to_phase, reason, task_id) \
         VALUES ($1, $2, $2, $3, $4) \
         ON CONFLICT (experiment, task_id) WHERE task_id IS NOT NULL DO NOTHING",
    )
    .bind(name)
    .bind(phase.as_str())
    .bind(reason)
    .bind(task_id)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// The events of experiment `name` that record a failed task, oldest first.
pub async fn task_events(conn: &mut PgConnection, name: &str) -> Result<Vec<ExperimentEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT id, experiment, from_phase, to_phase, reason, at FROM experiment_events \
         WHERE experiment = $1 AND task_id IS NOT NULL ORDER BY id",
    )
    .bind(name)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(event_from_row).collect()
}

#[derive(FromRow)]
struct EventRow {
    id: i64,
    experiment: String,
    from_phase: Option<String>,
    to_phase: String,
    reason: String,
    at: DateTime<Utc>,
}

/// The recorded events of an experiment (also after it was deleted), oldest first.
pub async fn events(conn: &mut PgConnection, name: &str) -> Result<Vec<ExperimentEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT id, experiment, from_phase, to_phase, reason, at FROM experiment_events \
         WHERE experiment = $1 ORDER BY id",
    )
    .bind(name)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(event_from_row).collect()
}

fn event_from_row(row: EventRow) -> Result<ExperimentEvent> {
    let phase =
        |p: &str| Phase::parse(p).ok_or_else(|| corrupt("event", format!("unknown phase {p}")));
    Ok(ExperimentEvent {
        id: row.id,
        from_phase: row.from_phase.as_deref().map(phase).transpose()?,
        to_phase: phase(&row.to_phase)?,
        experiment: row.experiment,
        reason: row.reason,
        at: row.at,
    })
}
