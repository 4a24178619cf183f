//! The supervisor: converges the collectors on this host to what tasks ask for, and
//! keeps them running.
//!
//! - [`Supervisor::open`] loads `state.json`, adopts recorded collectors that are still
//!   running, kills orphans (processes carrying this state dir's marker that no
//!   record explains) and starts recorded collectors that are gone.
//! - [`Supervisor::converge`] makes a collector id run a spec (a no-op for the same
//!   config hash), [`Supervisor::stop`] stops and forgets one.
//! - [`Supervisor::statuses`] reports every collector; [`Supervisor::subscribe`]
//!   signals when the stable part of a status changed.
//! - [`Supervisor::shutdown`] lets go of the collectors (they keep running and are
//!   adopted by the next agent) or stops them.
//!
//! Each collector's process is owned by one [`keeper`] task; [`process`] starts and
//! stops processes. An update is on trial until it has run healthy for a while; if
//! it fails first, its keeper goes back to the last known good config
//! ([`last_good`]). Operations on one collector id are serialized; different ids
//! proceed in parallel.

mod keeper;
pub mod last_good;
mod privilege;
mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phoenix_wire::agent::{CollectorSpec, CollectorStatus, Health, RolledBack};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::ports::{self, CollectorPorts};
use crate::process_group::{self, Signal};
use crate::procfs;
use crate::state::{self, AgentState, RecordedCollector, StateError};
use keeper::{Keeper, KeeperOrder, StartReply};
use last_good::Trial;
pub use privilege::{COLLECTOR_CAPABILITIES, CollectorUser, can_switch_user};
use process::RunningProcess;
pub use process::{STATE_DIR_MARKER, collector_dir};

/// How the supervisor runs collectors.
#[derive(Clone, Debug)]
pub struct SupervisorSettings {
    /// Where `state.json` and `collectors/<id>/` live. Made absolute by
    /// [`Supervisor::open`].
    pub state_dir: PathBuf,
    /// The collector executable.
    pub collector_bin: PathBuf,
    /// Passed to collectors as `PHOENIX_HOSTFS` (where the host's `/` is mounted).
    pub hostfs: String,
    /// Where destination credentials given by file are read from.
    pub credentials_dir: PathBuf,
    /// How long a started collector may take to become healthy.
    pub start_timeout: Duration,
    /// How long a collector may take to exit after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// The unprivileged user collectors run as; `None` runs them as the agent's
    /// own user (an agent that is not root cannot switch).
    pub collector_user: Option<CollectorUser>,
}

/// Why a supervisor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(
        "`{0}` is not a valid collector id: use 1 to 253 letters, digits, '.', '_' and '-', not starting with '.'"
    )]
    InvalidCollectorId(String),
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the collector executable {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("no free loopback port for collector {collector_id}: {source}")]
    NoFreePort {
        collector_id: String,
        source: std::io::Error,
    },
    /// The config or environment breaks the template policy; nothing was started.
    #[error("collector {collector_id} refused by the template policy: {refusal}")]
    Refused {
        collector_id: String,
        refusal: phoenix_wire::policy::Refusal,
    },
    /// A destination's credential could not be read; nothing was started. The
    /// message names the reference, never a value.
    #[error("collector {collector_id}: cannot read credential {variable}: {reason}")]
    Credential {
        collector_id: String,
        variable: String,
        reason: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
    /// The collector exited or stayed unhealthy; `reason` quotes its log.
    #[error("collector {collector_id} did not start: {reason}")]
    StartFailed {
        collector_id: String,
        reason: String,
    },
}

/// What [`Supervisor::converge`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvergeOutcome {
    /// The collector already ran this config hash.
    Unchanged,
    /// The collector was not running and now runs, healthy.
    Started,
    /// The collector ran another config hash; it was replaced and is healthy.
    Replaced,
}

/// What to do with the collectors when the agent exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnExit {
    /// Leave them running; the next agent adopts them.
    LeaveRunning,
    /// Stop them and forget them.
    StopCollectors,
}

/// The changing part of a collector's status, shared between its keeper and the
/// supervisor.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveStatus {
    pub pid: Option<u32>,
    pub pid_start_time: Option<u64>,
    pub health: Health,
    pub restarts: u32,
    pub last_error: Option<String>,
    /// The running config is an update on trial (see [`last_good`]).
    pub trial: Option<Trial>,
    /// The update this collector went back from.
    pub rolled_back_from: Option<RolledBack>,
}

