//! Declarative apply (`POST /api/v1/apply?source=S&prune=&dryRun=`): a set of
//! Experiment, PipelineTemplate and PipelineDeployment documents becomes the state
//! of the resources that source manages, in one transaction, all or nothing. The
//! collector's `validate` runs before that transaction, never inside it.
//!
//! - Every document is checked as its own endpoint would (types, catalog, fleet,
//!   collector); any error rolls everything back, and the problem's detail starts
//!   with the document's file (or `document N`), kind and name, its `field` names
//!   the field.
//! - Templates are applied first, so experiments and deployments of the same body
//!   may use them.
//! - What apply creates records `managed_by = SOURCE`. A document naming a resource
//!   created by hand or by another source is a 409: apply never takes one over.
//! - A spec that equals the stored one is `unchanged` (for an experiment,
//!   `generation` stays), whoever owns the resource, so a fetched resource applies
//!   again as a no-op; labels alone are an `update` without a new generation. An
//!   update lists each changed field (`changes`).
//! - An experiment's spec may change only while it is `pending` (its `generation`
//!   bumps); once deploying or later, a new spec is a 409 naming it: running
//!   collectors are never changed under an experiment's measurement. Delete it,
//!   or give the new spec a new name.
//! - `prune=true` deletes what SOURCE manages and the body no longer holds; never a
//!   resource with another `managed_by` or none. (A pruned template is not checked
//!   against experiments that use it; an experiment keeps its rendered config.)
//! - `dryRun=true` does all of it, answers the plan, and rolls back.

use std::collections::BTreeSet;
use std::path::Path;

use phoenix_storage::apply::{self as store, Managed};
use phoenix_storage::deployments::{self, Applied, NewRevision};
use phoenix_storage::{PgConnection, PgPool, StoreError, experiments, templates};
use phoenix_wire::apply::{Action, FieldChange, PlanEntry, field_changes, parse_items};
use phoenix_wire::deployment::PipelineDeploymentDocument;
use phoenix_wire::names;
use phoenix_wire::policy::Allowances;
use phoenix_wire::problem::FieldError;
use phoenix_wire::resource::{
    ExperimentDocument, PipelineTemplateDocument, PipelineTemplateSpec, from_tree,
};
use phoenix_wire::rollout::RolloutState;
use phoenix_wire::view::Phase;
use sqlx::{Connection, Postgres, Transaction};

use crate::app::check_experiment;
use crate::app::collector::Validation;
use crate::app::deployments::check_deployment;
use crate::error::ApiError;
use crate::http::body::DocumentBody;

/// The query of an apply request.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyOptions {
    /// Who owns what this apply creates (the CLI sends the directory path).
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub prune: bool,
    #[serde(default)]
    pub dry_run: bool,
}

const EXPERIMENT: &str = "Experiment";
const TEMPLATE: &str = "PipelineTemplate";
const DEPLOYMENT: &str = "PipelineDeployment";

enum Doc {
    Template(PipelineTemplateDocument),
    Experiment(ExperimentDocument),
    Deployment(PipelineDeploymentDocument),
}

struct Item {
    origin: String,
    kind: &'static str,
    name: String,
    doc: Doc,
}

impl Item {
    /// The error, prefixed with where the document is.
    fn error(&self, err: ApiError) -> ApiError {
        located(&self.origin, &format!("{} {}", self.kind, self.name), err)
    }
}

fn located(origin: &str, what: &str, err: ApiError) -> ApiError {
    let prefix = if what.is_empty() {
        origin.to_string()
    } else {
        format!("{origin}: {what}")
    };
    match err {
        ApiError::Invalid(e) | ApiError::Malformed(e) => {
            let message = if e.field.is_empty() {
                format!("{prefix}: {}", e.message)
            } else {
                format!("{prefix}: {}: {}", e.field, e.message)
            };
            ApiError::Invalid(FieldError::new(e.field, message))
        }
        ApiError::Conflict(m) => ApiError::Conflict(format!("{prefix}: {m}")),
        other => other,
    }
}

