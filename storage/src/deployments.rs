//! Pipeline deployments (desired state): standing pipelines and their revision
//! history. Table access only: what promote and rollback mean (which deployment a
//! promotion goes into, when it is refused) is the api's promotion policy
//! (`phoenix_api::app::promotion`), which composes these in one transaction.
//!
//! A deployment's current state is a copy of its current revision. Undoing a
//! revision ([`previous_revision`], [`restore`]) marks it rolled back and makes the
//! newest earlier revision that was not rolled back current again (a stack: rolling
//! back twice goes back two steps).
//!
//! A revision made by [`add_revision`] reaches the hosts through a staged
//! roll-out ([`crate::rollouts`]); a restored one at once.
//!
//! A host runs one standing pipeline: when several deployments select it, the
//! oldest wins ([`standing_owner`]).

use chrono::{DateTime, Utc};
use phoenix_wire::deployment::{DeploymentRevision, DeploymentSpec};
use phoenix_wire::names::Labels;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, FromRow};

use crate::{Result, StoreError, corrupt};

/// A deployment as stored, with what made its current revision.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredDeployment {
    pub name: String,
    pub labels: Labels,
    /// The current revision's spec.
    pub spec: DeploymentSpec,
    pub revision: i64,
    /// The experiment whose promotion made the current revision.
    pub promoted_from: Option<String>,
    /// What made the current revision.
    pub change: String,
    pub managed_by: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the current revision became current.
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "d.name, d.labels, d.spec, d.revision, r.promoted_from, r.change, d.managed_by, \
                       d.created_at, d.updated_at";
const FROM: &str = "pipeline_deployments d JOIN pipeline_deployment_revisions r \
                    ON r.deployment = d.name AND r.revision = d.revision";

#[derive(FromRow)]
struct DeploymentRow {
    name: String,
    labels: serde_json::Value,
    spec: serde_json::Value,
    revision: i64,
    promoted_from: Option<String>,
    change: String,
    managed_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<DeploymentRow> for StoredDeployment {
    type Error = StoreError;

    fn try_from(row: DeploymentRow) -> Result<Self> {
        let what = format!("deployment {}", row.name);
        Ok(StoredDeployment {
            labels: serde_json::from_value(row.labels).map_err(|e| corrupt(&what, e))?,
            spec: serde_json::from_value(row.spec).map_err(|e| corrupt(&what, e))?,
            name: row.name,
            revision: row.revision,
            promoted_from: row.promoted_from,
            change: row.change,
            managed_by: row.managed_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

pub async fn get(conn: &mut PgConnection, name: &str) -> Result<StoredDeployment> {
    find(conn, name, false)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("pipeline deployment {name}")))
}

/// Every deployment, oldest first: the order in which they claim hosts.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<StoredDeployment>> {
    let sql = format!("SELECT {COLUMNS} FROM {FROM} ORDER BY d.created_at, d.name");
    let rows: Vec<DeploymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(StoredDeployment::try_from).collect()
}

/// The deployment, locked for update when `lock` is set. Lock order: an
/// experiment's row before a deployment's, never the other way round.
pub async fn find(
    conn: &mut PgConnection,
    name: &str,
    lock: bool,
) -> Result<Option<StoredDeployment>> {
    if lock {
        // Locked alone, then read by a statement of its own: `FOR UPDATE` on the
        // join would re-check a concurrently updated row against the old revision
        // row, and lose it.
        sqlx::query("SELECT 1 FROM pipeline_deployments WHERE name = $1 FOR UPDATE")
            .bind(name)
            .execute(&mut *conn)
            .await?;
    }
    let sql = format!("SELECT {COLUMNS} FROM {FROM} WHERE d.name = $1");
    let row: Option<DeploymentRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(conn)
        .await?;
    row.map(StoredDeployment::try_from).transpose()
}

#[derive(FromRow)]
struct RevisionRow {
    revision: i64,
    spec: serde_json::Value,
    promoted_from: Option<String>,
    change: String,
    created_at: DateTime<Utc>,
    rolled_back_at: Option<DateTime<Utc>>,
}

/// Every revision of a deployment, newest first.
pub async fn revisions(conn: &mut PgConnection, name: &str) -> Result<Vec<DeploymentRevision>> {
    let rows: Vec<RevisionRow> = sqlx::query_as(
        "SELECT revision, spec, promoted_from, change, created_at, rolled_back_at \
         FROM pipeline_deployment_revisions WHERE deployment = $1 ORDER BY revision DESC",
    )
    .bind(name)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(DeploymentRevision {
                spec: serde_json::from_value(row.spec).map_err(|e| {
                    corrupt(
                        &format!("revision {} of deployment {name}", row.revision),
                        e,
                    )
                })?,
                revision: row.revision,
                promoted_from: row.promoted_from,
                change: row.change,
                created_at: row.created_at,
                rolled_back_at: row.rolled_back_at,
            })
        })
        .collect()
}

