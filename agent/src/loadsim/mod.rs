//! Load simulation on this host: real OS processes, bounded, always cleaned up.
//!
//! - [`LoadRunner::open`] first kills every load worker a predecessor left behind
//!   (processes carrying this state directory's load marker). A restarted agent
//!   does not adopt load runs: the reconciler starts them again if still wanted.
//! - [`LoadRunner::start`] runs a [`LoadRunSpec`] (a no-op for the same spec hash;
//!   another hash replaces the run), refusing a run that would take the host past
//!   `--max-load-processes`; [`LoadRunner::stop`] ends one and forgets it.
//! - [`LoadRunner::statuses`] reports every run; [`LoadRunner::subscribe`] signals
//!   when a run starts, ends or (at most every few seconds) makes progress.
//! - [`LoadRunner::shutdown`] ends every run (the agent is exiting).
//!
//! [`run`] owns one run's process group on a thread of its own; [`worker`] is the
//! `phoenix-agent load-worker` process a run is made of.
//!
//! Load workers carry their own marker (`PHOENIX_LOAD_STATE_DIR=<state dir>`), not
//! the collectors' (`PHOENIX_AGENT_STATE_DIR`): the collector supervisor's orphan
//! reaping never touches them, and this module's never touches collectors.

pub mod run;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phoenix_wire::load::{self, LoadRunSpec, LoadStatus};
use tokio::sync::watch;

use rustix::process::Pid;

use crate::process_group::{self, Signal};
use crate::procfs;
use run::{RunContext, RunHandle};

/// The environment variable every load worker is started with, set to the agent's
/// absolute state directory, by which a restarted agent finds leftovers.
pub const LOAD_STATE_DIR_MARKER: &str = "PHOENIX_LOAD_STATE_DIR";
/// The environment variable naming a worker's run (for people reading `/proc`).
pub const LOAD_RUN_MARKER: &str = "PHOENIX_LOAD_RUN";

/// How the agent runs load.
#[derive(Clone, Debug)]
pub struct LoadSettings {
    /// The agent's absolute state directory (the marker's value).
    pub state_dir: PathBuf,
    /// The executable re-run as `load-worker` (the agent's own binary).
    pub worker_bin: PathBuf,
    /// The most worker processes all runs on this host may have together.
    pub max_processes: u32,
    /// How long workers get between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
}

/// Why a load operation failed. The text reaches the user through the task outcome.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("`{unit_id}` is not a load unit id: {reason}")]
    InvalidUnit { unit_id: String, reason: String },
    #[error("load run {run_id} is out of bounds: {reason}")]
    InvalidSpec { run_id: String, reason: String },
    #[error(
        "load run {run_id} asks for {asked} processes, but this host allows at most {max} load processes (phoenix-agent --max-load-processes){}",
        if *.taken > 0 { format!(" and other runs already use {}", .taken) } else { String::new() }
    )]
    TooManyProcesses {
        run_id: String,
        asked: u32,
        max: u32,
        taken: u32,
    },
    #[error("cannot start a load worker ({bin}): {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start a thread for the load run: {source}")]
    Thread { source: std::io::Error },
    #[error("the load run's thread ended before it started")]
    ThreadDied,
}

/// What [`LoadRunner::start`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    /// The run already had this spec hash.
    Unchanged,
    Started,
    /// The run had another spec hash; it was ended and started anew.
    Replaced,
}

struct Inner {
    settings: LoadSettings,
    runs: Mutex<BTreeMap<String, RunHandle>>,
    /// Serializes starts and stops (they are rare; one at a time keeps the
    /// process budget check honest).
    operations: tokio::sync::Mutex<()>,
    changes: watch::Sender<u64>,
}

/// The load runs of this host. Cheap to clone.
#[derive(Clone)]
pub struct LoadRunner {
    inner: Arc<Inner>,
}

/// The agent's own executable, which load workers re-run.
pub fn own_executable() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
}

impl LoadRunner {
    /// Kills whatever load workers a predecessor with this state directory left
    /// running, then returns a runner with no runs.
    pub async fn open(settings: LoadSettings) -> LoadRunner {
        let marker = marker_entry(&settings.state_dir);
        reap_leftovers(&marker, settings.stop_timeout).await;
        LoadRunner {
            inner: Arc::new(Inner {
                settings,
                runs: Mutex::default(),
                operations: tokio::sync::Mutex::default(),
                changes: watch::Sender::new(0),
            }),
        }
    }

    /// The most load processes this host runs at once.
    pub fn max_processes(&self) -> u32 {
        self.inner.settings.max_processes
    }

