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

pub async fn list(
    State(state): State<AppState>,
    _: Viewer,
) -> Result<Json<List<LoadSim>>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(List {
        items: loadsims::list(&mut conn).await?,
    }))
}

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

pub async fn profiles(_: Viewer) -> Json<List<LoadProfileInfo>> {
    Json(List {
        items: LoadProfileInfo::all(),
    })
}
