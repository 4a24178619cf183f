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

pub async fn list(
    State(state): State<AppState>,
    _: Viewer,
) -> Result<Json<List<PipelineDeployment>>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(List {
        items: app::list(&mut conn).await?,
    }))
}

pub async fn get(
    State(state): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<PipelineDeployment>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(app::get(&mut conn, &name).await?))
}

/// Every step of the deployment's roll-outs, oldest first.
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
