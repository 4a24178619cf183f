//! Cheap heartbeats: a heartbeat only records the host in memory; a background
//! task marks all of them seen in one statement per flush interval, by the
//! database's clock (`now()`, the one clock of every liveness decision, so api
//! replicas whose clocks disagree cannot make a host look lost). A heartbeat costs
//! no database round trip, however many agents there are.
//!
//! A heartbeat for a host that is not registered is refused (404), so its agent
//! registers again at once with a full status report. Each replica remembers the
//! hosts it has seen registered (one look-up per host and replica); a flush that
//! finds a remembered host gone (deleted, pruned) forgets it, and that host's next
//! heartbeat is looked up again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phoenix_storage::{PgPool, hosts};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Heartbeats received since the last flush, and the hosts known to be registered.
#[derive(Clone, Default)]
pub struct HeartbeatBuffer {
    pending: Arc<Mutex<HashSet<String>>>,
    known: Arc<Mutex<HashSet<String>>>,
}

impl HeartbeatBuffer {
    pub fn record(&self, host_id: &str) {
        self.pending
            .lock()
            .expect("heartbeat lock")
            .insert(host_id.to_string());
    }

    /// Whether this replica has seen `host_id` registered (and not found it gone since).
    pub fn is_known(&self, host_id: &str) -> bool {
        self.known.lock().expect("heartbeat lock").contains(host_id)
    }

    /// Remembers that `host_id` is registered.
    pub fn mark_known(&self, host_id: &str) {
        self.known
            .lock()
            .expect("heartbeat lock")
            .insert(host_id.to_string());
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
            let mut conn = pool.acquire().await?;
            hosts::record_heartbeats(&mut conn, &beats).await
        }
        .await;
        match result {
            Ok(registered) => {
                metrics
                    .heartbeat_flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.heartbeats_written.inc_by(registered.len() as u64);
                if registered.len() < beats.len() {
                    let registered: HashSet<String> = registered.into_iter().collect();
                    let mut known = self.known.lock().expect("heartbeat lock");
                    for gone in beats.iter().filter(|b| !registered.contains(*b)) {
                        tracing::info!(host_id = %gone, "heartbeat from a host no longer registered; its next one is refused");
                        known.remove(gone);
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
