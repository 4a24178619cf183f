//! Coalescing the agents' small database writes into few statements.
//!
//! A rollout's commit wakes thousands of long-polls at once, and their agents
//! answer thousands of tasks moments later. Run one statement each, the database
//! spends its time on per-statement overhead while the last agents wait their
//! turn. Instead such requests queue in a [`Coalescer`]: a few workers each take
//! whatever is queued (up to a batch limit) and serve all of it with one
//! statement. A lone request is served at once, so an idle API adds no delay;
//! under a burst, batches grow by themselves while the previous statement runs.
//!
//! Three queues use it: [`Claims`] (tasks for woken long-polls, through
//! `tasks::claim_many`), [`Completions`] (task outcomes, through
//! `tasks::complete_many`) and [`StatusReports`] (full status reports, through
//! `hosts::report_statuses`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use phoenix_storage::hosts;
use phoenix_storage::tasks::{self, Completion};
use phoenix_storage::{PgPool, StoreError};
use phoenix_wire::agent::{HostStatus, Task, TaskOutcome};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Most requests served by one statement.
pub const MAX_BATCH: usize = 512;

/// Statements of one queue that may run at once (each holds one pooled connection).
pub const WORKERS: usize = 4;

type Queue<Req, Resp> = mpsc::UnboundedReceiver<(Req, oneshot::Sender<Resp>)>;

/// A queue of requests served in batches by `run`, which answers one response per
/// request, in order.
pub struct Coalescer<Req, Resp> {
    requests: mpsc::UnboundedSender<(Req, oneshot::Sender<Resp>)>,
}

impl<Req, Resp> Clone for Coalescer<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Coalescer<Req, Resp> {
    /// Starts the workers; they stop when every clone of the coalescer is gone.
    pub fn start<F, Fut>(run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let (requests, queue) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(queue));
        let run = Arc::new(run);
        for _ in 0..WORKERS {
            tokio::spawn(work(queue.clone(), run.clone()));
        }
        Coalescer { requests }
    }

    /// Queues one request and waits for its answer; `None` when the API is
    /// shutting down.
    pub async fn call(&self, request: Req) -> Option<Resp> {
        let (reply, answer) = oneshot::channel();
        self.requests.send((request, reply)).ok()?;
        answer.await.ok()
    }
}

async fn work<Req, Resp, F, Fut>(queue: Arc<Mutex<Queue<Req, Resp>>>, run: Arc<F>)
where
    F: Fn(Vec<Req>) -> Fut,
    Fut: Future<Output = Vec<Resp>>,
{
    loop {
        let (requests, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            batch.into_iter().unzip()
        };
        let responses = run(requests).await;
        debug_assert_eq!(responses.len(), replies.len());
        for (reply, response) in replies.into_iter().zip(responses) {
            let _ = reply.send(response);
        }
    }
}

fn shutting_down() -> ApiError {
    ApiError::Unavailable("the api is shutting down; retry".into())
}

/// A failed batch fails each of its requests; the agents retry.
fn batch_failed(what: &str, err: &StoreError, size: usize) -> ApiError {
    tracing::warn!(error = %err, batch = size, "{what} failed");
    ApiError::Unavailable("the database is unavailable; retry shortly".into())
}

/// What every claim uses.
#[derive(Clone, Copy)]
pub struct ClaimSettings {
    pub lease: Duration,
    pub max_attempts: i32,
    /// Most tasks handed to one host in one answer.
    pub limit_per_host: i64,
}

/// Task claims of waiting long-polls, by host id.
#[derive(Clone)]
pub struct Claims(Coalescer<String, Result<Vec<Task>, ApiError>>);

impl Claims {
    pub fn start(pool: PgPool, settings: ClaimSettings, metrics: Metrics) -> Claims {
        Claims(Coalescer::start(move |hosts: Vec<String>| {
            claim_batch(pool.clone(), settings, metrics.clone(), hosts)
        }))
    }

    /// Claims the host's open tasks (possibly none).
    pub async fn claim(&self, host_id: &str) -> Result<Vec<Task>, ApiError> {
        self.0
            .call(host_id.to_string())
            .await
            .unwrap_or_else(|| Err(shutting_down()))
    }
}

