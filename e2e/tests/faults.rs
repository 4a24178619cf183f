//! Faults production brings, injected into a real stack while an experiment runs
//! (issue 18). Each case asserts what a user would notice: the control plane fails
//! fast while a dependency is gone, nothing is orphaned or left leased, and desired
//! and actual state agree again after recovery, within a time the test prints.

use std::time::{Duration, Instant};

use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{
    AgentProcess, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN, eventually,
};
use phoenix_e2e::netns::NetNs;
use phoenix_e2e::throwaway::ThrowawayPostgres;
use phoenix_reconciler::changes::Scope;
use phoenix_storage::leader::{LeaderLock, LeaderSettings};
use phoenix_wire::view::{HostState, List, Phase};
use reqwest::Method;

const WAIT: Duration = Duration::from_secs(60);

fn experiment_yaml(name: &str, selector: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata:
  name: {name}
spec:
  hosts: {{selector: {{{selector}}}}}
  baseline: {{pipeline: process-baseline}}
  candidate: {{pipeline: process-topk, vars: {{cpu_threshold: "0.2"}}}}
  warmup: 0s
  duration: 1h
  criticalProcesses: [nginx]
"#
    )
}

/// Tasks still leased to an agent (none should stay so once things settle).
async fn leased_tasks(stack: &Stack) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM agent_tasks WHERE status = 'leased'")
        .fetch_one(&stack.pool)
        .await
        .expect("count leased tasks")
}

/// One request while the database is away: a 503 problem+json with Retry-After,
/// in how long.
async fn expect_unavailable(request: reqwest::RequestBuilder, what: &str) -> Duration {
    let started = Instant::now();
    let response = request.send().await.expect("the api answers");
    let took = started.elapsed();
    assert_eq!(response.status(), 503, "{what}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(content_type, "application/problem+json", "{what}");
    if what != "readyz" {
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            Some("2"),
            "{what}"
        );
    }
    let body = response.text().await.unwrap();
    assert!(body.contains("database"), "{what}: {body}");
    took
}

