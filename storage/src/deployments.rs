//! Pipeline deployments (desired state): standing pipelines with their revision
//! history, and the two operations that tie them to experiments — [`promote`] (a
//! completed experiment's candidate becomes a deployment's new revision) and
//! [`rollback_promotion`] (that revision is undone again).
//!
//! A deployment's current state is a copy of its current revision. A rollback marks
//! the current revision rolled back and makes the newest earlier revision that was
//! not rolled back current again (a stack: rolling back twice goes back two steps).
//!
//! A host runs one standing pipeline: when several deployments select it, the
//! oldest wins ([`standing_owner`]); the api refuses to create such overlaps among
//! the registered hosts, and promote picks the deployment the hosts already run.

use chrono::{DateTime, Utc};
use phoenix_wire::deployment::{DeploymentRevision, DeploymentSpec};
use phoenix_wire::names::Labels;
use phoenix_wire::resource::HostTarget;
use phoenix_wire::view::{Experiment, Phase};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, FromRow};

use crate::hosts::HostRecord;
use crate::{Result, StoreError, corrupt, experiments, hosts};

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
    let rows: Vec<DeploymentRow> = sqlx::query_as(&sql).fetch_all(conn).await?;
    rows.into_iter().map(StoredDeployment::try_from).collect()
}

/// The deployment, locked for update when `lock` is set.
async fn find(conn: &mut PgConnection, name: &str, lock: bool) -> Result<Option<StoredDeployment>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE d.name = $1{}",
        if lock { " FOR UPDATE OF d" } else { "" }
    );
    let row: Option<DeploymentRow> = sqlx::query_as(&sql).bind(name).fetch_optional(conn).await?;
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
async fn add_revision(conn: &mut PgConnection, new: &NewRevision<'_>, exists: bool) -> Result<i64> {
    let labels = serde_json::to_value(new.labels).expect("labels serialize");
    let spec = serde_json::to_value(new.spec).expect("spec serializes");
    let revision: i64 = if exists {
        let next: i64 = sqlx::query_scalar(
            "SELECT COALESCE(max(revision), 0) + 1 FROM pipeline_deployment_revisions WHERE deployment = $1",
        )
        .bind(new.name)
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE pipeline_deployments SET spec = $2, revision = $3, labels = $4, updated_at = now() \
             WHERE name = $1",
        )
        .bind(new.name)
        .bind(&spec)
        .bind(next)
        .bind(&labels)
        .execute(&mut *conn)
        .await?;
        next
    } else {
        let inserted = sqlx::query(
            "INSERT INTO pipeline_deployments (name, labels, spec, revision) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(new.name)
        .bind(&labels)
        .bind(&spec)
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

/// What undoing a deployment's current revision did.
enum Undone {
    /// This earlier revision is current again.
    Restored(i64),
    /// There was no earlier revision, and the deployment was removed.
    Removed,
}

/// Undoes the current revision of `deployment` (locked by the caller): the newest
/// earlier revision that was not rolled back becomes current; without one, the
/// deployment is removed if `remove_if_first`, else this is a conflict.
async fn undo(
    conn: &mut PgConnection,
    deployment: &StoredDeployment,
    remove_if_first: bool,
) -> Result<Undone> {
    let name = &deployment.name;
    let previous: Option<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT revision, spec FROM pipeline_deployment_revisions \
         WHERE deployment = $1 AND revision < $2 AND rolled_back_at IS NULL \
         ORDER BY revision DESC LIMIT 1",
    )
    .bind(name)
    .bind(deployment.revision)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((revision, spec)) = previous else {
        if !remove_if_first {
            return Err(StoreError::Conflict(format!(
                "pipeline deployment {name} has no earlier revision to roll back to (it is at revision {}); \
                 to stop running it, delete it (`phoenix pipeline delete-deployment {name}`)",
                deployment.revision
            )));
        }
        delete(conn, name).await?;
        return Ok(Undone::Removed);
    };
    sqlx::query(
        "UPDATE pipeline_deployment_revisions SET rolled_back_at = now() WHERE deployment = $1 AND revision = $2",
    )
    .bind(name)
    .bind(deployment.revision)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE pipeline_deployments SET spec = $2, revision = $3, updated_at = now() WHERE name = $1",
    )
    .bind(name)
    .bind(spec)
    .bind(revision)
    .execute(&mut *conn)
    .await?;
    Ok(Undone::Restored(revision))
}

