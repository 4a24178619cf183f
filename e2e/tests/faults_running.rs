//! More faults of issue 18, each injected while an experiment runs (the first ones
//! are in `faults.rs`): a collector update that crash-loops, promote racing
//! rollback, Prometheus hung during analysis, the Pushgateway down, and the
//! agent's state directory full. Each case checks the issue's invariants: the
//! experiment ends as it would have without the fault, or fails naming it; no
//! collector or load process is orphaned; no task stays leased; and desired and
//! actual agree on every host again within a time the test prints (the
//! reconciler has no task left to create: nothing pending or leased, twice in a
//! row a resync apart).

use std::time::{Duration, Instant};

use phoenix_e2e::harness::{AgentProcess, OPERATOR_TOKEN, Stack, StackOptions, eventually};
use phoenix_wire::view::{Host, HostState, Phase};
use reqwest::Method;

const WAIT: Duration = Duration::from_secs(60);

fn experiment_yaml(name: &str, selector: &str, duration: &str) -> String {
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
  duration: {duration}
  criticalProcesses: [nginx]
"#
    )
}

async fn open_tasks(stack: &Stack) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'leased') \
         FROM agent_tasks",
    )
    .fetch_one(&stack.pool)
    .await
    .expect("count open tasks")
}

/// Whether desired and actual agree on `agents`' hosts now: no task pending or
/// leased, every host ready and reporting exactly the collector processes it runs
/// (`collectors` each), healthy, and no load process.
async fn agree(stack: &Stack, agents: &[&AgentProcess], collectors: usize) -> bool {
    if open_tasks(stack).await != (0, 0) {
        return false;
    }
    for agent in agents {
        let pids = agent.collector_pids();
        let Some(h) = stack.host(&agent.host_id).await else {
            return false;
        };
        let mut reported: Vec<u32> = h.collectors.iter().filter_map(|c| c.pid).collect();
        reported.sort();
        let healthy = h
            .collectors
            .iter()
            .all(|c| c.health == phoenix_wire::agent::Health::Healthy);
        if h.state != HostState::Ready
            || reported != pids
            || !healthy
            || pids.len() != collectors
            || !agent.load_processes().is_empty()
        {
            return false;
        }
    }
    true
}

