//! The Phoenix agent: one per host. It long-polls the API for tasks, converges the
//! host's collectors to them, and reports what runs.
//!
//! Layout:
//! - [`config`]: flags and environment ([`AgentConfig`]).
//! - [`client`]: HTTP to the API's agent endpoints, retried with jittered backoff.
//! - [`identity`]: the host credential: given, kept from an enrollment, or enrolled
//!   for with a bootstrap token (and again after a revocation).
//! - [`supervisor`]: collector processes: start, health, restart, stop, adopt, reap.
//! - [`procfs`]: reading `/proc` (CPU, RSS, start times, environments).
//! - [`process_group`]: signalling a collector's or load run's process group.
//! - [`state`]: `state.json`, what the agent supervises, written atomically.
//! - [`ports`]: the loopback ports each collector is given.
//! - [`metrics`]: the agent's own Prometheus metrics.
//! - [`node_labels`]: in a Kubernetes pod, the Node's labels join the host labels.
//! - [`pushgateway`]: per-collector CPU and RSS pushed to a Pushgateway (optional).
//! - [`loadsim`]: load simulation: runs of real worker processes, bounded and
//!   always cleaned up (stopped on exit; a restarted agent kills leftovers).
//! - this file: [`run`], which ties them together in four independent loops: the task
//!   long-poll, heartbeats, status reports, and the `/metrics` + `/healthz` server.
//!   The long-poll is the heartbeat for an api of protocol 2.1 and newer, so an idle
//!   agent holds one connection and sends nothing else; the heartbeat loop speaks
//!   only when no long-poll waits (or to an older api). A task that names its
//!   collector's config body by hash gets it from the client's cache or the api
//!   ([`ApiClient::with_config_body`]).
//!
//! While the API is unreachable or failing, every loop retries with backoff and the
//! collectors keep running as they are (last known good): the agent never stops a
//! collector because the server is down.
//!
//! Shutdown (SIGTERM/SIGINT in the binary): the loops stop (a batch of tasks in hand
//! is finished first; its start and stop timeouts bound that), and the collectors are
//! left running, recorded in `state.json`. That choice makes an agent upgrade or
//! restart invisible to the measurements: the next agent adopts the same processes.
//! `--stop-collectors-on-exit` stops and forgets them instead.

pub mod client;
pub mod config;
pub mod identity;
pub mod loadsim;
pub mod metrics;
pub mod node_labels;
pub mod ports;
pub mod process_group;
pub mod procfs;
pub mod pushgateway;
pub mod state;
pub mod supervisor;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use phoenix_wire::agent::{HostStatus, Task, TaskAction, TaskKind, TaskOutcome, UnitSpec};
use phoenix_wire::names::Labels;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

pub use config::AgentConfig;

use client::{ApiClient, RetryPolicy, retry};
use config::ConfigError;
use identity::{Identity, IdentitySettings};
use loadsim::{LoadRunner, LoadSettings};
use metrics::Metrics;
use supervisor::{OnExit, Supervisor, SupervisorError};

/// How long one task long-poll waits on the API.
pub const TASK_WAIT: Duration = Duration::from_secs(30);
/// The full status is sent at least this often, changed or not.
pub const STATUS_REFRESH: Duration = Duration::from_secs(5 * 60);
/// An empty task batch that came back sooner than this is followed by a pause of
/// this length, so an API that does not hold long polls is not asked in a hot loop.
const MIN_EMPTY_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long the last status report on exit (with `--stop-collectors-on-exit`) may take.
const FINAL_STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// The version reported to the API.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "cannot listen on {addr} for /metrics and /healthz: {source} (a second agent on \
         this machine needs its own --listen, PHOENIX_AGENT_LISTEN, e.g. 127.0.0.1:0)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
}

