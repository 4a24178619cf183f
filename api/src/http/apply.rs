//! `/api/v1/apply`: declarative apply of a set of documents (see [`crate::app::apply`]).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use phoenix_wire::apply::PlanEntry;
use phoenix_wire::problem::FieldError;

use crate::app::apply::{self as app, ApplyOptions};
use crate::error::ApiError;
use crate::http::auth::{Operator, Role};
use crate::http::body::DocumentBody;
use crate::state::AppState;

/// `?source=S&prune=true|false&dryRun=true|false`; answers the plan, a JSON list of
/// `{kind, name, action, reason}`. All or nothing: any error changes nothing.
pub async fn apply(
    State(state): State<AppState>,
    caller: Operator,
    query: Result<Query<ApplyOptions>, QueryRejection>,
    body: DocumentBody,
) -> Result<Json<Vec<PlanEntry>>, ApiError> {
    let Query(options) =
        query.map_err(|r| ApiError::Malformed(FieldError::new("", r.body_text())))?;
    let plan = app::apply(
        &state.pool,
        &body,
        &options,
        state.config.collector_bin.as_deref(),
        caller.0 == Role::Admin,
    )
    .await?;
    tracing::info!(source = %options.source, dry_run = options.dry_run, prune = options.prune, entries = plan.len(), "apply");
    Ok(Json(plan))
}