/// Parses and statically validates every document; nothing touches the database.
fn parse(body: &DocumentBody) -> Result<Vec<Item>, ApiError> {
    let raw = parse_items(&body.bytes, body.format).map_err(ApiError::Malformed)?;
    let mut items = Vec::with_capacity(raw.len());
    let mut seen = BTreeSet::new();
    for raw in raw {
        let origin = raw.file.unwrap_or_default();
        let kind = raw
            .document
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        let invalid = |e: FieldError| located(&origin, "", ApiError::Invalid(e));
        let (kind, name, doc) = match kind.as_str() {
            EXPERIMENT => {
                let doc: ExperimentDocument = from_tree(raw.document).map_err(invalid)?;
                doc.validate().map_err(invalid)?;
                (EXPERIMENT, doc.metadata.name.clone(), Doc::Experiment(doc))
            }
            TEMPLATE => {
                let doc: PipelineTemplateDocument = from_tree(raw.document).map_err(invalid)?;
                doc.validate().map_err(invalid)?;
                doc.check_policy(&Allowances::default()).map_err(invalid)?;
                (TEMPLATE, doc.metadata.name.clone(), Doc::Template(doc))
            }
            DEPLOYMENT => {
                let doc: PipelineDeploymentDocument = from_tree(raw.document).map_err(invalid)?;
                doc.validate().map_err(invalid)?;
                (DEPLOYMENT, doc.metadata.name.clone(), Doc::Deployment(doc))
            }
            other => {
                return Err(invalid(FieldError::new(
                    "kind",
                    format!(
                        "`{other}` is not a kind apply knows; use {EXPERIMENT}, {TEMPLATE} or {DEPLOYMENT}"
                    ),
                )));
            }
        };
        if !seen.insert((kind, name.clone())) {
            return Err(invalid(FieldError::new(
                "metadata.name",
                format!("{kind} {name} appears twice in this apply"),
            )));
        }
        items.push(Item {
            origin,
            kind,
            name,
            doc,
        });
    }
    Ok(items)
}

/// Refuses to take over a resource apply does not own.
fn check_owner(
    kind: &str,
    name: &str,
    managed_by: Option<&str>,
    source: &str,
) -> Result<(), ApiError> {
    match managed_by {
        Some(owner) if owner == source => Ok(()),
        owner => Err(ApiError::Conflict(format!(
            "{kind} {name} already exists and {}; apply does not take over resources it does not own: \
             rename the document, or delete the existing {kind} first",
            match owner {
                Some(other) => format!("is managed by source `{other}`"),
                None => "was created by hand".to_string(),
            }
        ))),
    }
}

/// Applies (or, in a dry run, plans) the documents of `body` for `options.source`.
///
/// With a collector, the documents are first applied in a transaction that is
/// rolled back at once (quick reads and writes only), gathering the rendered
/// configs; the collector validates them with no connection held; then the real
/// apply runs in one short transaction that accepts only configs the collector
/// accepted ([`Validation`]). No transaction waits on a collector process.
pub async fn apply(
    pool: &PgPool,
    body: &DocumentBody,
    options: &ApplyOptions,
    collector_bin: Option<&Path>,
    admin: bool,
) -> Result<Vec<PlanEntry>, ApiError> {
    let source = options.source.trim();
    if source.is_empty() || source.len() > 1024 {
        return Err(ApiError::Malformed(FieldError::new(
            "source",
            "give the source that owns these documents, e.g. ?source=examples/ (at most 1024 characters)",
        )));
    }
    let mut items = parse(body)?;
    // Templates first: experiments and deployments of this body may use them.
    items.sort_by_key(|i| match i.kind {
        TEMPLATE => 0,
        EXPERIMENT => 1,
        _ => 2,
    });
    let mut validations: Vec<Validation> = items
        .iter()
        .map(|_| Validation::new(collector_bin))
        .collect();
    if collector_bin.is_some() {
        let mut conn = phoenix_storage::acquire(pool).await?;
        let tx = conn.begin().await.map_err(StoreError::from)?;
        apply_all(tx, &items, source, &mut validations, false, true, admin).await?;
        drop(conn);
        for (item, validation) in items.iter().zip(validations.iter_mut()) {
            let gathered = std::mem::replace(validation, Validation::Off);
            *validation = gathered
                .run(collector_bin)
                .await
                .map_err(|e| item.error(e))?;
        }
    }
    let mut conn = phoenix_storage::acquire(pool).await?;
    let tx = conn.begin().await.map_err(StoreError::from)?;
    apply_all(
        tx,
        &items,
        source,
        &mut validations,
        options.prune,
        options.dry_run,
        admin,
    )
    .await
}