async fn claim_batch(
    pool: PgPool,
    settings: ClaimSettings,
    metrics: Metrics,
    requests: Vec<String>,
) -> Vec<Result<Vec<Task>, ApiError>> {
    // The same host may wait twice (a retry racing its predecessor): claim once,
    // and hand the tasks to the first of them.
    let mut hosts = requests.clone();
    hosts.sort();
    hosts.dedup();
    metrics.claim_statements.inc();
    metrics.claim_hosts.inc_by(hosts.len() as u64);
    let claimed = async {
        let mut conn = phoenix_storage::acquire(&pool).await?;
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
        Ok(mut claimed) => requests
            .iter()
            .map(|host| Ok(claimed.remove(host).unwrap_or_default()))
            .collect(),
        Err(err) => {
            let failed = batch_failed("claiming tasks", &err, requests.len());
            requests.iter().map(|_| Err(failed.clone())).collect()
        }
    }
}

/// Task outcomes reported by agents: (host id, task id, outcome).
#[derive(Clone)]
pub struct Completions(Coalescer<(String, i64, TaskOutcome), Result<Completion, ApiError>>);

impl Completions {
    pub fn start(pool: PgPool) -> Completions {
        Completions(Coalescer::start(
            move |answers: Vec<(String, i64, TaskOutcome)>| complete_batch(pool.clone(), answers),
        ))
    }

    /// Records one outcome.
    pub async fn complete(
        &self,
        host_id: &str,
        task_id: i64,
        outcome: TaskOutcome,
    ) -> Result<Completion, ApiError> {
        self.0
            .call((host_id.to_string(), task_id, outcome))
            .await
            .unwrap_or_else(|| Err(shutting_down()))
    }
}

async fn complete_batch(
    pool: PgPool,
    answers: Vec<(String, i64, TaskOutcome)>,
) -> Vec<Result<Completion, ApiError>> {
    let recorded = async {
        let mut conn = phoenix_storage::acquire(&pool).await?;
        tasks::complete_many(&mut conn, &answers).await
    }
    .await;
    match recorded {
        Ok(completions) => completions.into_iter().map(Ok).collect(),
        Err(err) => {
            let failed = batch_failed("recording task outcomes", &err, answers.len());
            answers.iter().map(|_| Err(failed.clone())).collect()
        }
    }
}

/// Full status reports of agents: (host id, report).
#[derive(Clone)]
pub struct StatusReports(Coalescer<(String, HostStatus), Result<(), ApiError>>);

impl StatusReports {
    pub fn start(pool: PgPool) -> StatusReports {
        StatusReports(Coalescer::start(
            move |reports: Vec<(String, HostStatus)>| report_batch(pool.clone(), reports),
        ))
    }

    /// Stores one host's report.
    pub async fn report(&self, host_id: &str, status: HostStatus) -> Result<(), ApiError> {
        self.0
            .call((host_id.to_string(), status))
            .await
            .unwrap_or_else(|| Err(shutting_down()))
    }
}

async fn report_batch(
    pool: PgPool,
    reports: Vec<(String, HostStatus)>,
) -> Vec<Result<(), ApiError>> {
    let store = async |reports: &[(String, HostStatus)]| {
        let mut conn = phoenix_storage::acquire(&pool).await?;
        hosts::report_statuses(&mut conn, reports).await
    };
    match store(&reports).await {
        Ok(()) => reports.iter().map(|_| Ok(())).collect(),
        // One report alone is what failed, or the database: each on its own, so
        // that one host's failure (a conflict with a concurrent batch) is not
        // every host's.
        Err(err) if reports.len() > 1 => {
            tracing::debug!(error = %err, batch = reports.len(), "storing status reports one by one");
            let mut results = Vec::with_capacity(reports.len());
            for report in reports.chunks(1) {
                results.push(store(report).await.map_err(ApiError::from));
            }
            results
        }
        Err(err) => vec![Err(ApiError::from(err))],
    }
}
