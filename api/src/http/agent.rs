//! The agent protocol (see `phoenix_wire::agent`): `POST /agent/v1/enroll` with a
//! bootstrap token, then `/agent/v1/hosts/{host_id}/...` with that host's credential
//! ([`AgentHost`]).
//!
//! A long-poll is also the host's heartbeat: it is recorded when the poll arrives
//! and again every 10 s while it waits (`ApiConfig::long_poll_heartbeat`), so an
//! idle agent holds one connection and sends nothing else. A waiting poll whose
//! host is no longer registered ends with a 404, so its agent registers again.
//! `POST heartbeat` stays for agents that want it (and older ones).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::{Extension, Json};
use phoenix_storage::tasks::Completion;
use phoenix_storage::{hosts, tasks};
use phoenix_wire::agent::{
    CONFIG_BY_REFERENCE, HostStatus, Task, TaskBatch, TaskOutcome, is_body_sha256,
};
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
        let mut request = request;
        request.extensions_mut().insert(theirs);
        let mut response = next.run(request).await;
        // Every answer says what the api speaks: a 2.1 agent stops sending separate
        // heartbeats only to an api that counts its long-poll as one.
        if let Ok(value) = ours.to_string().parse() {
            response.headers_mut().insert(PROTOCOL_HEADER, value);
        }
        return response;
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
/// or the wait ends. No database connection is held while waiting. The poll is the
/// host's heartbeat, when it arrives and while it waits; a host that is not (or no
/// longer) registered gets a 404, so its agent registers again. Agents older than
/// [`CONFIG_BY_REFERENCE`] get each collector's config body inline.
#[utoipa::path(get, path = "/agent/v1/hosts/{host_id}/tasks", tag = "agent", params(("host_id" = String, Path, description = "The host's id."), ("wait" = Option<String>, Query, description = "How long to wait for a task, e.g. 30s (at most the api's --max-wait); 0 answers at once.")), responses((status = 200, description = "The host's claimed tasks (maybe none).", body = phoenix_wire::agent::TaskBatch), (status = 400, response = crate::http::openapi::BadRequest), (status = 404, response = crate::http::openapi::NotFound)), security(("hostCredential" = [])))]
pub async fn claim_tasks(
    State(state): State<AppState>,
    agent: AgentHost,
    Extension(protocol): Extension<ProtocolVersion>,
    Query(query): Query<WaitQuery>,
) -> Result<Json<TaskBatch>, ApiError> {
    let wait = match query.wait.as_deref() {
        None => state.config.max_wait(),
        Some(text) => HumanDuration::parse(text)
            .map_err(|m| ApiError::Invalid(FieldError::new("wait", m)))?
            .as_duration()
            .min(state.config.max_wait()),
    };
    let host_id = agent.0.clone();
    beat(&state, &host_id).await?;
    let beat_every = state.config.long_poll_heartbeat();
    let mut next_beat = tokio::time::Instant::now() + beat_every;
    let deadline = tokio::time::Instant::now() + wait;
    let subscription = state.wakeups.subscribe(&host_id);
    let mut shutdown = state.shutdown.clone();
    state.metrics.long_polls_waiting.inc();
    let _waiting = scopeguard(|| {
        state.metrics.long_polls_waiting.dec();
    });
    let mut woken = false;
    loop {
        // Register for a wake-up before looking, so a task announced between the
        // look and the wait is not missed.
        let notified = subscription.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if woken {
            // The credential may have been revoked while the poll waited.
            agent.check_again(&state).await?;
        }
        woken = true;
        let tasks = state.claims.claim(&host_id).await?;
        if !tasks.is_empty() || tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
            state.metrics.tasks_delivered.inc_by(tasks.len() as u64);
            let tasks = if protocol < CONFIG_BY_REFERENCE {
                with_bodies_inline(&state, tasks).await?
            } else {
                tasks
            };
            return Ok(Json(TaskBatch { tasks }));
        }
        // Wait for a wake-up, the deadline or shutdown; meanwhile count as the
        // heartbeat every `beat_every` (without claiming: a claim is a statement).
        loop {
            tokio::select! {
                _ = &mut notified => break,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep_until(next_beat) => {
                    agent.check_again(&state).await?;
                    beat(&state, &host_id).await?;
                    next_beat += beat_every;
                }
                _ = shutdown.changed() => break,
            }
        }
    }
}

/// The tasks with each collector's config body put back in (for agents that do
/// not fetch bodies by reference).
async fn with_bodies_inline(state: &AppState, mut tasks: Vec<Task>) -> Result<Vec<Task>, ApiError> {
    let refs: Vec<String> = tasks
        .iter()
        .filter_map(|t| t.collector.as_ref()?.config_ref.clone())
        .collect();
    if refs.is_empty() {
        return Ok(tasks);
    }
    let mut conn = state.conn().await?;
    let bodies = tasks::config_bodies(&mut conn, &refs).await?;
    for task in &mut tasks {
        let Some(spec) = task.collector.take() else {
            continue;
        };
        let body = spec.config_ref.as_ref().and_then(|sha| bodies.get(sha));
        task.collector = Some(match body {
            Some(body) => spec.with_body(body.clone()).map_err(ApiError::Internal)?,
            // Not stored (cannot happen while the foreign key holds): the agent
            // fails the task, naming the missing body.
            None => spec,
        });
    }
    Ok(tasks)
}

