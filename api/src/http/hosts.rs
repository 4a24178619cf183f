//! `/api/v1/hosts`: the fleet as agents report it.

use axum::Json;
use axum::extract::{Path, State};
use phoenix_storage::hosts;
use phoenix_wire::view::{Host, List};

use crate::error::ApiError;
use crate::http::auth::Viewer;
use crate::state::AppState;

#[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts", responses((status = 200, description = "Every host.", body = phoenix_wire::openapi::lists::Hosts)), security(("userToken" = ["viewer"])))]
pub async fn list(State(state): State<AppState>, _: Viewer) -> Result<Json<List<Host>>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(List {
        items: hosts::list(&mut conn, state.config.host_grace.as_duration()).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/hosts/{host_id}", tag = "hosts", params(("host_id" = String, Path, description = "The host's id.")), responses((status = 200, description = "The host.", body = phoenix_wire::view::Host), (status = 404, response = crate::http::openapi::NotFound)), security(("userToken" = ["viewer"])))]
pub async fn get(
    State(state): State<AppState>,
    _: Viewer,
    Path(host_id): Path<String>,
) -> Result<Json<Host>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(
        hosts::get(&mut conn, &host_id, state.config.host_grace.as_duration()).await?,
    ))
}
