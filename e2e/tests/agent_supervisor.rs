//! The agent's supervisor against real processes: the stand-in collector (and, where
//! a test needs something the stand-in does not do, a small shell script around it).
//! Each test has its own state directory, and a guard that kills every process
//! carrying that directory's marker when the test ends, passed or failed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use phoenix_agent::procfs;
use phoenix_agent::supervisor::{
    CollectorUser, ConvergeOutcome, OnExit, STATE_DIR_MARKER, Supervisor, SupervisorError,
    SupervisorSettings, collector_dir,
};

/// Collectors run as this user in these tests (the tests run as root, like an agent).
const COLLECTOR_USER_FOR_TESTS: CollectorUser = CollectorUser {
    uid: 65532,
    gid: 65532,
};
use phoenix_wire::agent::{CollectorSpec, CollectorStatus, Health, Variant};
use tokio::time::Instant;

/// How long a test waits for something that should happen within a second or two.
const DEADLINE: Duration = Duration::from_secs(20);

/// A state directory for one test, and the guard that kills whatever processes the
/// test's supervisors started, however the test ends.
struct TestHost {
    state_dir: tempfile::TempDir,
    marker: String,
}

impl TestHost {
    fn new() -> Self {
        let state_dir = tempfile::tempdir().expect("temp state dir");
        let absolute = std::fs::canonicalize(state_dir.path()).expect("canonical state dir");
        let marker = format!("{STATE_DIR_MARKER}={}", absolute.display());
        Self { state_dir, marker }
    }

    fn path(&self) -> &Path {
        self.state_dir.path()
    }

    fn settings(&self, collector_bin: PathBuf) -> SupervisorSettings {
        SupervisorSettings {
            state_dir: self.path().to_path_buf(),
            collector_bin,
            hostfs: "/hostfs-for-test".into(),
            credentials_dir: self.path().join("credentials"),
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            collector_user: Some(COLLECTOR_USER_FOR_TESTS),
        }
    }

    async fn supervisor(&self) -> Supervisor {
        Supervisor::open(self.settings(stand_in()))
            .await
            .expect("open supervisor")
    }

    /// Running processes started with this test's marker.
    fn marked_processes(&self) -> Vec<u32> {
        procfs::all_pids()
            .unwrap()
            .into_iter()
            .filter(|&pid| procfs::environ_contains(pid, &self.marker) && is_running(pid))
            .collect()
    }

