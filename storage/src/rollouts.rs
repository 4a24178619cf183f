//! Staged roll-outs of deployment revisions (table `deployment_rollouts`) and
//! their steps (`deployment_events`). Table access only: which hosts go next and
//! when a roll-out stops is the reconciler's (`phoenix_reconciler::rollout`).
//!
//! A roll-out is made with its revision ([`begin`], called by
//! [`crate::deployments::add_revision`]), from the revision the hosts were
//! settled on ([`settled_revision`]): the current one, or, while the current one is
//! still rolling out, the one that roll-out came from. A restored revision (any
//! rollback) is not rolled out: it runs at once, and an open roll-out is closed
//! as superseded ([`supersede_open`], called by [`crate::deployments::restore`]).

use chrono::{DateTime, Utc};
use phoenix_wire::deployment::DeploymentSpec;
use phoenix_wire::rollout::{Rollout, RolloutEvent, RolloutState, RolloutStep};
use sqlx::FromRow;
use sqlx::postgres::PgConnection;

use crate::{Result, StoreError, corrupt};

/// A roll-out with its deployment's name.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRollout {
    pub deployment: String,
    pub rollout: Rollout,
}

/// The roll-out of a deployment's current revision that still decides what its
/// hosts run (pending or rolling), with the spec of the revision the hosts not
/// reached run.
#[derive(Clone, Debug, PartialEq)]
pub struct CurrentRollout {
    pub deployment: String,
    pub rollout: Rollout,
    /// The spec of `rollout.from_revision`.
    pub from_spec: Option<DeploymentSpec>,
}

const COLUMNS: &str = "r.deployment, r.revision, r.from_revision, r.state, r.batch, \
                       r.batch_started_at, r.hosts, r.reason, r.started_at, r.finished_at";

