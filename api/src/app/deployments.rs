//! The application layer of pipeline deployments (`/api/v1/deployments`) and of an
//! experiment's promote and rollback: what a deploy request means (the template
//! exists and declares the variables, the real collector accepts the rendered
//! config, the hosts exist and run no other standing pipeline) and how a stored
//! deployment looks with the hosts it selects, what they report and its latest
//! roll-out (and that roll-out's steps).

use std::collections::HashMap;
use std::path::Path;

use phoenix_storage::deployments::{self, Applied, NewRevision, StoredDeployment};
use phoenix_storage::hosts::{self, HostFilter, HostRecord};
use phoenix_storage::rollouts;
use phoenix_storage::{PgConnection, PgPool};
use phoenix_wire::agent::CollectorStatus;
use phoenix_wire::deployment::{
    DeploymentHost, DeploymentSpec, PipelineDeployment, PipelineDeploymentDocument, PromotionResult,
};
use phoenix_wire::names::{self, selector_matches};
use phoenix_wire::problem::FieldError;
use phoenix_wire::rollout::{Rollout, RolloutEvent};

use crate::app::collector::Validation;
use crate::app::promotion::{self, PromotedBy, Promotion};
use crate::app::{VALIDATION_HOST, VALIDATION_REMOTE_WRITE_URL, check_pipeline, parse_body};
use crate::error::ApiError;
use crate::http::body::DocumentBody;

/// Validates a `PipelineDeployment` document against the types, the catalog, the
/// collector and the fleet, then creates the deployment or makes the document its
/// new revision (nothing new when the spec is the current one). Nothing is written
/// unless every check passes; the collector's `validate` runs with no connection
/// held ([`Validation`]).
pub async fn deploy(
    pool: &PgPool,
    body: &DocumentBody,
    collector_bin: Option<&Path>,
) -> Result<(PipelineDeployment, Applied), ApiError> {
    let doc: PipelineDeploymentDocument = parse_body(body)?;
    let mut validation = Validation::new(collector_bin);
    if validation.collecting() {
        check_deployment(
            &mut *phoenix_storage::acquire(pool).await?,
            &doc,
            &mut validation,
        )
        .await?;
        validation = validation.run(collector_bin).await?;
    }
    let mut conn = phoenix_storage::acquire(pool).await?;
    check_deployment(&mut conn, &doc, &mut validation).await?;
    let (stored, applied) = deployments::apply(
        &mut conn,
        NewRevision {
            name: &doc.metadata.name,
            labels: &doc.metadata.labels,
            spec: &doc.spec,
            promoted_from: None,
            change: "deployed by user",
            traceparent: phoenix_telemetry::current_traceparent().as_deref(),
        },
    )
    .await?;
    Ok((one_view(&mut conn, stored, false).await?, applied))
}

/// Every check of a deployment document (types, catalog, fleet, overlap), and its
/// standing collector rendered for the collector's `validate` as `validation`
/// says; writes nothing.
pub(crate) async fn check_deployment(
    conn: &mut PgConnection,
    doc: &PipelineDeploymentDocument,
    validation: &mut Validation,
) -> Result<(), ApiError> {
    doc.validate().map_err(ApiError::Invalid)?;
    let name = &doc.metadata.name;
    let config = check_pipeline(conn, "spec", &doc.spec.pipeline_ref()).await?;
    let records = hosts::list_records(conn, HostFilter::All).await?;
    check_hosts(&doc.spec, &records)?;
    let all = deployments::list(conn).await?;
    check_overlap(name, &doc.spec, &all, &records)?;
    let destinations = super::destinations::check_named(conn, &doc.spec.destinations).await?;
    let rendered = phoenix_wire::render::standing_collector(
        name,
        &doc.spec,
        VALIDATION_HOST,
        &config,
        VALIDATION_REMOTE_WRITE_URL,
        &destinations,
    );
    super::check_rendered(&rendered, "spec.pipeline")?;
    validation.expect("spec.pipeline", &rendered)
}

/// A selector must match a registered host, and every name must be one; like an
/// experiment's, so that a typo does not deploy to nothing in silence.
fn check_hosts(spec: &DeploymentSpec, known: &[HostRecord]) -> Result<(), ApiError> {
    if let Some(selector) = &spec.hosts.selector
        && !known.iter().any(|h| selector_matches(selector, &h.labels))
    {
        return Err(ApiError::Invalid(FieldError::new(
            "spec.hosts.selector",
            format!(
                "the selector matches none of the {} registered hosts; check their labels with `phoenix host list`",
                known.len()
            ),
        )));
    }
    for (i, name) in spec.hosts.names.iter().flatten().enumerate() {
        if !known.iter().any(|h| &h.host_id == name) {
            return Err(ApiError::Invalid(FieldError::new(
                format!("spec.hosts.names[{i}]"),
                format!("no agent has registered host `{name}`; see `phoenix host list`"),
            )));
        }
    }
    Ok(())
}