/// What a collector carries over from before: restarts, a trial, a rollback.
#[derive(Clone, Debug, Default)]
struct Carried {
    restarts: u32,
    trial: Option<Trial>,
    rolled_back_from: Option<RolledBack>,
}

impl From<&RecordedCollector> for Carried {
    fn from(record: &RecordedCollector) -> Self {
        Carried {
            restarts: record.restarts,
            trial: record.trial.clone(),
            rolled_back_from: record.rolled_back_from.clone(),
        }
    }
}

/// One supervised collector.
struct Supervised {
    spec: CollectorSpec,
    ports: CollectorPorts,
    live: Arc<Mutex<LiveStatus>>,
    /// The keeper's order channel and task; taken when it is given its last order.
    keeper: Option<(oneshot::Sender<KeeperOrder>, JoinHandle<()>)>,
}

impl Supervised {
    /// Gives the keeper its last order; returns the keeper task to wait for.
    fn give_last_order(&mut self, order: KeeperOrder) -> Option<JoinHandle<()>> {
        let (orders, keeper) = self.keeper.take()?;
        let _ = orders.send(order);
        Some(keeper)
    }

    /// Gives the keeper its last order and waits until it has carried it out.
    async fn finish(mut self, order: KeeperOrder) {
        if let Some(keeper) = self.give_last_order(order)
            && let Err(err) = keeper.await
        {
            tracing::error!(collector = %self.spec.collector_id, "collector keeper failed: {err}");
        }
    }
}

/// State shared by the supervisor handle and the keepers.
pub(crate) struct Inner {
    settings: SupervisorSettings,
    collectors: Mutex<BTreeMap<String, Supervised>>,
    /// One lock per collector id, held for the whole of a converge or stop.
    operation_locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serializes writes of `state.json`.
    state_write: Mutex<()>,
    /// The last write of `state.json` failed (a full disk, say): it is written
    /// again every [`STATE_RETRY_INTERVAL`] until it succeeds.
    state_stale: std::sync::atomic::AtomicBool,
    changes: watch::Sender<u64>,
    health_client: reqwest::Client,
}

/// Supervises the collectors of one state directory. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// Checks that a collector id is safe as a directory name.
pub fn check_collector_id(id: &str) -> Result<(), SupervisorError> {
    let ok = !id.is_empty()
        && id.len() <= 253
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SupervisorError::InvalidCollectorId(id.to_string()))
    }
}

