//! The keeper: one tokio task per supervised collector that owns its process. It
//! polls the health endpoint, answers the pending start with "healthy" or the
//! collector's error, restarts the process with backoff when it dies, and on order
//! stops it (or lets go of it, leaving it running for the next agent to adopt). An
//! update on trial that fails its start or crash-loops is replaced by the last
//! known good config ([`super::last_good`]), on the same ports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use phoenix_wire::agent::{CollectorSpec, Health, RolledBack};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::last_good::{self, Event, Verdict};
use super::process::{self, RunningProcess};
use super::{Inner, LiveStatus};
use crate::ports::CollectorPorts;

/// Health is checked this often once a collector is up.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// While a collector starts, health is checked more often so a start is acknowledged
/// soon after the collector is ready.
const STARTING_HEALTH_INTERVAL: Duration = Duration::from_millis(200);
/// How long one health request may take.
const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// A process that ran this long before dying starts its restart backoff afresh.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

/// What the supervisor asks a keeper to do when it is done with a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeeperOrder {
    /// Stop the process and end.
    Stop,
    /// End, leaving the process running (it is adopted by the next agent).
    LetGo,
}

/// The answer to a start: `Ok` once healthy, or the collector's error text.
pub type StartReply = oneshot::Sender<Result<(), String>>;

/// Everything a keeper needs about its collector.
pub struct Keeper {
    pub inner: Arc<Inner>,
    pub spec: CollectorSpec,
    pub ports: CollectorPorts,
    pub live: Arc<Mutex<LiveStatus>>,
}

/// Why watching a process ended.
enum RunEnd {
    /// The process exited; how.
    Exited(String),
    /// A start did not become healthy within the start timeout; its reply is
    /// still to be sent.
    StartTimedOut(StartReply),
}

/// Restart delays: 1 s doubling up to 30 s, for ever.
fn restart_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .build()
}

