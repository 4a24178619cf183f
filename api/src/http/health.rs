//! Liveness, readiness, version and metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use phoenix_wire::version::{BuildInfo, ServerVersion};

use crate::error::ApiError;
use crate::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "The process is up.", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /version`, unauthenticated like the probes: the build, and the largest
/// body this api accepts (so a client can refuse a larger file before sending).
#[utoipa::path(get, path = "/version", tag = "meta", responses((status = 200, description = "The build, and the largest body this api accepts.", body = phoenix_wire::version::ServerVersion)))]
pub async fn version(State(state): State<AppState>) -> axum::Json<ServerVersion> {
    axum::Json(ServerVersion {
        build: BuildInfo::new(env!("CARGO_PKG_VERSION"), option_env!("PHOENIX_GIT_COMMIT")),
        max_body_bytes: state.config.max_body_bytes,
    })
}

/// How long readiness waits for the database: a probe must be answered well
/// within its own timeout (Kubernetes' default is one second).
pub const READY_DATABASE_TIMEOUT: Duration = Duration::from_millis(800);

/// The process can serve: the database answers within [`READY_DATABASE_TIMEOUT`]
/// and the task listener is connected. Otherwise a 503, within that time.
#[utoipa::path(get, path = "/readyz", tag = "meta", responses((status = 200, description = "The database answers and the task listener is connected.", body = String, content_type = "text/plain"), (status = 503, response = crate::http::openapi::ServiceUnavailable)))]
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    let ping = async {
        let mut conn = phoenix_storage::acquire(&state.pool).await?;
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(phoenix_storage::StoreError::from)
    };
    match tokio::time::timeout(READY_DATABASE_TIMEOUT, ping).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => return Err(ApiError::Unavailable(format!("database: {err}"))),
        Err(_) => {
            return Err(ApiError::Unavailable(format!(
                "database: no answer within {} ms",
                READY_DATABASE_TIMEOUT.as_millis()
            )));
        }
    }
    if !*state.listener_connected.borrow() {
        return Err(ApiError::Unavailable(
            "the task listener is not connected yet".into(),
        ));
    }
    Ok("ready\n")
}

#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "The api's Prometheus metrics (OpenMetrics text).", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
