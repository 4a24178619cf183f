//! Load simulation end to end, with real processes: the real api and reconciler on
//! a real Postgres, real `phoenix-agent` processes, and the worker processes they
//! spawn, counted in `/proc`.
//!
//! The tests run one at a time ([`SERIAL`]): they count processes machine-wide and
//! measure a spawn rate, which a neighbouring load test would disturb. Every agent
//! is killed when its test ends, pass or fail, and its workers die with it (and
//! are killed by the harness if they did not). The numbers each test measures are
//! printed (`cargo test -- --nocapture` shows them).

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{
    AgentProcess, OPERATOR_TOKEN, Stack, VIEWER_TOKEN, eventually, is_zombie, live_process_count,
    load_processes_of,
};
use phoenix_wire::load::{LoadHostState, LoadSim, LoadSimPhase};
use phoenix_wire::problem::Problem;
use phoenix_wire::view::{Host, List, Phase};
use reqwest::Method;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

/// One load test at a time in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn wait_for_host(stack: &Stack, host_id: &str) {
    eventually(&format!("host {host_id} to register"), WAIT, || async {
        let response = stack
            .request(Method::GET, "/api/v1/hosts", VIEWER_TOKEN)
            .send()
            .await
            .ok()?;
        let hosts: List<Host> = response.json().await.ok()?;
        hosts
            .items
            .iter()
            .any(|h| h.host_id == host_id)
            .then_some(())
    })
    .await;
}

