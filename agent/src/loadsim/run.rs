//! One load run on this host: a dedicated OS thread that owns the run's process
//! group. It spawns a group leader (an idle worker that lives as long as the run,
//! so the group never empties), then workers into that group at the run's spawn
//! rate up to its process count ([`Pacer`]), reaps them as they exit, and at the
//! end (stop or expiry) kills the whole group (SIGTERM, then SIGKILL) and reaps it.
//!
//! The workers are children of this thread, not of a tokio thread that may come and
//! go: they ask the kernel to kill them when it exits ([`super::worker`]), so the
//! death of the agent takes them along. They carry the load marker in their
//! environment, by which a restarted agent finds and kills any that survived.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use phoenix_wire::duration::HumanDuration;
use phoenix_wire::load::{LoadRunSpec, LoadState, LoadStatus};
use rustix::io::Errno;
use rustix::process::{self, Pid, WaitOptions};
use tokio::sync::{oneshot, watch};

use super::worker::WorkerArgs;
use super::{LOAD_RUN_MARKER, LOAD_STATE_DIR_MARKER, LoadError};
use crate::process_group::{self, Signal};

/// The run thread wakes at least this often to reap workers and check for a stop.
const TICK: Duration = Duration::from_millis(50);
/// A pacer that fell behind (slow spawns) catches up at most this much at once.
const MAX_CATCH_UP: Duration = Duration::from_secs(1);
/// Progress (live and spawned counts) reaches the status report at most this often;
/// starting and finishing are reported at once.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// After a failed spawn, the run waits this long before trying again.
const SPAWN_RETRY: Duration = Duration::from_secs(1);
/// How long a killed group may take to be reaped before we give up waiting.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What the run thread needs besides its spec.
#[derive(Clone, Debug)]
pub struct RunContext {
    pub worker_bin: PathBuf,
    /// The agent's state directory, the value of the load marker.
    pub state_dir: PathBuf,
    /// How long workers get between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    pub changes: watch::Sender<u64>,
}

/// Counters the run thread keeps and the status report reads.
#[derive(Clone, Debug)]
struct Progress {
    state: LoadState,
    live: u32,
    spawned_total: u64,
    last_error: Option<String>,
}