/// Applies every item (then prunes) in `tx`; commits unless `rollback`.
async fn apply_all(
    mut tx: Transaction<'_, Postgres>,
    items: &[Item],
    source: &str,
    validations: &mut [Validation],
    prune: bool,
    rollback: bool,
    admin: bool,
) -> Result<Vec<PlanEntry>, ApiError> {
    let mut plan = Vec::new();
    for (item, validation) in items.iter().zip(validations.iter_mut()) {
        let entry = apply_one(&mut tx, item, source, validation, admin)
            .await
            .map_err(|e| item.error(e))?;
        plan.push(entry);
    }
    if prune {
        for (kind, table) in [
            (EXPERIMENT, Managed::Experiments),
            (DEPLOYMENT, Managed::PipelineDeployments),
            (TEMPLATE, Managed::PipelineTemplates),
        ] {
            for name in store::managed_names(&mut tx, table, source).await? {
                if items.iter().any(|i| i.kind == kind && i.name == name) {
                    continue;
                }
                if table == Managed::PipelineTemplates && !admin {
                    return Err(templates_need_admin(&name));
                }
                match table {
                    Managed::Experiments => experiments::delete(&mut tx, &name).await?,
                    Managed::PipelineDeployments => deployments::delete(&mut tx, &name).await?,
                    Managed::PipelineTemplates => store::delete_template(&mut tx, &name).await?,
                }
                plan.push(PlanEntry {
                    kind: kind.into(),
                    name,
                    action: Action::Delete,
                    reason: Some(format!("no longer in source `{source}`")),
                    changes: Vec::new(),
                });
            }
        }
    }
    if rollback {
        tx.rollback().await.map_err(StoreError::from)?;
    } else {
        tx.commit().await.map_err(StoreError::from)?;
    }
    Ok(plan)
}

/// The fields of `spec` that differ, as `spec.<path>`.
fn spec_changes<T: serde::Serialize>(before: &T, after: &T) -> Vec<FieldChange> {
    let json = |spec: &T| serde_json::to_value(spec).unwrap_or_default();
    field_changes("spec", &json(before), &json(after))
}

fn label_changes(before: &names::Labels, after: &names::Labels) -> Vec<FieldChange> {
    let json = |labels: &names::Labels| serde_json::to_value(labels).unwrap_or_default();
    field_changes("metadata.labels", &json(before), &json(after))
}

/// A template is code every agent runs as root: creating, changing or pruning one
/// takes an admin token.
fn templates_need_admin(name: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "changing {TEMPLATE} {name} needs an admin token: a template is code that runs on every host"
    ))
}