#[derive(FromRow)]
struct RolloutRow {
    deployment: String,
    revision: i64,
    from_revision: Option<i64>,
    state: String,
    batch: i32,
    batch_started_at: Option<DateTime<Utc>>,
    hosts: serde_json::Value,
    reason: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<RolloutRow> for StoredRollout {
    type Error = StoreError;

    fn try_from(row: RolloutRow) -> Result<Self> {
        let what = format!(
            "roll-out of revision {} of {}",
            row.revision, row.deployment
        );
        let state = RolloutState::parse(&row.state)
            .ok_or_else(|| corrupt(&what, format!("unknown state `{}`", row.state)))?;
        Ok(StoredRollout {
            rollout: Rollout {
                revision: row.revision,
                from_revision: row.from_revision,
                state,
                batch: row.batch.max(0) as u32,
                batch_started_at: row.batch_started_at,
                hosts: serde_json::from_value(row.hosts).map_err(|e| corrupt(&what, e))?,
                reason: row.reason,
                started_at: row.started_at,
                finished_at: row.finished_at,
            },
            deployment: row.deployment,
        })
    }
}

/// The revision `name`'s hosts are settled on: its current revision, unless that
/// is still rolling out (then the one it comes from). `None` when the deployment
/// does not exist, or its first revision is still rolling out.
pub async fn settled_revision(conn: &mut PgConnection, name: &str) -> Result<Option<i64>> {
    let row: Option<(i64, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT d.revision, r.state, r.from_revision FROM pipeline_deployments d \
         LEFT JOIN deployment_rollouts r ON r.deployment = d.name AND r.revision = d.revision \
         WHERE d.name = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    Ok(row.and_then(|(revision, state, from)| {
        match state.as_deref().and_then(RolloutState::parse) {
            Some(RolloutState::Pending | RolloutState::Rolling) => from,
            _ => Some(revision),
        }
    }))
}

/// Starts the roll-out of `revision` (just made current) from `from`, closing
/// the deployment's open roll-out as superseded first.
pub async fn begin(
    conn: &mut PgConnection,
    deployment: &str,
    revision: i64,
    from: Option<i64>,
) -> Result<()> {
    supersede_open(
        conn,
        deployment,
        &format!("revision {revision} became current before it finished"),
    )
    .await?;
    sqlx::query(
        "INSERT INTO deployment_rollouts (deployment, revision, from_revision, state) \
         VALUES ($1, $2, $3, 'pending')",
    )
    .bind(deployment)
    .bind(revision)
    .bind(from)
    .execute(conn)
    .await?;
    Ok(())
}

/// Closes the deployment's open roll-out (if any) as superseded, with an event.
pub async fn supersede_open(conn: &mut PgConnection, deployment: &str, reason: &str) -> Result<()> {
    let closed: Vec<i64> = sqlx::query_scalar(
        "UPDATE deployment_rollouts SET state = 'superseded', reason = $2, finished_at = now() \
         WHERE deployment = $1 AND state IN ('pending', 'rolling') RETURNING revision",
    )
    .bind(deployment)
    .bind(reason)
    .fetch_all(&mut *conn)
    .await?;
    for revision in closed {
        record_event(
            conn,
            &NewEvent {
                deployment,
                revision,
                step: RolloutStep::Superseded,
                batch: None,
                host: None,
                reason,
            },
        )
        .await?;
    }
    Ok(())
}

/// Every roll-out that still decides what a deployment's hosts run: that of the
/// current revision while pending or rolling.
pub async fn current(conn: &mut PgConnection) -> Result<Vec<CurrentRollout>> {
    rollouts_with_from(conn, "('pending', 'rolling')", None).await
}

/// Open roll-outs (pending, rolling) of current revisions: what the reconciler's
/// roll-out step works on.
pub async fn open(conn: &mut PgConnection) -> Result<Vec<CurrentRollout>> {
    rollouts_with_from(conn, "('pending', 'rolling')", None).await
}

/// The open roll-out of `deployment`'s current revision, locked for update.
pub async fn lock_open(
    conn: &mut PgConnection,
    deployment: &str,
) -> Result<Option<CurrentRollout>> {
    Ok(
        rollouts_with_from(conn, "('pending', 'rolling')", Some(deployment))
            .await?
            .pop(),
    )
}

/// Roll-outs in `states` of current revisions, with the spec they come from; only
/// `lock`'s, locked for update, when given.
async fn rollouts_with_from(
    conn: &mut PgConnection,
    states: &'static str,
    lock: Option<&str>,
) -> Result<Vec<CurrentRollout>> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        rollout: RolloutRow,
        from_spec: Option<serde_json::Value>,
    }
    let sql = format!(
        "SELECT {COLUMNS}, f.spec AS from_spec FROM deployment_rollouts r \
         JOIN pipeline_deployments d ON d.name = r.deployment AND d.revision = r.revision \
         LEFT JOIN pipeline_deployment_revisions f \
           ON f.deployment = r.deployment AND f.revision = r.from_revision \
         WHERE r.state IN {states} AND ($1::text IS NULL OR r.deployment = $1) \
         ORDER BY r.deployment{}",
        if lock.is_some() {
            " FOR UPDATE OF r"
        } else {
            ""
        }
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(lock)
        .fetch_all(conn)
        .await?;
    rows.into_iter()
        .map(|row| {
            let what = format!(
                "revision {:?} of {}",
                row.rollout.from_revision, row.rollout.deployment
            );
            let from_spec = row
                .from_spec
                .map(|s| serde_json::from_value(s).map_err(|e| corrupt(&what, e)))
                .transpose()?;
            let stored = StoredRollout::try_from(row.rollout)?;
            Ok(CurrentRollout {
                deployment: stored.deployment,
                rollout: stored.rollout,
                from_spec,
            })
        })
        .collect()
}

/// The deployment's latest roll-out.
pub async fn latest(conn: &mut PgConnection, deployment: &str) -> Result<Option<Rollout>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM deployment_rollouts r WHERE r.deployment = $1 \
         ORDER BY r.started_at DESC, r.revision DESC LIMIT 1"
    );
    let row: Option<RolloutRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(deployment)
        .fetch_optional(conn)
        .await?;
    Ok(row
        .map(StoredRollout::try_from)
        .transpose()?
        .map(|s| s.rollout))
}

