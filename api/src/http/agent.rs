//! The agent protocol (see `phoenix_wire::agent`): `POST /agent/v1/enroll` with a
//! bootstrap token, then `/agent/v1/hosts/{host_id}/...` with that host's credential
//! ([`AgentHost`]).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use phoenix_storage::hosts;
use phoenix_storage::tasks::Completion;
use phoenix_wire::agent::{HostStatus, TaskBatch, TaskOutcome};
use phoenix_wire::credentials::{EnrollRequest, Enrollment};
use phoenix_wire::duration::HumanDuration;
use phoenix_wire::problem::FieldError;
use serde::Deserialize;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use phoenix_wire::agent::{PROTOCOL_HEADER, ProtocolVersion, UNVERSIONED_AGENT};

use crate::app::{credentials, parse_body};
use crate::error::ApiError;
use crate::http::auth::{AgentHost, BootstrapBearer};
use crate::http::body::DocumentBody;
use crate::state::AppState;

/// Runs before every agent route (and its authentication): an agent whose protocol
/// version this api does not serve gets a 426 naming both versions, and the
/// api's version in [`PROTOCOL_HEADER`].
pub async fn check_protocol(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let ours = state.config.agent_protocol;
    let sent = request.headers().get(PROTOCOL_HEADER);
    let theirs = match sent {
        None => Some(UNVERSIONED_AGENT),
        Some(value) => value.to_str().ok().and_then(ProtocolVersion::parse),
    };
    if let Some(theirs) = theirs
        && ours.accepts(theirs)
    {
        return next.run(request).await;
    }
    let agent = match (sent, theirs) {
        (None, _) => format!(
            "this agent speaks {UNVERSIONED_AGENT} (it sent no {PROTOCOL_HEADER} header: a release from before the header, such as v0.1.0)"
        ),
        (Some(_), Some(theirs)) => format!("this agent speaks {theirs}"),
        (Some(value), None) => format!(
            "this agent sent {PROTOCOL_HEADER}: {:?}, which is no version",
            String::from_utf8_lossy(value.as_bytes())
        ),
    };
    let oldest = ProtocolVersion {
        major: ours.major,
        minor: ours.minor.saturating_sub(1),
    };
    let mut response = ApiError::UpgradeRequired(format!(
        "phoenix-api {} speaks agent protocol {ours} and serves agents of {oldest} and newer within {}.x; {agent}. Run a phoenix-agent of a release that speaks {}.x (the api's, or one minor version older)",
        env!("CARGO_PKG_VERSION"),
        ours.major,
        ours.major,
    ))
    .into_response();
    if let Ok(value) = ours.to_string().parse() {
        response.headers_mut().insert(PROTOCOL_HEADER, value);
    }
    response
}

#[derive(Deserialize)]
pub struct WaitQuery {
    /// How long to wait for a task when none is ready, e.g. `30s`; 0 answers at once.
    wait: Option<String>,
}

/// Long-poll: claims the host's open tasks, or waits until a new one is announced
/// or the wait ends. No database connection is held while waiting.
pub async fn claim_tasks(
    State(state): State<AppState>,
    AgentHost(host_id): AgentHost,
    Query(query): Query<WaitQuery>,
) -> Result<Json<TaskBatch>, ApiError> {
    let wait = match query.wait.as_deref() {
        None => state.config.max_wait(),
        Some(text) => HumanDuration::parse(text)
            .map_err(|m| ApiError::Invalid(FieldError::new("wait", m)))?
            .as_duration()
            .min(state.config.max_wait()),
    };
    let deadline = tokio::time::Instant::now() + wait;
    let subscription = state.wakeups.subscribe(&host_id);
    let mut shutdown = state.shutdown.clone();
    state.metrics.long_polls_waiting.inc();
    let _waiting = scopeguard(|| {
        state.metrics.long_polls_waiting.dec();
    });
    loop {
        // Register for a wake-up before looking, so a task announced between the
        // look and the wait is not missed.
        let notified = subscription.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let tasks = state.claims.claim(&host_id).await?;
        if !tasks.is_empty() || tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
            state.metrics.tasks_delivered.inc_by(tasks.len() as u64);
            return Ok(Json(TaskBatch { tasks }));
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Runs `f` when dropped (when the request finishes or is cancelled).
fn scopeguard<F: FnMut()>(f: F) -> impl Drop {
    struct Guard<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Guard<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    Guard(f)
}

pub async fn complete_task(
    State(state): State<AppState>,
    AgentHost(host_id): AgentHost,
    Path((_, task_id)): Path<(String, i64)>,
    body: DocumentBody,
) -> Result<StatusCode, ApiError> {
    let outcome: TaskOutcome = parse_body(&body)?;
    let failed = (!outcome.ok).then(|| outcome.error.clone().unwrap_or_default());
    match state
        .completions
        .complete(&host_id, task_id, outcome)
        .await?
    {
        Completion::Unknown => {
            return Err(ApiError::NotFound(format!(
                "task {task_id} of host {host_id} does not exist"
            )));
        }
        Completion::Again => tracing::debug!(%host_id, task_id, "task answered again; ignored"),
        Completion::First => {
            if let Some(error) = failed {
                tracing::warn!(%host_id, task_id, %error, "task failed on the agent");
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn report_status(
    State(state): State<AppState>,
    AgentHost(host_id): AgentHost,
    body: DocumentBody,
) -> Result<StatusCode, ApiError> {
    let status: HostStatus = parse_body(&body)?;
    status.check().map_err(ApiError::Invalid)?;
    let mut conn = state.conn().await?;
    hosts::report_status(&mut conn, &host_id, &status).await?;
    state.heartbeats.mark_known(&host_id);
    state.metrics.status_reports.inc();
    Ok(StatusCode::NO_CONTENT)
}

/// Records the heartbeat in memory; it reaches the database with the next batch.
/// A host that is not registered gets a 404, so its agent registers again at once.
pub async fn heartbeat(
    State(state): State<AppState>,
    AgentHost(host_id): AgentHost,
) -> Result<StatusCode, ApiError> {
    if !state.heartbeats.is_known(&host_id) {
        let mut conn = state.conn().await?;
        if !hosts::exists(&mut conn, &host_id).await? {
            return Err(ApiError::NotFound(format!(
                "host {host_id} is not registered; its agent registers with a full status report (PUT /agent/v1/hosts/{host_id}/status)"
            )));
        }
        state.heartbeats.mark_known(&host_id);
    }
    state.heartbeats.record(&host_id);
    state.metrics.heartbeats_received.inc();
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /agent/v1/enroll`: a bootstrap token and a host id in, that host's
/// credential out (201), shown this once.
pub async fn enroll(
    State(state): State<AppState>,
    BootstrapBearer(bootstrap): BootstrapBearer,
    body: DocumentBody,
) -> Result<(StatusCode, Json<Enrollment>), ApiError> {
    let request: EnrollRequest = parse_body(&body)?;
    let mut conn = state.conn().await?;
    let enrollment = credentials::enroll(&mut conn, &bootstrap, &request.host_id).await?;
    Ok((StatusCode::CREATED, Json(enrollment)))
}
