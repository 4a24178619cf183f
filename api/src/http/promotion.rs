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
