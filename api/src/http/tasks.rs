//! `/api/v1/tasks`: the agent tasks Phoenix wrote, newest first, by host and status.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use phoenix_storage::tasks;
use phoenix_wire::problem::FieldError;
use phoenix_wire::view::{AgentTask, List, TaskQuery};

use crate::error::ApiError;
use crate::http::auth::Viewer;
use crate::state::AppState;

/// `?host=H&status=S&limit=N` (all optional; `limit` 100 by default, at most 1000).
/// A wrong parameter is a 422 naming it.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(("host" = Option<String>, Query, description = "Only this host's tasks."), ("status" = Option<String>, Query, description = "Only tasks in this status."), ("limit" = Option<String>, Query, description = "At most this many (default 100, at most 1000).")), responses((status = 200, description = "Tasks, newest first.", body = phoenix_wire::openapi::lists::Tasks), (status = 422, response = crate::http::openapi::Unprocessable)), security(("userToken" = ["viewer"])))]
pub async fn list(
    State(state): State<AppState>,
    _: Viewer,
    query: Result<Query<TaskQuery>, QueryRejection>,
) -> Result<Json<List<AgentTask>>, ApiError> {
    let Query(query) = query.map_err(|r| ApiError::Invalid(FieldError::new("", r.body_text())))?;
    let filter = query.check().map_err(ApiError::Invalid)?;
    let mut conn = state.conn().await?;
    Ok(Json(List {
        items: tasks::list(&mut conn, &filter).await?,
    }))
}
