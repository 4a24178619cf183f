//! The event stream client: `GET /api/v1/events` as a WebSocket (plain HTTP like
//! the rest of the CLI, the bearer token in the handshake), read as
//! `phoenix_wire::events::Event`s, and how one event reads as a line.
//!
//! A failed handshake is a [`ClientError`] (so a 401 says to set the token); a
//! stream that ends is a [`StreamError`] that says why and how to resume.

use std::time::Duration;

use futures_util::StreamExt;
use phoenix_wire::events::{CLOSE_GOING_AWAY, CLOSE_RESUBSCRIBE, Event, EventFilter, KEEPALIVE};
use phoenix_wire::view::ExperimentEvent;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::{ApiClient, ClientError, problem_from_body};

const EVENTS: &str = "/api/v1/events";
/// Connecting and the WebSocket handshake together; the same as a request's limit.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The server pings every [`KEEPALIVE`]; this long without a word means the
/// connection is dead even if no error says so.
const SILENCE_LIMIT: Duration = Duration::from_secs(3 * KEEPALIVE.as_secs() + 5);

/// An open event stream.
pub struct EventStream {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    api_url: String,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The API closed the stream, saying why.
    #[error("the API closed the event stream: {reason}")]
    Closed { code: u16, reason: String },
    /// The connection broke.
    #[error("lost the connection to the event stream at {api_url}: {cause}")]
    Lost { api_url: String, cause: String },
    /// Nothing (not even a keepalive ping) arrived for too long.
    #[error("heard nothing from {api_url} for {}s; the connection is dead", SILENCE_LIMIT.as_secs())]
    Silent { api_url: String },
}

impl StreamError {
    /// Whether the API asked the client to re-read and subscribe again (it fell
    /// behind, or the API replica is going away) rather than the line breaking.
    pub fn asks_to_resubscribe(&self) -> bool {
        matches!(self, StreamError::Closed { code, .. } if *code == CLOSE_RESUBSCRIBE || *code == CLOSE_GOING_AWAY)
    }
}

/// What `--watch` of a list prints for one changed object: a table row (no
/// header), or the object as one JSON line or one YAML document.
pub fn watch_line<T: serde::Serialize>(
    format: crate::output::OutputFormat,
    object: &T,
    row: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    use crate::output::OutputFormat;
    Ok(match format {
        OutputFormat::Table => row(),
        OutputFormat::Json => format!("{}\n", serde_json::to_string(object)?),
        OutputFormat::Yaml => format!(
            "---\n{}",
            crate::output::render_object(format, object)?.unwrap_or_default()
        ),
    })
}

/// The error a `--watch` ends with when its stream does: why, and how to go on.
pub fn watch_ended(err: StreamError, command: &str) -> anyhow::Error {
    let hint = if err.asks_to_resubscribe() {
        "the stream can resume: run"
    } else {
        "check that phoenix-api is up, then run"
    };
    anyhow::anyhow!("{err}\n  hint: {hint} `{command}` again")
}

/// Opens `GET /api/v1/events?<filter>` as a WebSocket. When this returns, every
/// later event that `filter` selects will be delivered.
pub async fn subscribe(
    client: &ApiClient,
    filter: &EventFilter,
) -> Result<EventStream, ClientError> {
    let query = filter.to_query();
    let path = if query.is_empty() {
        EVENTS.to_string()
    } else {
        format!("{EVENTS}?{query}")
    };
    let api_url = client.api_url().to_string();
    let transport = |cause: String| ClientError::Transport {
        api_url: api_url.clone(),
        cause,
    };
    // The configuration accepts http:// and https:// URLs only.
    let ws_url = match api_url.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}{path}"),
        None => format!(
            "ws://{}{path}",
            api_url.strip_prefix("http://").unwrap_or(&api_url)
        ),
    };
    let tls = crate::tls::websocket_config(client.ca_file())
        .map_err(|err| transport(format!("{err:#}")))?
        .map(tokio_tungstenite::Connector::Rustls);
    let mut request = ws_url
        .into_client_request()
        .map_err(|err| transport(err.to_string()))?;
    if let Some(token) = client.token() {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| transport("the token has characters a header cannot carry".into()))?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let connected = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, tls),
    )
    .await;
    match connected {
        Ok(Ok((socket, _response))) => Ok(EventStream {
            socket,
            api_url: api_url.clone(),
        }),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let body = response.body().clone().unwrap_or_default();
            Err(ClientError::Api {
                method: "GET".into(),
                path,
                problem: Box::new(problem_from_body(response.status(), &body)),
            })
        }
        Ok(Err(tungstenite::Error::Io(err))) => Err(ClientError::Unreachable {
            api_url: api_url.clone(),
            cause: err.to_string(),
        }),
        Ok(Err(err)) => Err(transport(err.to_string())),
        Err(_) => Err(ClientError::Timeout {
            api_url: api_url.clone(),
        }),
    }
}