/// Waits until [`agree`] holds twice in a row, a resync (1 s) apart; returns how
/// long that took.
async fn converged(stack: &Stack, agents: &[&AgentProcess], collectors: usize) -> Duration {
    let started = Instant::now();
    let mut agreed_before = false;
    loop {
        let agrees = agree(stack, agents, collectors).await;
        if agrees && agreed_before {
            return started.elapsed();
        }
        agreed_before = agrees;
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "desired and actual still differ after 90 s: open tasks {:?}",
            open_tasks(stack).await
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Last known good across the stack: a standing pipeline updated to a config that
/// crash-loops on the host (it starts healthy, then exits every 1.5 s) while an
/// experiment runs there. The agent goes back to the previous config within
/// three exits and reports both; the reconciler does not send the failing config
/// again (one update task, not a loop); the experiment's collectors are never
/// touched, and the experiment stops as it would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_update_that_crash_loops_goes_back_to_the_last_known_good() {
    let stack = Stack::start().await;
    let agent = AgentProcess::spawn(&stack.api_url, "crash-1", &[("role", "crash")]);
    stack.wait_for_host("crash-1").await;
    // A template that the stand-in collector starts with and then crashes on.
    sqlx::query(
        "INSERT INTO pipeline_templates (name, config) \
         VALUES ('crashy', 'processors:\n  transform/stand-in-crash-after-start: {}\n')",
    )
    .execute(&stack.pool)
    .await
    .unwrap();
    let deploy = |pipeline: &str| {
        let doc = format!(
            "apiVersion: phoenix.dev/v1\nkind: PipelineDeployment\nmetadata: {{name: web-standing}}\n\
             spec:\n  hosts: {{selector: {{role: crash}}}}\n  pipeline: {pipeline}\n"
        );
        stack
            .request(Method::POST, "/api/v1/deployments", OPERATOR_TOKEN)
            .header("content-type", "application/yaml")
            .body(doc)
            .send()
    };
    let first = deploy("process-baseline").await.unwrap();
    assert!(
        first.status().is_success(),
        "{}",
        first.text().await.unwrap()
    );
    stack
        .create_experiment(&experiment_yaml("crashing", "role: crash", "1h"))
        .await;
    stack.wait_for_phase("crashing", Phase::Running, WAIT).await;
    let standing = |h: &Host| {
        h.collectors
            .iter()
            .find(|c| c.variant == phoenix_wire::agent::Variant::Standing)
            .cloned()
    };
    let good = eventually("the standing collector is healthy", WAIT, || async {
        let h = stack.host("crash-1").await?;
        standing(&h).filter(|c| c.health == phoenix_wire::agent::Health::Healthy)
    })
    .await;
    let experiment_pids = || {
        let mut pids: Vec<u32> = agent
            .collector_processes()
            .iter()
            .filter(|p| p.env.get("PHOENIX_VARIANT").map(String::as_str) != Some("standing"))
            .map(|p| p.pid)
            .collect();
        pids.sort();
        pids
    };
    let measured = experiment_pids();
    assert_eq!(measured.len(), 2, "baseline and candidate run");

    let update = deploy("crashy").await.unwrap();
    assert!(
        update.status().is_success(),
        "{}",
        update.text().await.unwrap()
    );
    let updated = Instant::now();
    let back = eventually(
        "the agent went back to the last known good",
        WAIT,
        || async {
            let h = stack.host("crash-1").await?;
            standing(&h).filter(|c| {
                c.config_hash == good.config_hash
                    && c.rolled_back_from.is_some()
                    && c.health == phoenix_wire::agent::Health::Healthy
            })
        },
    )
    .await;
    let rolled_back_after = updated.elapsed();
    let rolled = back.rolled_back_from.unwrap();
    assert_ne!(rolled.config_hash, good.config_hash);
    assert_eq!(rolled.pipeline, "crashy");
    assert!(
        rolled.error.contains("crash-looped") && rolled.error.contains("stand-in crashed"),
        "{rolled:?}"
    );
    // The reconciler leaves it there: no second update, the good config stays.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let updates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agent_tasks WHERE unit_id = $1 AND spec_hash = $2",
    )
    .bind(&back.collector_id)
    .bind(&rolled.config_hash)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(
        updates, 1,
        "the failing config was sent once, not in a loop"
    );
    let still = standing(&stack.host("crash-1").await.unwrap()).unwrap();
    assert_eq!(
        (still.config_hash, still.pid),
        (good.config_hash.clone(), back.pid)
    );
    assert_eq!(
        experiment_pids(),
        measured,
        "the experiment's collectors untouched"
    );
    assert_eq!(stack.experiment("crashing").await.phase, Phase::Running);

    // A newer config is sent as usual and replaces the last known good.
    let fixed = deploy("process-topk").await.unwrap();
    assert!(fixed.status().is_success());
    eventually("the newer config runs", WAIT, || async {
        let h = stack.host("crash-1").await?;
        standing(&h).filter(|c| {
            c.pipeline == "process-topk"
                && c.rolled_back_from.is_none()
                && c.health == phoenix_wire::agent::Health::Healthy
        })
    })
    .await;
    let stop = stack
        .request(
            Method::POST,
            "/api/v1/experiments/crashing/stop",
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success());
    let agreed = converged(&stack, &[&agent], 1).await;
    println!(
        "crash loop after an update: back on the last known good {} ms after the update; after the stop, desired = actual in {} ms",
        rolled_back_after.as_millis(),
        agreed.as_millis()
    );
    assert_eq!(stack.experiment("crashing").await.phase, Phase::Stopped);
    drop(agent);
    stack.shutdown().await;
}