    /// Writes an executable shell script into the state dir's parent-free corner.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        for pid in self.marked_processes() {
            let group = procfs::read_stat(pid).map(|s| s.process_group).unwrap_or(0);
            // SAFETY: plain signal sends; stale ids yield ESRCH.
            unsafe {
                if group > 1 {
                    libc::killpg(group, libc::SIGKILL);
                }
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

fn stand_in() -> PathBuf {
    phoenix_e2e::bins::binary("stand-in-collector")
}

fn spec(collector_id: &str, config: &str) -> CollectorSpec {
    let env: BTreeMap<String, String> =
        [("PHOENIX_VAR_CPU_THRESHOLD".into(), "0.05".into())].into();
    CollectorSpec::new(
        collector_id.into(),
        "exp".into(),
        Variant::Candidate,
        "process-topk".into(),
        config,
        env,
    )
}

/// What the supervisor writes for `spec`: its config, checked, as canonical JSON.
fn canonical(spec: &CollectorSpec) -> String {
    phoenix_wire::policy::check(&spec.config, &spec.env, &Default::default())
        .unwrap()
        .canonical()
}

fn is_running(pid: u32) -> bool {
    procfs::read_stat(pid).is_ok_and(|stat| stat.is_running())
}

/// Running processes in the process group `group`.
fn group_members(group: u32) -> Vec<u32> {
    procfs::all_pids()
        .unwrap()
        .into_iter()
        .filter(|&pid| {
            procfs::read_stat(pid).is_ok_and(|s| s.is_running() && s.process_group == group as i32)
        })
        .collect()
}

fn environment(pid: u32) -> BTreeMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|&b| b == 0)
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            let (name, value) = text.split_once('=')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// Polls `check` until it returns `Some`, failing the test after [`DEADLINE`].
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn healthy_status(supervisor: &Supervisor, id: &str) -> CollectorStatus {
    eventually(&format!("{id} is healthy"), || {
        supervisor
            .status(id)
            .filter(|s| s.health == Health::Healthy && s.pid.is_some())
    })
    .await
}

#[tokio::test]
async fn start_runs_a_healthy_collector_with_its_config_and_ports() {
    let host = TestHost::new();
    let supervisor = host.supervisor().await;
    let spec = spec("exp.candidate", "receivers: {}\n# start test\n");

    let outcome = supervisor.converge(spec.clone()).await.unwrap();
    assert_eq!(outcome, ConvergeOutcome::Started);

    let status = supervisor.status("exp.candidate").unwrap();
    assert_eq!(status.health, Health::Healthy, "a start acks once healthy");
    assert_eq!(status.config_hash, spec.config_hash);
    assert_eq!(status.restarts, 0);
    let pid = status.pid.unwrap();
    assert!(is_running(pid));
    assert!(status.rss_bytes > 0, "RSS is read from /proc");

    let dir = collector_dir(supervisor.state_dir(), "exp.candidate");
    assert_eq!(
        std::fs::read_to_string(dir.join("config.yaml")).unwrap(),
        canonical(&spec),
        "the collector gets the checked config, as canonical JSON"
    );
    let log = std::fs::read_to_string(dir.join("collector.log")).unwrap();
    assert!(
        log.contains("stand-in collector"),
        "stdout goes to the log: {log}"
    );

    let ports = supervisor.ports("exp.candidate").unwrap();
    assert_ne!(ports.health, ports.telemetry);
    let env = environment(pid);
    assert_eq!(env["PHOENIX_HEALTH_PORT"], ports.health.to_string());
    assert_eq!(env["PHOENIX_TELEMETRY_PORT"], ports.telemetry.to_string());
    assert_eq!(env["PHOENIX_HOSTFS"], "/hostfs-for-test");
    assert_eq!(env["PHOENIX_VAR_CPU_THRESHOLD"], "0.05");
    assert_eq!(
        env[STATE_DIR_MARKER],
        supervisor.state_dir().display().to_string()
    );
    let foreign: Vec<&String> = env.keys().filter(|k| !k.starts_with("PHOENIX_")).collect();
    assert!(
        foreign.is_empty(),
        "nothing of the agent's environment reaches a collector: {foreign:?}"
    );

    // Its own process group, recorded in state.json with its start time.
    assert_eq!(procfs::read_stat(pid).unwrap().process_group, pid as i32);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.path().join("state.json")).unwrap()).unwrap();
    let recorded = &state["collectors"][0];
    assert_eq!(recorded["pid"], pid);
    assert_eq!(
        recorded["pidStartTime"],
        procfs::read_stat(pid).unwrap().start_time
    );
    assert_eq!(recorded["ports"]["health"], ports.health);

    supervisor.shutdown(OnExit::StopCollectors).await;
    assert!(host.marked_processes().is_empty());
}

#[tokio::test]
async fn the_same_hash_twice_is_a_no_op_and_a_new_hash_replaces_the_process() {
    let host = TestHost::new();
    let supervisor = host.supervisor().await;
    let first = spec("exp.baseline", "receivers: {}\n# v1\n");
    supervisor.converge(first.clone()).await.unwrap();
    let first_pid = supervisor.status("exp.baseline").unwrap().pid.unwrap();
    let ports = supervisor.ports("exp.baseline").unwrap();

    let again = supervisor.converge(first.clone()).await.unwrap();
    assert_eq!(again, ConvergeOutcome::Unchanged);
    assert_eq!(
        supervisor.status("exp.baseline").unwrap().pid,
        Some(first_pid)
    );

    let second = spec("exp.baseline", "receivers: {}\n# v2\n");
    assert_ne!(first.config_hash, second.config_hash);
    let replaced = supervisor.converge(second.clone()).await.unwrap();
    assert_eq!(replaced, ConvergeOutcome::Replaced);
    let status = supervisor.status("exp.baseline").unwrap();
    assert_eq!(status.config_hash, second.config_hash);
    assert_eq!(status.health, Health::Healthy);
    let second_pid = status.pid.unwrap();
    assert_ne!(second_pid, first_pid);
    assert!(!is_running(first_pid), "the old process was stopped");
    assert!(is_running(second_pid));
    assert_eq!(
        supervisor.ports("exp.baseline").unwrap(),
        ports,
        "an update keeps the collector's ports"
    );
    let config = std::fs::read_to_string(
        collector_dir(supervisor.state_dir(), "exp.baseline").join("config.yaml"),
    )
    .unwrap();
    assert_eq!(config, canonical(&second));

    supervisor.shutdown(OnExit::StopCollectors).await;
}

