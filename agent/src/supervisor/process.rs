//! One collector process: starting it (config file, environment, log file, its own
//! process group), noticing that it exited, stopping its whole process group, and
//! reading the end of its log for error messages.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use phoenix_wire::agent::CollectorSpec;
use phoenix_wire::destination::CredentialRef;
use phoenix_wire::policy;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::{SupervisorError, SupervisorSettings, privilege};
use crate::ports::CollectorPorts;
use crate::process_group::{self, Signal};
use crate::procfs;
use crate::state::write_atomically;

/// The environment variable every collector is started with, set to the agent's
/// absolute state directory. It marks the processes an agent owns, so that an agent
/// that restarts can find and kill the ones it no longer supervises.
pub const STATE_DIR_MARKER: &str = "PHOENIX_AGENT_STATE_DIR";

/// How many lines of a collector's log an error message quotes.
const LOG_TAIL_LINES: usize = 20;
/// Logs larger than this are moved to `collector.log.1` when the collector starts.
const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// How often a stopping process is checked for having exited, when it is not our child.
const EXIT_POLL: Duration = Duration::from_millis(100);
/// How long a process group may take to vanish after SIGKILL before we give up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// `<state-dir>/collectors/<collector-id>`: the collector's config and log.
pub fn collector_dir(state_dir: &Path, collector_id: &str) -> PathBuf {
    state_dir.join("collectors").join(collector_id)
}

/// A collector process that is (or was, until we look) running.
pub struct RunningProcess {
    pid: u32,
    /// Field 22 of `/proc/<pid>/stat`; `None` only if it exited before we looked.
    start_time: Option<u64>,
    log_path: PathBuf,
    /// Where this run's output starts in the log.
    log_offset: u64,
    owner: Owner,
}

/// Who reaps the process.
enum Owner {
    /// Started by this agent: we reap it.
    Us(Box<Child>),
    /// Started by an earlier agent and found still running: not our child, so it is
    /// watched through `/proc`, and its new parent reaps it.
    EarlierAgent { start_time: u64 },
}