/// Runs the agent until `shutdown` completes, then stops its loops and leaves the
/// collectors running (or stops them, with `--stop-collectors-on-exit`).
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let host_id = config.resolved_host_id()?;
    // In a Kubernetes pod (NODE_NAME set), the Node's labels join the flag labels.
    let mut config = config;
    config.labels = node_labels::host_labels(&config.labels).await;
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen,
            source,
        })?;
    let listen_addr = listener.local_addr().unwrap_or(config.listen);
    let supervisor = Supervisor::open(config.supervisor_settings()?).await?;
    let loads = LoadRunner::open(LoadSettings {
        state_dir: supervisor.state_dir().to_path_buf(),
        worker_bin: loadsim::own_executable(),
        max_processes: config.max_load_processes,
        stop_timeout: config.stop_timeout,
    })
    .await;
    tracing::info!(
        host_id = %host_id,
        api = %config.api_url,
        state_dir = %supervisor.state_dir().display(),
        metrics = %listen_addr,
        collectors = supervisor.statuses().len(),
        "phoenix-agent {AGENT_VERSION} started"
    );

    let identity = Identity::establish(
        IdentitySettings {
            given: config.token()?,
            bootstrap: config.bootstrap_token()?,
            state_dir: supervisor.state_dir().to_path_buf(),
            host_id: host_id.clone(),
        },
        client::build_http(
            tls::client_builder(config.ca_file.as_deref())?,
            config.protocol_version,
        ),
        &config.api_url,
    )
    .await?;
    let client = ApiClient::new(
        tls::client_builder(config.ca_file.as_deref())?,
        &config.api_url,
        &host_id,
        identity,
        config.protocol_version,
        metrics.clone(),
    );
    let (stop_sender, stop) = watch::channel(false);
    let mut loops = JoinSet::new();
    loops.spawn(serve_metrics(listener, metrics.clone(), stop.clone()));
    loops.spawn(heartbeat_loop(
        client.clone(),
        config.heartbeat_interval,
        stop.clone(),
    ));
    loops.spawn(status_loop(
        client.clone(),
        supervisor.clone(),
        loads.clone(),
        metrics.clone(),
        config.labels.clone(),
        stop.clone(),
    ));
    if let Some(url) = &config.pushgateway_url {
        let gateway = pushgateway::Pushgateway::new(
            tls::client_builder(config.ca_file.as_deref())?,
            url.clone(),
            host_id.clone(),
        );
        loops.spawn(pushgateway::push_loop(
            gateway,
            supervisor.clone(),
            config.push_interval,
            stop.clone(),
        ));
    }
    loops.spawn(task_loop(
        client.clone(),
        supervisor.clone(),
        loads.clone(),
        metrics.clone(),
        stop,
    ));

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_sender.send(true);
    while let Some(finished) = loops.join_next().await {
        if let Err(err) = finished {
            tracing::error!("an agent loop failed: {err}");
        }
    }
    // Load is never left running: a next agent would not adopt it.
    loads.shutdown().await;
    if config.stop_collectors_on_exit {
        supervisor.shutdown(OnExit::StopCollectors).await;
        // One short attempt to tell the API; it learns the rest when the host goes silent.
        let status = host_status(&supervisor, &loads, &config.labels);
        match tokio::time::timeout(FINAL_STATUS_TIMEOUT, client.put_status(&status)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!("could not report the stopped collectors: {err}"),
            Err(_) => tracing::warn!("could not report the stopped collectors in time"),
        }
    } else {
        supervisor.shutdown(OnExit::LeaveRunning).await;
        tracing::info!("collectors left running for the next agent to adopt");
    }
    Ok(())
}

/// Resolves once the stop signal is raised (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stop| stop).await;
}

