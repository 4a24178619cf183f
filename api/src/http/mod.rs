//! The HTTP surface: the router and its handlers, one module per resource. Handlers
//! are thin: authorize (by extractor), parse, call one application or storage
//! function, convert to a view. [`auth`] (tokens, roles), [`body`] (document bodies)
//! and [`serve`] (the HTTP/1.1 server loop) serve them all. [`ui`] serves the web
//! console embedded at build time under `/ui`, and `GET /api/v1/whoami`.

pub mod agent;
pub mod apply;
pub mod auth;
pub mod body;
pub mod credentials;
pub mod deployments;
pub mod destinations;
pub mod events;
pub mod experiments;
pub mod health;
pub mod hosts;
pub mod loadsims;
pub mod openapi;
pub mod pipelines;
pub mod promotion;
pub mod serve;
pub mod tasks;
pub mod ui;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};

use tracing::Instrument;

use crate::metrics::RequestLabels;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    ui::warn_if_missing();
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/version", get(health::version))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route(
            "/api/v1/experiments",
            post(experiments::create).get(experiments::list),
        )
        .route(
            "/api/v1/experiments/{name}",
            get(experiments::get).delete(experiments::delete),
        )
        .route("/api/v1/experiments/{name}/stop", post(experiments::stop))
        .route(
            "/api/v1/experiments/{name}/promote",
            post(promotion::promote),
        )
        .route(
            "/api/v1/experiments/{name}/rollback",
            post(promotion::rollback),
        )
        .route("/api/v1/apply", post(apply::apply))
        .route(
            "/api/v1/deployments",
            post(deployments::deploy).get(deployments::list),
        )
        .route(
            "/api/v1/deployments/{name}",
            get(deployments::get).delete(deployments::delete),
        )
        .route(
            "/api/v1/destinations",
            post(destinations::put).get(destinations::list),
        )
        .route(
            "/api/v1/destinations/{name}",
            get(destinations::get).delete(destinations::delete),
        )
        .route(
            "/api/v1/deployments/{name}/rollback",
            post(deployments::rollback),
        )
        .route(
            "/api/v1/deployments/{name}/events",
            get(deployments::events),
        )
        .route(
            "/api/v1/experiments/{name}/report",
            get(experiments::report),
        )
        .route(
            "/api/v1/experiments/{name}/events",
            get(experiments::events),
        )
        .route("/api/v1/events", get(events::stream))
        .route("/api/v1/hosts", get(hosts::list))
        .route("/api/v1/hosts/{host_id}", get(hosts::get))
        .route(
            "/api/v1/loadsims",
            post(loadsims::start).get(loadsims::list),
        )
        .route("/api/v1/loadsims/profiles", get(loadsims::profiles))
        .route(
            "/api/v1/loadsims/{name}",
            get(loadsims::get).delete(loadsims::stop),
        )
        .route("/api/v1/tasks", get(tasks::list))
        .route("/api/v1/whoami", get(ui::whoami))
        .route("/ui", get(ui::redirect))
        .route("/ui/", get(ui::index))
        .route("/ui/{*path}", get(ui::page))
        .route("/api/v1/pipelines", get(pipelines::list))
        .route("/api/v1/pipelines/validate", post(pipelines::validate))
        .route("/api/v1/pipelines/{name}", get(pipelines::get))
        .route(
            "/api/v1/bootstrap-tokens",
            post(credentials::create_bootstrap).get(credentials::list_bootstrap),
        )
        .route(
            "/api/v1/bootstrap-tokens/{id}",
            delete(credentials::revoke_bootstrap),
        )
        .route(
            "/api/v1/agent-credentials",
            get(credentials::list_host_credentials),
        )
        .route(
            "/api/v1/agent-credentials/{host_id}",
            delete(credentials::revoke_host_credential),
        )
        .merge(agent_routes(state.clone()))
        .fallback(not_found)
        .layer(middleware::from_fn(errors_as_problems))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(middleware::from_fn(trace_requests))
        .with_state(state)
}

/// The agent protocol's routes, each behind the protocol version check.
fn agent_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/agent/v1/enroll", post(agent::enroll))
        .route("/agent/v1/hosts/{host_id}/tasks", get(agent::claim_tasks))
        .route(
            "/agent/v1/hosts/{host_id}/tasks/{task_id}",
            post(agent::complete_task),
        )
        .route(
            "/agent/v1/hosts/{host_id}/status",
            put(agent::report_status),
        )
        .route(
            "/agent/v1/hosts/{host_id}/configs/{sha256}",
            get(agent::config_body),
        )
        .route(
            "/agent/v1/hosts/{host_id}/heartbeat",
            post(agent::heartbeat),
        )
        .route_layer(middleware::from_fn_with_state(state, agent::check_protocol))
}

async fn not_found() -> crate::error::ApiError {
    crate::error::ApiError::NotFound("no such endpoint; the API lives under /api/v1".into())
}

/// Every error answer is `application/problem+json`: the few that axum writes
/// itself (a path or query parameter of the wrong type, a method a route does not
/// serve, a request that is no WebSocket handshake) become problems too, their
/// text as the detail. Found by fuzzing the api against its OpenAPI document.
async fn errors_as_problems(request: Request, next: Next) -> Response {
    use axum::http::header::CONTENT_TYPE;
    use phoenix_wire::problem::PROBLEM_CONTENT_TYPE;
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_CONTENT_TYPE.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).trim().to_string();
    let problem = phoenix_wire::problem::Problem {
        problem_type: "about:blank".into(),
        title: status.canonical_reason().unwrap_or("Error").into(),
        status: status.as_u16(),
        detail: Some(detail).filter(|d| !d.is_empty()),
        field: None,
    };
    let mut response = Response::from_parts(
        parts,
        axum::body::Body::from(serde_json::to_vec(&problem).expect("a problem serializes")),
    );
    response
        .headers_mut()
        .remove(axum::http::header::CONTENT_LENGTH);
    response.headers_mut().insert(
        CONTENT_TYPE,
        axum::http::HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    response
}

/// Runs each request in a span named `METHOD /route`, a child of the caller's span
/// when it sends a W3C `traceparent` header (the agent does): what the request
/// writes carries this span's trace on (see `phoenix_telemetry::context`).
async fn trace_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", request.method()),
        otel.kind = "server",
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(traceparent) = request
        .headers()
        .get(phoenix_telemetry::context::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
    {
        phoenix_telemetry::set_parent(&span, traceparent);
    }
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // The label takes a known method or `other`: a method is whatever an
    // unauthenticated client sends, and each new label value is a new series.
    let method = match request.method().as_str() {
        known @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => known,
        _ => "other",
    }
    .to_string();
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