/// Prometheus hung during analysis: it accepts connections and never answers.
/// Each query gives up after the Prometheus timeout, the experiment waits in
/// `analyzing` for the analysis timeout, then fails with a reason naming
/// Prometheus; nothing is recorded as a pass, and nothing is left on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_hung_during_analysis_fails_the_experiment_naming_it() {
    // Accepts and holds every connection, never answering.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let stack = Stack::start_with(StackOptions {
        prometheus_url: Some(hung_url.clone()),
        prometheus_timeout: Duration::from_secs(3),
        analysis_timeout: Duration::from_secs(5),
        analysis_delay: Duration::from_secs(0),
        ..Default::default()
    })
    .await;
    let agent = AgentProcess::spawn(&stack.api_url, "hung-1", &[("role", "hung")]);
    stack.wait_for_host("hung-1").await;
    stack
        .create_experiment(&experiment_yaml("hung", "role: hung", "3s"))
        .await;
    stack.wait_for_phase("hung", Phase::Analyzing, WAIT).await;
    let analyzing = Instant::now();
    let failed = eventually("the experiment fails", WAIT, || async {
        let e = stack.experiment("hung").await;
        (e.phase != Phase::Analyzing).then_some(e)
    })
    .await;
    let failed_after = analyzing.elapsed();
    assert_eq!(failed.phase, Phase::Failed, "{failed:?}");
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "Prometheus at {hung_url} did not answer within 3s (hung or overloaded)"
        )),
        "the reason names the hung Prometheus: {reason}"
    );
    let verdict: Option<String> =
        sqlx::query_scalar("SELECT verdict FROM experiment_results WHERE experiment = 'hung'")
            .fetch_optional(&stack.pool)
            .await
            .unwrap()
            .flatten();
    assert_eq!(verdict, None, "nothing recorded as a verdict");
    let agreed = converged(&stack, &[&agent], 0).await;
    println!(
        "Prometheus hung: the experiment failed {} ms after analysis began (query timeout 3 s, analysis timeout 5 s): {reason}; desired = actual {} ms later",
        failed_after.as_millis(),
        agreed.as_millis()
    );
    holder.abort();
    drop(agent);
    stack.shutdown().await;
}

/// Promote racing rollback: both requests for the same completed experiment at
/// once, three times. Whichever wins, the outcome is one of the two consistent
/// ones (promoted, its rollback refused with 409; or promoted then rolled back),
/// the experiment's phase says which, and the host runs exactly the standing
/// pipeline that outcome implies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_racing_rollback_ends_consistent() {
    let stack = Stack::start().await;
    let agent = AgentProcess::spawn(&stack.api_url, "race-1", &[("role", "race")]);
    stack.wait_for_host("race-1").await;
    let doc = "apiVersion: phoenix.dev/v1\nkind: PipelineDeployment\nmetadata: {name: race-standing}\n\
               spec:\n  hosts: {selector: {role: race}}\n  pipeline: process-baseline\n";
    let deployed = stack
        .request(Method::POST, "/api/v1/deployments", OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(doc)
        .send()
        .await
        .unwrap();
    assert!(deployed.status().is_success());
    let standing_pipeline = || async {
        let h = stack.host("race-1").await?;
        h.collectors
            .iter()
            .find(|c| c.variant == phoenix_wire::agent::Variant::Standing)
            .filter(|c| c.health == phoenix_wire::agent::Health::Healthy)
            .map(|c| c.pipeline.clone())
    };
    eventually("the standing pipeline runs", WAIT, standing_pipeline).await;
    let mut outcomes = Vec::new();
    for round in 0..3 {
        let name = format!("race-{round}");
        stack
            .create_experiment(&experiment_yaml(&name, "role: race", "1h"))
            .await;
        stack.wait_for_phase(&name, Phase::Running, WAIT).await;
        // Stands in for the analyzer: a pass, then completed.
        sqlx::query(
            "INSERT INTO experiment_results (experiment, window_start, window_end, attempts, verdict, analyzed_at) \
             VALUES ($1, now() - interval '1 minute', now(), 1, 'pass', now())",
        )
        .bind(&name)
        .execute(&stack.pool)
        .await
        .unwrap();
        let mut conn = stack.pool.acquire().await.unwrap();
        assert!(
            phoenix_storage::experiments::transition(
                &mut conn,
                &name,
                Phase::Running,
                Phase::Completed,
                "test: analysis stood in for, verdict pass",
                None,
            )
            .await
            .unwrap()
        );
        drop(conn);
        let post = |action: &str| {
            stack
                .request(
                    Method::POST,
                    &format!("/api/v1/experiments/{name}/{action}"),
                    OPERATOR_TOKEN,
                )
                .send()
        };
        // Rollback a little later in one round, at once in the others.
        let delay = Duration::from_millis(if round == 1 { 20 } else { 0 });
        let (promote, rollback) = tokio::join!(post("promote"), async {
            tokio::time::sleep(delay).await;
            post("rollback").await
        });
        let (promote, rollback) = (
            promote.unwrap().status().as_u16(),
            rollback.unwrap().status().as_u16(),
        );
        assert_eq!(promote, 200, "promote of a completed experiment");
        let phase = stack.experiment(&name).await.phase;
        let expected_pipeline = match rollback {
            200 => {
                assert_eq!(phase, Phase::RolledBack);
                "process-baseline"
            }
            409 => {
                assert_eq!(phase, Phase::Promoted);
                "process-topk"
            }
            other => panic!("rollback answered {other}"),
        };
        let started = Instant::now();
        eventually("the host runs what the outcome implies", WAIT, || async {
            (standing_pipeline().await.as_deref() == Some(expected_pipeline)).then_some(())
        })
        .await;
        let on_it = started.elapsed();
        converged(&stack, &[&agent], 1).await;
        outcomes.push(format!(
            "round {round}: rollback answered {rollback}, experiment {phase}, host on {expected_pipeline} after {} ms, desired = actual after {} ms",
            on_it.as_millis(),
            started.elapsed().as_millis()
        ));
        if phase == Phase::Promoted {
            // The next round starts from the baseline again.
            let back = stack
                .request(
                    Method::POST,
                    &format!("/api/v1/experiments/{name}/rollback"),
                    OPERATOR_TOKEN,
                )
                .send()
                .await
                .unwrap();
            assert_eq!(back.status(), 200);
            eventually("back on the baseline", WAIT, || async {
                (standing_pipeline().await.as_deref() == Some("process-baseline")).then_some(())
            })
            .await;
        }
    }
    println!("promote racing rollback:\n  {}", outcomes.join("\n  "));
    drop(agent);
    stack.shutdown().await;
}

