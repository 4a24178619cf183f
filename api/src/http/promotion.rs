//! `/api/v1/experiments/{name}/promote` and `.../rollback`: a completed
//! experiment's candidate becomes a standing pipeline deployment, and back.

use axum::Json;
use axum::extract::{Path, Query, State};
use phoenix_wire::deployment::PromotionResult;

use crate::app::deployments::{self as app, PromoteOptions};
use crate::error::ApiError;
use crate::http::auth::Operator;
use crate::state::AppState;

/// `?force=true` promotes a verdict other than `pass`; `?deployment=NAME` names
/// the deployment to create or update. 409 unless the experiment is `completed`.
#[utoipa::path(post, path = "/api/v1/experiments/{name}/promote", tag = "experiments", params(("name" = String, Path, description = "The experiment's name."), ("force" = Option<bool>, Query, description = "Promote a verdict other than pass."), ("deployment" = Option<String>, Query, description = "The deployment to create or update.")), responses((status = 200, description = "Promoted.", body = phoenix_wire::deployment::PromotionResult), (status = 400, response = crate::http::openapi::BadRequest), (status = 404, response = crate::http::openapi::NotFound), (status = 409, response = crate::http::openapi::Conflict), (status = 422, response = crate::http::openapi::Unprocessable)), security(("userToken" = ["operator"])))]
pub async fn promote(
    State(state): State<AppState>,
    _: Operator,
    Path(name): Path<String>,
    Query(options): Query<PromoteOptions>,
) -> Result<Json<PromotionResult>, ApiError> {
    let mut conn = state.conn().await?;
    let result = app::promote(&mut conn, &name, &options).await?;
    tracing::info!(experiment = %name, deployment = ?result.deployment.as_ref().map(|d| &d.name), force = options.force, "experiment promoted");
    Ok(Json(result))
}

/// Undoes a promotion; 409 unless the experiment is `promoted`.
#[utoipa::path(post, path = "/api/v1/experiments/{name}/rollback", tag = "experiments", params(("name" = String, Path, description = "The experiment's name.")), responses((status = 200, description = "Rolled back.", body = phoenix_wire::deployment::PromotionResult), (status = 404, response = crate::http::openapi::NotFound), (status = 409, response = crate::http::openapi::Conflict)), security(("userToken" = ["operator"])))]
pub async fn rollback(
    State(state): State<AppState>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<Json<PromotionResult>, ApiError> {
    let mut conn = state.conn().await?;
    let result = app::rollback_experiment(&mut conn, &name).await?;
    tracing::info!(experiment = %name, "experiment rolled back");
    Ok(Json(result))
}
