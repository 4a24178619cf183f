//! The promotion policy: what promote and rollback mean, and when they are refused.
//!
//! - [`promote`]: a completed experiment's candidate (pipeline, variables, critical
//!   processes) becomes the current revision of a pipeline deployment, and the
//!   experiment moves to `promoted`.
//! - [`rollback_promotion`]: that revision is undone again, and the experiment
//!   moves to `rolled-back`.
//! - [`rollback_deployment`]: a user's rollback of a deployment to its previous
//!   revision; when the undone revision came from a promotion, that experiment
//!   moves to `rolled-back` too.
//!
//! Each is one transaction composed of `phoenix_storage` queries. They take row
//! locks in one order, an experiment's before a deployment's, so they cannot
//! deadlock each other; a serialization failure or deadlock with anything else is
//! retried a few times and then answered as a [`Conflict::Concurrent`] (a 409 that
//! says to retry), never a 500. Refusals are typed ([`Conflict`]); their user hints
//! live in one place, its `Display`.
//!
//! The reconciler's `promotion: auto` step calls [`promote`] too, so a user's and an
//! automatic promotion follow the same rules.
//!
//! Git stays the truth: a deployment owned by a GitOps source (`managed_by`, set by
//! `phoenix apply`/`phoenix sync`) is never changed by a promotion or a rollback
//! ([`Conflict::ManagedByGit`], a 409 that says "change it in git" and what to
//! write there), because the source's next round would silently put its spec back.
//! Conversely apply never takes over a deployment it does not own, so a promotion
//! into one made by hand or by a promotion is never undone by a sync.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use phoenix_storage::deployments::{self, NewRevision, StoredDeployment};
use phoenix_storage::hosts::{self, HostFilter, HostRecord};
use phoenix_storage::{PgConnection, StoreError, experiments, results};
use phoenix_wire::deployment::DeploymentSpec;
use phoenix_wire::resource::HostTarget;
use phoenix_wire::view::{Experiment, Phase};
use sqlx::Connection;

/// Who asks for a promotion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromotedBy {
    /// A user; `force` promotes a verdict other than `pass`.
    User { force: bool },
    /// The reconciler, for `promotion: auto` and a passing verdict.
    Auto,
}

/// What to promote, and into which deployment (default: see [`promote`]).
#[derive(Clone, Debug)]
pub struct Promotion {
    pub experiment: String,
    pub deployment: Option<String>,
    pub by: PromotedBy,
}

/// Why a promotion or rollback was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conflict {
    AlreadyPromoted {
        experiment: String,
        reason: String,
    },
    NotCompleted {
        experiment: String,
        phase: Phase,
    },
    VerdictNotPass {
        experiment: String,
        verdict: String,
    },
    NoTargetHosts {
        experiment: String,
    },
    /// Some target hosts run `deployment`, and some (`bare`) run none.
    PartlyDeployed {
        experiment: String,
        deployment: String,
        running: Vec<(String, String)>,
        bare: Vec<String>,
    },
    /// The target hosts run several deployments.
    SeveralDeployments {
        experiment: String,
        running: Vec<(String, String)>,
    },
    /// A new deployment named `deployment` would select hosts that run another.
    NewWouldOverlap {
        deployment: String,
        running: Vec<(String, String)>,
    },
    NotPromoted {
        experiment: String,
        phase: Phase,
    },
    /// The deployment moved on since the experiment's promotion.
    DeploymentMovedOn {
        experiment: String,
        deployment: String,
        promoted: i64,
        current: i64,
        change: String,
    },
    NoEarlierRevision {
        deployment: String,
        revision: i64,
    },
    /// The deployment is owned by a GitOps source (`managed_by`): the next apply or
    /// sync would put the git spec back, so the change must be made in git.
    ManagedByGit {
        deployment: String,
        source: String,
        /// What to write in git: the candidate's pipeline and variables (a
        /// promotion), or `None` (a rollback).
        wanted: Option<(String, String)>,
    },
    /// A concurrent change kept colliding with this one.
    Concurrent {
        what: String,
    },
}