/// Debian's Pushgateway on `port`, its state in memory only.
fn pushgateway(port: u16, log: &std::path::Path) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    std::process::Command::new("/usr/bin/prometheus-pushgateway")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--persistence.file=")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start prometheus-pushgateway (apt-get install prometheus-pushgateway)")
}

/// The Pushgateway down while an experiment runs: the agent keeps its collectors
/// and logs each failed push; once the Pushgateway is back (same address, empty,
/// as after a restart) the host's groups are pushed again, and the stop of the
/// experiment leaves no collector, no group and no leased task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushgateway_down_keeps_collectors_and_pushes_resume() {
    let port = phoenix_e2e::measurement::free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("pushgateway.log");
    let mut gateway = pushgateway(port, &log);
    let url = format!("http://127.0.0.1:{port}");
    let stack = Stack::start().await;
    let groups = || async {
        let text = stack
            .http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            text.lines()
                .filter(|l| {
                    l.starts_with("phoenix_collector_rss_bytes{") && l.contains("host=\"push-1\"")
                })
                .count(),
        )
    };
    let agent = AgentProcess::spawn_with(
        &stack.api_url,
        "push-1",
        &[("role", "push")],
        &phoenix_e2e::bins::binary("stand-in-collector"),
        Some(&url),
    );
    stack.wait_for_host("push-1").await;
    stack
        .create_experiment(&experiment_yaml("pushed", "role: push", "1h"))
        .await;
    stack.wait_for_phase("pushed", Phase::Running, WAIT).await;
    eventually("both collectors pushed", WAIT, || async {
        (groups().await? == 2).then_some(())
    })
    .await;
    let running = agent.collector_pids();

    let _ = gateway.kill();
    let _ = gateway.wait();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(agent.collector_pids(), running, "collectors kept");
    assert!(
        agent.log().contains("cannot push to the pushgateway"),
        "the agent says so:\n{}",
        agent.log()
    );
    assert_eq!(stack.experiment("pushed").await.phase, Phase::Running);

    let mut gateway = pushgateway(port, &log);
    let back = Instant::now();
    eventually("pushes resume", WAIT, || async {
        (groups().await? == 2).then_some(())
    })
    .await;
    let resumed = back.elapsed();
    let stop = stack
        .request(
            Method::POST,
            "/api/v1/experiments/pushed/stop",
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success());
    let agreed = converged(&stack, &[&agent], 0).await;
    eventually("the host's groups are deleted", WAIT, || async {
        (groups().await? == 0).then_some(())
    })
    .await;
    println!(
        "Pushgateway down 5 s: collectors kept; pushes resumed {} ms after it was back; after the stop desired = actual in {} ms",
        resumed.as_millis(),
        agreed.as_millis()
    );
    let _ = gateway.kill();
    let _ = gateway.wait();
    drop(agent);
    stack.shutdown().await;
}