/// A host runs one standing pipeline: a deployment may not take on a registered
/// host that another deployment selects. Hosts it already selects are not
/// checked again, so re-applying a deployment whose selector a new host joined
/// keeps working (the older deployment keeps such a host).
fn check_overlap(
    name: &str,
    spec: &DeploymentSpec,
    all: &[StoredDeployment],
    known: &[HostRecord],
) -> Result<(), ApiError> {
    let current = all.iter().find(|d| d.name == name);
    for host in known {
        if !spec.selects(&host.host_id, &host.labels)
            || current.is_some_and(|c| c.spec.selects(&host.host_id, &host.labels))
        {
            continue;
        }
        if let Some(other) = all
            .iter()
            .find(|d| d.name != name && d.spec.selects(&host.host_id, &host.labels))
        {
            return Err(ApiError::Conflict(format!(
                "host {} already runs the standing pipeline of deployment {}, and a host runs one; \
                 narrow spec.hosts, or change deployment {} instead",
                host.host_id, other.name, other.name
            )));
        }
    }
    Ok(())
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<PipelineDeployment>, ApiError> {
    let all = deployments::list(conn).await?;
    let records = hosts::list_records(conn, HostFilter::All).await?;
    let collectors = hosts::collectors_by_host(conn, HostFilter::All).await?;
    let mut rollouts = rollouts::latest_all(conn).await?;
    Ok(all
        .iter()
        .map(|d| {
            let rollout = rollouts.remove(&d.name);
            view(d.clone(), &all, &records, &collectors, rollout)
        })
        .collect())
}

/// One deployment with its hosts and, when `with_revisions`, its history.
async fn one_view(
    conn: &mut PgConnection,
    stored: StoredDeployment,
    with_revisions: bool,
) -> Result<PipelineDeployment, ApiError> {
    let all = deployments::list(conn).await?;
    let records = hosts::list_records(conn, HostFilter::All).await?;
    let collectors = hosts::collectors_by_host(conn, HostFilter::All).await?;
    let rollout = rollouts::latest(conn, &stored.name).await?;
    let mut deployment = view(stored, &all, &records, &collectors, rollout);
    if with_revisions {
        deployment.revisions = deployments::revisions(conn, &deployment.name).await?;
    }
    Ok(deployment)
}

pub async fn get(conn: &mut PgConnection, name: &str) -> Result<PipelineDeployment, ApiError> {
    let stored = deployments::get(conn, name).await?;
    one_view(conn, stored, true).await
}

/// Rolls a deployment back to its previous revision (409 when it has none).
pub async fn rollback(conn: &mut PgConnection, name: &str) -> Result<PipelineDeployment, ApiError> {
    let stored = promotion::rollback_deployment(conn, name).await?;
    one_view(conn, stored, true).await
}

/// `?force=true&deployment=NAME` of a promote.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PromoteOptions {
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub deployment: Option<String>,
}

/// A user's promote of a completed experiment (see [`promotion::promote`] for which
/// deployment it goes into).
pub async fn promote(
    conn: &mut PgConnection,
    experiment: &str,
    options: &PromoteOptions,
) -> Result<PromotionResult, ApiError> {
    if let Some(deployment) = &options.deployment {
        names::check_resource_name(deployment).map_err(|m| {
            ApiError::Invalid(FieldError::new(
                "deployment",
                format!("invalid deployment name: {m}"),
            ))
        })?;
    }
    let (experiment, deployment) = promotion::promote(
        conn,
        &Promotion {
            experiment: experiment.to_string(),
            deployment: options.deployment.clone(),
            by: PromotedBy::User {
                force: options.force,
            },
        },
    )
    .await?;
    Ok(PromotionResult {
        experiment,
        deployment: Some(one_view(conn, deployment, false).await?),
    })
}

/// A user's rollback of a promoted experiment.
pub async fn rollback_experiment(
    conn: &mut PgConnection,
    experiment: &str,
) -> Result<PromotionResult, ApiError> {
    let (experiment, deployment) = promotion::rollback_promotion(conn, experiment).await?;
    let deployment = match deployment {
        Some(stored) => Some(one_view(conn, stored, false).await?),
        None => None,
    };
    Ok(PromotionResult {
        experiment,
        deployment,
    })
}

/// A stored deployment with the registered hosts it selects and what each reports.
fn view(
    stored: StoredDeployment,
    all: &[StoredDeployment],
    records: &[HostRecord],
    collectors: &HashMap<String, Vec<CollectorStatus>>,
    rollout: Option<Rollout>,
) -> PipelineDeployment {
    let collector_id = phoenix_wire::agent::CollectorSpec::id_for(
        &stored.name,
        phoenix_wire::agent::Variant::Standing,
    );
    let hosts = records
        .iter()
        .filter(|h| stored.spec.selects(&h.host_id, &h.labels))
        .map(|h| DeploymentHost {
            host_id: h.host_id.clone(),
            collector: collectors
                .get(&h.host_id)
                .and_then(|cs| cs.iter().find(|c| c.collector_id == collector_id))
                .cloned(),
            shadowed_by: deployments::standing_owner(all, &h.host_id, &h.labels)
                .filter(|owner| owner.name != stored.name)
                .map(|owner| owner.name.clone()),
        })
        .collect();
    PipelineDeployment {
        name: stored.name,
        labels: stored.labels,
        spec: stored.spec,
        revision: stored.revision,
        promoted_from: stored.promoted_from,
        change: stored.change,
        managed_by: stored.managed_by,
        created_at: stored.created_at,
        updated_at: stored.updated_at,
        hosts,
        revisions: Vec::new(),
        rollout,
    }
}

/// The steps of a deployment's roll-outs, oldest first (404 for an unknown
/// deployment; its events outlive it otherwise).
pub async fn events(conn: &mut PgConnection, name: &str) -> Result<Vec<RolloutEvent>, ApiError> {
    deployments::get(conn, name).await?;
    Ok(rollouts::events(conn, name).await?)
}
