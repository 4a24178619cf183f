//! `GET /api/v1/events?experiment=NAME&host=ID`: the event stream, a WebSocket of
//! JSON `phoenix_wire::events::Event`s (see [`crate::fanout::events`]).

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use phoenix_wire::events::EventFilter;
use phoenix_wire::problem::FieldError;

use crate::error::ApiError;
use crate::fanout::events;
use crate::http::auth::Viewer;
use crate::state::AppState;

/// How long a new subscriber waits for a (re)connecting event listener.
const LISTENER_WAIT: Duration = Duration::from_secs(5);
/// Largest message (and frame) a client may send on the stream: it only ever
/// answers pings and closes.
const MAX_CLIENT_MESSAGE: usize = 4096;

/// Checks the token and the filter, subscribes, then upgrades: once the client has
/// its `101 Switching Protocols`, it receives every later event. A replica serves at
/// most `--max-event-streams` streams at once (429 past it); a client message over
/// [`MAX_CLIENT_MESSAGE`] bytes ends the stream.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(("experiment" = Option<String>, Query, description = "Only this experiment's events."), ("host" = Option<String>, Query, description = "Only this host's events."), ("deployment" = Option<String>, Query, description = "Only this deployment's roll-out steps.")), responses((status = 101, description = "A WebSocket of JSON events follows."), (status = 400, response = crate::http::openapi::BadRequest), (status = 422, response = crate::http::openapi::Unprocessable), (status = 426, response = crate::http::openapi::NotAWebSocket), (status = 429, response = crate::http::openapi::TooManyRequests)), security(("userToken" = ["viewer"])))]
pub async fn stream(
    State(state): State<AppState>,
    _: Viewer,
    query: Result<Query<EventFilter>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(filter) = query.map_err(|r| ApiError::Invalid(FieldError::new("", r.body_text())))?;
    filter.check().map_err(ApiError::Invalid)?;
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        // Not a WebSocket handshake: axum's own answer says what is missing.
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let limit = state.config.max_event_streams;
    if state.events.subscribers() >= limit {
        state.metrics.event_streams_refused.inc();
        return Err(ApiError::TooManyRequests(format!(
            "this api replica already serves {limit} event streams (--max-event-streams); retry later or through another replica"
        )));
    }
    let receiver = state.events.subscribe(LISTENER_WAIT).await.ok_or_else(|| {
        ApiError::Unavailable(
            "the event stream is not connected to the database; retry shortly".into(),
        )
    })?;
    // A browser offers the protocol (with its token, see `auth`) and needs it echoed.
    let upgrade = upgrade
        .protocols([phoenix_wire::events::WS_PROTOCOL])
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE);
    Ok(upgrade.on_upgrade(move |socket| {
        events::forward(socket, receiver, filter, state.shutdown, state.metrics)
    }))
}