#[tokio::test]
async fn stop_terminates_the_whole_process_group_and_forgets_the_collector() {
    let host = TestHost::new();
    // A collector with a child of its own, in its process group.
    let bin = host.script(
        "collector-with-child.sh",
        &format!("sleep 1000 &\nexec '{}' \"$@\"", stand_in().display()),
    );
    let supervisor = Supervisor::open(host.settings(bin)).await.unwrap();
    supervisor
        .converge(spec("exp.candidate", "receivers: {}\n"))
        .await
        .unwrap();
    let pid = supervisor.status("exp.candidate").unwrap().pid.unwrap();
    let members = eventually("the collector's child runs", || {
        Some(group_members(pid)).filter(|m| m.len() >= 2)
    })
    .await;

    supervisor.stop("exp.candidate").await.unwrap();
    eventually("every process of the group is gone", || {
        members.iter().all(|&m| !is_running(m)).then_some(())
    })
    .await;
    assert!(group_members(pid).is_empty());
    assert!(supervisor.status("exp.candidate").is_none());
    assert!(!collector_dir(supervisor.state_dir(), "exp.candidate").exists());
    let state = std::fs::read_to_string(host.path().join("state.json")).unwrap();
    assert!(!state.contains("exp.candidate"), "{state}");

    // Stopping what is not running is fine.
    supervisor.stop("exp.candidate").await.unwrap();
    supervisor.stop("never-started").await.unwrap();
}

#[tokio::test]
async fn a_collector_killed_with_sigkill_is_restarted() {
    let host = TestHost::new();
    let supervisor = host.supervisor().await;
    supervisor
        .converge(spec("exp.candidate", "receivers: {}\n"))
        .await
        .unwrap();
    let pid = supervisor.status("exp.candidate").unwrap().pid.unwrap();
    let mut changes = supervisor.subscribe();
    changes.borrow_and_update();

    // SAFETY: a plain signal send to the process we just started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };

    let restarted = eventually("the collector is restarted and healthy", || {
        supervisor
            .status("exp.candidate")
            .filter(|s| s.restarts == 1 && s.health == Health::Healthy && s.pid != Some(pid))
    })
    .await;
    assert!(is_running(restarted.pid.unwrap()));
    let last_error = restarted.last_error.unwrap();
    assert!(last_error.contains("signal: 9"), "{last_error}");
    assert!(changes.has_changed().unwrap(), "status watchers were told");

    supervisor.shutdown(OnExit::StopCollectors).await;
}