async fn apply_one(
    conn: &mut PgConnection,
    item: &Item,
    source: &str,
    validation: &mut Validation,
    admin: bool,
) -> Result<PlanEntry, ApiError> {
    let entry = |action: Action, reason: Option<String>| PlanEntry {
        kind: item.kind.into(),
        name: item.name.clone(),
        action,
        reason,
        changes: Vec::new(),
    };
    // An identical document changes nothing, whoever owns the resource: that is
    // how `phoenix get ... -o yaml | phoenix apply -f -` is a no-op. The plan says
    // whose it is; any change to it is still refused below.
    let unchanged = |managed_by: Option<&str>| {
        let reason = match managed_by {
            Some(owner) if owner == source => None,
            Some(owner) => Some(format!("managed by source `{owner}`")),
            None => Some("created by hand".to_string()),
        };
        entry(Action::Unchanged, reason)
    };
    let updated = |reason: String, changes: Vec<FieldChange>| PlanEntry {
        changes,
        ..entry(Action::Update, Some(reason))
    };
    names::check_resource_name(&item.name)
        .map_err(|m| ApiError::Invalid(FieldError::new("metadata.name", m)))?;
    match &item.doc {
        Doc::Template(doc) => {
            let current = match templates::get(conn, &item.name).await {
                Ok(t) => Some(t),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            if let Some(current) = &current {
                if current.builtin {
                    return Err(ApiError::Conflict(format!(
                        "{TEMPLATE} {} is built in and cannot be replaced; pick another name",
                        item.name
                    )));
                }
                if current.config == doc.spec.config
                    && current.description == doc.spec.description
                    && current.variables.0 == doc.spec.variables
                {
                    return Ok(unchanged(current.managed_by.as_deref()));
                }
                check_owner(TEMPLATE, &item.name, current.managed_by.as_deref(), source)?;
            }
            if !admin {
                return Err(templates_need_admin(&item.name));
            }
            store::upsert_template(conn, &item.name, &doc.spec, source).await?;
            Ok(match current {
                Some(current) => {
                    let before = PipelineTemplateSpec {
                        description: current.description,
                        variables: current.variables.0,
                        config: current.config,
                    };
                    updated("spec changed".into(), spec_changes(&before, &doc.spec))
                }
                None => entry(Action::Create, None),
            })
        }
        Doc::Experiment(doc) => {
            let current = match experiments::get(conn, &item.name).await {
                Ok(e) => Some(e),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let Some(current) = current else {
                check_experiment(conn, doc, validation).await?;
                experiments::create(
                    conn,
                    experiments::NewExperiment {
                        name: &item.name,
                        labels: &doc.metadata.labels,
                        spec: &doc.spec,
                        managed_by: Some(source),
                        traceparent: phoenix_telemetry::current_traceparent().as_deref(),
                    },
                )
                .await?;
                return Ok(entry(Action::Create, None));
            };
            let spec_changed = current.spec != doc.spec;
            let labels_changed = current.labels != doc.metadata.labels;
            if !spec_changed && !labels_changed {
                return Ok(unchanged(current.managed_by.as_deref()));
            }
            check_owner(
                EXPERIMENT,
                &item.name,
                current.managed_by.as_deref(),
                source,
            )?;
            let mut changes = label_changes(&current.labels, &doc.metadata.labels);
            if !spec_changed {
                store::set_experiment_labels(conn, &item.name, &doc.metadata.labels).await?;
                return Ok(updated("labels changed".into(), changes));
            }
            changes.extend(spec_changes(&current.spec, &doc.spec));
            if current.phase != Phase::Pending {
                return Err(ApiError::Conflict(format!(
                    "{EXPERIMENT} {} is {}: its spec can change only while it is pending; \
                     delete it and apply again, or give the new spec a new name",
                    item.name, current.phase
                )));
            }
            check_experiment(conn, doc, validation).await?;
            if !store::update_pending_experiment(
                conn,
                &item.name,
                &doc.metadata.labels,
                &doc.spec,
                true,
            )
            .await?
            {
                return Err(ApiError::Conflict(format!(
                    "{EXPERIMENT} {} started deploying meanwhile; its spec can change only while it is pending",
                    item.name
                )));
            }
            Ok(updated(
                format!("spec changed (generation {})", current.generation + 1),
                changes,
            ))
        }
        Doc::Deployment(doc) => {
            let current = match deployments::get(conn, &item.name).await {
                Ok(d) => Some(d),
                Err(StoreError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            if let Some(current) = &current {
                if current.spec == doc.spec && current.labels == doc.metadata.labels {
                    return Ok(unchanged(current.managed_by.as_deref()));
                }
                check_owner(
                    DEPLOYMENT,
                    &item.name,
                    current.managed_by.as_deref(),
                    source,
                )?;
                if let Some(held) = held_after_failed_rollout(conn, current, doc).await? {
                    return Ok(entry(Action::Unchanged, Some(held)));
                }
            }
            check_deployment(conn, doc, validation).await?;
            let change = format!("applied from {source}");
            let (stored, applied) = deployments::apply(
                conn,
                NewRevision {
                    name: &item.name,
                    labels: &doc.metadata.labels,
                    spec: &doc.spec,
                    promoted_from: None,
                    change: &change,
                    traceparent: phoenix_telemetry::current_traceparent().as_deref(),
                },
            )
            .await?;
            let changes = current.as_ref().map_or_else(Vec::new, |current| {
                let mut changes = label_changes(&current.labels, &doc.metadata.labels);
                changes.extend(spec_changes(&current.spec, &doc.spec));
                changes
            });
            Ok(match applied {
                Applied::Created => {
                    store::set_managed_by(conn, Managed::PipelineDeployments, &item.name, source)
                        .await?;
                    entry(Action::Create, None)
                }
                Applied::Updated => updated(
                    format!("spec changed (revision {})", stored.revision),
                    changes,
                ),
                Applied::Unchanged => updated("labels changed".into(), changes),
            })
        }
    }
}

/// A document whose spec is that of the deployment's last revision, which a
/// failed roll-out rolled back: applying it again would roll the same failure out
/// again on every round of a sync. It is held, and the plan says why; a changed
/// document (the fix, made in git) rolls out as usual.
async fn held_after_failed_rollout(
    conn: &mut PgConnection,
    current: &deployments::StoredDeployment,
    doc: &PipelineDeploymentDocument,
) -> Result<Option<String>, ApiError> {
    let Some(rollout) = phoenix_storage::rollouts::latest(conn, &current.name).await? else {
        return Ok(None);
    };
    if rollout.state != RolloutState::RolledBack || rollout.revision <= current.revision {
        return Ok(None);
    }
    let revisions = deployments::revisions(conn, &current.name).await?;
    let failed = revisions.iter().find(|r| r.revision == rollout.revision);
    Ok(failed.filter(|r| r.spec == doc.spec).map(|r| {
        format!(
            "held: this spec is revision {}, whose roll-out failed and was rolled back ({}); \
             the deployment stays at revision {}; change the document to roll out again",
            r.revision,
            rollout.reason.as_deref().unwrap_or("no reason recorded"),
            current.revision
        )
    }))
}
