//! `/api/v1/loadsims`: start, list, get and stop load simulations run on their own,
//! and the profiles they can use.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use phoenix_wire::load::{LoadProfileInfo, LoadSim};
use phoenix_wire::view::List;

use crate::app::loadsims;
use crate::error::ApiError;
use crate::http::auth::{Operator, Viewer};
use crate::http::body::DocumentBody;
use crate::state::AppState;

#[utoipa::path(post, path = "/api/v1/loadsims", tag = "loadsims", request_body(description = "A load simulation to start.", content((phoenix_wire::load::LoadSimRequest = "application/json"), (phoenix_wire::load::LoadSimRequest = "application/yaml"))), responses((status = 201, description = "Started.", body = phoenix_wire::load::LoadSim), (status = 404, response = crate::http::openapi::NotFound), (status = 409, response = crate::http::openapi::Conflict)), security(("userToken" = ["operator"])))]
pub async fn start(
    State(state): State<AppState>,
    _: Operator,
    body: DocumentBody,
) -> Result<(StatusCode, Json<LoadSim>), ApiError> {
    let mut conn = state.conn().await?;
    let run = loadsims::start(&mut conn, &body).await?;
    tracing::info!(loadsim = %run.name, profile = %run.profile, hosts = run.target_hosts.len(), "load simulation started");
    Ok((StatusCode::CREATED, Json(run)))
}

#[utoipa::path(get, path = "/api/v1/loadsims", tag = "loadsims", responses((status = 200, description = "Every run.", body = phoenix_wire::openapi::lists::LoadSims)), security(("userToken" = ["viewer"])))]
pub async fn list(
    State(state): State<AppState>,
    _: Viewer,
) -> Result<Json<List<LoadSim>>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(List {
        items: loadsims::list(&mut conn).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/loadsims/{name}", tag = "loadsims", params(("name" = String, Path, description = "The run's name.")), responses((status = 200, description = "The run.", body = phoenix_wire::load::LoadSim), (status = 404, response = crate::http::openapi::NotFound)), security(("userToken" = ["viewer"])))]
pub async fn get(
    State(state): State<AppState>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<Json<LoadSim>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(loadsims::get(&mut conn, &name).await?))
}

/// Stops a run (`DELETE`): its record stays, as `stopped`, until a new run of the
/// same name replaces it.
#[utoipa::path(delete, path = "/api/v1/loadsims/{name}", tag = "loadsims", params(("name" = String, Path, description = "The run's name.")), responses((status = 200, description = "Stopped; the record stays.", body = phoenix_wire::load::LoadSim), (status = 404, response = crate::http::openapi::NotFound), (status = 409, response = crate::http::openapi::Conflict)), security(("userToken" = ["operator"])))]
pub async fn stop(
    State(state): State<AppState>,
    _: Operator,
    Path(name): Path<String>,
) -> Result<Json<LoadSim>, ApiError> {
    let mut conn = state.conn().await?;
    let run = loadsims::stop(&mut conn, &name).await?;
    tracing::info!(loadsim = %name, "load simulation stopped");
    Ok(Json(run))
}

#[utoipa::path(get, path = "/api/v1/loadsims/profiles", tag = "loadsims", responses((status = 200, description = "The load profiles.", body = phoenix_wire::openapi::lists::LoadProfiles)), security(("userToken" = ["viewer"])))]
pub async fn profiles(_: Viewer) -> Json<List<LoadProfileInfo>> {
    Json(List {
        items: LoadProfileInfo::all(),
    })
}
