//! `/api/v1/experiments`: create, list, get, stop, delete, events.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use phoenix_storage::experiments;
use phoenix_wire::view::{Experiment, ExperimentEvent, List};

use crate::app;
use crate::error::ApiError;
use crate::http::auth::{Operator, Viewer};
use crate::http::body::DocumentBody;
use crate::state::AppState;

#[utoipa::path(post, path = "/api/v1/experiments", tag = "experiments", request_body(description = "An Experiment document.", content((phoenix_wire::resource::ExperimentDocument = "application/json"), (phoenix_wire::resource::ExperimentDocument = "application/yaml"))), responses((status = 201, description = "Created, in phase pending.", body = phoenix_wire::view::Experiment), (status = 404, response = crate::http::openapi::NotFound), (status = 409, response = crate::http::openapi::Conflict)), security(("userToken" = ["operator"])))]
pub async fn create(
    State(state): State<AppState>,
    _: Operator,
    body: DocumentBody,
) -> Result<(StatusCode, Json<Experiment>), ApiError> {
    let experiment =
        app::create_experiment(&state.pool, &body, state.config.collector_bin.as_deref()).await?;
    tracing::info!(experiment = %experiment.name, "experiment created");
    Ok((StatusCode::CREATED, Json(experiment)))
}

#[utoipa::path(get, path = "/api/v1/experiments", tag = "experiments", responses((status = 200, description = "Every experiment.", body = phoenix_wire::openapi::lists::Experiments)), security(("userToken" = ["viewer"])))]
pub async fn list(
    State(state): State<AppState>,
    _: Viewer,
) -> Result<Json<List<Experiment>>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(List {
        items: experiments::list(&mut conn).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/experiments/{name}", tag = "experiments", params(("name" = String, Path, description = "The experiment's name.")), responses((status = 200, description = "The experiment.", body = phoenix_wire::view::Experiment), (status = 404, response = crate::http::openapi::NotFound)), security(("userToken" = ["viewer"])))]
pub async fn get(
    State(state): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<Experiment>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(experiments::get(&mut conn, &name).await?))
}

#[utoipa::path(delete, path = "/api/v1/experiments/{name}", tag = "experiments", params(("name" = String, Path, description = "The experiment's name.")), responses((status = 204, description = "Deleted."), (status = 404, response = crate::http::openapi::NotFound), (status = 409, response = crate::http::openapi::Conflict)), security(("userToken" = ["operator"])))]
pub async fn delete(
    State(state): State<AppState>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut conn = state.conn().await?;
    experiments::delete(&mut conn, &name).await?;
    tracing::info!(experiment = %name, "experiment deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/experiments/{name}/stop", tag = "experiments", params(("name" = String, Path, description = "The experiment's name.")), responses((status = 200, description = "Stopped.", body = phoenix_wire::view::Experiment), (status = 404, response = crate::http::openapi::NotFound), (status = 409, response = crate::http::openapi::Conflict)), security(("userToken" = ["operator"])))]
pub async fn stop(
    State(state): State<AppState>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<Json<Experiment>, ApiError> {
    let mut conn = state.conn().await?;
    let experiment = experiments::stop(&mut conn, &name, "stopped by user").await?;
    tracing::info!(experiment = %name, "experiment stopped");
    Ok(Json(experiment))
}

#[utoipa::path(get, path = "/api/v1/experiments/{name}/events", tag = "experiments", params(("name" = String, Path, description = "The experiment's name.")), responses((status = 200, description = "Its events, oldest first.", body = phoenix_wire::openapi::lists::ExperimentEvents), (status = 404, response = crate::http::openapi::NotFound)), security(("userToken" = ["viewer"])))]
pub async fn events(
    State(state): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<List<ExperimentEvent>>, ApiError> {
    let mut conn = state.conn().await?;
    let items = experiments::events(&mut conn, &name).await?;
    if items.is_empty() {
        return Err(ApiError::NotFound(format!(
            "experiment {name} has no events; it never existed"
        )));
    }
    Ok(Json(List { items }))
}

/// The analysis report: KPIs per variant and host, the tests, and the verdict.
#[utoipa::path(get, path = "/api/v1/experiments/{name}/report", tag = "experiments", params(("name" = String, Path, description = "The experiment's name.")), responses((status = 200, description = "The report.", body = phoenix_wire::report::ExperimentReport), (status = 404, response = crate::http::openapi::NotFound)), security(("userToken" = ["viewer"])))]
pub async fn report(
    State(state): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<phoenix_wire::report::ExperimentReport>, ApiError> {
    let mut conn = state.conn().await?;
    let experiment = experiments::get(&mut conn, &name).await?;
    match phoenix_storage::results::report(&mut conn, &name).await? {
        Some(mut report) => {
            report.incidents = experiments::task_events(&mut conn, &name).await?;
            Ok(Json(report))
        }
        None => Err(ApiError::NotFound(format!(
            "experiment {name} has no report yet: it is {}{}",
            experiment.phase,
            if experiment.phase.is_terminal() {
                " and ended without one"
            } else {
                "; a report is written when analysis completes"
            }
        ))),
    }
}