impl Supervisor {
    /// Opens the state directory and recovers: adopts recorded collectors that still
    /// run, kills orphaned processes that carry this state dir's marker, and starts
    /// recorded collectors that are gone (without waiting for them to be healthy).
    pub async fn open(mut settings: SupervisorSettings) -> Result<Supervisor, SupervisorError> {
        let collectors_dir = settings.state_dir.join("collectors");
        std::fs::create_dir_all(&collectors_dir).map_err(|source| SupervisorError::Io {
            path: collectors_dir.clone(),
            source,
        })?;
        settings.state_dir =
            std::fs::canonicalize(&settings.state_dir).map_err(|source| SupervisorError::Io {
                path: settings.state_dir.clone(),
                source,
            })?;
        if settings.collector_user.is_some() {
            // Collectors run as another user: they may pass through these two
            // directories to their own, but not list them.
            for dir in [&settings.state_dir, &collectors_dir] {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(
                    |source| SupervisorError::Io {
                        path: dir.to_path_buf(),
                        source,
                    },
                )?;
            }
        }
        let recorded = load_state_or_set_aside(&state::state_file_path(&settings.state_dir))?;

        let health_client = crate::tls::client_builder(None)
            .expect("no CA file, nothing to read")
            .no_proxy()
            .build()
            .expect("a plain HTTP client always builds");
        let supervisor = Supervisor {
            inner: Arc::new(Inner {
                settings,
                collectors: Mutex::default(),
                operation_locks: Mutex::default(),
                state_write: Mutex::default(),
                state_stale: Default::default(),
                changes: watch::Sender::new(0),
                health_client,
            }),
        };

        let mut seen = BTreeSet::new();
        let mut adopted_groups = BTreeSet::new();
        let mut gone = Vec::new();
        for record in recorded.collectors {
            if let Err(err) = check_collector_id(&record.spec.collector_id) {
                tracing::warn!("ignoring a recorded collector: {err}");
                continue;
            }
            if !seen.insert(record.spec.collector_id.clone()) {
                tracing::warn!(collector = %record.spec.collector_id, "ignoring a duplicate record");
                continue;
            }
            match (record.pid, record.pid_start_time) {
                (Some(pid), Some(start_time))
                    if procfs::is_same_process_running(pid, start_time) =>
                {
                    tracing::info!(collector = %record.spec.collector_id, pid, "adopting running collector");
                    adopted_groups.insert(pid);
                    let log_path = collector_dir(
                        &supervisor.inner.settings.state_dir,
                        &record.spec.collector_id,
                    )
                    .join("collector.log");
                    let process = RunningProcess::adopted(pid, start_time, log_path);
                    let carried = Carried::from(&record);
                    supervisor.supervise(record.spec, record.ports, carried, Ok(process), None);
                }
                _ => gone.push(record),
            }
        }

        reap_orphans(
            &supervisor.marker_entry(),
            &adopted_groups,
            supervisor.inner.settings.stop_timeout,
        )
        .await;

        for record in gone {
            tracing::info!(collector = %record.spec.collector_id, "starting recorded collector that is not running");
            let process = process::spawn(&supervisor.inner.settings, &record.spec, record.ports);
            let carried = Carried::from(&record);
            supervisor.supervise(record.spec, record.ports, carried, process, None);
        }
        supervisor.inner.persist()?;
        tokio::spawn(rewrite_stale_state(Arc::downgrade(&supervisor.inner)));
        Ok(supervisor)
    }

    /// The absolute state directory.
    pub fn state_dir(&self) -> &Path {
        &self.inner.settings.state_dir
    }

    /// The environment entry (`PHOENIX_AGENT_STATE_DIR=<dir>`) that marks this
    /// supervisor's processes.
    pub fn marker_entry(&self) -> String {
        format!(
            "{STATE_DIR_MARKER}={}",
            self.inner.settings.state_dir.display()
        )
    }

    /// Makes `spec.collector_id` run `spec`. The same config hash already running is
    /// a no-op; another hash is stopped and replaced, on trial against the config it
    /// replaced (see [`last_good`]). Returns once the collector is healthy, or fails
    /// with the collector's own error text: a new collector is then stopped and
    /// forgotten, an updated one goes back to its last known good config.
    pub async fn converge(&self, spec: CollectorSpec) -> Result<ConvergeOutcome, SupervisorError> {
        let id = spec.collector_id.clone();
        check_collector_id(&id)?;
        let operation = self.operation_lock(&id);
        let _serialized = operation.lock().await;

        let previous = {
            let mut collectors = self.inner.collectors.lock().expect("collectors lock");
            if let Some(current) = collectors.get_mut(&id)
                && current.spec.config_hash == spec.config_hash
            {
                // Same collector; only descriptive fields (owner, pipeline) can differ.
                let relabelled = current.spec != spec;
                current.spec = spec;
                drop(collectors);
                if relabelled {
                    self.inner.persist_logging_errors();
                    self.inner.notify_change();
                }
                return Ok(ConvergeOutcome::Unchanged);
            }
            collectors.remove(&id)
        };

        let outcome = if previous.is_some() {
            ConvergeOutcome::Replaced
        } else {
            ConvergeOutcome::Started
        };
        let mut trial = None;
        let ports = match previous {
            Some(previous) => {
                tracing::info!(collector = %id, from = %previous.spec.config_hash, to = %spec.config_hash, "replacing collector");
                let ports = previous.ports;
                let (healthy, previous_trial) = {
                    let live = previous.live.lock().expect("live lock");
                    (live.health == Health::Healthy, live.trial.clone())
                };
                trial = last_good::previous_for_update(
                    &previous.spec,
                    healthy,
                    previous_trial.as_ref(),
                )
                .map(|previous| Trial {
                    previous,
                    since_unix: last_good::now_unix(),
                    exits: 0,
                });
                previous.finish(KeeperOrder::Stop).await;
                ports
            }
            None => ports::assign_ports(&self.ports_in_use()).map_err(|source| {
                SupervisorError::NoFreePort {
                    collector_id: id.clone(),
                    source,
                }
            })?,
        };

        let process = match process::spawn(&self.inner.settings, &spec, ports) {
            Ok(process) => process,
            Err(err) => {
                self.inner.persist_logging_errors();
                self.inner.notify_change();
                return Err(err);
            }
        };
        tracing::info!(collector = %id, pid = process.pid(), hash = %spec.config_hash, "started collector");
        // From the start until the keeper answers: healthy, or why not.
        let waiting = tracing::info_span!(
            "collector healthy",
            collector = %id,
            pid = process.pid(),
            otel.status_code = tracing::field::Empty,
        );
        let (reply, started) = oneshot::channel();
        let carried = Carried {
            trial,
            ..Carried::default()
        };
        self.supervise(spec, ports, carried, Ok(process), Some(reply));
        self.inner.persist_logging_errors();

        let answer = started.instrument(waiting.clone()).await;
        if !matches!(answer, Ok(Ok(()))) {
            waiting.record("otel.status_code", "ERROR");
        }
        match answer {
            Ok(Ok(())) => Ok(outcome),
            Ok(Err(reason)) => Err(SupervisorError::StartFailed {
                collector_id: id,
                reason,
            }),
            Err(_) => Err(SupervisorError::StartFailed {
                collector_id: id,
                reason: "the supervisor shut down before the collector became healthy".into(),
            }),
        }
    }