/// A spec to make a deployment's current revision.
pub struct NewRevision<'a> {
    pub name: &'a str,
    pub labels: &'a Labels,
    pub spec: &'a DeploymentSpec,
    /// The experiment being promoted, if that is what this is.
    pub promoted_from: Option<&'a str>,
    /// What makes it, for people (`deployed by user`).
    pub change: &'a str,
    /// The W3C trace context of the request that makes it (see [`crate::traces`]).
    pub traceparent: Option<&'a str>,
}

/// What [`apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Created,
    /// The spec changed: a new revision is current.
    Updated,
    /// The spec is the current one: no new revision (labels are still replaced).
    Unchanged,
}

/// Creates a deployment at revision 1 or, when the spec differs from the current
/// one, adds a revision and makes it current. Applying the same spec twice adds
/// nothing, so a GitOps loop may apply as often as it likes.
pub async fn apply(
    conn: &mut PgConnection,
    new: NewRevision<'_>,
) -> Result<(StoredDeployment, Applied)> {
    let mut tx = conn.begin().await?;
    let current = find(&mut tx, new.name, true).await?;
    let applied = match &current {
        Some(current) if current.spec == *new.spec => {
            sqlx::query(
                "UPDATE pipeline_deployments SET labels = $2 WHERE name = $1 AND labels <> $2",
            )
            .bind(new.name)
            .bind(serde_json::to_value(new.labels).expect("labels serialize"))
            .execute(&mut *tx)
            .await?;
            Applied::Unchanged
        }
        Some(_) => {
            add_revision(&mut tx, &new, true).await?;
            Applied::Updated
        }
        None => {
            add_revision(&mut tx, &new, false).await?;
            Applied::Created
        }
    };
    let stored = get(&mut tx, new.name).await?;
    tx.commit().await?;
    Ok((stored, applied))
}

/// Makes `new` the current revision: of the deployment that `exists` (locked by
/// the caller), or of a new one. Returns the revision number.
pub async fn add_revision(
    conn: &mut PgConnection,
    new: &NewRevision<'_>,
    exists: bool,
) -> Result<i64> {
    let labels = serde_json::to_value(new.labels).expect("labels serialize");
    let spec = serde_json::to_value(new.spec).expect("spec serializes");
    // What the hosts run until a batch of the new revision's roll-out reaches them.
    let from = if exists {
        crate::rollouts::settled_revision(conn, new.name).await?
    } else {
        None
    };
    let revision: i64 = if exists {
        let next: i64 = sqlx::query_scalar(
            "SELECT COALESCE(max(revision), 0) + 1 FROM pipeline_deployment_revisions WHERE deployment = $1",
        )
        .bind(new.name)
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE pipeline_deployments SET spec = $2, revision = $3, labels = $4, traceparent = $5, \
             updated_at = now() WHERE name = $1",
        )
        .bind(new.name)
        .bind(&spec)
        .bind(next)
        .bind(&labels)
        .bind(new.traceparent)
        .execute(&mut *conn)
        .await?;
        next
    } else {
        let inserted = sqlx::query(
            "INSERT INTO pipeline_deployments (name, labels, spec, revision, traceparent) \
             VALUES ($1, $2, $3, 1, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(new.name)
        .bind(&labels)
        .bind(&spec)
        .bind(new.traceparent)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "pipeline deployment {} was created by someone else at the same moment; try again",
                new.name
            )));
        }
        1
    };
    sqlx::query(
        "INSERT INTO pipeline_deployment_revisions (deployment, revision, spec, promoted_from, change) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(new.name)
    .bind(revision)
    .bind(&spec)
    .bind(new.promoted_from)
    .bind(new.change)
    .execute(&mut *conn)
    .await?;
    crate::rollouts::begin(conn, new.name, revision, from).await?;
    Ok(revision)
}

