//! Backup and restore as docs/OPERATIONS.md gives them: a `pg_dump` taken while an
//! experiment runs, restored with `pg_restore` into a fresh database, a new api and
//! reconciler pointed at it. The experiment list, a report and the deployments read
//! the same as before, and the agents (real `phoenix-agent` processes, restarted
//! against the new api with their credentials and collectors) converge without a
//! second collector: every collector keeps its process.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use phoenix_e2e::harness::{
    AgentProcess, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN, eventually, fresh_database,
};
use phoenix_e2e::pgtools::{dump, restore};
use phoenix_storage::{experiments, results};
use phoenix_wire::report::{ExperimentReport, Verdict};
use phoenix_wire::view::Phase;
use reqwest::Method;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn experiment_yaml(name: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {{name: {name}}}
spec:
  hosts: {{selector: {{role: web}}}}
  baseline: {{pipeline: process-baseline}}
  candidate: {{pipeline: process-topk, vars: {{cpu_threshold: "0.2"}}}}
  warmup: 0s
  duration: 1h
"#
    )
}

fn deployment_yaml(threshold: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: PipelineDeployment
metadata: {{name: standing-web}}
spec:
  hosts: {{names: [web-1]}}
  pipeline: process-topk
  vars: {{cpu_threshold: "{threshold}"}}
"#
    )
}

async fn get(stack: &Stack, path: &str) -> Value {
    let response = stack
        .request(Method::GET, path, VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

/// What a user reads: the experiment list, the earlier experiment's report, the
/// deployments and the one deployment with its revisions.
async fn views(stack: &Stack) -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("experiments", get(stack, "/api/v1/experiments").await),
        (
            "report",
            get(stack, "/api/v1/experiments/earlier/report").await,
        ),
        ("deployments", get(stack, "/api/v1/deployments").await),
        (
            "deployment",
            get(stack, "/api/v1/deployments/standing-web").await,
        ),
    ])
}

/// `(experiment or deployment, variant) → pid` of an agent's collector processes;
/// panics on a second process for the same collector.
fn collectors(agent: &AgentProcess) -> BTreeMap<(String, String), u32> {
    let mut by_unit = BTreeMap::new();
    for process in agent.collector_processes() {
        let key = (
            process
                .env
                .get("PHOENIX_EXPERIMENT")
                .cloned()
                .unwrap_or_default(),
            process
                .env
                .get("PHOENIX_VARIANT")
                .cloned()
                .unwrap_or_default(),
        );
        if let Some(other) = by_unit.insert(key.clone(), process.pid) {
            panic!(
                "{} runs {key:?} twice: pids {other} and {}",
                agent.host_id, process.pid
            );
        }
    }
    by_unit
}

fn wanted(host: &str) -> Vec<(String, String)> {
    let mut units = vec![
        ("running".to_string(), "baseline".to_string()),
        ("running".to_string(), "candidate".to_string()),
    ];
    if host == "web-1" {
        units.push(("standing-web".to_string(), "standing".to_string()));
    }
    units.sort();
    units
}