/// A user's rollback of a deployment to its previous revision (a conflict when
/// there is none). When the undone revision came from promoting an experiment
/// that is still `promoted`, that experiment moves to `rolled-back`.
pub async fn rollback(conn: &mut PgConnection, name: &str) -> Result<StoredDeployment> {
    let mut tx = conn.begin().await?;
    let current = find(&mut tx, name, true)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("pipeline deployment {name}")))?;
    let Undone::Restored(revision) = undo(&mut tx, &current, false).await? else {
        unreachable!("undo without remove_if_first never removes");
    };
    if let Some(experiment) = &current.promoted_from {
        let reason = format!(
            "deployment {name} was rolled back from revision {} (this experiment's promotion) to revision {revision}",
            current.revision
        );
        experiments::transition(
            &mut tx,
            experiment,
            Phase::Promoted,
            Phase::RolledBack,
            &reason,
            None,
        )
        .await?;
    }
    let restored = get(&mut tx, name).await?;
    tx.commit().await?;
    Ok(restored)
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

/// Who asks for a promotion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromotedBy {
    /// A user; `force` promotes a verdict other than `pass`.
    User { force: bool },
    /// The reconciler, for `promotion: auto` and a passing verdict.
    Auto,
}

/// What to promote, and into which deployment (default: see [`promote`]).
pub struct Promotion<'a> {
    pub experiment: &'a str,
    pub deployment: Option<&'a str>,
    pub by: PromotedBy,
}