fn listing(running: &[(String, String)]) -> String {
    running
        .iter()
        .map(|(deployment, host)| format!("{host} runs {deployment}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::AlreadyPromoted { experiment, reason } => write!(
                f,
                "experiment {experiment} is already promoted ({reason}); roll it back with \
                 `phoenix experiment rollback {experiment}` first"
            ),
            Conflict::NotCompleted { experiment, phase } => write!(
                f,
                "experiment {experiment} is {phase}; only a completed experiment (analyzed, \
                 with a verdict) can be promoted"
            ),
            Conflict::VerdictNotPass {
                experiment,
                verdict,
            } => write!(
                f,
                "experiment {experiment} has the verdict `{verdict}`, not `pass`; see \
                 `phoenix experiment report {experiment}`, and promote it anyway only on purpose, \
                 with force (`phoenix experiment promote {experiment} --force`, ?force=true)"
            ),
            Conflict::NoTargetHosts { experiment } => write!(
                f,
                "experiment {experiment} has no target hosts to promote its candidate to"
            ),
            Conflict::PartlyDeployed {
                experiment,
                deployment,
                running,
                bare,
            } => write!(
                f,
                "some target hosts of experiment {experiment} run deployment {deployment} ({}) \
                 and some run none ({}); promote into {deployment} with `--deployment {deployment}` \
                 (?deployment={deployment}) to keep its hosts, or first make {deployment} select \
                 them all with `phoenix pipeline deploy`",
                listing(running),
                bare.join(", ")
            ),
            Conflict::SeveralDeployments {
                experiment,
                running,
            } => write!(
                f,
                "the target hosts of experiment {experiment} run several standing pipelines ({}); \
                 name the deployment to promote into (`--deployment NAME`, ?deployment=NAME)",
                listing(running)
            ),
            Conflict::NewWouldOverlap {
                deployment,
                running,
            } => write!(
                f,
                "a new deployment {deployment} would select hosts that already run another \
                 standing pipeline ({}); promote into that deployment instead (`--deployment NAME`)",
                listing(running)
            ),
            Conflict::NotPromoted { experiment, phase } => {
                let hint = if *phase == Phase::Completed {
                    " (it was never promoted)"
                } else {
                    ""
                };
                write!(
                    f,
                    "experiment {experiment} is {phase}{hint}; only a promoted experiment can be \
                     rolled back"
                )
            }
            Conflict::DeploymentMovedOn {
                experiment,
                deployment,
                promoted,
                current,
                change,
            } => write!(
                f,
                "pipeline deployment {deployment} has moved on since experiment {experiment} was \
                 promoted into it (revision {promoted}): revision {current} is current ({change}); \
                 roll the deployment back with `phoenix pipeline rollback {deployment}` instead"
            ),
            Conflict::NoEarlierRevision {
                deployment,
                revision,
            } => write!(
                f,
                "pipeline deployment {deployment} has no earlier revision to roll back to (it is \
                 at revision {revision}); to stop running it, delete it \
                 (`phoenix pipeline delete-deployment {deployment}`)"
            ),
            Conflict::ManagedByGit {
                deployment,
                source,
                wanted,
            } => {
                write!(
                    f,
                    "pipeline deployment {deployment} is managed by the GitOps source `{source}`, \
                     whose next apply or sync would silently put its spec back; change it in git"
                )?;
                match wanted {
                    Some((pipeline, vars)) => write!(
                        f,
                        ": set spec.pipeline: {pipeline}{vars} in its document, and the sync rolls \
                         it out (nothing was changed here)"
                    ),
                    None => write!(
                        f,
                        ": revert the commit that changed its document (nothing was changed here)"
                    ),
                }
            }
            Conflict::Concurrent { what } => write!(
                f,
                "{what} was changed by concurrent requests at the same moment; nothing was done, \
                 retry"
            ),
        }
    }
}

/// A refused or failed promotion or rollback.
#[derive(Debug, thiserror::Error)]
pub enum PromotionError {
    #[error("{0}")]
    Conflict(Conflict),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Conflict> for PromotionError {
    fn from(conflict: Conflict) -> Self {
        PromotionError::Conflict(conflict)
    }
}

impl From<sqlx::Error> for PromotionError {
    fn from(err: sqlx::Error) -> Self {
        PromotionError::Store(err.into())
    }
}

impl PromotionError {
    /// A deadlock, a serialization failure or a collision seen by the policy
    /// itself: the whole transaction may be retried.
    fn is_retryable(&self) -> bool {
        match self {
            PromotionError::Conflict(Conflict::Concurrent { .. }) => true,
            PromotionError::Store(err) => err.is_concurrency_failure(),
            PromotionError::Conflict(_) => false,
        }
    }
}

type Step<'c, T> = Pin<Box<dyn Future<Output = Result<T, PromotionError>> + Send + 'c>>;

/// Transactions that collide with concurrent ones are tried this often.
const ATTEMPTS: usize = 3;

/// Runs `step` in a transaction, again when it hits a deadlock or serialization
/// failure, and answers [`Conflict::Concurrent`] when that keeps happening.
async fn in_transaction<T>(
    conn: &mut PgConnection,
    what: &str,
    mut step: impl for<'c> FnMut(&'c mut PgConnection) -> Step<'c, T>,
) -> Result<T, PromotionError> {
    for _ in 0..ATTEMPTS {
        let mut tx = conn.begin().await?;
        match step(&mut tx).await {
            Ok(value) => {
                tx.commit().await?;
                return Ok(value);
            }
            Err(err) if err.is_retryable() => {
                tracing::info!(what, error = %err, "transaction collided; retrying");
            }
            Err(err) => return Err(err),
        }
    }
    Err(Conflict::Concurrent {
        what: what.to_string(),
    }
    .into())
}

