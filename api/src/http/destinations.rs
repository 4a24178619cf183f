//! `/api/v1/destinations` (admin only): create or replace, list, get and delete the
//! user's backends that standing collectors export to.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use phoenix_storage::destinations;
use phoenix_wire::destination::Destination;
use phoenix_wire::view::List;

use crate::app::destinations as app;
use crate::error::ApiError;
use crate::http::auth::Admin;
use crate::http::body::DocumentBody;
use crate::state::AppState;

/// 201 when the destination is new, 200 when it replaced one.
#[utoipa::path(post, path = "/api/v1/destinations", tag = "destinations", request_body(description = "A Destination document.", content((phoenix_wire::destination::DestinationDocument = "application/json"), (phoenix_wire::destination::DestinationDocument = "application/yaml"))), responses((status = 201, description = "A new destination.", body = phoenix_wire::destination::Destination), (status = 200, description = "Replaced.", body = phoenix_wire::destination::Destination), (status = 409, response = crate::http::openapi::Conflict)), security(("userToken" = ["admin"])))]
pub async fn put(
    State(state): State<AppState>,
    _: Admin,
    body: DocumentBody,
) -> Result<(StatusCode, Json<Destination>), ApiError> {
    let mut conn = state.conn().await?;
    let (destination, created) = app::put(&mut conn, &body).await?;
    tracing::info!(destination = %destination.name, created, "destination stored");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(destination)))
}

#[utoipa::path(get, path = "/api/v1/destinations", tag = "destinations", responses((status = 200, description = "Every destination.", body = phoenix_wire::openapi::lists::Destinations)), security(("userToken" = ["admin"])))]
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<List<Destination>>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(List {
        items: destinations::list(&mut conn).await?,
    }))
}

#[utoipa::path(get, path = "/api/v1/destinations/{name}", tag = "destinations", params(("name" = String, Path, description = "The destination's name.")), responses((status = 200, description = "The destination.", body = phoenix_wire::destination::Destination), (status = 404, response = crate::http::openapi::NotFound), (status = 422, response = crate::http::openapi::Unprocessable)), security(("userToken" = ["admin"])))]
pub async fn get(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<Destination>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(app::get(&mut conn, &name).await?))
}

/// 204; 409 while a deployment exports to it.
#[utoipa::path(delete, path = "/api/v1/destinations/{name}", tag = "destinations", params(("name" = String, Path, description = "The destination's name.")), responses((status = 204, description = "Deleted."), (status = 404, response = crate::http::openapi::NotFound), (status = 422, response = crate::http::openapi::Unprocessable), (status = 409, response = crate::http::openapi::Conflict)), security(("userToken" = ["admin"])))]
pub async fn delete(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let mut conn = state.conn().await?;
    app::delete(&mut conn, &name).await?;
    tracing::info!(destination = %name, "destination deleted");
    Ok(StatusCode::NO_CONTENT)
}
