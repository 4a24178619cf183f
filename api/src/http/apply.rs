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
#[utoipa::path(post, path = "/api/v1/apply", tag = "apply", params(("source" = String, Query, description = "Who owns what this apply creates (the CLI sends the directory)."), ("prune" = Option<bool>, Query, description = "Delete what this source applied earlier and the body no longer holds."), ("dryRun" = Option<bool>, Query, description = "Answer the plan, change nothing.")), request_body(description = "Documents: a JSON list, or a YAML stream.", content((phoenix_wire::apply::ApplyBody = "application/json"), (phoenix_wire::apply::ApplyBody = "application/yaml"))), responses((status = 200, description = "The plan (applied unless a dry run).", body = Vec<phoenix_wire::apply::PlanEntry>), (status = 404, response = crate::http::openapi::NotFound), (status = 409, response = crate::http::openapi::Conflict)), security(("userToken" = ["operator"])))]
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
