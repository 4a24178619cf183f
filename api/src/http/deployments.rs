//! `/api/v1/deployments`: pipeline deployments (standing pipelines): deploy (create
//! or new revision), list, get (with revisions and the latest roll-out), the
//! roll-outs' steps (`/events`), delete, and roll back.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use phoenix_storage::deployments::{self, Applied};
use phoenix_wire::deployment::PipelineDeployment;
use phoenix_wire::rollout::RolloutEvent;
use phoenix_wire::view::List;

use crate::app::deployments as app;
use crate::error::ApiError;
use crate::http::auth::{Operator, Viewer};
use crate::http::body::DocumentBody;
use crate::state::AppState;

/// 201 when the deployment is new; 200 when the document became a new revision,
/// or was already the current one.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "deployments", request_body(description = "A PipelineDeployment document.", content((phoenix_wire::deployment::PipelineDeploymentDocument = "application/json"), (phoenix_wire::deployment::PipelineDeploymentDocument = "application/yaml"))), responses((status = 201, description = "A new deployment.", body = phoenix_wire::deployment::PipelineDeployment), (status = 200, description = "A new revision, or the current one unchanged.", body = phoenix_wire::deployment::PipelineDeployment), (status = 404, response = crate::http::openapi::NotFound), (status = 409, response = crate::http::openapi::Conflict)), security(("userToken" = ["operator"])))]
pub async fn deploy(
    State(state): State<AppState>,
    _: Operator,
    body: DocumentBody,
) -> Result<(StatusCode, Json<PipelineDeployment>), ApiError> {
    let (deployment, applied) =
        app::deploy(&state.pool, &body, state.config.collector_bin.as_deref()).await?;
    tracing::info!(deployment = %deployment.name, revision = deployment.revision, ?applied, "pipeline deployment applied");
    let status = if applied == Applied::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(deployment)))
}

#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments", responses((status = 200, description = "Every deployment.", body = phoenix_wire::openapi::lists::Deployments)), security(("userToken" = ["viewer"])))]
pub async fn list(
    State(state): State<AppState>,
    _: Viewer,
) -> Result<Json<List<PipelineDeployment>>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(List {
        items: app::list(&mut conn).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}", tag = "deployments", params(("name" = String, Path, description = "The deployment's name.")), responses((status = 200, description = "The deployment.", body = phoenix_wire::deployment::PipelineDeployment), (status = 404, response = crate::http::openapi::NotFound)), security(("userToken" = ["viewer"])))]
pub async fn get(
    State(state): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<PipelineDeployment>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(app::get(&mut conn, &name).await?))
}

/// Every step of the deployment's roll-outs, oldest first.
#[utoipa::path(get, path = "/api/v1/deployments/{name}/events", tag = "deployments", params(("name" = String, Path, description = "The deployment's name.")), responses((status = 200, description = "Its roll-out steps.", body = phoenix_wire::openapi::lists::RolloutEvents), (status = 404, response = crate::http::openapi::NotFound)), security(("userToken" = ["viewer"])))]
pub async fn events(
    State(state): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<List<RolloutEvent>>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(List {
        items: app::events(&mut conn, &name).await?,
    }))
}

/// Deletes a deployment and its history; its hosts stop its collector.
#[utoipa::path(delete, path = "/api/v1/deployments/{name}", tag = "deployments", params(("name" = String, Path, description = "The deployment's name.")), responses((status = 204, description = "Deleted."), (status = 404, response = crate::http::openapi::NotFound), (status = 409, response = crate::http::openapi::Conflict)), security(("userToken" = ["operator"])))]
pub async fn delete(
    State(state): State<AppState>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut conn = state.conn().await?;
    deployments::delete(&mut conn, &name).await?;
    tracing::info!(deployment = %name, "pipeline deployment deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Makes the previous revision current again; 409 when there is none.
#[utoipa::path(post, path = "/api/v1/deployments/{name}/rollback", tag = "deployments", params(("name" = String, Path, description = "The deployment's name.")), responses((status = 200, description = "Rolled back.", body = phoenix_wire::deployment::PipelineDeployment), (status = 404, response = crate::http::openapi::NotFound), (status = 409, response = crate::http::openapi::Conflict)), security(("userToken" = ["operator"])))]
pub async fn rollback(
    State(state): State<AppState>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<Json<PipelineDeployment>, ApiError> {
    let mut conn = state.conn().await?;
    let deployment = app::rollback(&mut conn, &name).await?;
    tracing::info!(deployment = %name, revision = deployment.revision, "pipeline deployment rolled back");
    Ok(Json(deployment))
}