/// A tmpfs mounted on a directory for a test, lazily unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "phoenix-test"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(dir.to_path_buf())
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The agent's state directory full (a 4 MiB tmpfs, filled) while an experiment
/// runs: the running collectors and heartbeats carry on; a new experiment's
/// collectors cannot start, and that experiment fails with a reason naming the
/// full disk; stopping the running experiment still stops its collectors. Once
/// space is back, state.json is written again, so a restarted agent does not
/// bring the stopped collectors back, and desired = actual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_state_directory_full() {
    let stack = Stack::start().await;
    let mut agent = AgentProcess::unstarted(&stack.api_url, "full-1", &[("role", "full")]);
    let disk = SmallDisk::mount(&agent.state_dir, "4m");
    agent.start();
    stack.wait_for_host("full-1").await;
    stack
        .create_experiment(&experiment_yaml("before-full", "role: full", "1h"))
        .await;
    stack
        .wait_for_phase("before-full", Phase::Running, WAIT)
        .await;
    let running = eventually("two collectors", WAIT, || async {
        let pids = agent.collector_pids();
        (pids.len() == 2).then_some(pids)
    })
    .await;

    let filler = disk.fill();
    let full_at = chrono::Utc::now();
    stack
        .create_experiment(&experiment_yaml("while-full", "role: full", "1h"))
        .await;
    let failed = eventually("the new experiment fails", WAIT, || async {
        let e = stack.experiment("while-full").await;
        (e.phase == Phase::Failed).then_some(e)
    })
    .await;
    let reason = failed.reason.unwrap_or_default();
    assert!(
        reason.contains("No space left on device"),
        "the reason names the full disk: {reason}"
    );
    assert_eq!(agent.collector_pids(), running, "running collectors kept");
    // At the 60 s grace a live host's last_seen is renewed every 30 s (api
    // `liveness_renewal`), so it moves past `full_at` within 40 s.
    eventually("heartbeats carry on", Duration::from_secs(45), || async {
        stack
            .host("full-1")
            .await
            .filter(|h| h.state == HostState::Ready && h.last_seen > full_at)
            .map(|_| ())
    })
    .await;
    let stop = stack
        .request(
            Method::POST,
            "/api/v1/experiments/before-full/stop",
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success());
    eventually("the stop stops the collectors", WAIT, || async {
        agent.collector_pids().is_empty().then_some(())
    })
    .await;

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let agreed = converged(&stack, &[&agent], 0).await;
    eventually("state.json is written again", WAIT, || async {
        let state = std::fs::read_to_string(agent.state_dir.join("state.json")).ok()?;
        (!state.contains("before-full")).then_some(())
    })
    .await;
    agent.kill();
    agent.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        agent.collector_pids().is_empty(),
        "a restarted agent does not bring stopped collectors back:\n{}",
        agent.log()
    );
    let again = converged(&stack, &[&agent], 0).await;
    println!(
        "state directory full: the new experiment failed ({reason}); after space was back desired = actual in {} ms, and again {} ms after an agent restart",
        agreed.as_millis(),
        again.as_millis()
    );
    assert!(freed.elapsed() < Duration::from_secs(120));
    drop(disk);
    drop(agent);
    stack.shutdown().await;
}