/// Long-polls for tasks and applies each batch. Tasks for different collectors run
/// in parallel; tasks for one collector run in the order given.
async fn task_loop(
    client: ApiClient,
    supervisor: Supervisor,
    loads: LoadRunner,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    // The host registers with its first status report; polling before that would
    // only be told it is not registered.
    tokio::select! {
        () = stopped(&mut stop) => return,
        () = client.wait_status_answered() => {}
    }
    loop {
        let polled_at = Instant::now();
        let polled = tokio::select! {
            () = stopped(&mut stop) => return,
            polled = retry(RetryPolicy::UntilSuccess, || client.poll_tasks(TASK_WAIT)) => polled,
        };
        let batch = match polled {
            Ok(batch) => batch,
            Err(err) => {
                // Not expected: UntilSuccess retries every failure.
                tracing::error!("task poll failed: {err}");
                continue;
            }
        };
        if batch.tasks.is_empty() {
            let pause_until = polled_at + MIN_EMPTY_POLL_INTERVAL;
            tokio::select! {
                () = stopped(&mut stop) => return,
                () = tokio::time::sleep_until(pause_until) => {}
            }
            continue;
        }
        tracing::info!(tasks = batch.tasks.len(), "received tasks");
        let mut per_collector: Vec<Vec<Task>> = Vec::new();
        for task in batch.tasks {
            match per_collector
                .iter_mut()
                .find(|tasks| tasks[0].collector_id == task.collector_id)
            {
                Some(tasks) => tasks.push(task),
                None => per_collector.push(vec![task]),
            }
        }
        let mut running = JoinSet::new();
        for tasks in per_collector {
            let (client, supervisor, loads, metrics, stop) = (
                client.clone(),
                supervisor.clone(),
                loads.clone(),
                metrics.clone(),
                stop.clone(),
            );
            running.spawn(async move {
                for task in tasks {
                    handle_task(&client, &supervisor, &loads, &metrics, stop.clone(), task).await;
                }
            });
        }
        while let Some(finished) = running.join_next().await {
            if let Err(err) = finished {
                tracing::error!("a task handler failed: {err}");
            }
        }
    }
}

/// Applies one task and reports its outcome (unless the agent stops meanwhile; the
/// task is then delivered again when its lease expires, and applying is idempotent).
///
/// All in a "task" span that continues the task's trace (its `traceparent`, from the
/// reconcile step that made it): "claim" (the claimed task taken in hand, with the
/// config body it names), "converge" (with the supervisor's "collector healthy"),
/// and "report outcome", whose requests carry the trace to the api.
async fn handle_task(
    client: &ApiClient,
    supervisor: &Supervisor,
    loads: &LoadRunner,
    metrics: &Metrics,
    stop: watch::Receiver<bool>,
    task: Task,
) {
    let span = tracing::info_span!(
        parent: None,
        "task",
        task = task.id,
        action = task.action.as_str(),
        unit = %task.collector_id,
        attempt = task.attempt,
    );
    if let Some(traceparent) = &task.traceparent {
        phoenix_telemetry::set_parent(&span, traceparent);
    }
    run_task(client, supervisor, loads, metrics, stop, task)
        .instrument(span)
        .await
}

async fn run_task(
    client: &ApiClient,
    supervisor: &Supervisor,
    loads: &LoadRunner,
    metrics: &Metrics,
    mut stop: watch::Receiver<bool>,
    task: Task,
) {
    let claimed = client
        .with_config_body(task.clone())
        .instrument(tracing::info_span!("claim", task = task.id))
        .await;
    let outcome = match claimed {
        Ok(task) => {
            apply_task(supervisor, loads, &task)
                .instrument(tracing::info_span!("converge"))
                .await
        }
        Err(error) => TaskOutcome {
            ok: false,
            error: Some(error),
        },
    };
    metrics.task_handled(task.action, outcome.ok);
    match &outcome.error {
        None => {
            tracing::info!(task = task.id, action = task.action.as_str(), collector = %task.collector_id, "task done")
        }
        Some(error) => {
            tracing::warn!(task = task.id, action = task.action.as_str(), collector = %task.collector_id, "task failed: {error}")
        }
    }
    let reported = tokio::select! {
        () = stopped(&mut stop) => {
            tracing::info!(task = task.id, "stopping before the outcome was reported; the task will come again");
            return;
        }
        reported = retry(RetryPolicy::TransientOnly, || client.report_outcome(task.id, &outcome))
            .instrument(tracing::info_span!("report outcome")) => reported,
    };
    if let Err(err) = reported {
        tracing::error!(task = task.id, "outcome not accepted: {err}");
    }
}