    /// Stops a collector (its whole process group) and forgets it, removing its
    /// directory. Stopping a collector that is not supervised is fine.
    pub async fn stop(&self, collector_id: &str) -> Result<(), SupervisorError> {
        check_collector_id(collector_id)?;
        let operation = self.operation_lock(collector_id);
        let _serialized = operation.lock().await;
        let removed = self
            .inner
            .collectors
            .lock()
            .expect("collectors lock")
            .remove(collector_id);
        if let Some(supervised) = removed {
            tracing::info!(collector = %collector_id, "stopping collector");
            supervised.finish(KeeperOrder::Stop).await;
            // The collector is stopped whether or not state.json could be written
            // now; a failed write is retried until it succeeds.
            self.inner.persist_logging_errors();
            self.inner.notify_change();
        }
        let dir = collector_dir(&self.inner.settings.state_dir, collector_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SupervisorError::Io { path: dir, source }),
        }
    }

    /// Every supervised collector's status, with its current CPU time and RSS.
    pub fn statuses(&self) -> Vec<CollectorStatus> {
        let snapshot: Vec<(CollectorSpec, LiveStatus)> = {
            let collectors = self.inner.collectors.lock().expect("collectors lock");
            collectors
                .values()
                .map(|c| (c.spec.clone(), c.live.lock().expect("live lock").clone()))
                .collect()
        };
        snapshot
            .into_iter()
            .map(|(spec, live)| {
                let stat = live.pid.and_then(|pid| procfs::read_stat(pid).ok());
                let rss = live.pid.and_then(|pid| procfs::rss_bytes(pid).ok());
                CollectorStatus {
                    collector_id: spec.collector_id,
                    owner: spec.owner,
                    variant: spec.variant,
                    pipeline: spec.pipeline,
                    config_hash: spec.config_hash,
                    pid: live.pid,
                    health: live.health,
                    restarts: live.restarts,
                    cpu_seconds: stat.map(|s| s.cpu_seconds()).unwrap_or(0.0),
                    rss_bytes: rss.unwrap_or(0),
                    last_error: live.last_error,
                    rolled_back_from: live.rolled_back_from,
                }
            })
            .collect()
    }

    /// One collector's status, if it is supervised.
    pub fn status(&self, collector_id: &str) -> Option<CollectorStatus> {
        self.statuses()
            .into_iter()
            .find(|s| s.collector_id == collector_id)
    }

    /// The ports a supervised collector was given.
    pub fn ports(&self, collector_id: &str) -> Option<CollectorPorts> {
        let collectors = self.inner.collectors.lock().expect("collectors lock");
        collectors.get(collector_id).map(|c| c.ports)
    }

    /// A receiver that is marked changed whenever a collector is added, removed, or
    /// changes pid, health, restarts or last error (not CPU or RSS).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Ends supervision. With [`OnExit::LeaveRunning`] the collectors keep running and
    /// `state.json` records them for the next agent to adopt; with
    /// [`OnExit::StopCollectors`] they are stopped and forgotten.
    pub async fn shutdown(&self, on_exit: OnExit) {
        let keepers: Vec<JoinHandle<()>> = {
            let mut collectors = self.inner.collectors.lock().expect("collectors lock");
            match on_exit {
                // Keep the records, so that state.json names the collectors left running.
                OnExit::LeaveRunning => collectors
                    .values_mut()
                    .filter_map(|c| c.give_last_order(KeeperOrder::LetGo))
                    .collect(),
                OnExit::StopCollectors => std::mem::take(&mut *collectors)
                    .into_values()
                    .filter_map(|mut c| c.give_last_order(KeeperOrder::Stop))
                    .collect(),
            }
        };
        // Stops run in parallel: each keeper stops its own process.
        for keeper in keepers {
            let _ = keeper.await;
        }
        self.inner.persist_logging_errors();
        self.inner.notify_change();
    }

    fn ports_in_use(&self) -> BTreeSet<u16> {
        let collectors = self.inner.collectors.lock().expect("collectors lock");
        collectors
            .values()
            .flat_map(|c| [c.ports.health, c.ports.telemetry])
            .collect()
    }

    /// The lock that serializes operations on one collector id. Locks nobody holds
    /// or waits for are dropped on the way.
    fn operation_lock(&self, collector_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.operation_locks.lock().expect("operation locks");
        locks.retain(|id, lock| id == collector_id || Arc::strong_count(lock) > 1);
        locks.entry(collector_id.to_string()).or_default().clone()
    }

    /// Records a collector and starts its keeper. `process` is the running process,
    /// or the error that kept it from starting (the keeper then retries with backoff).
    fn supervise(
        &self,
        spec: CollectorSpec,
        ports: CollectorPorts,
        carried: Carried,
        process: Result<RunningProcess, SupervisorError>,
        start_reply: Option<StartReply>,
    ) {
        let id = spec.collector_id.clone();
        let (process, last_error) = match process {
            Ok(process) => (Some(process), None),
            Err(err) => {
                tracing::error!(collector = %id, "cannot start collector: {err}");
                (None, Some(err.to_string()))
            }
        };
        let live = Arc::new(Mutex::new(LiveStatus {
            pid: process.as_ref().map(RunningProcess::pid),
            pid_start_time: process.as_ref().and_then(RunningProcess::start_time),
            health: if process.is_some() {
                Health::Starting
            } else {
                Health::Restarting
            },
            restarts: carried.restarts,
            last_error,
            trial: carried.trial,
            rolled_back_from: carried.rolled_back_from,
        }));
        let (orders, order_receiver) = oneshot::channel();
        let keeper = Keeper {
            inner: self.inner.clone(),
            spec: spec.clone(),
            ports,
            live: live.clone(),
        };
        // Insert before the keeper runs, so the keeper always finds its own record.
        let mut collectors = self.inner.collectors.lock().expect("collectors lock");
        let keeper = tokio::spawn(keeper.run(process, start_reply, order_receiver));
        collectors.insert(
            id,
            Supervised {
                spec,
                ports,
                live,
                keeper: Some((orders, keeper)),
            },
        );
        drop(collectors);
        self.inner.notify_change();
    }
}

