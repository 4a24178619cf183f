//! Serving many agents and stream subscribers with few database statements and
//! connections: one LISTEN connection per process ([`listen`]) for long-poll
//! wake-ups ([`wakeups`]) and for the event stream ([`events`]), claims and task
//! outcomes batched ([`coalesce`]), heartbeats buffered and written once a second
//! ([`heartbeats`]).

pub mod coalesce;
pub mod events;
pub mod heartbeats;
pub mod wakeups;

use phoenix_storage::listen::Heard;
use phoenix_storage::{CREDENTIALS_CHANNEL, EVENTS_CHANNEL, PgPool, TASKS_CHANNEL};
use tokio::sync::watch;

use crate::app::credentials::CredentialCache;
use crate::metrics::Metrics;

/// The process's one listener ([`phoenix_storage::listen`]): new tasks wake their
/// host's long-polls, events go to the stream's subscribers. While it is not
/// connected, `connected` is false (and `/readyz` says so); every reconnect wakes
/// every waiting long-poll to look again, and every loss tells stream subscribers
/// that events may have been missed. Revoked host credentials leave the
/// credential cache, which starts over on every connection change.
pub async fn listen(
    pool: PgPool,
    wakeups: wakeups::TaskWakeups,
    hub: events::EventHub,
    credentials: CredentialCache,
    metrics: Metrics,
    connected: watch::Sender<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let channels = [TASKS_CHANNEL, EVENTS_CHANNEL, CREDENTIALS_CHANNEL];
    phoenix_storage::listen::listen(pool, &channels, shutdown, |heard| match heard {
        Heard::Connected => {
            credentials.clear();
            let _ = connected.send(true);
            metrics.event_listener_connected.set(1);
            wakeups.wake_all();
        }
        Heard::Notification { channel, payload } if channel == TASKS_CHANNEL => {
            metrics.task_notifications.inc();
            wakeups.wake(payload);
        }
        Heard::Notification { channel, payload } if channel == CREDENTIALS_CHANNEL => {
            credentials.evict(payload);
        }
        Heard::Notification { payload, .. } => {
            metrics.events_received.inc();
            hub.publish(payload);
        }
        Heard::Disconnected => {
            // Flag first, then the gap: a subscriber that saw "connected" is
            // already subscribed and so receives the gap.
            let _ = connected.send(false);
            credentials.clear();
            metrics.event_listener_connected.set(0);
            hub.gap();
            wakeups.wake_all();
        }
    })
    .await
}