/// Promotes a completed experiment: its candidate (pipeline, variables and critical
/// processes) becomes the current revision of a deployment, and the experiment
/// moves to `promoted`, in one transaction.
///
/// The deployment is the one named, else the one named after the experiment if it
/// exists, else the one all the experiment's target hosts already run as their
/// standing pipeline (so a rollback restores that), else a new one named after the
/// experiment for exactly its target hosts. An existing deployment keeps its hosts.
///
/// Conflicts (nothing changes): the experiment is not `completed`; its verdict is
/// not `pass` and the user did not force it; none was named and its hosts run
/// several deployments, or some run one and some none; a new deployment would
/// select hosts that run another one.
pub async fn promote(
    conn: &mut PgConnection,
    promotion: Promotion<'_>,
) -> Result<(Experiment, StoredDeployment)> {
    let name = promotion.experiment;
    let mut tx = conn.begin().await?;
    let experiment = lock_experiment(&mut tx, name).await?;
    match experiment.phase {
        Phase::Completed => {}
        Phase::Promoted => {
            return Err(StoreError::Conflict(format!(
                "experiment {name} is already promoted ({}); roll it back with `phoenix experiment rollback {name}` first",
                experiment.reason.as_deref().unwrap_or("no reason recorded")
            )));
        }
        phase => {
            return Err(StoreError::Conflict(format!(
                "experiment {name} is {phase}; only a completed experiment (analyzed, with a verdict) can be promoted"
            )));
        }
    }
    let verdict: Option<String> =
        sqlx::query_scalar("SELECT verdict FROM experiment_results WHERE experiment = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
    let verdict = verdict.unwrap_or_else(|| "missing".to_string());
    let forced = match promotion.by {
        _ if verdict == "pass" => false,
        PromotedBy::User { force: true } => true,
        PromotedBy::User { force: false } | PromotedBy::Auto => {
            return Err(StoreError::Conflict(format!(
                "experiment {name} has the verdict `{verdict}`, not `pass`; see `phoenix experiment report {name}`, \
                 and promote it anyway only on purpose, with force (`phoenix experiment promote {name} --force`, ?force=true)"
            )));
        }
    };
    if experiment.target_hosts.is_empty() {
        return Err(StoreError::Conflict(format!(
            "experiment {name} has no target hosts to promote its candidate to"
        )));
    }
    let (target, existing) = choose_deployment(&mut tx, &experiment, promotion.deployment).await?;
    let candidate = &experiment.spec.candidate;
    let spec = DeploymentSpec {
        hosts: match &existing {
            Some(d) => d.spec.hosts.clone(),
            None => HostTarget {
                selector: None,
                names: Some(experiment.target_hosts.clone()),
            },
        },
        pipeline: candidate.pipeline.clone(),
        vars: candidate.vars.clone(),
        critical_processes: experiment.spec.critical_processes.clone(),
    };
    let how = match promotion.by {
        PromotedBy::Auto => "automatically (promotion: auto)".to_string(),
        PromotedBy::User { .. } if forced => {
            format!("by user, forced past the verdict `{verdict}`")
        }
        PromotedBy::User { .. } => "by user".to_string(),
    };
    let change = format!("promoted from experiment {name} (verdict {verdict}) {how}");
    let labels = existing
        .as_ref()
        .map(|d| d.labels.clone())
        .unwrap_or_default();
    let revision = add_revision(
        &mut tx,
        &NewRevision {
            name: &target,
            labels: &labels,
            spec: &spec,
            promoted_from: Some(name),
            change: &change,
        },
        existing.is_some(),
    )
    .await?;
    let reason = format!(
        "promoted {how} into pipeline deployment {target} (revision {revision}): its hosts now run {} as their standing pipeline",
        spec.pipeline
    );
    experiments::transition(
        &mut tx,
        name,
        Phase::Completed,
        Phase::Promoted,
        &reason,
        None,
    )
    .await?;
    let deployment = get(&mut tx, &target).await?;
    let experiment = experiments::get(&mut tx, name).await?;
    tx.commit().await?;
    Ok((experiment, deployment))
}

/// Locks an experiment's row (a concurrent promote, rollback or reconciler
/// transition waits) and reads it.
async fn lock_experiment(conn: &mut PgConnection, name: &str) -> Result<Experiment> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT name FROM experiments WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    if found.is_none() {
        return Err(StoreError::NotFound(format!("experiment {name}")));
    }
    experiments::get(conn, name).await
}