/// Postgres frozen (SIGSTOP: connections hang) and then stopped (connections
/// refused) while an experiment runs: `/readyz` and API requests answer 503 at once
/// instead of hanging, the agent keeps its collectors and backs off, and after the
/// database is back everything converges without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_away_fails_fast_and_everything_heals() {
    let mut postgres = tokio::task::spawn_blocking(ThrowawayPostgres::start)
        .await
        .unwrap()
        .expect("a throwaway Postgres of this test's own");
    let stack = Stack::start_with(StackOptions {
        postgres: Some(postgres.url("postgres")),
        ..Default::default()
    })
    .await;
    let agent = AgentProcess::spawn(&stack.api_url, "dbfault-1", &[("role", "dbfault")]);
    stack.wait_for_host("dbfault-1").await;
    stack
        .create_experiment(&experiment_yaml("dbfault", "role: dbfault"))
        .await;
    stack.wait_for_phase("dbfault", Phase::Running, WAIT).await;
    let running = eventually("two collectors", WAIT, || async {
        let pids = agent.collector_pids();
        (pids.len() == 2).then_some(pids)
    })
    .await;

    let readyz = || stack.http.get(stack.url("/readyz"));
    let list = || stack.request(Method::GET, "/api/v1/experiments", VIEWER_TOKEN);

    // Frozen: the server accepts connections and never answers.
    let pids = postgres.server_pids();
    assert!(!pids.is_empty(), "the server's processes");
    for pid in &pids {
        // SAFETY: kill(2) on the throwaway server's own processes.
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    let frozen_ready = expect_unavailable(readyz(), "readyz").await;
    let frozen_request = expect_unavailable(list(), "GET /api/v1/experiments").await;
    for pid in &pids {
        // SAFETY: as above.
        unsafe { libc::kill(*pid, libc::SIGCONT) };
    }
    println!(
        "database frozen: /readyz 503 in {} ms, GET /api/v1/experiments 503 in {} ms",
        frozen_ready.as_millis(),
        frozen_request.as_millis()
    );
    eventually("ready again after the thaw", WAIT, || async {
        readyz()
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;

    // Stopped: connections are closed and refused.
    tokio::task::block_in_place(|| postgres.stop_server()).expect("stop the server");
    let down_at = Instant::now();
    let stopped_ready = expect_unavailable(readyz(), "readyz").await;
    let stopped_request = expect_unavailable(list(), "GET /api/v1/experiments").await;
    let create = stack
        .request(Method::POST, "/api/v1/experiments", OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(experiment_yaml("while-down", "role: dbfault"));
    let stopped_create = expect_unavailable(create, "POST /api/v1/experiments").await;
    println!(
        "database stopped: /readyz 503 in {} ms, GET /api/v1/experiments 503 in {} ms, POST 503 in {} ms",
        stopped_ready.as_millis(),
        stopped_request.as_millis(),
        stopped_create.as_millis()
    );
    // A probe must be answered within its own timeout; a request within the pool's
    // acquire timeout (2 s) and a little: never the 10 s and more of a hang.
    for (what, took, bound) in [
        ("frozen /readyz", frozen_ready, Duration::from_secs(1)),
        ("stopped /readyz", stopped_ready, Duration::from_secs(1)),
        ("frozen request", frozen_request, Duration::from_secs(4)),
        ("stopped request", stopped_request, Duration::from_secs(4)),
        ("stopped create", stopped_create, Duration::from_secs(4)),
    ] {
        assert!(took < bound, "{what} took {took:?}, more than {bound:?}");
    }

    // The agent keeps its collectors while the control plane cannot answer.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        agent.collector_pids(),
        running,
        "collectors untouched while the database is down"
    );

    tokio::task::block_in_place(|| postgres.start_server()).expect("start the server again");
    let back = Instant::now();
    println!("database was down for {} ms", down_at.elapsed().as_millis());
    eventually("ready again", WAIT, || async {
        readyz()
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;
    let ready_after = back.elapsed();
    // Heartbeats land again: the host is ready, seen after the restart.
    let restarted_at = chrono::Utc::now();
    eventually("a heartbeat after the restart", WAIT, || async {
        stack
            .host("dbfault-1")
            .await
            .filter(|h| h.state == HostState::Ready && h.last_seen > restarted_at)
            .map(|_| ())
    })
    .await;
    // Tasks flow again: stopping the experiment stops both collectors.
    let stop = stack
        .request(
            Method::POST,
            "/api/v1/experiments/dbfault/stop",
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success(), "stop: {}", stop.status());
    eventually("collectors stopped after recovery", WAIT, || async {
        agent.collector_pids().is_empty().then_some(())
    })
    .await;
    eventually("no task left leased", WAIT, || async {
        (leased_tasks(&stack).await == 0).then_some(())
    })
    .await;
    println!(
        "after the restart: ready in {} ms, converged (collectors stopped, no task leased) in {} ms",
        ready_after.as_millis(),
        back.elapsed().as_millis()
    );
    assert_eq!(stack.experiment("dbfault").await.phase, Phase::Stopped);
    stack.shutdown().await;
}

/// A heartbeat for a host the database does not know (never registered, or
/// deleted since) is a 404, and the agent registers again at once with a full
/// status report instead of waiting for its 5-minute refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_of_an_unknown_host_is_404_and_its_agent_registers_again_at_once() {
    let stack = Stack::start().await;
    // Enrolled (it holds a credential of its own) but never registered.
    let credential = stack.host_credential("ghost-1").await;
    let ghost = stack
        .request(
            Method::POST,
            "/agent/v1/hosts/ghost-1/heartbeat",
            &credential,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(ghost.status(), 404);
    let body = ghost.text().await.unwrap();
    assert!(body.contains("ghost-1 is not registered"), "{body}");

    let agent = AgentProcess::spawn(&stack.api_url, "beat-1", &[("role", "beat")]);
    stack.wait_for_host("beat-1").await;
    // Let this replica take a few heartbeats of the registered host first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::query("DELETE FROM hosts WHERE host_id = 'beat-1'")
        .execute(&stack.pool)
        .await
        .unwrap();
    let deleted = Instant::now();
    let refused_before = agent
        .log()
        .matches("refused tasks: Not found (404)")
        .count();
    // The replica learns the host is gone when it next writes the host's liveness:
    // within a renewal (25 s at the 60 s grace) and a beat (10 s) of the last write.
    eventually(
        "the agent registers again",
        Duration::from_secs(60),
        || async { stack.host("beat-1").await.map(|_| ()) },
    )
    .await;
    println!(
        "host deleted: registered again after {} ms (its long-poll is the heartbeat, counted every 10 s of the wait and written every 30 s; full status every 5 min)",
        deleted.elapsed().as_millis()
    );
    // The waiting long-poll ended with the 404 (the agent's own heartbeats are
    // quiet while it waits), and only after the deletion.
    const REFUSED: &str = "refused tasks: Not found (404): host beat-1 is not registered";
    assert!(
        agent.log().matches(REFUSED).count() > refused_before,
        "the agent saw the 404 after the deletion:\n{}",
        agent.log()
    );
    stack.shutdown().await;
}

/// What was asked is what is measured. An experiment whose load no selected host
/// could run is refused at creation (422 naming `spec.load.processes` and the
/// host, nothing stored); load that the agent refuses once the experiment runs
/// (here: a standalone run already holds most of the host's limit) is an event of
/// the experiment each time, and fails it, naming the host and the agent's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_that_cannot_run_is_refused_or_fails_the_experiment() {
    let stack = Stack::start().await;
    let agent = AgentProcess::spawn(&stack.api_url, "loadfault-1", &[("role", "loadfault")]);
    stack.wait_for_host("loadfault-1").await;

    let with_load = |name: &str, processes: u32| {
        format!(
            "{}  load: {{profile: realistic, processes: {processes}}}\n",
            experiment_yaml(name, "role: loadfault")
        )
    };
    let response = stack
        .request(Method::POST, "/api/v1/experiments", OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(with_load("too-much-load", 3000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: phoenix_wire::problem::Problem = response.json().await.unwrap();
    assert_eq!(problem.field.as_deref(), Some("spec.load.processes"));
    let detail = problem.detail.unwrap_or_default();
    assert!(
        detail.contains("host loadfault-1 allows at most 2000"),
        "{detail}"
    );
    let stored = stack
        .request(
            Method::GET,
            "/api/v1/experiments/too-much-load",
            VIEWER_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 404, "nothing stored");

    // A standalone run takes 1990 of the host's 2000 (spawning one worker a second).
    let hog = stack
        .request(Method::POST, "/api/v1/loadsims", OPERATOR_TOKEN)
        .json(&serde_json::json!({
            "name": "hog", "hosts": {"names": ["loadfault-1"]}, "profile": "realistic",
            "processes": 1990, "spawnRate": 1, "busyPercent": 0, "memoryMib": 1, "duration": "3m"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(hog.status(), 201, "{}", hog.text().await.unwrap());
    // The agent holds the run (it reports live workers) before the experiment's
    // load asks for more; otherwise the two could be started in either order.
    eventually("the agent runs the standalone load", WAIT, || async {
        let run: phoenix_wire::load::LoadSim = stack
            .request(Method::GET, "/api/v1/loadsims/hog", VIEWER_TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        run.host_status
            .iter()
            .any(|h| h.host_id == "loadfault-1" && h.live_processes > 0)
            .then_some(())
    })
    .await;
    stack.create_experiment(&with_load("starved", 100)).await;
    let started = Instant::now();
    let failed = eventually("the experiment fails", WAIT, || async {
        let e = stack.experiment("starved").await;
        (e.phase == Phase::Failed).then_some(e)
    })
    .await;
    let reason = failed.reason.unwrap_or_default();
    println!(
        "load refused on the host: experiment failed after {} ms: {reason}",
        started.elapsed().as_millis()
    );
    assert!(reason.contains("host loadfault-1"), "{reason}");
    assert!(reason.contains("realistic"), "{reason}");
    assert!(reason.contains("1990"), "the agent's reason: {reason}");
    let events: Vec<phoenix_wire::view::ExperimentEvent> = stack
        .request(
            Method::GET,
            "/api/v1/experiments/starved/events",
            VIEWER_TOKEN,
        )
        .send()
        .await
        .unwrap()
        .json::<List<phoenix_wire::view::ExperimentEvent>>()
        .await
        .unwrap()
        .items;
    let load_events = events
        .iter()
        .filter(|e| e.reason.starts_with("load failed on host loadfault-1"))
        .count();
    assert!(
        load_events >= 3,
        "one event per refused load task: {events:#?}"
    );

    let stop = stack
        .request(Method::DELETE, "/api/v1/loadsims/hog", OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success());
    eventually(
        "no collector, no load process, no leased task",
        WAIT,
        || async {
            (agent.collector_pids().is_empty()
                && agent.load_processes().is_empty()
                && leased_tasks(&stack).await == 0)
                .then_some(())
        },
    )
    .await;
    stack.shutdown().await;
}

/// A deposed leader's late write is refused: once the database ended its session
/// and another replica took the lock (a newer epoch), a pass or any fenced write
/// with the old epoch fails with `Deposed` and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_late_write_is_refused() {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await;
    stack.register_host("fence-1", &[("role", "fence")]).await;
    stack
        .create_experiment(&experiment_yaml("fenced", "role: fence"))
        .await;
    let settings = LeaderSettings::default();
    let mut first = LeaderLock::try_acquire(&stack.database_url, settings, "first")
        .await
        .unwrap()
        .expect("nobody else leads");
    let old = first.epoch();
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(first.connection())
        .await
        .unwrap();
    // What the server does to a leader that went silent: it ends the session.
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(backend)
        .execute(&stack.pool)
        .await
        .unwrap();
    let second = eventually("the lock is free for another replica", WAIT, || async {
        LeaderLock::try_acquire(&stack.database_url, settings, "second")
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(second.epoch(), old + 1);
    assert!(
        !first.confirm().await.unwrap_or(false),
        "the old leader knows"
    );

    // A pass of the old leader on another connection (one of its pool's, say).
    let mut conn = stack.pool.acquire().await.unwrap();
    let late = phoenix_reconciler::pass::run_pass(
        &mut conn,
        &stack.reconciler_config,
        old,
        Scope::Full,
        &mut Default::default(),
        None,
    )
    .await;
    match late {
        Err(phoenix_storage::StoreError::Deposed { epoch, current }) => {
            assert_eq!((epoch, current), (old, old + 1));
        }
        other => panic!("a deposed leader's pass must be refused, got {other:?}"),
    }
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_tasks")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(tasks, 0, "nothing written");
    assert_eq!(stack.experiment("fenced").await.phase, Phase::Pending);
    // The leader of the current epoch writes.
    let report = phoenix_reconciler::pass::run_pass(
        &mut conn,
        &stack.reconciler_config,
        old + 1,
        Scope::Full,
        &mut Default::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(report.transitions.len(), 1, "{report:?}");
    drop(second);
    stack.shutdown().await;
}

/// A pass longer than the lease keeps leadership while the leader's own session
/// keeps answering: each answer renews the lease, a real pass renews it after each
/// of its stages, and an answer on another connection renews nothing, so work that
/// waits on one is cut off when the lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_pass_renews_the_lease_only_through_the_leaders_own_session() {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await;
    stack.register_host("lease-1", &[("role", "lease")]).await;
    let settings = LeaderSettings {
        lease: Duration::from_secs(2),
    };
    let mut lock = LeaderLock::try_acquire(&stack.database_url, settings, "test")
        .await
        .unwrap()
        .expect("nobody else leads");
    let lease = lock.lease();
    let epoch = lock.epoch();

    // Work lasting nearly twice the lease, answered by the leader's session.
    let renewed = lease
        .bound(async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(1200)).await;
                assert!(lease.renew_on(lock.connection()).await.unwrap());
            }
        })
        .await;
    assert!(
        renewed.is_some(),
        "renewed work outlives the lease's length"
    );

    // A pass begun with little lease left leaves with most of it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(lease.left() < Duration::from_millis(600));
    phoenix_reconciler::pass::run_pass(
        lock.connection(),
        &stack.reconciler_config,
        epoch,
        Scope::Full,
        &mut Default::default(),
        Some(&lease),
    )
    .await
    .unwrap();
    let left = lease.left();
    assert!(
        left > Duration::from_secs(1),
        "the pass renewed the lease: {left:?} left"
    );

    // Another connection is not the lock's session: it renews nothing.
    let mut other = stack.pool.acquire().await.unwrap();
    let cut = lease
        .bound(async {
            // Six seconds of answers, three times the lease.
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(!lease.renew_on(&mut other).await.unwrap());
            }
        })
        .await;
    assert!(
        cut.is_none(),
        "work without the leader's answers is cut off"
    );
    assert_eq!(lease.left(), Duration::ZERO);
    stack.shutdown().await;
}

/// The reconciler leader partitioned from the database (its network link cut,
/// the process alive) with a standby running: the old leader stops acting within
/// its lease, before the database frees the lock; the standby then leads with a
/// new epoch and reconciles; after the link is back the old one stays a standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_stops_before_the_standby_takes_over() {
    let ns = tokio::task::spawn_blocking(|| NetNs::create("leader", 1))
        .await
        .unwrap()
        .expect("a network namespace for the leader");
    let host_ip = ns.host_ip;
    let postgres = tokio::task::spawn_blocking(move || {
        ThrowawayPostgres::start_with(&[("listen_addresses", &format!("127.0.0.1,{host_ip}"))])
    })
    .await
    .unwrap()
    .expect("a throwaway Postgres reachable from the namespace");
    postgres.trust_network(&format!("{host_ip}/30")).unwrap();
    let mut stack = Stack::start_with(StackOptions {
        postgres: Some(postgres.url("postgres")),
        reconciler: false,
        ..Default::default()
    })
    .await;
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("reconciler.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut leader = ns
        .command(&binary("phoenix-reconciler"))
        .args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--resync-interval",
            "1s",
        ])
        .args(["--standby-retry", "200ms", "--leader-lease", "5s"])
        .arg("--database-url")
        .arg(
            stack
                .database_url
                .replace("127.0.0.1", &host_ip.to_string()),
        )
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the reconciler in the namespace");
    let leader_pid = leader.id();
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let pool = stack.pool.clone();
    let epoch = || async {
        let mut conn = pool.acquire().await.unwrap();
        phoenix_storage::leader::current(&mut conn).await.unwrap()
    };
    eventually("the namespaced reconciler leads", WAIT, || async {
        let (n, holder) = epoch().await;
        (n == 1 && holder.ends_with(&format!("pid {leader_pid}"))).then_some(())
    })
    .await;
    stack.spawn_reconciler(); // the standby, on loopback
    stack.register_host("part-1", &[("role", "part")]).await;
    stack
        .create_experiment(&experiment_yaml("before", "role: part"))
        .await;
    stack.wait_for_phase("before", Phase::Deploying, WAIT).await;

    ns.cut().unwrap();
    let cut = Instant::now();
    let (mut stopped, mut replaced) = (None, None);
    while stopped.is_none() || replaced.is_none() {
        assert!(
            cut.elapsed() < Duration::from_secs(90),
            "after {:?}: old leader stopped {stopped:?}, standby leads {replaced:?}; log:\n{}",
            cut.elapsed(),
            read_log()
        );
        if stopped.is_none() && read_log().contains("no longer leading") {
            stopped = Some(cut.elapsed());
        }
        if replaced.is_none() && epoch().await.0 == 2 {
            replaced = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (stopped, replaced) = (stopped.unwrap(), replaced.unwrap());
    println!(
        "leader partitioned: it stopped acting after {} ms, the standby led after {} ms (lease 5 s)",
        stopped.as_millis(),
        replaced.as_millis()
    );
    assert!(
        stopped < replaced,
        "the old leader stopped ({stopped:?}) before the standby led ({replaced:?})"
    );
    stack
        .create_experiment(&experiment_yaml("after", "role: part"))
        .await;
    stack.wait_for_phase("after", Phase::Deploying, WAIT).await;

    ns.restore().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(epoch().await.0, 2, "the old leader did not take over again");
    assert_eq!(
        read_log().matches("this replica now reconciles").count(),
        1,
        "{}",
        read_log()
    );
    let _ = leader.kill();
    let _ = leader.wait();
    stack.shutdown().await;
    drop(postgres);
    drop(ns);
}

/// An agent cut off from the api (its host's network link down, in a network
/// namespace of its own) for a while, then restored; the experiment is stopped while
/// it is cut off. Meanwhile the host shows `lost` and its collectors keep running;
/// after the link is back the stop reaches it, and nothing stays leased. The cut
/// lasts 2 minutes, four times the agent's longest backoff (30 s), so the agent
/// retries at that cap several times before the link is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_keeps_its_collectors_and_converges_after_the_link_is_back() {
    const CUT: Duration = Duration::from_secs(120);
    let ns = tokio::task::spawn_blocking(|| NetNs::create("agent", 2))
        .await
        .unwrap()
        .expect("a network namespace for the agent's host");
    let stack = Stack::start_with(StackOptions {
        api_bind: Some(format!("{}:0", ns.host_ip)),
        host_grace: Duration::from_secs(5),
        task_lease: Duration::from_secs(15),
        ..Default::default()
    })
    .await;
    let agent = AgentProcess::spawn_in_netns(&stack.api_url, "cut-1", &[("role", "cut")], &ns.name);
    stack.wait_for_host("cut-1").await;
    stack
        .create_experiment(&experiment_yaml("cut", "role: cut"))
        .await;
    stack.wait_for_phase("cut", Phase::Running, WAIT).await;
    let running = eventually("two collectors", WAIT, || async {
        let pids = agent.collector_pids();
        (pids.len() == 2).then_some(pids)
    })
    .await;

    ns.cut().unwrap();
    let cut = Instant::now();
    eventually("the host shows lost", WAIT, || async {
        stack
            .host("cut-1")
            .await
            .filter(|h| h.state == HostState::Lost)
            .map(|_| ())
    })
    .await;
    let lost_after = cut.elapsed();
    let stop = stack
        .request(Method::POST, "/api/v1/experiments/cut/stop", OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success());
    tokio::time::sleep(CUT.saturating_sub(cut.elapsed())).await;
    assert_eq!(
        agent.collector_pids(),
        running,
        "collectors keep running while the agent is cut off"
    );

    ns.restore().unwrap();
    let back = Instant::now();
    eventually(
        "the stop reaches the host",
        Duration::from_secs(90),
        || async { agent.collector_pids().is_empty().then_some(()) },
    )
    .await;
    let stopped_after = back.elapsed();
    eventually("ready, nothing leased", WAIT, || async {
        let ready = stack
            .host("cut-1")
            .await
            .is_some_and(|h| h.state == HostState::Ready && h.collectors.is_empty());
        (ready && leased_tasks(&stack).await == 0).then_some(())
    })
    .await;
    println!(
        "agent cut off for {} s: lost after {} ms; after the link was back the stop reached it in {} ms, converged (ready, nothing reported, nothing leased) in {} ms (task lease 15 s)",
        CUT.as_secs(),
        lost_after.as_millis(),
        stopped_after.as_millis(),
        back.elapsed().as_millis()
    );
    assert!(agent.load_processes().is_empty());
    drop(agent);
    stack.shutdown().await;
    drop(ns);
}

/// `phoenix-api` as a process of its own on `port` (a replica a test can SIGKILL).
fn api_process(database_url: &str, port: u16, log: &std::path::Path) -> std::process::Child {
    api_command(database_url, port, log)
        .spawn()
        .expect("start phoenix-api")
}

fn api_command(database_url: &str, port: u16, log: &std::path::Path) -> std::process::Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = std::process::Command::new(binary("phoenix-api"));
    command
        .args(["--dev", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--task-lease", "10s"])
        .arg("--bootstrap-token-file")
        .arg(phoenix_e2e::harness::bootstrap_token_file())
        .env("DATABASE_URL", database_url)
        .env(
            "PHOENIX_API_TOKENS",
            "admin:admin-token-for-tests,operator:operator-token-for-tests,viewer:viewer-token-for-tests",
        )
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    command
}

/// Debian's libfaketime (scripts/test installs it).
fn libfaketime() -> std::path::PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.expect("libfaketime is not installed: apt-get install libfaketime (scripts/test does)")
}

/// An api replica whose clock is 2 minutes behind (libfaketime) takes the agent's
/// heartbeats: liveness is judged by the database's clock, so the host stays ready
/// (it used to be written 2 minutes in the past, and the host showed lost once the
/// grace period passed after its last full status report).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_replica_with_its_clock_off_does_not_make_hosts_lost() {
    let stack = Stack::start_with(StackOptions {
        host_grace: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let port = phoenix_e2e::measurement::free_port();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("api.log");
    let mut replica = api_command(&stack.database_url, port, &log)
        // The replicas of one installation share their settings: the same grace.
        .args(["--host-grace", "5s"])
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", "-2m")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_NO_CACHE", "1")
        .spawn()
        .expect("start phoenix-api under libfaketime");
    let replica_url = format!("http://127.0.0.1:{port}");
    eventually("the skewed replica is ready", WAIT, || async {
        let r = stack
            .http
            .get(format!("{replica_url}/readyz"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    // Its clock really is off: its own log's timestamps are 2 minutes behind.
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("listening"))
        .unwrap_or_else(|| panic!("no start line in:\n{text}"));
    // Without its colour codes (ESC [ … m).
    let mut plain = String::new();
    let mut in_escape = false;
    for c in line.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (false, c) => plain.push(c),
            (true, _) => {}
        }
    }
    let stamp = plain
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let logged: chrono::DateTime<chrono::Utc> =
        stamp.parse().unwrap_or_else(|e| panic!("{stamp}: {e}"));
    let behind = chrono::Utc::now() - logged;
    assert!(
        behind > chrono::Duration::seconds(100),
        "the replica logs {stamp}, {behind} behind"
    );
    let agent = AgentProcess::spawn(&replica_url, "skew-1", &[("role", "skew")]);
    stack.wait_for_host("skew-1").await;
    // Three grace periods of heartbeats through the skewed replica only (the full
    // status is sent once at start and then every 5 minutes).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        let h = stack.host("skew-1").await.expect("registered");
        assert_eq!(
            h.state,
            HostState::Ready,
            "heartbeats through a replica 2 minutes behind keep the host ready (last seen {})",
            h.last_seen
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("api replica 2 minutes behind: the host stayed ready for 15 s (grace 5 s)");
    let _ = replica.kill();
    let _ = replica.wait();
    drop(agent);
    stack.shutdown().await;
}

/// One of two api replicas SIGKILLed while its agent's long-poll waits in it; the
/// experiment is stopped through the other replica meanwhile. The agent keeps its
/// collectors and retries; once the replica is back (a restarted pod, same
/// address) the stop reaches it and nothing stays leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_replica_killed_with_long_polls_in_flight() {
    let stack = Stack::start_with(StackOptions {
        task_lease: Duration::from_secs(10),
        ..Default::default()
    })
    .await;
    let port = phoenix_e2e::measurement::free_port();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("api.log");
    let mut replica = api_process(&stack.database_url, port, &log);
    let replica_url = format!("http://127.0.0.1:{port}");
    eventually("the second replica is ready", WAIT, || async {
        let r = stack
            .http
            .get(format!("{replica_url}/readyz"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let agent = AgentProcess::spawn(&replica_url, "replica-1", &[("role", "replica")]);
    stack.wait_for_host("replica-1").await;
    stack
        .create_experiment(&experiment_yaml("replica", "role: replica"))
        .await;
    stack.wait_for_phase("replica", Phase::Running, WAIT).await;
    let running = eventually("two collectors", WAIT, || async {
        let pids = agent.collector_pids();
        (pids.len() == 2).then_some(pids)
    })
    .await;
    // The agent's long-poll is waiting in the replica now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = replica.kill(); // SIGKILL
    let _ = replica.wait();
    let stop = stack
        .request(
            Method::POST,
            "/api/v1/experiments/replica/stop",
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success(), "the other replica serves");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        agent.collector_pids(),
        running,
        "collectors kept while the api is gone"
    );

    let mut replica = api_process(&stack.database_url, port, &log);
    let back = Instant::now();
    eventually(
        "the stop reaches the host",
        Duration::from_secs(90),
        || async { agent.collector_pids().is_empty().then_some(()) },
    )
    .await;
    let stopped_after = back.elapsed();
    eventually("nothing leased, nothing reported", WAIT, || async {
        let reported = stack
            .host("replica-1")
            .await
            .is_some_and(|h| h.collectors.is_empty());
        (reported && leased_tasks(&stack).await == 0).then_some(())
    })
    .await;
    println!(
        "api replica SIGKILLed: after its restart the stop reached the host in {} ms, converged in {} ms",
        stopped_after.as_millis(),
        back.elapsed().as_millis()
    );
    let _ = replica.kill();
    let _ = replica.wait();
    drop(agent);
    stack.shutdown().await;
}