/// Postgres stopped for 30 s while an experiment runs, then failing over to a
/// streaming replica (pg_basebackup from the machine's Postgres binaries),
/// promoted and put behind the same address. Meanwhile the api answers 503 at
/// once and the agent keeps its collectors; afterwards the api, the reconciler
/// (a new leadership epoch on the new primary) and the agent carry on without a
/// restart, with nothing written before the stop lost: the experiment is still
/// running, its stop reaches the host, and desired = actual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fails_over_to_a_promoted_replica_behind_the_same_address() {
    const DOWN: Duration = Duration::from_secs(30);
    let mut postgres =
        tokio::task::spawn_blocking(phoenix_e2e::throwaway::ThrowawayPostgres::start)
            .await
            .unwrap()
            .expect("a throwaway Postgres of this test's own");
    let stack = Stack::start_with(StackOptions {
        postgres: Some(postgres.url("postgres")),
        ..Default::default()
    })
    .await;
    let agent = AgentProcess::spawn(&stack.api_url, "failover-1", &[("role", "failover")]);
    stack.wait_for_host("failover-1").await;
    stack
        .create_experiment(&experiment_yaml("failover", "role: failover", "1h"))
        .await;
    stack.wait_for_phase("failover", Phase::Running, WAIT).await;
    let running = eventually("two collectors", WAIT, || async {
        let pids = agent.collector_pids();
        (pids.len() == 2).then_some(pids)
    })
    .await;
    let epoch_before: i64 = sqlx::query_scalar("SELECT max(epoch) FROM reconciler_leadership")
        .fetch_one(&stack.pool)
        .await
        .unwrap();

    let replica_port = tokio::task::block_in_place(|| postgres.start_replica()).expect("a replica");
    // The replica has caught up with what the stack wrote.
    let database = stack.database_url.rsplit('/').next().unwrap().to_string();
    let replica_url = format!("postgres://phoenix@127.0.0.1:{replica_port}/{database}");
    let replica = phoenix_storage::connect(&replica_url, 1).await.unwrap();
    eventually("the replica streams", WAIT, || async {
        let phase: Option<String> =
            sqlx::query_scalar("SELECT phase FROM experiments WHERE name = 'failover'")
                .fetch_optional(&replica)
                .await
                .ok()?;
        (phase.as_deref() == Some("running")).then_some(())
    })
    .await;
    replica.close().await;

    tokio::task::block_in_place(|| postgres.stop_server()).expect("stop the primary");
    let down_at = Instant::now();
    let ready = stack.http.get(stack.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while the database is away");
    assert!(down_at.elapsed() < Duration::from_secs(1));
    tokio::time::sleep(DOWN.saturating_sub(down_at.elapsed())).await;
    assert_eq!(agent.collector_pids(), running, "collectors kept");

    tokio::task::block_in_place(|| postgres.fail_over_to_replica()).expect("fail over");
    let back = Instant::now();
    eventually("ready on the new primary", WAIT, || async {
        let r = stack.http.get(stack.url("/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let ready_after = back.elapsed();
    let epoch_after = eventually("a leader on the new primary", WAIT, || async {
        let epoch: Option<i64> = sqlx::query_scalar("SELECT max(epoch) FROM reconciler_leadership")
            .fetch_one(&stack.pool)
            .await
            .ok()?;
        epoch.filter(|e| *e > epoch_before.max(0))
    })
    .await;
    assert_eq!(
        stack.experiment("failover").await.phase,
        Phase::Running,
        "nothing written before the stop was lost"
    );
    let stop = stack
        .request(
            Method::POST,
            "/api/v1/experiments/failover/stop",
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success(), "stop: {}", stop.status());
    let agreed = converged(&stack, &[&agent], 0).await;
    println!(
        "Postgres stopped {} s, then failed over to a promoted replica on the same address: ready {} ms after, leader epoch {epoch_before} -> {epoch_after}; the stop then converged (desired = actual) in {} ms",
        DOWN.as_secs(),
        ready_after.as_millis(),
        agreed.as_millis()
    );
    drop(agent);
    stack.shutdown().await;
    drop(postgres);
}