/// Promotes a completed experiment: its candidate becomes the current revision of
/// a deployment, and the experiment moves to `promoted`, in one transaction.
///
/// The deployment is the one named, else the one named after the experiment if it
/// exists, else the one all the experiment's target hosts already run as their
/// standing pipeline (so a rollback restores that), else a new one named after the
/// experiment for exactly its target hosts. An existing deployment keeps its hosts.
pub async fn promote(
    conn: &mut PgConnection,
    promotion: &Promotion,
) -> Result<(Experiment, StoredDeployment), PromotionError> {
    let what = format!("experiment {}", promotion.experiment);
    in_transaction(conn, &what, |tx| {
        let promotion = promotion.clone();
        Box::pin(async move { promote_in(tx, &promotion).await })
    })
    .await
}

async fn promote_in(
    tx: &mut PgConnection,
    promotion: &Promotion,
) -> Result<(Experiment, StoredDeployment), PromotionError> {
    let name = promotion.experiment.as_str();
    let experiment = experiments::lock(tx, name).await?;
    match experiment.phase {
        Phase::Completed => {}
        Phase::Promoted => {
            return Err(Conflict::AlreadyPromoted {
                experiment: name.into(),
                reason: experiment
                    .reason
                    .unwrap_or_else(|| "no reason recorded".into()),
            }
            .into());
        }
        phase => {
            return Err(Conflict::NotCompleted {
                experiment: name.into(),
                phase,
            }
            .into());
        }
    }
    let verdict = results::verdict(tx, name)
        .await?
        .unwrap_or_else(|| "missing".to_string());
    let forced = match promotion.by {
        _ if verdict == "pass" => false,
        PromotedBy::User { force: true } => true,
        PromotedBy::User { force: false } | PromotedBy::Auto => {
            return Err(Conflict::VerdictNotPass {
                experiment: name.into(),
                verdict,
            }
            .into());
        }
    };
    if experiment.target_hosts.is_empty() {
        return Err(Conflict::NoTargetHosts {
            experiment: name.into(),
        }
        .into());
    }
    let (target, existing) =
        choose_deployment(tx, &experiment, promotion.deployment.as_deref()).await?;
    let candidate = &experiment.spec.candidate;
    if let Some(source) = existing.as_ref().and_then(|d| d.managed_by.clone()) {
        let vars = if candidate.vars.is_empty() {
            String::new()
        } else {
            let pairs: Vec<String> = candidate
                .vars
                .iter()
                .map(|(k, v)| format!("{k}: \"{v}\""))
                .collect();
            format!(" and spec.vars: {{{}}}", pairs.join(", "))
        };
        return Err(Conflict::ManagedByGit {
            deployment: target,
            source,
            wanted: Some((candidate.pipeline.clone(), vars)),
        }
        .into());
    }
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
        // Where the deployment exports is the admin's choice, not the experiment's.
        destinations: existing
            .as_ref()
            .map(|d| d.spec.destinations.clone())
            .unwrap_or_default(),
        // So is how fast a new revision reaches its hosts.
        rollout: existing
            .as_ref()
            .map(|d| d.spec.rollout.clone())
            .unwrap_or_default(),
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
    let revision = deployments::add_revision(
        tx,
        &NewRevision {
            name: &target,
            labels: &labels,
            spec: &spec,
            promoted_from: Some(name),
            change: &change,
            traceparent: phoenix_telemetry::current_traceparent().as_deref(),
        },
        existing.is_some(),
    )
    .await?;
    let reason = format!(
        "promoted {how} into pipeline deployment {target} (revision {revision}): it rolls out {} as the standing pipeline of every host the deployment selects, in batches (see `phoenix deployment get {target}`)",
        spec.pipeline
    );
    experiments::transition(tx, name, Phase::Completed, Phase::Promoted, &reason, None).await?;
    let deployment = deployments::get(tx, &target).await?;
    let experiment = experiments::get(tx, name).await?;
    Ok((experiment, deployment))
}