/// `GET configs/{sha256}`: a config body by its name, as text (content-addressed:
/// the agent checks the body hashes to the name). Any host's credential may fetch
/// a body by name: the name is a SHA-256, so a host knows it only if a task named
/// it or it holds the body already; checking which tasks name it would cost a
/// query per host and body, in the burst of a rollout.
#[utoipa::path(get, path = "/agent/v1/hosts/{host_id}/configs/{sha256}", tag = "agent", params(("host_id" = String, Path, description = "The host's id."), ("sha256" = String, Path, description = "The body's SHA-256, 64 lowercase hex digits.")), responses((status = 200, description = "The collector config body.", body = String, content_type = "application/yaml"), (status = 404, response = crate::http::openapi::NotFound)), security(("hostCredential" = [])))]
pub async fn config_body(
    State(state): State<AppState>,
    AgentHost(_, _): AgentHost,
    Path((_, sha256)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !is_body_sha256(&sha256) {
        return Err(ApiError::Invalid(FieldError::new(
            "sha256",
            "a config body is named by its SHA-256: 64 lowercase hex digits",
        )));
    }
    let body = match state.config_bodies.get(&sha256) {
        Some(body) => body,
        None => {
            let mut conn = state.conn().await?;
            let body: Arc<str> = tasks::config_body(&mut conn, &sha256)
                .await?
                .ok_or_else(|| {
                    ApiError::NotFound(format!("no config body is stored under {sha256}"))
                })?
                .into();
            state.config_bodies.keep(&sha256, body.clone());
            body
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/yaml")],
        body.to_string(),
    )
        .into_response())
}

/// Counts a request of `host_id` as its heartbeat; a host that is not registered
/// is a 404, so its agent registers again at once.
async fn beat(state: &AppState, host_id: &str) -> Result<(), ApiError> {
    if !state.heartbeats.is_known(host_id) {
        let mut conn = state.conn().await?;
        if !hosts::exists(&mut conn, host_id).await? {
            return Err(ApiError::NotFound(format!(
                "host {host_id} is not registered; its agent registers with a full status report (PUT /agent/v1/hosts/{host_id}/status)"
            )));
        }
        state.heartbeats.mark_known(host_id);
    }
    state.heartbeats.record(host_id);
    state.metrics.heartbeats_received.inc();
    Ok(())
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

#[utoipa::path(post, path = "/agent/v1/hosts/{host_id}/tasks/{task_id}", tag = "agent", params(("host_id" = String, Path, description = "The host's id."), ("task_id" = i64, Path, description = "The task's id.")), request_body(description = "How the task ended.", content((phoenix_wire::agent::TaskOutcome = "application/json"), (phoenix_wire::agent::TaskOutcome = "application/yaml"))), responses((status = 204, description = "Recorded (or answered before: ignored)."), (status = 404, response = crate::http::openapi::NotFound)), security(("hostCredential" = [])))]
pub async fn complete_task(
    State(state): State<AppState>,
    AgentHost(host_id, _): AgentHost,
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

#[utoipa::path(put, path = "/agent/v1/hosts/{host_id}/status", tag = "agent", params(("host_id" = String, Path, description = "The host's id.")), request_body(description = "The full status of the host; it registers the host.", content((phoenix_wire::agent::HostStatus = "application/json"), (phoenix_wire::agent::HostStatus = "application/yaml"))), responses((status = 204, description = "Recorded.")), security(("hostCredential" = [])))]
pub async fn report_status(
    State(state): State<AppState>,
    AgentHost(host_id, _): AgentHost,
    body: DocumentBody,
) -> Result<StatusCode, ApiError> {
    let status: HostStatus = parse_body(&body)?;
    status.check().map_err(ApiError::Invalid)?;
    state.status_reports.report(&host_id, status).await?;
    state.heartbeats.mark_seen(&host_id);
    state.metrics.status_reports.inc();
    Ok(StatusCode::NO_CONTENT)
}

/// Records the heartbeat in memory; it reaches the database with the next batch.
/// A host that is not registered gets a 404, so its agent registers again at once.
#[utoipa::path(post, path = "/agent/v1/hosts/{host_id}/heartbeat", tag = "agent", params(("host_id" = String, Path, description = "The host's id.")), responses((status = 204, description = "Recorded."), (status = 404, response = crate::http::openapi::NotFound)), security(("hostCredential" = [])))]
pub async fn heartbeat(
    State(state): State<AppState>,
    AgentHost(host_id, _): AgentHost,
) -> Result<StatusCode, ApiError> {
    beat(&state, &host_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /agent/v1/enroll`: a bootstrap token and a host id in, that host's
/// credential out (201), shown this once.
#[utoipa::path(post, path = "/agent/v1/enroll", tag = "agent", request_body(description = "The host to enroll.", content((phoenix_wire::credentials::EnrollRequest = "application/json"), (phoenix_wire::credentials::EnrollRequest = "application/yaml"))), responses((status = 201, description = "The host's credential, shown this once.", body = phoenix_wire::credentials::Enrollment), (status = 403, response = crate::http::openapi::Forbidden), (status = 409, response = crate::http::openapi::Conflict)), security(("bootstrapToken" = [])))]
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