/// Which deployment a promotion goes into, and that deployment (locked) if it exists.
async fn choose_deployment(
    conn: &mut PgConnection,
    experiment: &Experiment,
    named: Option<&str>,
) -> Result<(String, Option<StoredDeployment>)> {
    let target = named.unwrap_or(&experiment.name);
    if let Some(existing) = find(conn, target, true).await? {
        return Ok((target.to_string(), Some(existing)));
    }
    // A new deployment must not select a host that runs another one.
    let deployments = list(conn).await?;
    let records = hosts::list_records(conn).await?;
    let mut running: Vec<(String, String)> = Vec::new(); // (deployment, host)
    for host in &experiment.target_hosts {
        let labels = records
            .iter()
            .find(|r: &&HostRecord| &r.host_id == host)
            .map(|r| r.labels.clone())
            .unwrap_or_default();
        if let Some(owner) = standing_owner(&deployments, host, &labels) {
            running.push((owner.name.clone(), host.clone()));
        }
    }
    let mut owners: Vec<&str> = running.iter().map(|(d, _)| d.as_str()).collect();
    owners.sort_unstable();
    owners.dedup();
    let listing = || {
        running
            .iter()
            .map(|(d, h)| format!("{h} runs {d}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (named, owners.as_slice()) {
        (_, []) => Ok((target.to_string(), None)),
        (None, [only]) if running.len() == experiment.target_hosts.len() => {
            let existing = find(conn, only, true).await?;
            Ok((only.to_string(), existing))
        }
        (None, [only]) => {
            let bare: Vec<&str> = experiment
                .target_hosts
                .iter()
                .filter(|h| !running.iter().any(|(_, r)| r == *h))
                .map(String::as_str)
                .collect();
            Err(StoreError::Conflict(format!(
                "some target hosts of experiment {} run deployment {only} ({}) and some run none ({}); \
                 promote into {only} with `--deployment {only}` (?deployment={only}) to keep its hosts, \
                 or first make {only} select them all with `phoenix pipeline deploy`",
                experiment.name,
                listing(),
                bare.join(", ")
            )))
        }
        (None, _) => Err(StoreError::Conflict(format!(
            "the target hosts of experiment {} run several standing pipelines ({}); name the deployment to promote into (`--deployment NAME`, ?deployment=NAME)",
            experiment.name,
            listing()
        ))),
        (Some(named), _) => Err(StoreError::Conflict(format!(
            "a new deployment {named} would select hosts that already run another standing pipeline ({}); promote into that deployment instead (`--deployment NAME`)",
            listing()
        ))),
    }
}

/// Rolls back a promoted experiment: the deployment revision its promotion made is
/// undone (the previous revision is current again, or the deployment is removed
/// when it had none) and the experiment moves to `rolled-back`. Returns the
/// experiment and the deployment as it is now (`None` when removed or gone).
///
/// A conflict when the experiment is not `promoted`, or when the deployment has
/// moved on since (a later deploy or promotion is current): undoing the
/// promotion would then undo someone else's change too.
pub async fn rollback_promotion(
    conn: &mut PgConnection,
    name: &str,
) -> Result<(Experiment, Option<StoredDeployment>)> {
    let mut tx = conn.begin().await?;
    let experiment = lock_experiment(&mut tx, name).await?;
    if experiment.phase != Phase::Promoted {
        let hint = if experiment.phase == Phase::Completed {
            " (it was never promoted)"
        } else {
            ""
        };
        return Err(StoreError::Conflict(format!(
            "experiment {name} is {}{hint}; only a promoted experiment can be rolled back",
            experiment.phase
        )));
    }
    let promoted: Option<(String, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT deployment, revision, rolled_back_at FROM pipeline_deployment_revisions \
         WHERE promoted_from = $1 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(name)
    .fetch_optional(&mut *tx)
    .await?;
    let (reason, deployment) = match promoted {
        None => (
            "rolled back: nothing to restore, the pipeline deployment it was promoted into was deleted"
                .to_string(),
            None,
        ),
        Some((deployment, revision, Some(_))) => (
            format!(
                "rolled back: nothing to restore, revision {revision} of pipeline deployment {deployment} was already rolled back"
            ),
            find(&mut tx, &deployment, false).await?,
        ),
        Some((deployment, revision, None)) => {
            let current = find(&mut tx, &deployment, true).await?.ok_or_else(|| {
                corrupt(&format!("deployment {deployment}"), "a revision without its deployment")
            })?;
            if current.revision != revision {
                return Err(StoreError::Conflict(format!(
                    "pipeline deployment {deployment} has moved on since experiment {name} was promoted into it \
                     (revision {revision}): revision {} is current ({}); roll the deployment back with \
                     `phoenix pipeline rollback {deployment}` instead",
                    current.revision, current.change
                )));
            }
            match undo(&mut tx, &current, true).await? {
                Undone::Restored(previous) => {
                    let restored = get(&mut tx, &deployment).await?;
                    (
                        format!(
                            "rolled back: pipeline deployment {deployment} is at revision {previous} again ({})",
                            restored.spec.pipeline
                        ),
                        Some(restored),
                    )
                }
                Undone::Removed => (
                    format!(
                        "rolled back: pipeline deployment {deployment} was removed (the promotion created it)"
                    ),
                    None,
                ),
            }
        }
    };
    experiments::transition(
        &mut tx,
        name,
        Phase::Promoted,
        Phase::RolledBack,
        &reason,
        None,
    )
    .await?;
    let experiment = experiments::get(&mut tx, name).await?;
    tx.commit().await?;
    Ok((experiment, deployment))
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