/// Which deployment a promotion goes into, and that deployment (locked) if it exists.
async fn choose_deployment(
    conn: &mut PgConnection,
    experiment: &Experiment,
    named: Option<&str>,
) -> Result<(String, Option<StoredDeployment>), PromotionError> {
    let target = named.unwrap_or(&experiment.name);
    if let Some(existing) = deployments::find(conn, target, true).await? {
        return Ok((target.to_string(), Some(existing)));
    }
    // A new deployment must not select a host that runs another one.
    let all = deployments::list(conn).await?;
    let records = hosts::list_records(conn, HostFilter::All).await?;
    let mut running: Vec<(String, String)> = Vec::new(); // (deployment, host)
    for host in &experiment.target_hosts {
        let labels = records
            .iter()
            .find(|r: &&HostRecord| &r.host_id == host)
            .map(|r| r.labels.clone())
            .unwrap_or_default();
        if let Some(owner) = deployments::standing_owner(&all, host, &labels) {
            running.push((owner.name.clone(), host.clone()));
        }
    }
    let mut owners: Vec<&str> = running.iter().map(|(d, _)| d.as_str()).collect();
    owners.sort_unstable();
    owners.dedup();
    let conflict = match (named, owners.as_slice()) {
        (_, []) => return Ok((target.to_string(), None)),
        (None, [only]) if running.len() == experiment.target_hosts.len() => {
            let existing = deployments::find(conn, only, true).await?;
            return Ok((only.to_string(), existing));
        }
        (None, [only]) => Conflict::PartlyDeployed {
            experiment: experiment.name.clone(),
            deployment: only.to_string(),
            bare: experiment
                .target_hosts
                .iter()
                .filter(|h| !running.iter().any(|(_, r)| r == *h))
                .cloned()
                .collect(),
            running,
        },
        (None, _) => Conflict::SeveralDeployments {
            experiment: experiment.name.clone(),
            running,
        },
        (Some(named), _) => Conflict::NewWouldOverlap {
            deployment: named.to_string(),
            running,
        },
    };
    Err(conflict.into())
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
) -> Result<Undone, PromotionError> {
    let name = &deployment.name;
    match deployments::previous_revision(conn, name, deployment.revision).await? {
        Some(previous) => {
            let traced = phoenix_telemetry::current_traceparent();
            deployments::restore(
                conn,
                name,
                deployment.revision,
                &previous,
                traced.as_deref(),
            )
            .await?;
            Ok(Undone::Restored(previous.0))
        }
        None if remove_if_first => {
            deployments::delete(conn, name).await?;
            Ok(Undone::Removed)
        }
        None => Err(Conflict::NoEarlierRevision {
            deployment: name.clone(),
            revision: deployment.revision,
        }
        .into()),
    }
}

/// Rolls back a promoted experiment: the deployment revision its promotion made is
/// undone (the previous revision is current again, or the deployment is removed
/// when it had none) and the experiment moves to `rolled-back`. Returns the
/// experiment and the deployment as it is now (`None` when removed or gone).
///
/// A conflict when the experiment is not `promoted`, or when the deployment has
/// moved on since (a later deploy or promotion is current): undoing the promotion
/// would then undo someone else's change too.
pub async fn rollback_promotion(
    conn: &mut PgConnection,
    name: &str,
) -> Result<(Experiment, Option<StoredDeployment>), PromotionError> {
    let what = format!("experiment {name}");
    in_transaction(conn, &what, |tx| {
        let name = name.to_string();
        Box::pin(async move { rollback_promotion_in(tx, &name).await })
    })
    .await
}

