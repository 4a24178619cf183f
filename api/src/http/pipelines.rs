//! `/api/v1/pipelines`: the pipeline template catalog.

use axum::Json;
use axum::extract::{Path, State};
use phoenix_storage::templates;
use phoenix_wire::view::{List, PipelineTemplate, PipelineValidation};

use crate::app::{self, template_view};
use crate::error::ApiError;
use crate::http::auth::{Operator, Viewer};
use crate::http::body::DocumentBody;
use crate::state::{AppState, MAX_VALIDATIONS};

#[utoipa::path(get, path = "/api/v1/pipelines", tag = "pipelines", responses((status = 200, description = "The catalog.", body = phoenix_wire::openapi::lists::PipelineTemplates)), security(("userToken" = ["viewer"])))]
pub async fn list(
    State(state): State<AppState>,
    _: Viewer,
) -> Result<Json<List<PipelineTemplate>>, ApiError> {
    let mut conn = state.conn().await?;
    let items = templates::list(&mut conn)
        .await?
        .into_iter()
        .map(template_view)
        .collect();
    Ok(Json(List { items }))
}

#[utoipa::path(get, path = "/api/v1/pipelines/{name}", tag = "pipelines", params(("name" = String, Path, description = "The template's name.")), responses((status = 200, description = "The template.", body = phoenix_wire::view::PipelineTemplate), (status = 404, response = crate::http::openapi::NotFound)), security(("userToken" = ["viewer"])))]
pub async fn get(
    State(state): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<PipelineTemplate>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(template_view(templates::get(&mut conn, &name).await?)))
}

/// Checks a `PipelineTemplate` document against the template policy, then with the
/// collector's own `validate`; a rejection is a 422 whose detail is the policy's or
/// the collector's message. Operators only (it starts a process), and at most
/// [`MAX_VALIDATIONS`] at once: more is a 429.
#[utoipa::path(post, path = "/api/v1/pipelines/validate", tag = "pipelines", request_body(description = "A PipelineTemplate document.", content((phoenix_wire::resource::PipelineTemplateDocument = "application/json"), (phoenix_wire::resource::PipelineTemplateDocument = "application/yaml"))), responses((status = 200, description = "Valid.", body = phoenix_wire::view::PipelineValidation), (status = 429, response = crate::http::openapi::TooManyRequests)), security(("userToken" = ["operator"])))]
pub async fn validate(
    State(state): State<AppState>,
    _: Operator,
    body: DocumentBody,
) -> Result<Json<PipelineValidation>, ApiError> {
    let _running = state.validations.clone().try_acquire_owned().map_err(|_| {
        ApiError::TooManyRequests(format!(
            "{MAX_VALIDATIONS} validations are running; try again in a moment"
        ))
    })?;
    Ok(Json(
        app::validate_template(&body, state.config.collector_bin.as_deref()).await?,
    ))
}
