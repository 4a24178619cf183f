//! Agent identity for admins: `/api/v1/bootstrap-tokens` (create, list, revoke) and
//! `/api/v1/agent-credentials` (list; revoke a host's). Enrollment itself is an
//! agent route ([`super::agent::enroll`]).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use phoenix_storage::credentials;
use phoenix_wire::credentials::{
    BootstrapTokenView, HostCredentialView, NewBootstrapToken, check_token_id,
};
use phoenix_wire::names::check_host_id;
use phoenix_wire::problem::FieldError;
use phoenix_wire::view::List;
use serde::Deserialize;

use crate::app::{self, parse_body};
use crate::error::ApiError;
use crate::http::auth::Admin;
use crate::http::body::DocumentBody;
use crate::state::AppState;

/// `POST /api/v1/bootstrap-tokens`: the answer carries the token, shown this once.
#[utoipa::path(post, path = "/api/v1/bootstrap-tokens", tag = "credentials", request_body(description = "What the token is for, and how long it lasts.", content((phoenix_wire::credentials::NewBootstrapToken = "application/json"), (phoenix_wire::credentials::NewBootstrapToken = "application/yaml"))), responses((status = 201, description = "Created; the token is shown this once.", body = phoenix_wire::credentials::BootstrapTokenView)), security(("userToken" = ["admin"])))]
pub async fn create_bootstrap(
    State(state): State<AppState>,
    _: Admin,
    body: DocumentBody,
) -> Result<(StatusCode, Json<BootstrapTokenView>), ApiError> {
    let request: NewBootstrapToken = parse_body(&body)?;
    let mut conn = state.conn().await?;
    let view = app::credentials::create_bootstrap(&mut conn, &request).await?;
    tracing::info!(id = %view.id, "bootstrap token created");
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/api/v1/bootstrap-tokens", tag = "credentials", responses((status = 200, description = "Every bootstrap token (without its secret).", body = phoenix_wire::openapi::lists::BootstrapTokens)), security(("userToken" = ["admin"])))]
pub async fn list_bootstrap(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<List<BootstrapTokenView>>, ApiError> {
    let mut conn = state.conn().await?;
    Ok(Json(List {
        items: credentials::list_bootstrap(&mut conn).await?,
    }))
}

/// `DELETE /api/v1/bootstrap-tokens/{id}`: it enrolls no more agents.
#[utoipa::path(delete, path = "/api/v1/bootstrap-tokens/{id}", tag = "credentials", params(("id" = String, Path, description = "The token's id.")), responses((status = 200, description = "Revoked.", body = phoenix_wire::credentials::BootstrapTokenView), (status = 404, response = crate::http::openapi::NotFound), (status = 422, response = crate::http::openapi::Unprocessable)), security(("userToken" = ["admin"])))]
pub async fn revoke_bootstrap(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<BootstrapTokenView>, ApiError> {
    check_token_id(&id).map_err(|m| ApiError::Invalid(FieldError::new("id", m)))?;
    let mut conn = state.conn().await?;
    let view = credentials::revoke_bootstrap(&mut conn, &id).await?;
    tracing::info!(%id, "bootstrap token revoked");
    Ok(Json(view))
}

#[derive(Deserialize)]
pub struct CredentialQuery {
    host: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/agent-credentials", tag = "credentials", params(("host" = Option<String>, Query, description = "Only this host's.")), responses((status = 200, description = "Host credentials (without their secret).", body = phoenix_wire::openapi::lists::HostCredentials), (status = 400, response = crate::http::openapi::BadRequest), (status = 422, response = crate::http::openapi::Unprocessable)), security(("userToken" = ["admin"])))]
pub async fn list_host_credentials(
    State(state): State<AppState>,
    _: Admin,
    Query(query): Query<CredentialQuery>,
) -> Result<Json<List<HostCredentialView>>, ApiError> {
    if let Some(host) = &query.host {
        check_host_id(host).map_err(|m| ApiError::Invalid(FieldError::new("host", m)))?;
    }
    let mut conn = state.conn().await?;
    Ok(Json(List {
        items: credentials::list_host_credentials(&mut conn, query.host.as_deref()).await?,
    }))
}

/// `DELETE /api/v1/agent-credentials/{host_id}`: the host's credential stops
/// working on every api replica at once; its agent must enroll again.
#[utoipa::path(delete, path = "/api/v1/agent-credentials/{host_id}", tag = "credentials", params(("host_id" = String, Path, description = "The host's id.")), responses((status = 200, description = "Revoked.", body = phoenix_wire::credentials::HostCredentialView), (status = 404, response = crate::http::openapi::NotFound), (status = 422, response = crate::http::openapi::Unprocessable)), security(("userToken" = ["admin"])))]
pub async fn revoke_host_credential(
    State(state): State<AppState>,
    _: Admin,
    Path(host_id): Path<String>,
) -> Result<Json<HostCredentialView>, ApiError> {
    check_host_id(&host_id).map_err(|m| ApiError::Invalid(FieldError::new("host_id", m)))?;
    let mut conn = state.conn().await?;
    let view = credentials::revoke_host_credential(&mut conn, &host_id).await?;
    // This replica's cache drops it now; the others when the notification arrives.
    state.credentials.evict(&view.id);
    tracing::info!(%host_id, id = %view.id, "host credential revoked");
    Ok(Json(view))
}
