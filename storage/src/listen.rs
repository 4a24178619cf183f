//! The one Postgres listener of a process.
//!
//! Every process that needs notifications (the api: new tasks and the event stream;
//! the reconciler: changes of desired or actual state) holds exactly one `LISTEN`
//! connection, run by [`listen`], and dispatches what it hears in memory. NOTIFY is
//! a hint, never the truth: whatever was announced while the connection was down is
//! gone, so a consumer treats [`Heard::Connected`] as "look again".
//!
//! A failed connect or `LISTEN` (the database is down, or is a hot standby where
//! LISTEN is refused) is retried with jittered exponential backoff, from 100 ms up
//! to 5 s, and the backoff starts over once a connection has been established.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::PgPool;

/// What the listener tells its consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard<'a> {
    /// Listening on every channel: anything announced before may have been missed.
    Connected,
    /// A notification on one of the channels.
    Notification { channel: &'a str, payload: &'a str },
    /// The connection was lost; notifications are missed until the next `Connected`.
    Disconnected,
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Listens on `channels` until `shutdown` turns true, calling `on` for every
/// connection change and notification. Reconnects with backoff; never returns
/// before shutdown.
pub async fn listen(
    pool: PgPool,
    channels: &[&str],
    mut shutdown: watch::Receiver<bool>,
    mut on: impl FnMut(Heard<'_>),
) {
    let mut delays = backoff();
    while !*shutdown.borrow() {
        let mut listener = match connect(&pool, channels).await {
            Ok(listener) => listener,
            Err(err) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %err, ?channels, retry_in_ms = delay.as_millis() as u64, "cannot LISTEN; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        delays = backoff();
        on(Heard::Connected);
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => on(Heard::Notification {
                        channel: notification.channel(),
                        payload: notification.payload(),
                    }),
                    Ok(None) => {
                        tracing::warn!(?channels, "listener lost its connection; reconnecting");
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, ?channels, "listener failed; reconnecting");
                        break;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
        on(Heard::Disconnected);
    }
}

async fn connect(pool: &PgPool, channels: &[&str]) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all(channels.iter().copied()).await?;
    Ok(listener)
}
