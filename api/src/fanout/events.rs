//! The event stream's fan-out: the process's listener (`super::listen`) hands the
//! `phoenix_events` notifications to an in-memory broadcast ([`EventHub`]),
//! and the WebSocket loop ([`forward`]) that sends a subscriber the events its
//! filter selects.
//!
//! Events come from database triggers (migration 0003) as the JSON of a
//! `phoenix_wire::events::Event`; they are parsed once (to filter) and forwarded as
//! received, so every replica sends the same bytes. NOTIFY is not a durable log:
//! a subscriber that falls behind the broadcast buffer, and every subscriber when
//! the listener loses its connection (events announced meanwhile are gone), gets a
//! close frame saying so and re-reads the state before subscribing again.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use phoenix_wire::events::{CLOSE_GOING_AWAY, CLOSE_RESUBSCRIBE, Event, EventFilter, KEEPALIVE};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Events buffered for the slowest subscriber of a process before it is dropped.
const BUFFER: usize = 4096;
/// How long a closing stream waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// What the listener hands to every subscriber.
#[derive(Clone, Debug)]
pub enum StreamItem {
    Event(Arc<ReceivedEvent>),
    /// The listener lost its connection: events may have been missed.
    Gap,
}

/// An event as parsed (to filter it) and as received (to forward it).
#[derive(Debug)]
pub struct ReceivedEvent {
    pub event: Event,
    pub json: Utf8Bytes,
}

/// The process's event broadcast and whether its listener is connected.
#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<StreamItem>,
    connected: watch::Receiver<bool>,
}

impl EventHub {
    /// A hub, and the sender through which the listener reports its connection.
    pub fn new() -> (EventHub, watch::Sender<bool>) {
        Self::with_capacity(BUFFER)
    }

    fn with_capacity(capacity: usize) -> (EventHub, watch::Sender<bool>) {
        let (connected_tx, connected) = watch::channel(false);
        let (sender, _) = broadcast::channel(capacity);
        (EventHub { sender, connected }, connected_tx)
    }

    /// Subscribes once the listener is connected, waiting up to `wait` for it;
    /// `None` if it is not. Subscribing before looking means a connection lost
    /// right after the look still reaches this subscriber as a [`StreamItem::Gap`].
    pub async fn subscribe(&self, wait: Duration) -> Option<broadcast::Receiver<StreamItem>> {
        let receiver = self.sender.subscribe();
        let mut connected = self.connected.clone();
        match tokio::time::timeout(wait, connected.wait_for(|c| *c)).await {
            Ok(Ok(_)) => Some(receiver),
            _ => None,
        }
    }

    /// Current subscribers.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}

impl EventHub {
    /// Broadcasts an event's JSON as the trigger sent it; a payload this version
    /// cannot read (a trigger newer than this binary, during a rolling upgrade) is
    /// skipped.
    pub fn publish(&self, payload: &str) {
        match serde_json::from_str::<Event>(payload) {
            Ok(event) => {
                // No subscribers is not an error.
                let _ = self.sender.send(StreamItem::Event(Arc::new(ReceivedEvent {
                    event,
                    json: payload.into(),
                })));
            }
            Err(err) => {
                tracing::warn!(error = %err, payload, "ignoring an event this version cannot read")
            }
        }
    }

