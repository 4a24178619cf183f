//! The application layer: what a request means, between the thin handlers and the
//! storage queries. Checks that need the database (does the pipeline exist, does
//! the selector match a host) live here; [`apply`] (declarative apply),
//! [`deployments`] (pipeline deployments and their views), [`destinations`] (the
//! user's backends), [`promotion`] (the
//! promotion policy: promote and rollback), [`loadsims`] (load
//! simulations), [`collector`] (validation with the real collector) and
//! [`credentials`] (agent identity: enrollment and host credentials) beside them.

pub mod apply;
pub mod collector;
pub mod credentials;
pub mod deployments;
pub mod destinations;
pub mod loadsims;
pub mod promotion;

use std::path::Path;

use phoenix_storage::hosts::HostFilter;
use phoenix_storage::{PgConnection, PgPool, StoreError, experiments, hosts, templates};
use phoenix_wire::agent::{CollectorSpec, Variant};
use phoenix_wire::names::selector_matches;
use phoenix_wire::policy;
use phoenix_wire::problem::FieldError;
use phoenix_wire::render::Template;
use phoenix_wire::resource::{
    self, ExperimentDocument, PipelineRef, PipelineTemplateDocument, TemplateVariable,
    template_variables,
};
use phoenix_wire::variables;
use phoenix_wire::view::{Experiment, PipelineTemplate, PipelineValidation};

use self::collector::{ValidateError, Validation};
use crate::error::ApiError;
use crate::http::body::DocumentBody;

/// Stand-ins for what only a real host knows, when a config is validated centrally.
pub(crate) const VALIDATION_HOST: &str = "validation-host";
pub(crate) const VALIDATION_REMOTE_WRITE_URL: &str = "http://127.0.0.1:9090/api/v1/write";

/// Parses a document body: a syntax error is 400, a document that does not fit
/// the schema (unknown or missing field, wrong type) is 422, naming the field.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &DocumentBody) -> Result<T, ApiError> {
    let tree = resource::parse_tree(&body.bytes, body.format).map_err(ApiError::Malformed)?;
    resource::from_tree(tree).map_err(ApiError::Invalid)
}

/// Validates an experiment document against the types, the catalog and the fleet,
/// then stores it in phase `pending`. Nothing is written unless all checks pass.
/// With a collector binary, both sides are rendered with the experiment's variables
/// and checked by the collector's own `validate` first, with no connection held
/// ([`collector::Validation`]).
pub async fn create_experiment(
    pool: &PgPool,
    body: &DocumentBody,
    collector_bin: Option<&Path>,
) -> Result<Experiment, ApiError> {
    let doc: ExperimentDocument = parse_body(body)?;
    let mut validation = Validation::new(collector_bin);
    if validation.collecting() {
        check_experiment(
            &mut *phoenix_storage::acquire(pool).await?,
            &doc,
            &mut validation,
        )
        .await?;
        validation = validation.run(collector_bin).await?;
    }
    let mut conn = phoenix_storage::acquire(pool).await?;
    check_experiment(&mut conn, &doc, &mut validation).await?;
    let experiment = experiments::create(
        &mut conn,
        experiments::NewExperiment {
            name: &doc.metadata.name,
            labels: &doc.metadata.labels,
            spec: &doc.spec,
            managed_by: None,
            traceparent: phoenix_telemetry::current_traceparent().as_deref(),
        },
    )
    .await?;
    Ok(experiment)
}

/// Every check of an experiment document (types, catalog, fleet), and both sides
/// rendered for the collector's `validate` as `validation` says; writes nothing.
pub(crate) async fn check_experiment(
    conn: &mut PgConnection,
    doc: &ExperimentDocument,
    validation: &mut Validation,
) -> Result<(), ApiError> {
    doc.validate().map_err(ApiError::Invalid)?;
    let baseline_config = check_pipeline(conn, "spec.baseline", &doc.spec.baseline).await?;
    let candidate_config = check_pipeline(conn, "spec.candidate", &doc.spec.candidate).await?;
    check_hosts(conn, doc).await?;
    for (variant, template) in [
        (Variant::Baseline, &baseline_config),
        (Variant::Candidate, &candidate_config),
    ] {
        let spec = phoenix_wire::render::experiment_collector(
            &doc.metadata.name,
            &doc.spec,
            variant,
            VALIDATION_HOST,
            template,
            VALIDATION_REMOTE_WRITE_URL,
        );
        let field = format!("spec.{variant}");
        check_rendered(&spec, &field)?;
        validation.expect(&field, &spec)?;
    }
    Ok(())
}

/// The template policy on a rendered collector, exactly as the agent will check it
/// (its own ports and host filesystem aside); a refusal names `field` and the path
/// in the config.
pub(crate) fn check_rendered(spec: &CollectorSpec, field: &str) -> Result<(), ApiError> {
    policy::check_environment(&spec.env)
        .and_then(|()| policy::check(&spec.config, &spec.env, &spec.allowances()))
        .map(drop)
        .map_err(|refusal| ApiError::Invalid(refusal.into_field_error(field)))
}