impl Inner {
    fn notify_change(&self) {
        self.changes
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Records that the collector `live` belongs to now runs `spec` (its keeper
    /// went back to the last known good), unless it was replaced meanwhile.
    fn set_running_spec(&self, live: &Arc<Mutex<LiveStatus>>, spec: &CollectorSpec) {
        let mut collectors = self.collectors.lock().expect("collectors lock");
        if let Some(c) = collectors.get_mut(&spec.collector_id)
            && Arc::ptr_eq(&c.live, live)
        {
            c.spec = spec.clone();
        }
    }

    /// Forgets a collector whose start failed, unless it was replaced meanwhile.
    fn forget_failed_start(&self, collector_id: &str, live: &Arc<Mutex<LiveStatus>>) {
        {
            let mut collectors = self.collectors.lock().expect("collectors lock");
            if collectors
                .get(collector_id)
                .is_some_and(|c| Arc::ptr_eq(&c.live, live))
            {
                collectors.remove(collector_id);
            }
        }
        self.persist_logging_errors();
        self.notify_change();
    }

    /// Writes `state.json` from the collectors supervised now.
    fn persist(&self) -> Result<(), StateError> {
        let _one_writer = self.state_write.lock().expect("state write lock");
        let state = {
            let collectors = self.collectors.lock().expect("collectors lock");
            AgentState {
                collectors: collectors
                    .values()
                    .map(|c| {
                        let live = c.live.lock().expect("live lock");
                        RecordedCollector {
                            spec: c.spec.clone(),
                            ports: c.ports,
                            pid: live.pid,
                            pid_start_time: live.pid_start_time,
                            restarts: live.restarts,
                            trial: live.trial.clone(),
                            rolled_back_from: live.rolled_back_from.clone(),
                        }
                    })
                    .collect(),
            }
        };
        let saved = state::save(&state::state_file_path(&self.settings.state_dir), &state);
        let was_stale = self
            .state_stale
            .swap(saved.is_err(), std::sync::atomic::Ordering::Relaxed);
        if was_stale && saved.is_ok() {
            tracing::info!("state.json is written again");
        }
        saved
    }

    fn persist_logging_errors(&self) {
        if let Err(err) = self.persist() {
            tracing::error!("{err}");
        }
    }
}

/// How often a `state.json` that could not be written is tried again.
const STATE_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// Writes `state.json` again while its last write failed, so that a record of a
/// stopped collector does not outlive a full disk (a restarted agent would start
/// it again). Ends when the supervisor is gone.
async fn rewrite_stale_state(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(STATE_RETRY_INTERVAL).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.state_stale.load(std::sync::atomic::Ordering::Relaxed) {
            // Failures were logged when they first happened.
            let _ = inner.persist();
        }
    }
}

/// Loads the state file. A malformed one (which atomic writes make unlikely) is moved
/// aside so the agent starts empty: orphan reaping then kills what it left running,
/// and the reconciler sends the tasks again.
fn load_state_or_set_aside(path: &Path) -> Result<AgentState, SupervisorError> {
    match state::load(path) {
        Ok(state) => Ok(state),
        Err(err @ StateError::Malformed { .. }) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(".malformed");
            tracing::error!("{err}; moving it to {}", PathBuf::from(&aside).display());
            std::fs::rename(path, &aside).map_err(|source| SupervisorError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(AgentState::default())
        }
        Err(err) => Err(err.into()),
    }
}

/// Kills every process group holding a process started with `marker` in its
/// environment, except the groups in `keep` (adopted collectors and their children)
/// and our own: SIGTERM, up to `grace` to exit, then SIGKILL.
async fn reap_orphans(marker: &str, keep: &BTreeSet<u32>, grace: Duration) {
    let own_pid = std::process::id();
    let own_group = process_group::own();
    let groups_with_marker = || -> BTreeSet<u32> {
        let Ok(pids) = procfs::all_pids() else {
            return BTreeSet::new();
        };
        pids.into_iter()
            .filter(|&pid| pid != own_pid && procfs::environ_contains(pid, marker))
            .filter_map(|pid| procfs::read_stat(pid).ok().filter(|s| s.is_running()))
            .filter_map(|stat| u32::try_from(stat.process_group).ok())
            .filter(|group| !keep.contains(group) && *group != own_group)
            .collect()
    };
    let orphans = groups_with_marker();
    if orphans.is_empty() {
        return;
    }
    tracing::warn!(groups = ?orphans, "killing orphaned collector processes");
    for &group in &orphans {
        process_group::signal(group, Signal::TERM);
    }
    let all_gone = || groups_with_marker().is_disjoint(&orphans);
    if !process::wait_until(all_gone, grace).await {
        for &group in &orphans {
            process_group::signal(group, Signal::KILL);
        }
        if !process::wait_until(all_gone, Duration::from_secs(5)).await {
            tracing::error!(groups = ?orphans, "orphaned processes survived SIGKILL");
        }
    }
}
