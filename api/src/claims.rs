//! Claiming tasks for waiting agents, coalesced.
//!
//! A rollout writes tasks for thousands of hosts in one transaction, and its
//! commit wakes thousands of long-polls at once. If each ran its own claim
//! statement, the database would spend its time on per-statement overhead while
//! the last agents waited their turn. Instead every claim request queues here, and
//! a few workers each take whatever is queued (up to [`MAX_BATCH`] hosts) and claim
//! for all of it in one statement ([`tasks::claim_many`]). A lone request is
//! claimed at once, so an idle API adds no delay; under a burst, batches grow by
//! themselves while the previous statement runs.

use std::sync::Arc;
use std::time::Duration;

use phoenix_storage::{PgPool, tasks};
use phoenix_wire::agent::Task;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::ApiError;

/// Most hosts claimed for in one statement.
pub const MAX_BATCH: usize = 512;

/// Claim statements that may run at once (each holds one pooled connection).
pub const WORKERS: usize = 4;

type Reply = oneshot::Sender<Result<Vec<Task>, ApiError>>;

/// The queue of claim requests; cloning shares it.
#[derive(Clone)]
pub struct ClaimQueue {
    requests: mpsc::UnboundedSender<(String, Reply)>,
}

/// What every claim uses.
#[derive(Clone, Copy)]
pub struct ClaimSettings {
    pub lease: Duration,
    pub max_attempts: i32,
    /// Most tasks handed to one host in one answer.
    pub limit_per_host: i64,
}

impl ClaimQueue {
    /// Starts the workers; they stop when every clone of the queue is gone.
    pub fn start(pool: PgPool, settings: ClaimSettings) -> ClaimQueue {
        let (requests, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..WORKERS {
            tokio::spawn(work(pool.clone(), settings, receiver.clone()));
        }
        ClaimQueue { requests }
    }

    /// Claims the host's open tasks (possibly none).
    pub async fn claim(&self, host_id: &str) -> Result<Vec<Task>, ApiError> {
        let shutting_down = || ApiError::Unavailable("the api is shutting down; retry".into());
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((host_id.to_string(), reply))
            .map_err(|_| shutting_down())?;
        answer.await.map_err(|_| shutting_down())?
    }
}

async fn work(
    pool: PgPool,
    settings: ClaimSettings,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<(String, Reply)>>>,
) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            batch
        };
        claim_batch(&pool, settings, batch).await;
    }
}

async fn claim_batch(pool: &PgPool, settings: ClaimSettings, batch: Vec<(String, Reply)>) {
    // The same host may wait twice (two agents misconfigured with one id, or a
    // retry racing its predecessor): claim once, hand the tasks to the first.
    let mut hosts: Vec<String> = batch.iter().map(|(host, _)| host.clone()).collect();
    hosts.sort();
    hosts.dedup();
    let claimed = async {
        let mut conn = pool.acquire().await?;
        tasks::claim_many(
            &mut conn,
            &hosts,
            settings.lease,
            settings.max_attempts,
            settings.limit_per_host,
        )
        .await
    }
    .await;
    match claimed {
        Ok(mut claimed) => {
            for (host, reply) in batch {
                let _ = reply.send(Ok(claimed.remove(&host).unwrap_or_default()));
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, hosts = hosts.len(), "claiming tasks failed");
            for (_, reply) in batch {
                let _ = reply.send(Err(ApiError::Unavailable(
                    "the database is unavailable; retry shortly".into(),
                )));
            }
        }
    }
}