/// Every deployment's latest roll-out, by deployment name.
pub async fn latest_all(
    conn: &mut PgConnection,
) -> Result<std::collections::HashMap<String, Rollout>> {
    let sql = format!(
        "SELECT DISTINCT ON (r.deployment) {COLUMNS} FROM deployment_rollouts r \
         ORDER BY r.deployment, r.started_at DESC, r.revision DESC"
    );
    let rows: Vec<RolloutRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?;
    rows.into_iter()
        .map(|row| StoredRollout::try_from(row).map(|s| (s.deployment, s.rollout)))
        .collect()
}

/// Writes a roll-out's state, batch, hosts and reason (and `finished_at` once it
/// is no longer open).
pub async fn save(conn: &mut PgConnection, deployment: &str, rollout: &Rollout) -> Result<()> {
    sqlx::query(
        "UPDATE deployment_rollouts SET state = $3, batch = $4, batch_started_at = $5, hosts = $6, \
         reason = $7, finished_at = CASE WHEN $8 THEN NULL ELSE COALESCE(finished_at, now()) END \
         WHERE deployment = $1 AND revision = $2",
    )
    .bind(deployment)
    .bind(rollout.revision)
    .bind(rollout.state.as_str())
    .bind(rollout.batch as i32)
    .bind(rollout.batch_started_at)
    .bind(serde_json::to_value(&rollout.hosts).expect("hosts serialize"))
    .bind(&rollout.reason)
    .bind(rollout.state.is_open())
    .execute(conn)
    .await?;
    Ok(())
}

/// A step to record.
pub struct NewEvent<'a> {
    pub deployment: &'a str,
    pub revision: i64,
    pub step: RolloutStep,
    pub batch: Option<u32>,
    pub host: Option<&'a str>,
    pub reason: &'a str,
}

/// Records a step (announced on the event stream by the table's trigger); the
/// experiment is the one whose promotion made the revision.
pub async fn record_event(conn: &mut PgConnection, event: &NewEvent<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO deployment_events (deployment, revision, experiment, step, batch, host, reason) \
         VALUES ($1, $2, (SELECT promoted_from FROM pipeline_deployment_revisions \
                          WHERE deployment = $1 AND revision = $2), $3, $4, $5, $6)",
    )
    .bind(event.deployment)
    .bind(event.revision)
    .bind(event.step.as_str())
    .bind(event.batch.map(|b| b as i32))
    .bind(event.host)
    .bind(event.reason)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(FromRow)]
struct EventRow {
    id: i64,
    deployment: String,
    revision: i64,
    experiment: Option<String>,
    step: String,
    batch: Option<i32>,
    host: Option<String>,
    reason: String,
    at: DateTime<Utc>,
}

impl From<EventRow> for RolloutEvent {
    fn from(row: EventRow) -> Self {
        RolloutEvent {
            id: row.id,
            deployment: row.deployment,
            revision: row.revision,
            experiment: row.experiment,
            step: row.step,
            batch: row.batch.map(|b| b.max(0) as u32),
            host: row.host,
            reason: row.reason,
            at: row.at,
        }
    }
}

/// A deployment's steps, oldest first.
pub async fn events(conn: &mut PgConnection, deployment: &str) -> Result<Vec<RolloutEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT id, deployment, revision, experiment, step, batch, host, reason, at \
         FROM deployment_events WHERE deployment = $1 ORDER BY id",
    )
    .bind(deployment)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(RolloutEvent::from).collect())
}

/// The steps of roll-outs of revisions an experiment's promotion made, oldest first.
pub async fn events_of_experiment(
    conn: &mut PgConnection,
    experiment: &str,
) -> Result<Vec<RolloutEvent>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT id, deployment, revision, experiment, step, batch, host, reason, at \
         FROM deployment_events WHERE experiment = $1 ORDER BY id",
    )
    .bind(experiment)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(RolloutEvent::from).collect())
}