/// `POST /api/v1/loadsims` as an operator: the status and the body.
async fn start(stack: &Stack, body: serde_json::Value) -> (u16, String) {
    let response = stack
        .request(Method::POST, "/api/v1/loadsims", OPERATOR_TOKEN)
        .json(&body)
        .send()
        .await
        .expect("start request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

async fn start_ok(stack: &Stack, body: serde_json::Value) -> LoadSim {
    let (status, text) = start(stack, body).await;
    assert_eq!(status, 201, "start failed: {text}");
    serde_json::from_str(&text).expect("loadsim json")
}

async fn get(stack: &Stack, name: &str) -> LoadSim {
    let response = stack
        .request(
            Method::GET,
            &format!("/api/v1/loadsims/{name}"),
            VIEWER_TOKEN,
        )
        .send()
        .await
        .expect("get loadsim");
    assert_eq!(response.status(), 200, "get {name}");
    response.json().await.expect("loadsim json")
}

async fn stop(stack: &Stack, name: &str) -> LoadSim {
    let response = stack
        .request(
            Method::DELETE,
            &format!("/api/v1/loadsims/{name}"),
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .expect("stop loadsim");
    assert_eq!(response.status(), 200, "stop {name}");
    response.json().await.expect("loadsim json")
}

/// Workers (not group leaders) of `run` alive on `agent`.
fn workers(agent: &AgentProcess, run: &str) -> Vec<u32> {
    agent
        .load_processes()
        .into_iter()
        .filter(|p| p.run == run && !p.is_group_leader())
        .map(|p| p.pid)
        .collect()
}

/// Waits until `agent` has no load process at all; returns how long that took.
async fn wait_for_no_load(agent: &AgentProcess, what: &str) -> Duration {
    let started = Instant::now();
    let deadline = started + WAIT;
    loop {
        let left = agent.load_processes();
        if left.is_empty() {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{} load processes remain {what}; agent log:\n{}",
            left.len(),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_cardinality_adds_n_processes_with_unique_command_lines_and_stop_removes_them() {
    let _serial = SERIAL.lock().await;
    const N: usize = 1000;
    let stack = Stack::start().await;
    let agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    wait_for_host(&stack, "web-1").await;

    let before = live_process_count();
    let started = Instant::now();
    let run = start_ok(
        &stack,
        json!({"name": "hc", "hosts": {"selector": {"role": "web"}},
               "profile": "high-cardinality", "processes": N, "duration": "10m"}),
    )
    .await;
    assert_eq!(run.target_hosts, ["web-1"]);
    assert_eq!(run.parameters.spawn_rate, 200, "the profile's default");

    let (grown, took) = eventually("N more processes in /proc", WAIT, || async {
        let grown = live_process_count().saturating_sub(before);
        (grown >= N && workers(&agent, "run.hc").len() == N).then(|| (grown, started.elapsed()))
    })
    .await;
    let load = agent.load_processes();
    let tags: BTreeSet<&str> = load.iter().map(|p| p.tag.as_str()).collect();
    let cmdlines: BTreeSet<String> = load.iter().map(|p| p.cmdline.join(" ")).collect();
    assert_eq!(tags.len(), load.len(), "every worker has its own tag");
    assert_eq!(cmdlines.len(), load.len(), "every command line is unique");
    println!(
        "high-cardinality: /proc grew by {grown} processes (asked for {N}; {} load processes incl. the group leader) in {:.1}s",
        load.len(),
        took.as_secs_f64()
    );

    // The agent reports the run and its live count; the API shows it.
    let reported = eventually("the reported live count", WAIT, || async {
        let run = get(&stack, "hc").await;
        let host = &run.host_status[0];
        (host.state == LoadHostState::Running && host.live_processes as usize == N).then_some(run)
    })
    .await;
    assert_eq!(reported.phase, LoadSimPhase::Running);

    let stopped_at = Instant::now();
    let stopped = stop(&stack, "hc").await;
    assert_eq!(stopped.phase, LoadSimPhase::Stopped);
    wait_for_no_load(&agent, "after stop").await;
    println!(
        "high-cardinality: {} processes gone {:.2}s after the stop request",
        load.len(),
        stopped_at.elapsed().as_secs_f64()
    );
    eventually("the host to report no run", WAIT, || async {
        let run = get(&stack, "hc").await;
        (run.host_status[0].state == LoadHostState::Gone).then_some(())
    })
    .await;
    drop(agent);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_churn_sustains_its_spawn_rate_over_thirty_seconds() {
    let _serial = SERIAL.lock().await;
    const RATE: f64 = 25.0;
    const WINDOW: Duration = Duration::from_secs(30);
    let stack = Stack::start().await;
    let agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    wait_for_host(&stack, "web-1").await;

    let run = start_ok(
        &stack,
        json!({"name": "churn", "hosts": {"names": ["web-1"]},
               "profile": "process-churn", "duration": "5m"}),
    )
    .await;
    assert_eq!(run.parameters.spawn_rate, 25, "the profile's default");
    eventually("the first churn worker", WAIT, || async {
        (!workers(&agent, "run.churn").is_empty()).then_some(())
    })
    .await;

    // Every worker lives 1 s; /proc is read every 20 ms, so none goes unseen. A
    // worker counts when its tag is first seen inside the window.
    let seen_before: BTreeSet<String> = agent.load_processes().into_iter().map(|p| p.tag).collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut max_alive = 0;
    let window_start = Instant::now();
    while window_start.elapsed() < WINDOW {
        let alive: Vec<_> = agent
            .load_processes()
            .into_iter()
            .filter(|p| p.run == "run.churn" && !p.is_group_leader())
            .collect();
        max_alive = max_alive.max(alive.len());
        for p in alive {
            if !seen_before.contains(&p.tag) {
                seen.insert(p.tag);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = window_start.elapsed().as_secs_f64();
    let measured = seen.len() as f64 / elapsed;
    println!(
        "process-churn: {} new workers in {elapsed:.1}s = {measured:.2} spawns/s (asked for {RATE}/s, {:.1}% off); at most {max_alive} alive at once",
        seen.len(),
        (measured - RATE).abs() / RATE * 100.0
    );
    assert!(
        (measured - RATE).abs() <= RATE * 0.2,
        "spawn rate {measured:.2}/s is not within 20% of {RATE}/s; agent log:\n{}",
        agent.log()
    );

    let stopped_at = Instant::now();
    stop(&stack, "churn").await;
    wait_for_no_load(&agent, "after stopping the churn").await;
    println!(
        "process-churn: no load process {:.2}s after the stop request",
        stopped_at.elapsed().as_secs_f64()
    );
    drop(agent);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_expires_leaves_no_process_behind() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start().await;
    let agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    wait_for_host(&stack, "web-1").await;

    let run = start_ok(
        &stack,
        json!({"name": "short", "hosts": {"names": ["web-1"]},
               "profile": "realistic", "processes": 50, "spawnRate": 100, "duration": "8s"}),
    )
    .await;
    eventually("50 realistic workers", WAIT, || async {
        (workers(&agent, "run.short").len() == 50).then_some(())
    })
    .await;
    wait_for_no_load(&agent, "after expiry").await;
    let after_expiry = (chrono::Utc::now() - run.expires_at).num_milliseconds();
    println!("expiry: no load process {after_expiry} ms after the run's expiresAt");
    let ended = get(&stack, "short").await;
    assert_eq!(ended.phase, LoadSimPhase::Expired);
    eventually("the host to forget the expired run", WAIT, || async {
        (get(&stack, "short").await.host_status[0].state == LoadHostState::Gone).then_some(())
    })
    .await;
    assert!(agent.load_processes().is_empty());
    drop(agent);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_agent_leaves_no_process_and_its_successor_starts_afresh() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start().await;
    let mut agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    wait_for_host(&stack, "web-1").await;
    start_ok(
        &stack,
        json!({"name": "survivor", "hosts": {"names": ["web-1"]},
               "profile": "high-cardinality", "processes": 200, "duration": "10m"}),
    )
    .await;
    let before: BTreeSet<u32> = eventually("200 workers", WAIT, || async {
        let pids: BTreeSet<u32> = agent.load_processes().iter().map(|p| p.pid).collect();
        (workers(&agent, "run.survivor").len() == 200).then_some(pids)
    })
    .await;

    let killed_at = Instant::now();
    agent.kill();
    wait_for_no_load(&agent, "after SIGKILL of the agent").await;
    println!(
        "agent SIGKILL: its {} load processes were gone {:.2}s later",
        before.len(),
        killed_at.elapsed().as_secs_f64()
    );

    // The run is still wanted: the restarted agent starts it afresh (it adopts no
    // load), with new processes only.
    agent.start();
    let after: BTreeSet<u32> = eventually("200 workers again", WAIT, || async {
        let pids: BTreeSet<u32> = agent.load_processes().iter().map(|p| p.pid).collect();
        (workers(&agent, "run.survivor").len() == 200).then_some(pids)
    })
    .await;
    assert!(
        after.is_disjoint(&before),
        "no process of the killed agent's run remains"
    );
    stop(&stack, "survivor").await;
    wait_for_no_load(&agent, "after stop").await;
    drop(agent);
    stack.shutdown().await;
}

/// Load workers a test starts by hand, as a dead agent would have left them;
/// killed and reaped when dropped.
struct PlantedWorkers(Vec<Child>);

impl Drop for PlantedWorkers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_kills_load_workers_its_predecessor_left() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start().await;
    let mut agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    wait_for_host(&stack, "web-1").await;
    agent.kill();

    // Workers carrying the agent's load marker that did not die with it (as if the
    // kernel's parent-death signal had not reached them): each in its own group.
    let mut planted = PlantedWorkers(Vec::new());
    for i in 0..5 {
        let child = Command::new(binary("phoenix-agent"))
            .args(["load-worker", "--run", "run.leftover", "--tag"])
            .arg(format!("run.leftover-{i}"))
            .arg("--parent")
            .arg(std::process::id().to_string())
            .args(["--lifetime", "10m"])
            .env("PHOENIX_LOAD_STATE_DIR", &agent.state_dir)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn a leftover worker");
        planted.0.push(child);
    }
    let pids: Vec<u32> = planted.0.iter().map(Child::id).collect();
    eventually("the leftovers to run", WAIT, || async {
        (load_processes_of(&agent.state_dir).len() == 5).then_some(())
    })
    .await;

    let restarted_at = Instant::now();
    agent.start();
    eventually("the leftovers to be killed", WAIT, || async {
        pids.iter().all(|&pid| is_zombie(pid)).then_some(())
    })
    .await;
    println!(
        "restart: 5 leftover load workers killed {:.2}s after the agent started",
        restarted_at.elapsed().as_secs_f64()
    );
    assert!(
        agent
            .log()
            .contains("killing load workers a previous agent left behind"),
        "{}",
        agent.log()
    );
    drop(planted);
    drop(agent);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_beyond_the_host_maximum_is_refused_and_starts_nothing() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start().await;
    let agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    wait_for_host(&stack, "web-1").await;

    // The agent's default maximum is 2000 processes.
    let (status, text) = start(
        &stack,
        json!({"name": "too-many", "hosts": {"names": ["web-1"]},
               "profile": "high-cardinality", "processes": 2001}),
    )
    .await;
    assert_eq!(status, 422, "{text}");
    let problem: Problem = serde_json::from_str(&text).expect("problem json");
    assert_eq!(problem.field.as_deref(), Some("processes"));
    let detail = problem.detail.unwrap_or_default();
    assert!(
        detail.contains("web-1") && detail.contains("at most 2000"),
        "{detail}"
    );
    let response = stack
        .request(Method::GET, "/api/v1/loadsims", VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    let list: List<LoadSim> = response.json().await.unwrap();
    assert!(list.items.is_empty(), "nothing was stored");

    // A viewer may not start load.
    let response = stack
        .request(Method::POST, "/api/v1/loadsims", VIEWER_TOKEN)
        .json(&json!({"name": "v", "hosts": {"names": ["web-1"]}, "profile": "spike"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // Two runs that fit one by one but not together: the agent refuses the second
    // and starts nothing of it; the API shows why.
    start_ok(
        &stack,
        json!({"name": "big", "hosts": {"names": ["web-1"]}, "profile": "high-cardinality",
               "processes": 1990, "spawnRate": 1, "duration": "10m"}),
    )
    .await;
    eventually("the first run to report", WAIT, || async {
        (get(&stack, "big").await.host_status[0].state == LoadHostState::Running).then_some(())
    })
    .await;
    start_ok(
        &stack,
        json!({"name": "more", "hosts": {"names": ["web-1"]}, "profile": "high-cardinality",
               "processes": 20, "duration": "10m"}),
    )
    .await;
    let refused = eventually("the second run to fail on the host", WAIT, || async {
        let run = get(&stack, "more").await;
        (run.host_status[0].state == LoadHostState::Failed).then_some(run)
    })
    .await;
    let error = refused.host_status[0]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        error.contains("at most 2000 load processes") && error.contains("1990"),
        "{error}"
    );
    assert!(
        agent.load_processes().iter().all(|p| p.run != "run.more"),
        "the refused run started nothing"
    );
    println!("limit: the agent refused the second run: {error}");
    stop(&stack, "big").await;
    stop(&stack, "more").await;
    wait_for_no_load(&agent, "after stopping both").await;
    drop(agent);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_load_section_runs_while_the_experiment_runs() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start().await;
    let agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    let other = AgentProcess::spawn(&stack.api_url, "db-1", &[("role", "db")]);
    wait_for_host(&stack, "web-1").await;
    wait_for_host(&stack, "db-1").await;
    stack
        .create_experiment(
            r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata:
  name: loaded
spec:
  hosts: {selector: {role: web}}
  baseline: {pipeline: process-baseline}
  candidate: {pipeline: process-topk}
  warmup: 0s
  duration: 1h
  load: {profile: high-cardinality, processes: 30}
"#,
        )
        .await;
    stack.wait_for_phase("loaded", Phase::Running, WAIT).await;
    eventually("30 experiment load workers", WAIT, || async {
        (workers(&agent, "experiment.loaded").len() == 30).then_some(())
    })
    .await;
    assert_eq!(
        agent.collector_processes().len(),
        2,
        "load is not a collector"
    );
    assert!(other.load_processes().is_empty(), "only targets get load");

    let response = stack
        .request(
            Method::POST,
            "/api/v1/experiments/loaded/stop",
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let clean = wait_for_no_load(&agent, "after the experiment stopped").await;
    println!(
        "experiment load: gone {:.2}s after the stop request returned",
        clean.as_secs_f64()
    );
    drop((agent, other));
    stack.shutdown().await;
}

fn phoenix(stack: &Stack, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary("phoenix"))
        .args(args)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", token)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run phoenix")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_starts_shows_and_stops_a_load_simulation() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::start().await;
    let agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    wait_for_host(&stack, "web-1").await;

    let out = phoenix(&stack, VIEWER_TOKEN, &["loadsim", "list-profiles"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    for profile in ["realistic", "high-cardinality", "process-churn", "spike"] {
        assert!(table.contains(profile), "{table}");
    }

    // Beyond the host's maximum: a clear error naming the field and the host.
    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &[
            "loadsim",
            "start",
            "--host",
            "web-1",
            "--profile",
            "high-cardinality",
            "--processes",
            "2001",
        ],
    );
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(
        error.contains("field: processes") && error.contains("host web-1 allows at most 2000"),
        "{error}"
    );
    assert!(agent.load_processes().is_empty(), "nothing started");

    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &[
            "loadsim",
            "start",
            "--selector",
            "role=web",
            "--profile",
            "high-cardinality",
            "--processes",
            "10",
            "--duration",
            "5m",
            "--name",
            "cli-hc",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let started: LoadSim = serde_json::from_slice(&out.stdout).expect("loadsim json");
    assert_eq!(started.target_hosts, ["web-1"]);
    eventually("10 workers", WAIT, || async {
        (workers(&agent, "run.cli-hc").len() == 10).then_some(())
    })
    .await;
    eventually("the CLI to show 10 live processes", WAIT, || async {
        let out = phoenix(
            &stack,
            VIEWER_TOKEN,
            &["loadsim", "status", "cli-hc", "-o", "json"],
        );
        let run: LoadSim = serde_json::from_slice(&out.stdout).ok()?;
        (run.host_status[0].live_processes == 10).then_some(())
    })
    .await;
    let out = phoenix(&stack, VIEWER_TOKEN, &["loadsim", "status"]);
    let table = text(&out.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("cli-hc") && table.contains("running"),
        "{table}"
    );

    let out = phoenix(&stack, OPERATOR_TOKEN, &["loadsim", "stop", "cli-hc"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("loadsim/cli-hc stopped"));
    wait_for_no_load(&agent, "after `phoenix loadsim stop`").await;
    let out = phoenix(&stack, OPERATOR_TOKEN, &["loadsim", "stop", "cli-hc"]);
    assert!(!out.status.success(), "stopping twice is a conflict");
    assert!(
        text(&out.stderr).contains("already stopped"),
        "{}",
        text(&out.stderr)
    );
    drop(agent);
    stack.shutdown().await;
}
