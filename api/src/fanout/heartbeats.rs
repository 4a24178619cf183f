//! Cheap heartbeats: a heartbeat only records the host in memory; a background
//! task marks all of them seen in one statement per flush interval, by the
//! database's clock (`now()`, the one clock of every liveness decision, so api
//! replicas whose clocks disagree cannot make a host look lost). A heartbeat costs
//! no database round trip, however many agents there are.
//!
//! A host's liveness is renewed, not rewritten on every beat: a beat reaches the
//! database only when this replica last wrote that host's `last_seen` at least a
//! renewal interval ago ([`crate::config::ApiConfig::liveness_renewal`], a third to a
//! half of the host grace). An idle fleet of N hosts then costs N / renewal rows a
//! second (25,000 hosts at the 60 s default grace: about 830 rows/s, not 2,500). The
//! `hosts` table has room on each page and no index on `last_seen` (migration 0016),
//! so each such row is a HOT update that touches no index.
//!
//! A heartbeat for a host that is not registered is refused (404), so its agent
//! registers again at once with a full status report. Each replica remembers the
//! hosts it has seen registered (one look-up per host and replica); a flush that
//! finds a remembered host gone (deleted, pruned) forgets it, and that host's next
//! heartbeat is looked up again. So a host deleted behind its agent's back is told to
//! register again within a renewal and a beat of its last write (about 40 s at the
//! default grace).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phoenix_storage::{PgPool, hosts};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Heartbeats to write at the next flush, and the hosts known to be registered with
/// when this replica last wrote each one's `last_seen`.
#[derive(Clone)]
pub struct HeartbeatBuffer {
    pending: Arc<Mutex<HashSet<String>>>,
    /// Registered hosts → when this replica last wrote their `last_seen` (a status
    /// report writes it too); `None` until it has.
    known: Arc<Mutex<HashMap<String, Option<Instant>>>>,
    renewal: Duration,
}

impl HeartbeatBuffer {
    /// A buffer that writes a host's beat at most once per `renewal`.
    pub fn new(renewal: Duration) -> Self {
        Self {
            pending: Arc::default(),
            known: Arc::default(),
            renewal,
        }
    }

    /// Counts a beat of a known host; it is written at the next flush when the host's
    /// `last_seen` is due for renewal. Returns whether it was queued.
    pub fn record(&self, host_id: &str) -> bool {
        let due = self
            .known
            .lock()
            .expect("heartbeat lock")
            .get(host_id)
            .copied()
            .flatten()
            .is_none_or(|written| written.elapsed() >= self.renewal);
        if due {
            self.pending
                .lock()
                .expect("heartbeat lock")
                .insert(host_id.to_string());
        }
        due
    }

    /// Whether this replica has seen `host_id` registered (and not found it gone since).
    pub fn is_known(&self, host_id: &str) -> bool {
        self.known
            .lock()
            .expect("heartbeat lock")
            .contains_key(host_id)
    }

    /// Remembers that `host_id` is registered (looked up in the database).
    pub fn mark_known(&self, host_id: &str) {
        self.known
            .lock()
            .expect("heartbeat lock")
            .entry(host_id.to_string())
            .or_insert(None);
    }

    /// Remembers that `host_id` is registered and its `last_seen` was written just now
    /// (by its status report).
    pub fn mark_seen(&self, host_id: &str) {
        self.known
            .lock()
            .expect("heartbeat lock")
            .insert(host_id.to_string(), Some(Instant::now()));
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.pending.lock().expect("heartbeat lock"))
            .into_iter()
            .collect()
    }

    /// Puts back beats that could not be written.
    fn restore(&self, beats: Vec<String>) {
        self.pending.lock().expect("heartbeat lock").extend(beats);
    }

    pub fn len(&self) -> usize {
        self.pending.lock().expect("heartbeat lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what is buffered now. Returns the number of beats written.
    pub async fn flush(
        &self,
        pool: &PgPool,
        metrics: &Metrics,
    ) -> Result<usize, phoenix_storage::StoreError> {
        let beats = self.take();
        if beats.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let result = async {
            let mut conn = phoenix_storage::acquire(pool).await?;
            hosts::record_heartbeats(&mut conn, &beats).await
        }
        .await;
        match result {
            Ok(registered) => {
                metrics
                    .heartbeat_flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.heartbeats_written.inc_by(registered.len() as u64);
                let registered: HashSet<String> = registered.into_iter().collect();
                let mut known = self.known.lock().expect("heartbeat lock");
                for beat in &beats {
                    if registered.contains(beat) {
                        known.insert(beat.clone(), Some(started));
                    } else {
                        tracing::info!(host_id = %beat, "heartbeat from a host no longer registered; its next one is refused");
                        known.remove(beat);
                    }
                }
                Ok(beats.len())
            }
            Err(err) => {
                self.restore(beats);
                Err(err)
            }
        }
    }
}

/// Flushes the buffer every `interval` until shutdown, then once more.
pub async fn flush_loop(
    buffer: HeartbeatBuffer,
    pool: PgPool,
    metrics: Metrics,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = shutdown.changed() => true,
        };
        metrics.heartbeats_buffered.set(buffer.len() as i64);
        if let Err(err) = buffer.flush(&pool, &metrics).await {
            tracing::warn!(error = %err, "heartbeat flush failed; will retry");
        }
        if stopping || *shutdown.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_is_queued_once_per_renewal() {
        let buffer = HeartbeatBuffer::new(Duration::from_millis(200));
        buffer.mark_known("web-1");
        assert!(buffer.record("web-1"), "never written: due at once");
        let _ = buffer.take();
        buffer.mark_seen("web-1");
        assert!(!buffer.record("web-1"), "written just now: not due");
        assert!(buffer.is_empty());
        buffer.mark_known("web-1");
        assert!(!buffer.record("web-1"), "a look-up keeps the last write");
        std::thread::sleep(Duration::from_millis(250));
        assert!(buffer.record("web-1"), "due again after the renewal");
        assert!(buffer.record("web-1"), "still due until written");
        assert_eq!(buffer.len(), 1, "queued once");
    }
}