async fn rollback_promotion_in(
    tx: &mut PgConnection,
    name: &str,
) -> Result<(Experiment, Option<StoredDeployment>), PromotionError> {
    let experiment = experiments::lock(tx, name).await?;
    if experiment.phase != Phase::Promoted {
        return Err(Conflict::NotPromoted {
            experiment: name.into(),
            phase: experiment.phase,
        }
        .into());
    }
    let (reason, deployment) = match deployments::promoted_revision(tx, name).await? {
        None => (
            "rolled back: nothing to restore, the pipeline deployment it was promoted into was deleted"
                .to_string(),
            None,
        ),
        Some((deployment, revision, Some(_))) => (
            format!(
                "rolled back: nothing to restore, revision {revision} of pipeline deployment {deployment} was already rolled back"
            ),
            deployments::find(tx, &deployment, false).await?,
        ),
        Some((deployment, revision, None)) => {
            let current = deployments::find(tx, &deployment, true)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("pipeline deployment {deployment}")))?;
            if current.revision != revision {
                return Err(Conflict::DeploymentMovedOn {
                    experiment: name.into(),
                    deployment,
                    promoted: revision,
                    current: current.revision,
                    change: current.change,
                }
                .into());
            }
            match undo(tx, &current, true).await? {
                Undone::Restored(previous) => {
                    let restored = deployments::get(tx, &deployment).await?;
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
    experiments::transition(tx, name, Phase::Promoted, Phase::RolledBack, &reason, None).await?;
    let experiment = experiments::get(tx, name).await?;
    Ok((experiment, deployment))
}

/// The reconciler's rollback of a roll-out that failed on a host (see
/// `phoenix_reconciler::rollout`), in the caller's transaction, which locked the
/// experiment that made the revision (if any) and then `deployment`: the revision
/// is undone and `from` (the revision the hosts came from, with its spec) is
/// current again; with no `from` (a first revision) nothing changes. Only this
/// deployment changes, whoever owns it: git's
/// spec is not silently applied again (see `crate::app::apply`). When the
/// revision came from promoting an experiment that is still `promoted`, the
/// experiment moves to `rolled-back` with the reason.
pub async fn undo_failed_rollout(
    tx: &mut PgConnection,
    deployment: &StoredDeployment,
    from: Option<(i64, DeploymentSpec)>,
    reason: &str,
) -> Result<(), PromotionError> {
    let Some(from) = &from else {
        return Ok(()); // a first revision: nothing to go back to
    };
    let traced = phoenix_telemetry::current_traceparent();
    deployments::restore(
        tx,
        &deployment.name,
        deployment.revision,
        from,
        traced.as_deref(),
    )
    .await?;
    if let Some(experiment) = &deployment.promoted_from {
        let reason = format!(
            "the roll-out of deployment {} revision {} (this experiment's promotion) {reason}",
            deployment.name, deployment.revision
        );
        experiments::transition(
            tx,
            experiment,
            Phase::Promoted,
            Phase::RolledBack,
            &reason,
            None,
        )
        .await?;
    }
    Ok(())
}

/// A user's rollback of a deployment to its previous revision (a conflict when
/// there is none). When the undone revision came from promoting an experiment that
/// is still `promoted`, that experiment moves to `rolled-back`.
pub async fn rollback_deployment(
    conn: &mut PgConnection,
    name: &str,
) -> Result<StoredDeployment, PromotionError> {
    let what = format!("pipeline deployment {name}");
    in_transaction(conn, &what, |tx| {
        let name = name.to_string();
        Box::pin(async move { rollback_deployment_in(tx, &name).await })
    })
    .await
}

async fn rollback_deployment_in(
    tx: &mut PgConnection,
    name: &str,
) -> Result<StoredDeployment, PromotionError> {
    // Lock order: the experiment that made the current revision first, then the
    // deployment. Which experiment that is can only be read before locking; if a
    // promotion made another revision current in between, that is a collision,
    // and the transaction is tried again.
    let seen = deployments::get(tx, name).await?;
    if let Some(experiment) = &seen.promoted_from {
        experiments::lock(tx, experiment).await?;
    }
    let current = deployments::find(tx, name, true)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("pipeline deployment {name}")))?;
    if current.revision != seen.revision {
        return Err(Conflict::Concurrent {
            what: format!("pipeline deployment {name}"),
        }
        .into());
    }
    if let Some(source) = &current.managed_by {
        return Err(Conflict::ManagedByGit {
            deployment: name.to_string(),
            source: source.clone(),
            wanted: None,
        }
        .into());
    }
    let Undone::Restored(revision) = undo(tx, &current, false).await? else {
        unreachable!("undo without remove_if_first never removes");
    };
    if let Some(experiment) = &current.promoted_from {
        let reason = format!(
            "deployment {name} was rolled back from revision {} (this experiment's promotion) to revision {revision}",
            current.revision
        );
        experiments::transition(
            tx,
            experiment,
            Phase::Promoted,
            Phase::RolledBack,
            &reason,
            None,
        )
        .await?;
    }
    Ok(deployments::get(tx, name).await?)
}