impl EventStream {
    /// The next event. Messages this CLI cannot read (an event kind from a newer
    /// server) are skipped; pings are answered by the WebSocket layer.
    pub async fn next(&mut self) -> Result<Event, StreamError> {
        loop {
            let message = match tokio::time::timeout(SILENCE_LIMIT, self.socket.next()).await {
                Err(_) => {
                    return Err(StreamError::Silent {
                        api_url: self.api_url.clone(),
                    });
                }
                Ok(None) => return Err(self.lost("the connection closed without a close frame")),
                Ok(Some(Err(err))) => return Err(self.lost(&err.to_string())),
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => {
                    if let Ok(event) = serde_json::from_str::<Event>(&text) {
                        return Ok(event);
                    }
                }
                Message::Close(frame) => {
                    let (code, reason) = match frame {
                        Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
                        None => (1005, String::new()),
                    };
                    let reason = if reason.is_empty() {
                        format!("close code {code}")
                    } else {
                        reason
                    };
                    return Err(StreamError::Closed { code, reason });
                }
                _ => {}
            }
        }
    }

    /// Closes the stream politely (best effort, briefly).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.socket.close(None)).await;
    }

    fn lost(&self, cause: &str) -> StreamError {
        StreamError::Lost {
            api_url: self.api_url.clone(),
            cause: cause.to_string(),
        }
    }
}

/// One event as one readable line (no newline), e.g.
/// `2025-06-01T12:00:00Z  experiment/topk-web  pending -> deploying: 2 target hosts`.
pub fn event_line(event: &Event) -> String {
    let at = event
        .at()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let what = match event {
        Event::Experiment(e) => experiment_line(e),
        Event::Host(h) => {
            let change = match h.change {
                phoenix_wire::events::HostChange::Registered => "registered",
                phoenix_wire::events::HostChange::Status => "reported its status",
            };
            format!("host/{}  {change} (agent {})", h.host, h.agent_version)
        }
        Event::Rollout(r) => format!(
            "deployment/{}  revision {} {}: {}",
            r.deployment,
            r.revision,
            r.step,
            one_line(&r.reason)
        ),
        Event::Task(t) => {
            let mut line = format!(
                "task/{}  {} {} on {}: {}",
                t.id, t.action, t.unit, t.host, t.status
            );
            if t.status == "failed" {
                line.push_str(&format!(" after {} attempt(s)", t.attempts));
            }
            if let Some(error) = &t.error {
                line.push_str(&format!(": {}", one_line(error)));
            }
            line
        }
    };
    format!("{at}  {what}")
}

fn experiment_line(e: &ExperimentEvent) -> String {
    let transition = match e.from_phase {
        // Deletion is recorded from and to the phase the experiment had.
        Some(from) if from == e.to_phase => format!("deleted (was {from})"),
        Some(from) => format!("{from} -> {}", e.to_phase),
        None => format!("created ({})", e.to_phase),
    };
    format!(
        "experiment/{}  {transition}: {}",
        e.experiment,
        one_line(&e.reason)
    )
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Event {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn events_read_as_one_line_each() {
        let created = parse(
            r#"{"kind":"experiment","id":1,"experiment":"topk-web","fromPhase":null,"toPhase":"pending","reason":"created","at":"2025-06-01T12:00:00.5Z"}"#,
        );
        assert_eq!(
            event_line(&created),
            "2025-06-01T12:00:00Z  experiment/topk-web  created (pending): created"
        );
        let moved = parse(
            r#"{"kind":"experiment","id":2,"experiment":"topk-web","fromPhase":"deploying","toPhase":"rolled-back","reason":"a\nb","at":"2025-06-01T12:00:00Z"}"#,
        );
        assert!(
            event_line(&moved).ends_with("deploying -> rolled-back: a b"),
            "{}",
            event_line(&moved)
        );
        let deleted = parse(
            r#"{"kind":"experiment","id":3,"experiment":"topk-web","fromPhase":"running","toPhase":"running","reason":"deleted by user","at":"2025-06-01T12:00:00Z"}"#,
        );
        assert!(event_line(&deleted).contains("deleted (was running): deleted by user"));
        let task = parse(
            r#"{"kind":"task","id":42,"host":"web-1","unit":"topk-web.candidate","experiment":"topk-web","taskKind":"collector","action":"start","status":"failed","attempts":3,"error":"exit status 1","at":"2025-06-01T12:00:00Z"}"#,
        );
        assert_eq!(
            event_line(&task),
            "2025-06-01T12:00:00Z  task/42  start topk-web.candidate on web-1: failed after 3 attempt(s): exit status 1"
        );
        let host = parse(
            r#"{"kind":"host","host":"web-1","change":"registered","agentVersion":"0.1.0","at":"2025-06-01T12:00:00Z"}"#,
        );
        assert_eq!(
            event_line(&host),
            "2025-06-01T12:00:00Z  host/web-1  registered (agent 0.1.0)"
        );
    }
}