async fn send(stack: &Stack, path: &str, yaml: &str) {
    let response = stack
        .request(Method::POST, path, OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(yaml.to_string())
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dump_taken_mid_experiment_restores_and_agents_converge_without_duplicates() {
    let stack = Stack::start().await;
    let mut agents = [
        AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]),
        AgentProcess::spawn(&stack.api_url, "web-2", &[("role", "web")]),
    ];
    for host in ["web-1", "web-2"] {
        eventually(&format!("{host} registered"), WAIT, || {
            let stack = &stack;
            async move {
                let r = stack
                    .request(Method::GET, &format!("/api/v1/hosts/{host}"), VIEWER_TOKEN)
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }
    // An experiment that completed earlier, with its report (the analysis stood in
    // for, as in promotion.rs), and one running when the dump is taken.
    stack.create_experiment(&experiment_yaml("earlier")).await;
    stack.wait_for_phase("earlier", Phase::Running, WAIT).await;
    {
        let mut conn = stack.pool.acquire().await.unwrap();
        let end = Utc::now();
        let start = end - chrono::Duration::minutes(10);
        results::begin(&mut conn, "earlier", start, end)
            .await
            .unwrap();
        let report = ExperimentReport {
            experiment: "earlier".into(),
            window_start: start,
            window_end: end,
            analyzed_at: end,
            verdict: Verdict::Pass,
            criteria: Vec::new(),
            baseline: Default::default(),
            candidate: Default::default(),
            hosts: BTreeMap::new(),
            cpu_test: None,
            memory_test: None,
            price_per_million_dpm: 0.5,
            error_control: None,
            fidelity: None,
            evidence: None,
            ignored_hosts: Vec::new(),
            incidents: Vec::new(),
        };
        results::store(&mut conn, &report).await.unwrap();
        assert!(
            experiments::transition(
                &mut conn,
                "earlier",
                Phase::Running,
                Phase::Completed,
                "test: analysis stood in for",
                None,
            )
            .await
            .unwrap()
        );
    }
    stack.create_experiment(&experiment_yaml("running")).await;
    send(&stack, "/api/v1/deployments", &deployment_yaml("0.1")).await;
    send(&stack, "/api/v1/deployments", &deployment_yaml("0.2")).await;
    stack.wait_for_phase("running", Phase::Running, WAIT).await;
    for agent in &agents {
        eventually(
            &format!("{} to run what is wanted", agent.host_id),
            WAIT,
            || {
                let units: Vec<_> = collectors(agent).into_keys().collect();
                async move { (units == wanted(&agent.host_id)).then_some(()) }
            },
        )
        .await;
    }
    // Settled: the roll-out finished and every collector reported healthy, so no
    // report or roll-out step lands between reading the views and the dump.
    eventually(
        "the roll-out done and every collector healthy",
        WAIT,
        || {
            let stack = &stack;
            async move {
                let deployment = get(stack, "/api/v1/deployments/standing-web").await;
                if deployment["rollout"]["state"] != "done" {
                    return None;
                }
                for host in ["web-1", "web-2"] {
                    let view = get(stack, &format!("/api/v1/hosts/{host}")).await;
                    let collectors = view["collectors"].as_array()?;
                    if collectors.len() != wanted(host).len()
                        || collectors.iter().any(|c| c["health"] != "healthy")
                    {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    let pids: Vec<_> = agents.iter().map(collectors).collect();
    // The agents stop (SIGKILL: their collectors keep running) before the views
    // are read, so what hosts report cannot change between the views and the dump.
    for agent in &mut agents {
        agent.kill();
    }
    let before = views(&stack).await;
    assert_eq!(before["report"]["verdict"], "pass");
    assert_eq!(before["deployment"]["revision"], 2);

    // The backup, mid-experiment, as docs/OPERATIONS.md takes it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("phoenix.dump");
    let started = std::time::Instant::now();
    dump(&stack.database_url, &file);
    println!(
        "pg_dump: {} bytes in {:.2?}",
        std::fs::metadata(&file).unwrap().len(),
        started.elapsed()
    );
    // The old installation goes away; the agents come back to the new one.
    stack.shutdown().await;

    let restored_url = fresh_database().await;
    let started = std::time::Instant::now();
    restore(&file, &restored_url);
    println!("pg_restore: {:.2?}", started.elapsed());
    let stack = Stack::start_with(StackOptions {
        database_url: Some(restored_url),
        ..Default::default()
    })
    .await;
    let after = views(&stack).await;
    for (what, view) in &before {
        assert_eq!(&after[what], view, "{what} differs after the restore");
    }

    let restarted = Utc::now();
    for agent in &mut agents {
        agent.api_url = stack.api_url.clone();
        agent.start();
    }
    // Converged: every host, heard from since its agent came back, reports each
    // wanted collector healthy …
    eventually("both hosts reporting healthy collectors", WAIT, || {
        let stack = &stack;
        async move {
            for host in ["web-1", "web-2"] {
                let view = get(stack, &format!("/api/v1/hosts/{host}")).await;
                let seen: chrono::DateTime<Utc> =
                    serde_json::from_value(view["lastSeen"].clone()).ok()?;
                if seen < restarted {
                    return None;
                }
                let healthy = view["collectors"]
                    .as_array()
                    .map(|cs| cs.iter().filter(|c| c["health"] == "healthy").count())
                    .unwrap_or(0);
                if healthy != wanted(host).len() {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    // … and, a few passes later, still by the processes from before the restore:
    // nothing was started twice, nothing restarted.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (agent, pids) in agents.iter().zip(&pids) {
        assert_eq!(
            &collectors(agent),
            pids,
            "{}: {}",
            agent.host_id,
            agent.log()
        );
    }
    assert_eq!(stack.experiment("running").await.phase, Phase::Running);
    for agent in &mut agents {
        agent.kill();
    }
    stack.shutdown().await;
}