/// Deletes a deployment and its history; its collectors go away because nothing
/// desires them any more.
pub async fn delete(conn: &mut PgConnection, name: &str) -> Result<()> {
    let deleted = sqlx::query("DELETE FROM pipeline_deployments WHERE name = $1")
        .bind(name)
        .execute(conn)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(StoreError::NotFound(format!("pipeline deployment {name}")));
    }
    Ok(())
}

/// The newest revision of `name` before `revision` that was not rolled back, with
/// its spec.
pub async fn previous_revision(
    conn: &mut PgConnection,
    name: &str,
    revision: i64,
) -> Result<Option<(i64, DeploymentSpec)>> {
    let previous: Option<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT revision, spec FROM pipeline_deployment_revisions \
         WHERE deployment = $1 AND revision < $2 AND rolled_back_at IS NULL \
         ORDER BY revision DESC LIMIT 1",
    )
    .bind(name)
    .bind(revision)
    .fetch_optional(&mut *conn)
    .await?;
    previous
        .map(|(revision, spec)| {
            let what = format!("revision {revision} of deployment {name}");
            Ok((
                revision,
                serde_json::from_value(spec).map_err(|e| corrupt(&what, e))?,
            ))
        })
        .transpose()
}

/// Marks revision `undone` of `name` (locked by the caller) rolled back and makes
/// `previous` (from [`previous_revision`]) current again. A restored revision is
/// not rolled out in batches: every host runs it at once, and a roll-out still
/// open is closed as superseded. `traceparent` is the rollback request's (see
/// [`crate::traces`]).
pub async fn restore(
    conn: &mut PgConnection,
    name: &str,
    undone: i64,
    (previous, spec): &(i64, DeploymentSpec),
    traceparent: Option<&str>,
) -> Result<()> {
    crate::rollouts::supersede_open(conn, name, &format!("rolled back to revision {previous}"))
        .await?;
    sqlx::query(
        "UPDATE pipeline_deployment_revisions SET rolled_back_at = now() WHERE deployment = $1 AND revision = $2",
    )
    .bind(name)
    .bind(undone)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE pipeline_deployments SET spec = $2, revision = $3, traceparent = $4, updated_at = now() \
         WHERE name = $1",
    )
    .bind(name)
    .bind(serde_json::to_value(spec).expect("spec serializes"))
    .bind(previous)
    .bind(traceparent)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The revision an experiment's latest promotion made: (deployment, revision, when
/// it was rolled back).
pub async fn promoted_revision(
    conn: &mut PgConnection,
    experiment: &str,
) -> Result<Option<(String, i64, Option<DateTime<Utc>>)>> {
    Ok(sqlx::query_as(
        "SELECT deployment, revision, rolled_back_at FROM pipeline_deployment_revisions \
         WHERE promoted_from = $1 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(experiment)
    .fetch_optional(conn)
    .await?)
}

/// The deployment whose standing collector a host runs: the oldest of those that
/// select it (`deployments` in [`list`] order).
pub fn standing_owner<'a>(
    deployments: &'a [StoredDeployment],
    host_id: &str,
    labels: &Labels,
) -> Option<&'a StoredDeployment> {
    deployments.iter().find(|d| d.spec.selects(host_id, labels))
}

/// Completed experiments with `promotion: auto` and a passing verdict: what the
/// reconciler promotes.
pub async fn auto_promotable(conn: &mut PgConnection) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT e.name FROM experiments e JOIN experiment_results r ON r.experiment = e.name \
         WHERE e.phase = 'completed' AND e.spec->>'promotion' = 'auto' AND r.verdict = 'pass' \
         ORDER BY e.phase_changed_at, e.name",
    )
    .fetch_all(conn)
    .await?)
}
