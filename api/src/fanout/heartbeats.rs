//! Cheap heartbeats: a heartbeat only records a timestamp in memory; a background
//! task writes all of them in one statement per flush interval. A heartbeat costs
//! no database round trip, however many agents there are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use phoenix_storage::{PgPool, hosts};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Heartbeats received since the last flush, newest per host.
#[derive(Clone, Default)]
pub struct HeartbeatBuffer {
    pending: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
}

impl HeartbeatBuffer {
    pub fn record(&self, host_id: &str, at: DateTime<Utc>) {
        let mut pending = self.pending.lock().expect("heartbeat lock");
        match pending.get_mut(host_id) {
            Some(existing) => *existing = (*existing).max(at),
            None => {
                pending.insert(host_id.to_string(), at);
            }
        }
    }

    fn take(&self) -> Vec<(String, DateTime<Utc>)> {
        std::mem::take(&mut *self.pending.lock().expect("heartbeat lock"))
            .into_iter()
            .collect()
    }

    /// Puts back beats that could not be written, keeping newer ones.
    fn restore(&self, beats: Vec<(String, DateTime<Utc>)>) {
        for (host, at) in beats {
            self.record(&host, at);
        }
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
            Ok(_) => {
                metrics
                    .heartbeat_flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.heartbeats_written.inc_by(beats.len() as u64);
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