/// Checks that the template exists and that every variable given is declared and
/// of its type (errors name `<field>.vars.<name>`); returns the template.
pub(crate) async fn check_pipeline(
    conn: &mut PgConnection,
    field: &str,
    pipeline: &PipelineRef,
) -> Result<Template, ApiError> {
    let template = match templates::get(conn, &pipeline.pipeline).await {
        Ok(t) => t,
        Err(StoreError::NotFound(_)) => {
            let known: Vec<String> = templates::list(conn)
                .await?
                .into_iter()
                .map(|t| t.name)
                .collect();
            return Err(ApiError::Invalid(FieldError::new(
                format!("{field}.pipeline"),
                format!(
                    "there is no pipeline template `{}`; known templates: {}",
                    pipeline.pipeline,
                    known.join(", ")
                ),
            )));
        }
        Err(other) => return Err(other.into()),
    };
    let declared = &template.variables.0;
    if declared.is_empty() {
        // A template stored before variables were declared: names only.
        let used = template_variables(&template.config);
        if let Some(name) = pipeline
            .vars
            .keys()
            .find(|n| !used.iter().any(|v| &v.name == *n))
        {
            return Err(ApiError::Invalid(FieldError::new(
                format!("{field}.vars.{name}"),
                format!(
                    "pipeline `{}` declares no variable `{name}`",
                    pipeline.pipeline
                ),
            )));
        }
    } else {
        variables::resolve(
            &pipeline.pipeline,
            declared,
            &pipeline.vars,
            &format!("{field}.vars"),
        )
        .map_err(ApiError::Invalid)?;
    }
    Ok(Template::new(template.config, template.variables.0))
}

async fn check_hosts(conn: &mut PgConnection, doc: &ExperimentDocument) -> Result<(), ApiError> {
    let known = hosts::list_records(conn, HostFilter::All).await?;
    if let Some(selector) = &doc.spec.hosts.selector
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
    if let Some(names) = &doc.spec.hosts.names {
        for (i, name) in names.iter().enumerate() {
            if !known.iter().any(|h| &h.host_id == name) {
                return Err(ApiError::Invalid(FieldError::new(
                    format!("spec.hosts.names[{i}]"),
                    format!("no agent has registered host `{name}`; see `phoenix host list`"),
                )));
            }
        }
    }
    // What was asked is what is measured: load no selected host could run is
    // refused now, not discovered as failed tasks once the experiment runs.
    if let Some(load) = &doc.spec.load {
        let (_, parameters) = load.parameters().map_err(ApiError::Invalid)?;
        let selected: Vec<String> = known
            .iter()
            .filter(
                |h| match (&doc.spec.hosts.selector, &doc.spec.hosts.names) {
                    (Some(selector), _) => selector_matches(selector, &h.labels),
                    (None, Some(names)) => names.contains(&h.host_id),
                    (None, None) => false,
                },
            )
            .map(|h| h.host_id.clone())
            .collect();
        let limits = phoenix_storage::loads::max_processes_by_host(conn).await?;
        loadsims::check_load_limits(
            &selected,
            &limits,
            parameters.processes,
            "spec.load.processes",
        )?;
    }
    Ok(())
}

pub fn template_view(stored: templates::StoredTemplate) -> PipelineTemplate {
    let variables = if stored.variables.0.is_empty() {
        template_variables(&stored.config)
    } else {
        stored
            .variables
            .0
            .iter()
            .map(TemplateVariable::from)
            .collect()
    };
    PipelineTemplate {
        variables,
        name: stored.name,
        description: stored.description,
        builtin: stored.builtin,
        config: stored.config,
        updated_at: stored.updated_at,
    }
}

/// Validates a `PipelineTemplate` document with the real collector: its config with
/// default variables, and placeholders for what hosts and experiments fill in.
pub async fn validate_template(
    body: &DocumentBody,
    collector_bin: Option<&Path>,
) -> Result<PipelineValidation, ApiError> {
    let doc: PipelineTemplateDocument = parse_body(body)?;
    doc.validate().map_err(ApiError::Invalid)?;
    doc.check_policy(&policy::Allowances::default())
        .map_err(ApiError::Invalid)?;
    let bin = collector_bin.ok_or_else(|| {
        ApiError::Unavailable(
            "this phoenix-api has no collector binary to validate with; set PHOENIX_COLLECTOR_BIN"
                .into(),
        )
    })?;
    let spec = resource::ExperimentSpec {
        hosts: Default::default(),
        baseline: PipelineRef {
            pipeline: doc.metadata.name.clone(),
            vars: Default::default(),
        },
        candidate: PipelineRef {
            pipeline: doc.metadata.name.clone(),
            vars: Default::default(),
        },
        warmup: Default::default(),
        duration: Default::default(),
        load: None,
        critical_processes: vec![],
        max_hosts: None,
        criteria: Default::default(),
        promotion: Default::default(),
    };
    let rendered = phoenix_wire::render::experiment_collector(
        "validation",
        &spec,
        Variant::Candidate,
        VALIDATION_HOST,
        &Template::new(doc.spec.config.clone(), doc.spec.variables.clone()),
        VALIDATION_REMOTE_WRITE_URL,
    );
    collector::validate(bin, &rendered.config, &rendered.env)
        .await
        .map_err(|err| match err {
            ValidateError::Rejected(message) => {
                ApiError::Invalid(FieldError::new("spec.config", message))
            }
            ValidateError::Unavailable(message) => ApiError::Unavailable(message),
        })?;
    Ok(PipelineValidation {
        name: doc.metadata.name,
        valid: true,
        variables: doc
            .spec
            .variables
            .iter()
            .map(TemplateVariable::from)
            .collect(),
    })
}