/// Does what a task asks, for a unit of any kind. `start` and `update` both mean
/// "converge this unit to this spec" (the same hash is a no-op); `stop` stops it and
/// forgets it.
async fn apply_task(supervisor: &Supervisor, loads: &LoadRunner, task: &Task) -> TaskOutcome {
    let id = &task.collector_id;
    let result = match (task.action, task.spec()) {
        (TaskAction::Stop, _) => match task.kind {
            TaskKind::Collector => supervisor.stop(id).await.map_err(|e| e.to_string()),
            TaskKind::Load => loads.stop(id).await.map_err(|e| e.to_string()),
        },
        (action, None) => Err(format!(
            "task {} ({}) carries no {} spec",
            task.id,
            action.as_str(),
            task.kind.as_str()
        )),
        (_, Some(spec)) if spec.unit_id() != *id => Err(format!(
            "task {} is for {id} but carries a spec for {}",
            task.id,
            spec.unit_id()
        )),
        (_, Some(UnitSpec::Collector(spec))) => supervisor
            .converge(spec)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        (_, Some(UnitSpec::Load(spec))) => {
            loads.start(spec).await.map(drop).map_err(|e| e.to_string())
        }
    };
    TaskOutcome {
        ok: result.is_ok(),
        error: result.err(),
    }
}

/// Sends a heartbeat every `interval` (the first one interval after start: the first
/// status report announces the agent), unless a long-poll is waiting on an api
/// that counts it as the heartbeat: then the agent holds one connection and sends
/// nothing else. A heartbeat the API refuses because it does not know this host
/// asks the status loop to send the full status again (the client raises
/// [`ApiClient::registration_wanted`]).
async fn heartbeat_loop(client: ApiClient, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = ticker.tick() => {}
        }
        if !client.needs_heartbeat() {
            continue;
        }
        let sent = tokio::select! {
            () = stopped(&mut stop) => return,
            sent = retry(RetryPolicy::TransientOnly, || client.heartbeat()) => sent,
        };
        if let Err(err) = sent {
            tracing::warn!("heartbeat refused: {err}");
        }
    }
}

/// Sends the host status on start, whenever its stable part changes (collectors,
/// hashes, pids, health, restarts, errors; not CPU or memory), when asked, and at
/// least every [`STATUS_REFRESH`]. Also keeps the collector metrics current.
async fn status_loop(
    client: ApiClient,
    supervisor: Supervisor,
    loads: LoadRunner,
    metrics: Metrics,
    labels: Labels,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = supervisor.subscribe();
    // Load runs report starting, ending, and progress at most every few seconds.
    let mut load_changes = loads.subscribe();
    let mut last_sent: Option<HostStatus> = None;
    let mut last_sent_at = Instant::now();
    let mut force = true;
    loop {
        changes.borrow_and_update();
        load_changes.borrow_and_update();
        let status = host_status(&supervisor, &loads, &labels);
        metrics.observe_collectors(&status.collectors);
        let stable = stable_part(&status);
        if force || last_sent.as_ref() != Some(&stable) || last_sent_at.elapsed() >= STATUS_REFRESH
        {
            let sent = tokio::select! {
                () = stopped(&mut stop) => return,
                sent = retry(RetryPolicy::TransientOnly, || client.put_status(&status)) => sent,
            };
            client.status_answered();
            if let Err(err) = sent {
                // Sending the same status again will not help; the next change will.
                tracing::error!("status not accepted: {err}");
            }
            last_sent = Some(stable);
            last_sent_at = Instant::now();
            force = false;
        }
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = changes.changed() => {}
            _ = load_changes.changed() => {}
            () = client.registration_wanted() => force = true,
            () = tokio::time::sleep_until(last_sent_at + STATUS_REFRESH) => {}
        }
    }
}

fn host_status(supervisor: &Supervisor, loads: &LoadRunner, labels: &Labels) -> HostStatus {
    HostStatus {
        labels: labels.clone(),
        agent_version: AGENT_VERSION.to_string(),
        collectors: supervisor.statuses(),
        load: loads.statuses(),
        max_load_processes: loads.max_processes(),
    }
}

/// The status without the numbers that change all the time.
fn stable_part(status: &HostStatus) -> HostStatus {
    let mut stable = status.clone();
    for collector in &mut stable.collectors {
        collector.cpu_seconds = 0.0;
        collector.rss_bytes = 0;
    }
    stable
}

/// Serves `/metrics` and `/healthz` until the stop signal.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stopped(&mut stop).await })
        .await;
    if let Err(err) = served {
        tracing::error!("the /metrics server failed: {err}");
    }
}

async fn metrics_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}