/// A run this agent has: its thread (while running) and its progress.
pub struct RunHandle {
    pub spec: LoadRunSpec,
    started_at: DateTime<Utc>,
    progress: Arc<Mutex<Progress>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RunHandle {
    /// Starts a run: its thread spawns the group leader, and this returns once it
    /// is up (or with the error that kept it from starting). A spec that already
    /// expired is recorded as finished without starting anything.
    pub async fn start(context: RunContext, spec: LoadRunSpec) -> Result<RunHandle, LoadError> {
        let started_at = Utc::now();
        let remaining = (spec.expires_at - started_at)
            .to_std()
            .unwrap_or_default()
            .min(spec.parameters.duration.as_duration());
        let progress = Arc::new(Mutex::new(Progress {
            state: LoadState::Running,
            live: 0,
            spawned_total: 0,
            last_error: None,
        }));
        if remaining.is_zero() {
            progress.lock().expect("progress lock").state = LoadState::Finished;
            return Ok(RunHandle {
                spec,
                started_at,
                progress,
                stop: None,
                thread: None,
            });
        }
        let (stop, stop_received) = mpsc::channel();
        let (up, is_up) = oneshot::channel();
        let run = RunThread {
            context,
            spec: spec.clone(),
            progress: progress.clone(),
            deadline: Instant::now() + remaining,
        };
        let thread = std::thread::Builder::new()
            .name(format!("load {}", spec.run_id))
            .spawn(move || run.run(stop_received, up))
            .map_err(|source| LoadError::Thread { source })?;
        match is_up.await {
            Ok(Ok(())) => Ok(RunHandle {
                spec,
                started_at,
                progress,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(err)) => {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                Err(err)
            }
            Err(_) => Err(LoadError::ThreadDied),
        }
    }

    /// Whether the run still keeps workers alive.
    pub fn is_running(&self) -> bool {
        self.progress.lock().expect("progress lock").state == LoadState::Running
    }

    /// Stops the run and waits until its whole process group is gone.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && let Err(err) = tokio::task::spawn_blocking(move || thread.join()).await
        {
            tracing::error!(run = %self.spec.run_id, "load run thread failed: {err}");
        }
    }

    /// The run as the host status reports it.
    pub fn status(&self) -> LoadStatus {
        let progress = self.progress.lock().expect("progress lock").clone();
        LoadStatus {
            run_id: self.spec.run_id.clone(),
            owner: self.spec.owner.clone(),
            profile: self.spec.profile,
            spec_hash: self.spec.spec_hash.clone(),
            state: progress.state,
            live_processes: progress.live,
            spawned_total: progress.spawned_total,
            started_at: self.started_at,
            expires_at: self.spec.expires_at,
            last_error: progress.last_error,
        }
    }
}

/// Everything the run thread owns.
struct RunThread {
    context: RunContext,
    spec: LoadRunSpec,
    progress: Arc<Mutex<Progress>>,
    deadline: Instant,
}

impl RunThread {
    fn run(self, stop: mpsc::Receiver<()>, up: oneshot::Sender<Result<(), LoadError>>) {
        let spawner = Spawner::new(&self.context, &self.spec);
        let leader_tag = format!("{}-group", self.spec.run_id);
        let mut group = match spawner.spawn(&leader_tag, self.remaining(), 0, 0, None) {
            Ok(pid) => pid,
            Err(err) => {
                let _ = up.send(Err(err));
                return;
            }
        };
        let _ = up.send(Ok(()));
        tracing::info!(run = %self.spec.run_id, profile = %self.spec.profile, group, "load run started");
        self.notify();

        let p = &self.spec.parameters;
        let mut pacer = Pacer::new(
            p.processes,
            p.spawn_rate,
            self.spec.profile.is_bursty(),
            p.worker_lifetime
                .map_or(Duration::ZERO, HumanDuration::as_duration),
            Instant::now(),
        );
        let mut live: BTreeSet<u32> = BTreeSet::new();
        let mut seq: u64 = 0;
        let mut retry_at: Option<Instant> = None;
        let mut last_published = Instant::now();
        let mut published = (0u32, 0u64);
        let stopped = loop {
            let now = Instant::now();
            if now >= self.deadline {
                break false;
            }
            reap_group(group, &mut live);
            if retry_at.is_none_or(|at| now >= at) {
                retry_at = None;
                let due = pacer.take_due(now, live.len() as u32);
                for _ in 0..due {
                    let tag = format!("{}-{seq}", self.spec.run_id);
                    let lifetime = self.worker_lifetime(seq);
                    let (cpu, memory) = (
                        if p.is_busy(seq) { p.cpu_millicores } else { 0 },
                        p.memory_mib,
                    );
                    match spawner.spawn(&tag, lifetime, cpu, memory, Some(group)) {
                        Ok(pid) => {
                            live.insert(pid);
                            seq += 1;
                        }
                        Err(err) => {
                            // The group may have emptied (its leader killed from
                            // outside, every worker ended): a new leader starts a
                            // new one.
                            if reap_group(group, &mut live) == GroupState::Gone
                                && let Ok(leader) =
                                    spawner.spawn(&leader_tag, self.remaining(), 0, 0, None)
                            {
                                group = leader;
                            }
                            tracing::warn!(run = %self.spec.run_id, "cannot spawn a load worker: {err}");
                            self.progress.lock().expect("progress lock").last_error =
                                Some(err.to_string());
                            retry_at = Some(now + SPAWN_RETRY);
                            break;
                        }
                    }
                }
            }
            let counts = (live.len() as u32, seq);
            {
                let mut progress = self.progress.lock().expect("progress lock");
                progress.live = counts.0;
                progress.spawned_total = counts.1;
            }
            if counts != published && last_published.elapsed() >= PROGRESS_INTERVAL {
                published = counts;
                last_published = Instant::now();
                self.notify();
            }
            let now = Instant::now();
            let wake = pacer
                .next_wake(now)
                .min(now + TICK)
                .min(self.deadline)
                .max(now);
            match stop.recv_timeout(wake - now) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break true,
                Err(RecvTimeoutError::Timeout) => {}
            }
        };

        let killed_at = Instant::now();
        end_group(group, &mut live, self.context.stop_timeout);
        tracing::info!(
            run = %self.spec.run_id,
            spawned = seq,
            reaped_in_ms = killed_at.elapsed().as_millis() as u64,
            "load run {}",
            if stopped { "stopped" } else { "reached its end" }
        );
        {
            let mut progress = self.progress.lock().expect("progress lock");
            progress.state = LoadState::Finished;
            progress.live = 0;
            progress.spawned_total = seq;
        }
        self.notify();
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// How long worker `seq` lives: its lifetime (jittered for profiles that want
    /// it), never past the run's end.
    fn worker_lifetime(&self, seq: u64) -> Duration {
        let remaining = self.remaining();
        let Some(lifetime) = self.spec.parameters.worker_lifetime else {
            return remaining;
        };
        let mut lifetime = lifetime.as_duration();
        if self.spec.profile.jitters_lifetime() {
            // 50% to 150%, spread evenly over consecutive workers.
            let percent = 50 + (seq * 37 % 101) as u32;
            lifetime = lifetime * percent / 100;
        }
        lifetime.min(remaining)
    }