    /// Tells every subscriber that events may have been missed.
    pub fn gap(&self) {
        let _ = self.sender.send(StreamItem::Gap);
    }
}

/// Sends `socket` the events `filter` selects until the client goes, the stream
/// can no longer promise every event, or the server shuts down; then closes it.
pub async fn forward(
    mut socket: WebSocket,
    mut events: broadcast::Receiver<StreamItem>,
    filter: EventFilter,
    mut shutdown: watch::Receiver<bool>,
    metrics: Metrics,
) {
    metrics.event_streams.inc();
    let close = relay(&mut socket, &mut events, &filter, &mut shutdown).await;
    // Stop buffering for this subscriber while it closes.
    drop(events);
    if let Some(frame) = close {
        if frame.code == CLOSE_RESUBSCRIBE {
            metrics.event_streams_resubscribe.inc();
        }
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            // Read until the client's close frame, so that closing the connection
            // does not discard the frame we sent.
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Some(Ok(message)) = socket.recv().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
    metrics.event_streams.dec();
}

/// The forwarding loop; returns the close frame to send, or `None` when the client
/// is gone.
async fn relay(
    socket: &mut WebSocket,
    events: &mut broadcast::Receiver<StreamItem>,
    filter: &EventFilter,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<CloseFrame> {
    // Ping every KEEPALIVE; a client not heard from (a pong or anything else) for
    // three of them is gone.
    let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            item = events.recv() => match item {
                Ok(StreamItem::Event(received)) => {
                    if filter.matches(&received.event)
                        && socket.send(Message::Text(received.json.clone())).await.is_err()
                    {
                        return None;
                    }
                }
                Ok(StreamItem::Gap) => {
                    return Some(close(
                        CLOSE_RESUBSCRIBE,
                        "events may have been missed (the API's database listener reconnected); re-read and subscribe again".into(),
                    ));
                }
                Err(RecvError::Lagged(dropped)) => {
                    return Some(close(
                        CLOSE_RESUBSCRIBE,
                        format!("this client fell behind and {dropped} events were dropped; re-read and subscribe again"),
                    ));
                }
                Err(RecvError::Closed) => {
                    return Some(close(CLOSE_GOING_AWAY, "phoenix-api is shutting down".into()));
                }
            },
            received = socket.recv() => match received {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                Some(Ok(_)) => heard = Instant::now(),
            },
            _ = keepalive.tick() => {
                if heard.elapsed() > 3 * KEEPALIVE
                    || socket.send(Message::Ping(Bytes::new())).await.is_err()
                {
                    return None;
                }
            }
            // The guard `wait_for` returns is dropped inside (it is not `Send`).
            () = async { drop(shutdown.wait_for(|stop| *stop).await) } => {
                return Some(close(CLOSE_GOING_AWAY, "phoenix-api is shutting down; subscribe again".into()));
            }
        }
    }
}

/// A close frame; its reason is cut to the 123 bytes a frame allows.
fn close(code: u16, mut reason: String) -> CloseFrame {
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_frame() {
        let long = close(CLOSE_RESUBSCRIBE, "é".repeat(100));
        assert!(long.reason.as_str().len() <= 123);
        let reason = format!(
            "this client fell behind and {} events were dropped; re-read and subscribe again",
            u64::MAX
        );
        assert_eq!(
            close(CLOSE_RESUBSCRIBE, reason.clone()).reason.as_str(),
            reason
        );
    }

    #[tokio::test]
    async fn subscribers_wait_for_the_listener_and_see_gaps() {
        let (hub, connected) = EventHub::new();
        assert!(hub.subscribe(Duration::from_millis(10)).await.is_none());
        connected.send(true).unwrap();
        let mut receiver = hub.subscribe(Duration::from_millis(10)).await.unwrap();
        hub.publish(
            r#"{"kind":"host","host":"web-1","change":"status","agentVersion":"1","at":"2025-06-01T12:00:00Z"}"#,
        );
        hub.publish(r#"{"kind":"future-thing"}"#);
        hub.gap();
        match receiver.recv().await.unwrap() {
            StreamItem::Event(e) => assert_eq!(e.event.host(), Some("web-1")),
            StreamItem::Gap => panic!("expected the event first"),
        }
        assert!(matches!(receiver.recv().await.unwrap(), StreamItem::Gap));
    }

    /// A real WebSocket through axum: a subscriber that falls behind the buffer gets
    /// a close frame saying events were dropped.
    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_and_closed() {
        use axum::extract::ws::WebSocketUpgrade;
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message as ClientMessage;

        let (hub, connected) = EventHub::with_capacity(4);
        connected.send(true).unwrap();
        let (_stop, stop) = watch::channel(false);
        let app = axum::Router::new().route(
            "/",
            axum::routing::get({
                let hub = hub.clone();
                move |upgrade: WebSocketUpgrade| async move {
                    let receiver = hub.subscribe(Duration::from_secs(1)).await.unwrap();
                    upgrade.on_upgrade(move |socket| {
                        forward(
                            socket,
                            receiver,
                            EventFilter::default(),
                            stop,
                            Metrics::new(),
                        )
                    })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{address}/"))
            .await
            .unwrap();
        // Subscribed before the upgrade answered; nothing is read in between (one
        // thread, no await), so the subscriber is 6 events behind.
        for _ in 0..10 {
            hub.publish(
                r#"{"kind":"host","host":"web-1","change":"status","agentVersion":"1","at":"2025-06-01T12:00:00Z"}"#,
            );
        }
        let frame = loop {
            match tokio::time::timeout(Duration::from_secs(10), client.next()).await {
                Ok(Some(Ok(ClientMessage::Close(frame)))) => break frame.expect("a close frame"),
                Ok(Some(Ok(ClientMessage::Text(text)))) => panic!("unexpected event {text}"),
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(u16::from(frame.code), CLOSE_RESUBSCRIBE);
        assert!(
            frame.reason.contains("6 events were dropped"),
            "{}",
            frame.reason
        );
    }
}