#[tokio::test]
async fn a_config_the_collector_rejects_fails_the_start_with_its_error_text() {
    let host = TestHost::new();
    let supervisor = host.supervisor().await;
    let err = supervisor
        .converge(spec(
            "exp.candidate",
            "processors: {transform/stand-in-fail-start: {}}\n",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SupervisorError::StartFailed { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("Error: invalid configuration: stand-in asked to fail"),
        "{text}"
    );
    assert!(text.contains("exit status: 1"), "{text}");

    assert!(supervisor.status("exp.candidate").is_none(), "forgotten");
    assert!(host.marked_processes().is_empty(), "no process left");
    let state = std::fs::read_to_string(host.path().join("state.json")).unwrap();
    assert!(!state.contains("exp.candidate"), "{state}");
}

/// Collector processes of this test (process group leaders with its marker).
fn collector_count(host: &TestHost) -> usize {
    host.marked_processes()
        .into_iter()
        .filter(|&pid| procfs::read_stat(pid).is_ok_and(|s| s.process_group == pid as i32))
        .count()
}

/// Last known good, at the start health check: an update the collector rejects
/// fails its task with the collector's error and what the agent did, and the
/// collector runs its previous config again, reporting both.
#[tokio::test]
async fn an_update_that_fails_its_start_goes_back_to_the_last_known_good() {
    let host = TestHost::new();
    let supervisor = host.supervisor().await;
    let good = spec("standing.web", "receivers: {}\n");
    supervisor.converge(good.clone()).await.unwrap();
    let bad = spec(
        "standing.web",
        "processors: {transform/stand-in-fail-start: {}}\n",
    );
    let text = supervisor
        .converge(bad.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("stand-in asked to fail"), "{text}");
    assert!(
        text.contains(&format!(
            "went back from config {} (process-topk) to its last known good config {}",
            bad.config_hash, good.config_hash
        )),
        "{text}"
    );
    let status = healthy_status(&supervisor, "standing.web").await;
    assert_eq!(status.config_hash, good.config_hash, "runs the good config");
    let rolled = status.rolled_back_from.expect("reports what it left");
    assert_eq!(rolled.config_hash, bad.config_hash);
    assert!(
        rolled.error.contains("stand-in asked to fail"),
        "{rolled:?}"
    );
    let written =
        std::fs::read_to_string(collector_dir(host.path(), "standing.web").join("config.yaml"))
            .unwrap();
    assert_eq!(
        written,
        canonical(&good),
        "the good config is on disk again"
    );
    assert_eq!(collector_count(&host), 1, "one collector process");
    supervisor.shutdown(OnExit::StopCollectors).await;
}

/// Last known good, after a crash loop: an update that starts healthy and then
/// keeps exiting goes back to the previous config after three exits; the rollback
/// (and, before it, the trial) is in state.json, so a restarted agent adopts the
/// good process and still reports what it went back from.
#[tokio::test]
async fn an_update_that_crash_loops_goes_back_and_a_restarted_agent_remembers() {
    let host = TestHost::new();
    let supervisor = host.supervisor().await;
    let good = spec("standing.web", "receivers: {}\n");
    supervisor.converge(good.clone()).await.unwrap();
    let crashing = spec(
        "standing.web",
        "processors: {transform/stand-in-crash-after-start: {}}\n",
    );
    assert_eq!(
        supervisor.converge(crashing.clone()).await.unwrap(),
        ConvergeOutcome::Replaced,
        "it starts healthy"
    );
    let state = std::fs::read_to_string(host.path().join("state.json")).unwrap();
    assert!(
        state.contains("\"trial\""),
        "the trial is recorded: {state}"
    );
    let status = eventually("it went back to the good config", || {
        supervisor
            .status("standing.web")
            .filter(|s| s.config_hash == good.config_hash && s.health == Health::Healthy)
    })
    .await;
    let rolled = status.rolled_back_from.expect("reports what it left");
    assert_eq!(rolled.config_hash, crashing.config_hash);
    assert!(
        rolled
            .error
            .contains("crash-looped (3 exits since the update)")
            && rolled.error.contains("stand-in crashed after start"),
        "{rolled:?}"
    );
    let pid = status.pid.unwrap();
    // Stays on the good config.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = supervisor.status("standing.web").unwrap();
    assert_eq!((later.pid, later.health), (Some(pid), Health::Healthy));

    supervisor.shutdown(OnExit::LeaveRunning).await;
    let restarted = host.supervisor().await;
    let adopted = restarted.status("standing.web").expect("adopted");
    assert_eq!(adopted.pid, Some(pid), "the same process");
    assert_eq!(adopted.config_hash, good.config_hash);
    assert_eq!(
        adopted.rolled_back_from.map(|r| r.config_hash),
        Some(crashing.config_hash),
        "remembered across the agent's restart"
    );
    restarted.shutdown(OnExit::StopCollectors).await;
    assert!(host.marked_processes().is_empty());
}

#[tokio::test]
async fn a_collector_that_never_becomes_healthy_is_stopped_after_the_start_timeout() {
    let host = TestHost::new();
    let bin = host.script(
        "never-healthy.sh",
        "echo 'starting, slowly'\nexec sleep 1000",
    );
    let mut settings = host.settings(bin);
    settings.start_timeout = Duration::from_secs(1);
    let supervisor = Supervisor::open(settings).await.unwrap();
    let text = supervisor
        .converge(spec("exp.candidate", "receivers: {}\n"))
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("did not become healthy within 1s"), "{text}");
    assert!(text.contains("starting, slowly"), "{text}");
    assert!(supervisor.status("exp.candidate").is_none());
    assert!(host.marked_processes().is_empty(), "no process left");
}

#[tokio::test]
async fn a_new_supervisor_adopts_recorded_collectors_and_reaps_orphans() {
    let host = TestHost::new();
    let first = host.supervisor().await;
    first
        .converge(spec("exp.baseline", "receivers: {}\n"))
        .await
        .unwrap();
    first
        .converge(spec("exp.candidate", "receivers: {}\n# candidate\n"))
        .await
        .unwrap();
    let baseline_pid = first.status("exp.baseline").unwrap().pid.unwrap();
    let candidate_pid = first.status("exp.candidate").unwrap().pid.unwrap();
    let ports = first.ports("exp.baseline").unwrap();
    first.shutdown(OnExit::LeaveRunning).await;
    assert!(
        is_running(baseline_pid),
        "shutdown leaves collectors running"
    );

    // The candidate dies while no agent runs; it must be started again.
    // SAFETY: a plain signal send to a process this test started.
    unsafe { libc::kill(candidate_pid as i32, libc::SIGKILL) };
    eventually("the candidate is dead", || {
        (!is_running(candidate_pid)).then_some(())
    })
    .await;

    // A process carrying the marker that no record explains: an orphan.
    let mut orphan = std::process::Command::new("sleep")
        .arg("1000")
        .env(STATE_DIR_MARKER, supervisor_dir(&host))
        .process_group(0)
        .spawn()
        .unwrap();

    let second = host.supervisor().await;
    let adopted = healthy_status(&second, "exp.baseline").await;
    assert_eq!(adopted.pid, Some(baseline_pid), "the same process is kept");
    assert_eq!(second.ports("exp.baseline").unwrap(), ports);

    let restarted = healthy_status(&second, "exp.candidate").await;
    assert_ne!(restarted.pid, Some(candidate_pid));

    let orphan_status = eventually("the orphan is killed", || orphan.try_wait().unwrap()).await;
    assert!(!orphan_status.success());
    let mut processes = host.marked_processes();
    processes.sort();
    let mut expected = vec![baseline_pid, restarted.pid.unwrap()];
    expected.sort();
    assert_eq!(processes, expected, "exactly the recorded collectors run");

    // An adopted collector that dies is restarted as the new supervisor's own child.
    // SAFETY: a plain signal send to a process this test started.
    unsafe { libc::kill(baseline_pid as i32, libc::SIGKILL) };
    let again = eventually("the adopted collector is restarted", || {
        second
            .status("exp.baseline")
            .filter(|s| s.restarts == 1 && s.health == Health::Healthy)
    })
    .await;
    assert_ne!(again.pid, Some(baseline_pid));

    second.shutdown(OnExit::StopCollectors).await;
    assert!(host.marked_processes().is_empty());
}

/// Kills and reaps a child process when dropped (the agent under test).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` on a loopback port; the whole response, or `None` if nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[tokio::test]
async fn the_agent_binary_adopts_collectors_and_keeps_them_while_the_api_is_down() {
    let host = TestHost::new();
    let supervisor = host.supervisor().await;
    supervisor
        .converge(spec("exp.baseline", "receivers: {}\n"))
        .await
        .unwrap();
    let pid = supervisor.status("exp.baseline").unwrap().pid.unwrap();
    supervisor.shutdown(OnExit::LeaveRunning).await;

    let log_path = host.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut agent = KillOnDrop(
        std::process::Command::new(phoenix_e2e::bins::binary("phoenix-agent"))
            // Port 1 refuses connections at once: the API is down for the whole test.
            .args(["--api-url", "http://127.0.0.1:1"])
            .env("PHOENIX_AGENT_TOKEN", "test-token")
            .args(["--host-id", "test-host"])
            .arg("--state-dir")
            .arg(host.path())
            .arg("--collector-bin")
            .arg(stand_in())
            .args(["--listen", "127.0.0.1:0"])
            .args(["--heartbeat-interval", "1s", "--dev"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // The agent logs the address it bound for /metrics.
    let metrics_port: u16 = eventually("the agent logs its metrics address", || {
        let log = std::fs::read_to_string(&log_path).ok()?;
        let address = log.split("metrics=").nth(1)?.split_whitespace().next()?;
        address.rsplit(':').next()?.parse().ok()
    })
    .await;
    let metrics = eventually(
        "the agent reports the adopted collector and API errors",
        || {
            http_get(metrics_port, "/metrics").filter(|m| {
                m.contains(r#"phoenix_agent_collectors{health="healthy"} 1"#)
                    // It keeps trying to register (its first status report); it
                    // polls for tasks only once that was answered.
                    && m.contains(
                        r#"phoenix_agent_api_errors_total{endpoint="status",kind="transport"}"#,
                    )
            })
        },
    )
    .await;
    assert!(metrics.contains(r#"phoenix_agent_collector_restarts{collector_id="exp.baseline"} 0"#));
    assert!(
        http_get(metrics_port, "/healthz")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        is_running(pid),
        "the API being down never stops a collector"
    );

    // SAFETY: a plain signal send to the agent this test started.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let exit = eventually("the agent exits", || agent.0.try_wait().unwrap()).await;
    assert!(exit.success(), "{exit}");
    assert!(
        is_running(pid),
        "the agent leaves collectors running on exit"
    );
    let log = std::fs::read_to_string(host.path().join("agent.log")).unwrap();
    assert!(log.contains("adopting running collector"), "{log}");
}

/// The canonical state dir, as the supervisor writes it into the marker.
fn supervisor_dir(host: &TestHost) -> PathBuf {
    std::fs::canonicalize(host.path()).unwrap()
}

/// `Uid:` and `CapEff:`/`CapAmb:` of `/proc/<pid>/status`.
fn identity(pid: u32) -> (String, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_string()
    };
    let caps = |name: &str| u64::from_str_radix(&field(name), 16).unwrap();
    (field("Uid:"), caps("CapEff:"), caps("CapAmb:"))
}

#[tokio::test]
async fn collectors_run_unprivileged_with_only_the_scrapers_capabilities() {
    let host = TestHost::new();
    let supervisor = host.supervisor().await;
    supervisor
        .converge(spec("exp.candidate", "receivers: {}\n"))
        .await
        .unwrap();
    let pid = supervisor.status("exp.candidate").unwrap().pid.unwrap();
    let (uid, effective, ambient) = identity(pid);
    let expected = COLLECTOR_USER_FOR_TESTS.uid;
    assert_eq!(
        uid,
        format!("{expected}\t{expected}\t{expected}\t{expected}"),
        "real, effective, saved and filesystem uid"
    );
    // CAP_DAC_READ_SEARCH is bit 2, CAP_SYS_PTRACE bit 19.
    let scraper_caps = (1u64 << 2) | (1u64 << 19);
    assert_eq!(
        effective, scraper_caps,
        "effective capabilities {effective:x}"
    );
    assert_eq!(ambient, scraper_caps, "ambient capabilities {ambient:x}");
    // Its directory is its own; nothing above it is writable for it.
    let dir = collector_dir(supervisor.state_dir(), "exp.candidate");
    let meta = std::fs::metadata(&dir).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.uid(), expected);
    let state_mode = std::fs::metadata(supervisor.state_dir()).unwrap().mode() & 0o777;
    assert_eq!(state_mode, 0o711, "state dir {state_mode:o}");
    supervisor.shutdown(OnExit::StopCollectors).await;
}

#[tokio::test]
async fn a_config_the_policy_refuses_starts_nothing_and_says_where() {
    let host = TestHost::new();
    let supervisor = host.supervisor().await;
    let err = supervisor
        .converge(spec(
            "exp.candidate",
            "exporters:\n  otlp_http/x: {endpoint: 'http://198.51.100.7:4318'}\n",
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, SupervisorError::Refused { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("`exporters.otlp_http/x.endpoint`"), "{text}");
    let mut leaky = spec("exp.candidate", "receivers: {}\n");
    leaky.env.insert("LD_PRELOAD".into(), "/tmp/evil.so".into());
    let err = supervisor.converge(leaky).await.unwrap_err();
    assert!(err.to_string().contains("env.LD_PRELOAD"), "{err}");
    assert!(supervisor.status("exp.candidate").is_none());
    assert!(host.marked_processes().is_empty(), "nothing was started");
}