    fn notify(&self) {
        self.context
            .changes
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }
}

/// Starts worker processes of one run.
struct Spawner {
    worker_bin: PathBuf,
    run_id: String,
    state_dir: PathBuf,
    parent: u32,
    /// The agent's own `PHOENIX_*` settings (its token above all), which workers
    /// do not inherit.
    removed_env: Vec<OsString>,
}

impl Spawner {
    fn new(context: &RunContext, spec: &LoadRunSpec) -> Spawner {
        Spawner {
            worker_bin: context.worker_bin.clone(),
            run_id: spec.run_id.clone(),
            state_dir: context.state_dir.clone(),
            parent: std::process::id(),
            removed_env: std::env::vars_os()
                .map(|(name, _)| name)
                .filter(|name| name.to_string_lossy().starts_with("PHOENIX_"))
                .collect(),
        }
    }

    /// Spawns one worker into `group` (or as the leader of a new group) and returns
    /// its pid. The child is reaped by [`reap_group`], not through a `Child`.
    fn spawn(
        &self,
        tag: &str,
        lifetime: Duration,
        cpu_millicores: u32,
        memory_mib: u32,
        group: Option<u32>,
    ) -> Result<u32, LoadError> {
        let args = WorkerArgs {
            run: self.run_id.clone(),
            tag: tag.to_string(),
            parent: self.parent,
            lifetime: HumanDuration(lifetime.max(Duration::from_millis(1))),
            cpu_millicores,
            memory_mib,
        };
        let mut command = Command::new(&self.worker_bin);
        command.args(args.to_args());
        for name in &self.removed_env {
            command.env_remove(name);
        }
        command
            .env(LOAD_STATE_DIR_MARKER, &self.state_dir)
            .env(LOAD_RUN_MARKER, &self.run_id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(group.map_or(0, |g| g as i32));
        let child = command.spawn().map_err(|source| LoadError::Spawn {
            bin: self.worker_bin.clone(),
            source,
        })?;
        Ok(child.id())
    }
}

/// Whether a process group still has children of ours.
#[derive(Debug, PartialEq, Eq)]
enum GroupState {
    Alive,
    Gone,
}

/// Reaps every exited child in `group` without waiting, removing it from `live`.
fn reap_group(group: u32, live: &mut BTreeSet<u32>) -> GroupState {
    let Some(pgid) = i32::try_from(group).ok().and_then(Pid::from_raw) else {
        return GroupState::Gone;
    };
    loop {
        match process::waitpgid(pgid, WaitOptions::NOHANG) {
            Ok(None) => return GroupState::Alive,
            Ok(Some((pid, _))) => {
                if let Ok(pid) = u32::try_from(pid.as_raw_pid()) {
                    live.remove(&pid);
                }
            }
            Err(Errno::INTR) => continue,
            // ECHILD: no child of ours left in the group.
            Err(_) => return GroupState::Gone,
        }
    }
}

/// Ends a run's process group: SIGTERM, up to `grace` for it to exit, SIGKILL, and
/// reaps every member.
fn end_group(group: u32, live: &mut BTreeSet<u32>, grace: Duration) {
    process_group::signal(group, Signal::TERM);
    if wait_for_group(group, live, grace) {
        return;
    }
    tracing::warn!(group, "load workers ignored SIGTERM; sending SIGKILL");
    process_group::signal(group, Signal::KILL);
    if !wait_for_group(group, live, KILL_WAIT) {
        tracing::error!(group, "load workers survived SIGKILL");
    }
}

/// Reaps the group until none of it is left (true) or `limit` passes (false).
fn wait_for_group(group: u32, live: &mut BTreeSet<u32>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if reap_group(group, live) == GroupState::Gone {
            live.clear();
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Decides when to spawn: at most `rate` spawns per second, at most `processes`
/// workers alive; for a bursty profile, `processes` spawns per burst, then wait
/// until all are gone, then quiet for `quiet`, then the next burst.
#[derive(Debug)]
pub struct Pacer {
    processes: u32,
    interval: Duration,
    next_spawn: Instant,
    burst: Option<Burst>,
    quiet: Duration,
}

#[derive(Debug, PartialEq, Eq)]
enum Burst {
    Rising { spawned: u32 },
    Draining,
    Quiet { until: Instant },
}

impl Pacer {
    pub fn new(processes: u32, rate: u32, bursty: bool, quiet: Duration, now: Instant) -> Pacer {
        Pacer {
            processes,
            interval: Duration::from_secs(1) / rate.max(1),
            next_spawn: now,
            burst: bursty.then_some(Burst::Rising { spawned: 0 }),
            quiet,
        }
    }

    /// How many workers to spawn now, with `live` alive; counts them as spawned.
    pub fn take_due(&mut self, now: Instant, live: u32) -> u32 {
        let mut room = self.processes.saturating_sub(live);
        match &mut self.burst {
            None => {}
            Some(Burst::Rising { spawned }) => room = room.min(self.processes - *spawned),
            Some(Burst::Draining) => {
                if live == 0 {
                    self.burst = Some(Burst::Quiet {
                        until: now + self.quiet,
                    });
                }
                return 0;
            }
            Some(Burst::Quiet { until }) => {
                if now < *until {
                    return 0;
                }
                self.burst = Some(Burst::Rising { spawned: 0 });
                self.next_spawn = now;
            }
        }
        if room == 0 {
            // At the cap, spawns are not banked for later.
            self.next_spawn = self.next_spawn.max(now);
            return 0;
        }
        if let Some(earliest) = now.checked_sub(MAX_CATCH_UP) {
            self.next_spawn = self.next_spawn.max(earliest);
        }
        let mut due = 0;
        while due < room && self.next_spawn <= now {
            due += 1;
            self.next_spawn += self.interval;
        }
        if let Some(Burst::Rising { spawned }) = &mut self.burst {
            *spawned += due;
            if *spawned >= self.processes {
                self.burst = Some(Burst::Draining);
            }
        }
        due
    }

    /// When something may next be due (the caller also wakes every tick to reap).
    pub fn next_wake(&self, now: Instant) -> Instant {
        match &self.burst {
            Some(Burst::Quiet { until }) => *until,
            Some(Burst::Draining) => now + TICK,
            None | Some(Burst::Rising { .. }) => self.next_spawn.max(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a pacer for `seconds` in 10 ms steps, with workers that live
    /// `lifetime`; returns the spawn times (in ms).
    fn simulate(mut pacer: Pacer, seconds: u64, lifetime: Duration) -> Vec<u64> {
        let start = Instant::now();
        let mut alive: Vec<Instant> = Vec::new();
        let mut spawns = Vec::new();
        for step in 0..seconds * 100 {
            let now = start + Duration::from_millis(step * 10);
            alive.retain(|&end| end > now);
            let due = pacer.take_due(now, alive.len() as u32);
            for _ in 0..due {
                alive.push(now + lifetime);
                spawns.push(step * 10);
            }
        }
        spawns
    }

    #[test]
    fn keeps_the_rate_and_the_cap() {
        let start = Instant::now();
        // Churn: 25/s of 1 s workers under a cap of 100 is 25/s.
        let churn = simulate(
            Pacer::new(100, 25, false, Duration::ZERO, start),
            10,
            Duration::from_secs(1),
        );
        assert!((249..=251).contains(&churn.len()), "{}", churn.len());
        // The cap binds: 10 workers of 1 s allow 10/s whatever the rate.
        let capped = simulate(
            Pacer::new(10, 100, false, Duration::ZERO, start),
            10,
            Duration::from_secs(1),
        );
        assert!((95..=110).contains(&capped.len()), "{}", capped.len());
        // Workers that never end: exactly `processes`, ramped at the rate.
        let idle = simulate(
            Pacer::new(50, 100, false, Duration::ZERO, start),
            5,
            Duration::from_secs(3600),
        );
        assert_eq!(idle.len(), 50);
        assert!(*idle.last().unwrap() >= 490, "{:?}", idle.last());
    }

    #[test]
    fn bursts_rise_drain_and_rest() {
        let start = Instant::now();
        // 20 workers at 100/s living 2 s, 2 s quiet: a burst every ~4.2 s.
        let spawns = simulate(
            Pacer::new(20, 100, true, Duration::from_secs(2), start),
            10,
            Duration::from_secs(2),
        );
        assert_eq!(spawns.len(), 60, "{spawns:?}");
        assert!(spawns[..20].iter().all(|&ms| ms < 250), "{spawns:?}");
        assert!(spawns[20] >= 4000, "the second burst waits: {spawns:?}");
    }
}