    /// Runs `spec`: a no-op when it already runs with the same hash, a replacement
    /// for another hash. Returns once the run's process group exists; its workers
    /// follow at the run's spawn rate.
    pub async fn start(&self, spec: LoadRunSpec) -> Result<StartOutcome, LoadError> {
        let invalid = |reason: String| LoadError::InvalidSpec {
            run_id: spec.run_id.clone(),
            reason,
        };
        load::check_run_id(&spec.run_id).map_err(invalid)?;
        spec.parameters
            .check()
            .map_err(|e| invalid(e.to_string()))?;
        let _one_at_a_time = self.inner.operations.lock().await;

        let (unchanged, taken) = {
            let runs = self.inner.runs.lock().expect("runs lock");
            let unchanged = runs
                .get(&spec.run_id)
                .is_some_and(|run| run.spec.spec_hash == spec.spec_hash);
            let taken: u32 = runs
                .values()
                .filter(|run| run.spec.run_id != spec.run_id && run.is_running())
                .map(|run| run.spec.parameters.processes)
                .sum();
            (unchanged, taken)
        };
        if unchanged {
            return Ok(StartOutcome::Unchanged);
        }
        let max = self.inner.settings.max_processes;
        if taken.saturating_add(spec.parameters.processes) > max {
            return Err(LoadError::TooManyProcesses {
                run_id: spec.run_id.clone(),
                asked: spec.parameters.processes,
                max,
                taken,
            });
        }
        let previous = self
            .inner
            .runs
            .lock()
            .expect("runs lock")
            .remove(&spec.run_id);
        let outcome = match previous {
            Some(previous) => {
                tracing::info!(run = %spec.run_id, "replacing load run");
                previous.finish().await;
                StartOutcome::Replaced
            }
            None => StartOutcome::Started,
        };
        let context = RunContext {
            worker_bin: self.inner.settings.worker_bin.clone(),
            state_dir: self.inner.settings.state_dir.clone(),
            stop_timeout: self.inner.settings.stop_timeout,
            changes: self.inner.changes.clone(),
        };
        let run_id = spec.run_id.clone();
        let started = RunHandle::start(context, spec).await;
        let result = started.map(|handle| {
            self.inner
                .runs
                .lock()
                .expect("runs lock")
                .insert(run_id, handle);
            outcome
        });
        self.notify();
        result
    }

    /// Ends a run (its whole process group) and forgets it. `unit_id` is
    /// `load.<run id>`; stopping a run this agent does not have is fine.
    pub async fn stop(&self, unit_id: &str) -> Result<(), LoadError> {
        let run_id =
            unit_id
                .strip_prefix(load::UNIT_PREFIX)
                .ok_or_else(|| LoadError::InvalidUnit {
                    unit_id: unit_id.to_string(),
                    reason: format!("it does not start with `{}`", load::UNIT_PREFIX),
                })?;
        let _one_at_a_time = self.inner.operations.lock().await;
        let removed = self.inner.runs.lock().expect("runs lock").remove(run_id);
        if let Some(run) = removed {
            tracing::info!(run = %run_id, "stopping load run");
            run.finish().await;
            self.notify();
        }
        Ok(())
    }

    /// Every run this agent has, running or finished.
    pub fn statuses(&self) -> Vec<LoadStatus> {
        let runs = self.inner.runs.lock().expect("runs lock");
        runs.values().map(RunHandle::status).collect()
    }

    /// A receiver marked changed when a run starts, ends, or makes progress.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Ends every run: load is never left behind for a next agent.
    pub async fn shutdown(&self) {
        let _one_at_a_time = self.inner.operations.lock().await;
        let runs = std::mem::take(&mut *self.inner.runs.lock().expect("runs lock"));
        for run in runs.into_values() {
            run.finish().await;
        }
        self.notify();
    }

    fn notify(&self) {
        self.inner
            .changes
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }
}

/// `PHOENIX_LOAD_STATE_DIR=<state dir>`, the environment entry of this agent's
/// load workers.
pub fn marker_entry(state_dir: &Path) -> String {
    format!("{LOAD_STATE_DIR_MARKER}={}", state_dir.display())
}

/// Live (not zombie) processes carrying `marker`, other than this one, with their
/// process groups.
fn marked_processes(marker: &str) -> BTreeMap<u32, i32> {
    let own = std::process::id();
    let Ok(pids) = procfs::all_pids() else {
        return BTreeMap::new();
    };
    pids.into_iter()
        .filter(|&pid| pid != own && procfs::environ_contains(pid, marker))
        .filter_map(|pid| {
            procfs::read_stat(pid)
                .ok()
                .filter(|stat| stat.is_running())
                .map(|stat| (pid, stat.process_group))
        })
        .collect()
}

/// Kills every process carrying `marker` and its process group: SIGTERM, up to
/// `grace` to exit, then SIGKILL. They are a predecessor's workers, not our
/// children: whoever inherited them reaps them.
async fn reap_leftovers(marker: &str, grace: Duration) {
    let found = marked_processes(marker);
    if found.is_empty() {
        return;
    }
    let started = Instant::now();
    let own_group = process_group::own();
    let groups: BTreeSet<u32> = found
        .values()
        .filter_map(|&g| u32::try_from(g).ok())
        .filter(|&g| g != own_group)
        .collect();
    tracing::warn!(
        processes = found.len(),
        groups = groups.len(),
        "killing load workers a previous agent left behind"
    );
    let signal_all = |signal: Signal| {
        for &group in &groups {
            process_group::signal(group, signal);
        }
        for pid in marked_processes(marker).into_keys() {
            if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
                // A process that exited meanwhile is ESRCH: nothing to do.
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    };
    signal_all(Signal::TERM);
    let deadline = Instant::now() + grace;
    while !marked_processes(marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !marked_processes(marker).is_empty() {
        signal_all(Signal::KILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !marked_processes(marker).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let left = marked_processes(marker).len();
    if left > 0 {
        tracing::error!(left, "leftover load workers survived SIGKILL");
    } else {
        tracing::info!(
            killed = found.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "leftover load workers are gone"
        );
    }
}