impl RunningProcess {
    /// A process an earlier agent started, found running with the recorded start time.
    pub fn adopted(pid: u32, start_time: u64, log_path: PathBuf) -> Self {
        Self {
            pid,
            start_time: Some(start_time),
            log_path,
            log_offset: 0,
            owner: Owner::EarlierAgent { start_time },
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn start_time(&self) -> Option<u64> {
        self.start_time
    }

    /// If the process has exited, how it ended (reaping it when it is our child).
    pub fn exit_description(&mut self) -> Option<String> {
        match &mut self.owner {
            Owner::Us(child) => match child.try_wait() {
                Ok(Some(status)) => Some(format!("exited with {status}")),
                Ok(None) => None,
                Err(err) => Some(format!("could not be waited for: {err}")),
            },
            Owner::EarlierAgent { start_time } => {
                (!procfs::is_same_process_running(self.pid, *start_time)).then(|| {
                    "exited (exit status unknown: it was started by an earlier agent)".into()
                })
            }
        }
    }

    /// The last lines this run of the process wrote to its log.
    pub fn log_tail(&self) -> String {
        read_log_tail(&self.log_path, self.log_offset)
    }

    /// Stops the process and everything in its process group: SIGTERM, up to `grace`
    /// to exit, then SIGKILL. Our own child is reaped.
    pub async fn terminate(self, grace: Duration) {
        let pid = self.pid;
        process_group::signal(pid, Signal::TERM);
        match self.owner {
            Owner::Us(mut child) => {
                if tokio::time::timeout(grace, child.wait()).await.is_err() {
                    tracing::warn!(
                        pid,
                        "collector ignored SIGTERM for {grace:?}; sending SIGKILL"
                    );
                    process_group::signal(pid, Signal::KILL);
                    if let Err(err) = child.wait().await {
                        tracing::error!(pid, "could not reap the collector: {err}");
                    }
                }
            }
            Owner::EarlierAgent { start_time } => {
                let exited = || !procfs::is_same_process_running(pid, start_time);
                if !wait_until(exited, grace).await {
                    tracing::warn!(
                        pid,
                        "collector ignored SIGTERM for {grace:?}; sending SIGKILL"
                    );
                    process_group::signal(pid, Signal::KILL);
                    wait_until(exited, KILL_WAIT).await;
                }
            }
        }
        kill_leftovers(pid);
    }
}

/// Kills whatever is left in the process group `pgid` after its leader exited (a
/// collector's own children). The group id cannot have been reused yet: pids are
/// handed out cyclically, and the leader was reaped moments ago.
pub fn kill_leftovers(pgid: u32) {
    process_group::signal(pgid, Signal::KILL);
}

/// Polls `done` until it holds or `limit` passes; returns whether it held.
pub async fn wait_until(mut done: impl FnMut() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

/// Checks the spec against the template policy, writes the checked config to
/// `<collector dir>/config.yaml` (as canonical JSON, so the collector reads exactly
/// what was checked), and starts `<collector-bin> --config=<that file>` in its own
/// process group: with an empty environment plus the spec's variables, the ports,
/// the host filesystem and the state-dir marker; as the collector user when one is
/// set (see [`super::privilege`]), owning only its own directory; its output
/// appended to `<collector dir>/collector.log`.
pub fn spawn(
    settings: &SupervisorSettings,
    spec: &CollectorSpec,
    ports: CollectorPorts,
) -> Result<RunningProcess, SupervisorError> {
    let mut env = spec.env.clone();
    let refused = |refusal| SupervisorError::Refused {
        collector_id: spec.collector_id.clone(),
        refusal,
    };
    policy::check_environment(&env).map_err(refused)?;
    env.insert("PHOENIX_HEALTH_PORT".into(), ports.health.to_string());
    env.insert("PHOENIX_TELEMETRY_PORT".into(), ports.telemetry.to_string());
    env.insert("PHOENIX_HOSTFS".into(), settings.hostfs.clone());
    for credential in &spec.credentials {
        let value = read_credential(&settings.credentials_dir, credential).map_err(|reason| {
            SupervisorError::Credential {
                collector_id: spec.collector_id.clone(),
                variable: credential.variable.clone(),
                reason,
            }
        })?;
        env.insert(credential.variable.clone(), value);
    }
    let checked = policy::check(&spec.config, &env, &spec.allowances()).map_err(refused)?;

    let dir = collector_dir(&settings.state_dir, &spec.collector_id);
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SupervisorError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    if let Some(user) = settings.collector_user {
        let owner = std::fs::metadata(&dir).map_err(io_error(&dir))?.uid();
        if owner != user.uid {
            // Mode first: once the directory is the collector's, changing it would
            // need CAP_FOWNER, which the agent's container does not have.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io_error(&dir))?;
            std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
                .map_err(io_error(&dir))?;
        }
    }
    let config_path = dir.join("config.yaml");
    write_atomically(&config_path, checked.canonical().as_bytes())
        .map_err(io_error(&config_path))?;

    let log_path = dir.join("collector.log");
    let log = open_log(&log_path).map_err(io_error(&log_path))?;
    let log_offset = log.metadata().map_err(io_error(&log_path))?.len();
    let log_for_stderr = log.try_clone().map_err(io_error(&log_path))?;

    let mut command = Command::new(&settings.collector_bin);
    command
        .arg(format!("--config={}", config_path.display()))
        // Nothing of the agent's environment (its token above all) reaches a collector.
        .env_clear()
        .envs(&env)
        .env(STATE_DIR_MARKER, &settings.state_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr)
        .process_group(0)
        .kill_on_drop(false);
    if let Some(user) = settings.collector_user {
        // SAFETY: the closure runs in the forked child before exec and only makes
        // system calls through rustix: no allocation, no lock.
        unsafe {
            command.pre_exec(move || privilege::become_collector_user(user));
        }
    }
    let child = command.spawn().map_err(|source| SupervisorError::Spawn {
        bin: settings.collector_bin.clone(),
        source,
    })?;
    let pid = child.id().expect("a just-spawned child has a pid");
    // Read before anything could reap it; None only if it already exited.
    let start_time = procfs::read_stat(pid).ok().map(|stat| stat.start_time);
    Ok(RunningProcess {
        pid,
        start_time,
        log_path,
        log_offset,
        owner: Owner::Us(Box::new(child)),
    })
}

/// The value of a destination's credential: a file inside `dir` (without its
/// trailing newline) or one of the agent's own environment variables (never a
/// `PHOENIX_*` one). Errors name the reference, never a value.
fn read_credential(dir: &Path, credential: &CredentialRef) -> Result<String, String> {
    if !credential.variable.starts_with(policy::CREDENTIAL_PREFIX) {
        return Err(format!(
            "`{}` is not a credential variable",
            credential.variable
        ));
    }
    match (&credential.file, &credential.env) {
        (Some(file), None) => {
            let relative = Path::new(file);
            let inside = relative
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !inside {
                return Err(format!("`{file}` is not a path inside {}", dir.display()));
            }
            let path = dir.join(relative);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("file {}: {e}", path.display()))?;
            Ok(text.trim_end_matches(['\n', '\r']).to_string())
        }
        (None, Some(name)) if !name.starts_with("PHOENIX_") => std::env::var(name)
            .map_err(|_| format!("the agent has no environment variable `{name}`")),
        (None, Some(name)) => Err(format!("`{name}` is one of the agent's own variables")),
        _ => Err("a credential names exactly one of a file and an environment variable".into()),
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    if std::fs::metadata(path).is_ok_and(|meta| meta.len() > LOG_ROTATE_BYTES) {
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        std::fs::rename(path, rotated)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// The last [`LOG_TAIL_LINES`] lines of the log after `offset`, trimmed.
pub fn read_log_tail(path: &Path, offset: u64) -> String {
    const MAX_BYTES: u64 = 16 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = offset.max(len.saturating_sub(MAX_BYTES)).min(len);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let first = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[first..].join("\n").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_reads_only_this_run_and_at_most_twenty_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.log");
        std::fs::write(&path, "old run\n").unwrap();
        let offset = std::fs::metadata(&path).unwrap().len();
        let lines: Vec<String> = (1..=30).map(|i| format!("line {i}")).collect();
        std::fs::write(&path, format!("old run\n{}\n", lines.join("\n"))).unwrap();
        let tail = read_log_tail(&path, offset);
        assert!(!tail.contains("old run"));
        assert!(tail.starts_with("line 11\n"), "{tail}");
        assert!(tail.ends_with("line 30"), "{tail}");
        assert_eq!(read_log_tail(&dir.path().join("missing"), 0), "");
    }
}