impl Keeper {
    /// Runs until ordered to stop or let go, or until a start fails. `process` is
    /// `None` when the collector is to be (re)started after a backoff; `start_reply`
    /// is `Some` when someone waits for this start to become healthy.
    pub async fn run(
        mut self,
        mut process: Option<RunningProcess>,
        mut start_reply: Option<StartReply>,
        mut orders: oneshot::Receiver<KeeperOrder>,
    ) {
        let id = self.spec.collector_id.clone();
        let mut backoff = restart_backoff();
        loop {
            let mut running = match process.take() {
                Some(running) => running,
                None => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    tracing::info!(collector = %id, "restarting collector in {delay:?}");
                    tokio::select! {
                        _ = &mut orders => return, // nothing is running
                        () = tokio::time::sleep(delay) => {}
                    }
                    match self.spawn() {
                        Some(running) => {
                            self.update(|live| live.restarts += 1);
                            self.inner.persist_logging_errors();
                            running
                        }
                        None => continue,
                    }
                }
            };

            let started_at = Instant::now();
            let start_deadline = start_reply
                .is_some()
                .then(|| started_at + self.inner.settings.start_timeout);
            let end = tokio::select! {
                order = &mut orders => {
                    match order {
                        Ok(KeeperOrder::Stop) => {
                            running.terminate(self.inner.settings.stop_timeout).await;
                            self.update(|live| live.pid = None);
                        }
                        // LetGo, or the supervisor is gone: leave the process running.
                        Ok(KeeperOrder::LetGo) | Err(_) => {}
                    }
                    return;
                }
                end = self.watch(&mut running, &mut start_reply, start_deadline) => end,
            };

            let failed_start = match end {
                RunEnd::StartTimedOut(reply) => {
                    let timeout = self.inner.settings.start_timeout;
                    let tail = running.log_tail();
                    running.terminate(self.inner.settings.stop_timeout).await;
                    let reason = format!("did not become healthy within {timeout:?}");
                    Err((reply, with_log_tail(reason, &tail)))
                }
                RunEnd::Exited(how) => {
                    process::kill_leftovers(running.pid());
                    match start_reply.take() {
                        Some(reply) => {
                            let reason = format!("{how} before it became healthy");
                            Err((reply, with_log_tail(reason, &running.log_tail())))
                        }
                        None => Ok(with_log_tail(how, &running.log_tail())),
                    }
                }
            };
            let text = match failed_start {
                Ok(text) => text,
                Err((reply, reason)) => {
                    let trial = self.live.lock().expect("live lock").trial.clone();
                    let rolls_back = trial.is_some_and(|t| {
                        last_good::judge(&t, Event::StartFailed, last_good::now_unix())
                            == Verdict::RollBack
                    });
                    if !rolls_back {
                        self.fail_start(reply, reason);
                        return;
                    }
                    let back_to = self.roll_back(&reason);
                    let _ = reply.send(Err(format!("{reason}; {back_to}")));
                    process = self.spawn();
                    continue;
                }
            };

            // A running collector died: restart it after a backoff.
            tracing::warn!(collector = %id, "collector {text}");
            self.update(|live| {
                live.pid = None;
                live.pid_start_time = None;
                live.health = Health::Restarting;
                live.last_error = Some(text.clone());
            });
            let mut exits = 0;
            self.update(|live| {
                if let Some(trial) = &mut live.trial {
                    trial.exits += 1;
                    exits = trial.exits;
                }
            });
            let trial = self.live.lock().expect("live lock").trial.clone();
            if let Some(trial) = trial
                && last_good::judge(&trial, Event::Exited { exits }, last_good::now_unix())
                    == Verdict::RollBack
            {
                let reason = format!("crash-looped ({exits} exits since the update): {text}");
                let back_to = self.roll_back(&reason);
                tracing::warn!(collector = %id, "{back_to}");
                process = self.spawn();
                backoff = restart_backoff();
                continue;
            }
            self.inner.persist_logging_errors();
            if started_at.elapsed() >= BACKOFF_RESET_AFTER {
                backoff = restart_backoff();
            }
        }
    }

    /// Starts the process of the spec this keeper runs now; on failure records the
    /// error and returns `None` (restarted after a backoff).
    fn spawn(&self) -> Option<RunningProcess> {
        match process::spawn(&self.inner.settings, &self.spec, self.ports) {
            Ok(running) => {
                self.update(|live| {
                    live.pid = Some(running.pid());
                    live.pid_start_time = running.start_time();
                    live.health = Health::Starting;
                });
                self.inner.persist_logging_errors();
                Some(running)
            }
            Err(err) => {
                tracing::error!(collector = %self.spec.collector_id, "cannot start collector: {err}");
                self.update(|live| live.last_error = Some(err.to_string()));
                None
            }
        }
    }

    /// Goes back from the update on trial (which failed with `error`) to its last
    /// known good config, recording both; the caller starts the process. Returns
    /// what was done, for the log and the task's outcome.
    fn roll_back(&mut self, error: &str) -> String {
        let Some(trial) = self.live.lock().expect("live lock").trial.take() else {
            return "no last known good config to go back to".into();
        };
        let failed = std::mem::replace(&mut self.spec, trial.previous);
        let rolled_back = RolledBack {
            config_hash: failed.config_hash.clone(),
            pipeline: failed.pipeline.clone(),
            error: error.to_string(),
        };
        self.inner.set_running_spec(&self.live, &self.spec);
        self.update(|live| {
            live.pid = None;
            live.pid_start_time = None;
            live.health = Health::Starting;
            live.last_error = Some(error.to_string());
            live.rolled_back_from = Some(rolled_back);
        });
        self.inner.persist_logging_errors();
        self.inner.notify_change();
        let back_to = format!(
            "went back from config {} ({}) to its last known good config {} ({})",
            failed.config_hash, failed.pipeline, self.spec.config_hash, self.spec.pipeline
        );
        tracing::warn!(collector = %self.spec.collector_id, "{back_to}");
        back_to
    }

    /// Polls the process and its health until it exits or, for a start, until the
    /// deadline passes without it becoming healthy. Answers `start_reply` with `Ok`
    /// as soon as the collector is healthy.
    async fn watch(
        &self,
        running: &mut RunningProcess,
        start_reply: &mut Option<StartReply>,
        start_deadline: Option<Instant>,
    ) -> RunEnd {
        let mut ever_healthy = false;
        loop {
            if let Some(how) = running.exit_description() {
                return RunEnd::Exited(how);
            }
            let healthy = self.probe_health().await;
            ever_healthy |= healthy;
            let health = match (healthy, ever_healthy) {
                (true, _) => Health::Healthy,
                (false, false) => Health::Starting,
                (false, true) => Health::Unhealthy,
            };
            self.update(|live| live.health = health);
            if healthy {
                self.accept_trial_if_over();
            }
            if healthy && let Some(reply) = start_reply.take() {
                let _ = reply.send(Ok(()));
            }
            if start_deadline.is_some_and(|deadline| Instant::now() >= deadline)
                && let Some(reply) = start_reply.take()
            {
                return RunEnd::StartTimedOut(reply);
            }
            let interval = if ever_healthy {
                HEALTH_INTERVAL
            } else {
                STARTING_HEALTH_INTERVAL
            };
            tokio::time::sleep(interval).await;
        }
    }

    /// Ends the trial of a healthy update once it has lasted long enough: the
    /// config is then the last known good, and what it replaced is forgotten.
    fn accept_trial_if_over(&self) {
        let over = {
            let mut live = self.live.lock().expect("live lock");
            let over = live.trial.as_ref().is_some_and(|t| {
                last_good::judge(t, Event::Healthy, last_good::now_unix()) == Verdict::Accept
            });
            if over {
                live.trial = None;
            }
            over
        };
        if over {
            tracing::info!(collector = %self.spec.collector_id, hash = %self.spec.config_hash, "update kept: it is the last known good config now");
            self.inner.persist_logging_errors();
        }
    }

    /// True when `GET http://127.0.0.1:<health port>/` answers 2xx.
    async fn probe_health(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/", self.ports.health);
        match self
            .inner
            .health_client
            .get(&url)
            .timeout(HEALTH_REQUEST_TIMEOUT)
            .send()
            .await
        {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        }
    }

    /// Forgets the collector and answers its start with the error text.
    fn fail_start(&self, reply: StartReply, text: String) {
        tracing::warn!(collector = %self.spec.collector_id, "collector failed to start: {text}");
        self.inner
            .forget_failed_start(&self.spec.collector_id, &self.live);
        let _ = reply.send(Err(text));
    }

    /// Changes the live status, telling status watchers when something changed.
    fn update(&self, change: impl FnOnce(&mut LiveStatus)) {
        let changed = {
            let mut live = self.live.lock().expect("live status lock");
            let before = live.clone();
            change(&mut live);
            *live != before
        };
        if changed {
            self.inner.notify_change();
        }
    }
}

fn with_log_tail(reason: String, tail: &str) -> String {
    if tail.is_empty() {
        reason
    } else {
        format!("{reason}; its log ends with:\n{tail}")
    }
}
