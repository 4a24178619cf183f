//! The control-plane backbone end to end: the real api and reconciler on a real
//! Postgres, and real `phoenix-agent` processes supervising real collector
//! processes (`stand-in-collector`, which the supervisor cannot tell from the
//! OpenTelemetry Collector).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use phoenix_e2e::harness::{
    AgentProcess, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN, eventually,
};
use phoenix_reconciler::changes::Scope;
use phoenix_storage::hosts::HostFilter;
use phoenix_storage::{tasks, templates};
use phoenix_wire::agent::{TaskBatch, TaskOutcome, Variant};
use phoenix_wire::policy::CheckedConfig;
use phoenix_wire::view::{Host, List, Phase};
use reqwest::Method;
use sqlx::Connection;

const WAIT: Duration = Duration::from_secs(60);

fn experiment_yaml(name: &str, selector: &str, candidate: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata:
  name: {name}
spec:
  hosts: {{selector: {{{selector}}}}}
  baseline: {{pipeline: process-baseline}}
  candidate: {{pipeline: {candidate}, vars: {{cpu_threshold: "0.2"}}}}
  warmup: 0s
  duration: 1h
  criticalProcesses: [nginx, postgres]
"#
    )
}

async fn hosts(stack: &Stack) -> Vec<Host> {
    let response = stack
        .request(Method::GET, "/api/v1/hosts", VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    response.json::<List<Host>>().await.unwrap().items
}

async fn wait_for_hosts(stack: &Stack, n: usize) {
    eventually(&format!("{n} registered hosts"), WAIT, || async {
        (hosts(stack).await.len() == n).then_some(())
    })
    .await;
}

/// Waits until the agent runs exactly `n` collector processes.
async fn wait_for_processes(
    agent: &AgentProcess,
    n: usize,
) -> Vec<phoenix_e2e::harness::CollectorProcess> {
    let what = format!("{n} collector processes on {}", agent.host_id);
    tokio::time::timeout(WAIT, async {
        loop {
            let found = agent.collector_processes();
            if found.len() == n {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}; agent log:\n{}", agent.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_runs_on_the_selected_hosts_only_and_delete_stops_everything() {
    let stack = Stack::start().await;
    let web1 = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web"), ("zone", "a")]);
    let web2 = AgentProcess::spawn(&stack.api_url, "web-2", &[("role", "web"), ("zone", "b")]);
    let db1 = AgentProcess::spawn(&stack.api_url, "db-1", &[("role", "db"), ("zone", "a")]);
    wait_for_hosts(&stack, 3).await;

    stack
        .create_experiment(&experiment_yaml("topk-web", "role: web", "process-topk"))
        .await;
    stack.wait_for_phase("topk-web", Phase::Running, WAIT).await;
    let experiment = stack.experiment("topk-web").await;
    assert_eq!(
        experiment.target_hosts,
        vec!["web-1".to_string(), "web-2".to_string()]
    );

    let mut conn = stack.pool.acquire().await.unwrap();
    let baseline_config = templates::get(&mut conn, "process-baseline")
        .await
        .unwrap()
        .config;
    let topk_config = templates::get(&mut conn, "process-topk")
        .await
        .unwrap()
        .config;
    for agent in [&web1, &web2] {
        let processes = wait_for_processes(agent, 2).await;
        let variants: BTreeSet<&str> = processes
            .iter()
            .map(|p| p.env["PHOENIX_VARIANT"].as_str())
            .collect();
        assert_eq!(variants, BTreeSet::from(["baseline", "candidate"]));
        for p in &processes {
            assert_eq!(p.env["PHOENIX_EXPERIMENT"], "topk-web");
            assert_eq!(p.env["PHOENIX_HOST"], agent.host_id);
            assert_eq!(
                p.env["PHOENIX_CRITICAL_PROCESSES_REGEX"],
                "^(nginx|postgres)$"
            );
            let expected = if p.env["PHOENIX_VARIANT"] == "baseline" {
                &baseline_config
            } else {
                &topk_config
            };
            assert_eq!(
                p.config(),
                CheckedConfig::canonical_text(expected).unwrap(),
                "the collector runs the rendered template, as checked canonical JSON"
            );
            if p.env["PHOENIX_VARIANT"] == "candidate" {
                assert_eq!(p.env["PHOENIX_VAR_CPU_THRESHOLD"], "0.2");
            }
        }
        // Baseline and candidate never share a port.
        let ports: BTreeSet<&str> = processes
            .iter()
            .map(|p| p.env["PHOENIX_HEALTH_PORT"].as_str())
            .collect();
        assert_eq!(ports.len(), 2);
    }
    assert!(
        db1.collector_processes().is_empty(),
        "the unselected host runs nothing"
    );

    // The API shows what the agents report.
    let reported = hosts(&stack).await;
    for host in &reported {
        let expected = if host.host_id.starts_with("web") {
            2
        } else {
            0
        };
        assert_eq!(host.collectors.len(), expected, "{}", host.host_id);
    }

    let response = stack
        .request(
            Method::DELETE,
            "/api/v1/experiments/topk-web",
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    wait_for_processes(&web1, 0).await;
    wait_for_processes(&web2, 0).await;
    eventually("the API to show no collectors", WAIT, || async {
        hosts(&stack)
            .await
            .iter()
            .all(|h| h.collectors.is_empty())
            .then_some(())
    })
    .await;
    drop((web1, web2, db1));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_comes_back_to_exactly_its_collectors_and_dead_collectors_restart() {
    let stack = Stack::start().await;
    let mut agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    wait_for_hosts(&stack, 1).await;
    stack
        .create_experiment(&experiment_yaml("crashy", "role: web", "process-topk"))
        .await;
    stack.wait_for_phase("crashy", Phase::Running, WAIT).await;
    let before: BTreeSet<u32> = wait_for_processes(&agent, 2)
        .await
        .iter()
        .map(|p| p.pid)
        .collect();

    agent.kill();
    // The collectors outlive their agent (it never kills them because it is down).
    assert_eq!(
        agent
            .collector_processes()
            .iter()
            .map(|p| p.pid)
            .collect::<BTreeSet<_>>(),
        before
    );
    agent.start();
    // Back to exactly two, and they are the same processes: adopted, not orphaned.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: BTreeSet<u32> = wait_for_processes(&agent, 2)
        .await
        .iter()
        .map(|p| p.pid)
        .collect();
    assert_eq!(after, before, "the restarted agent adopts its collectors");
    assert_eq!(stack.experiment("crashy").await.phase, Phase::Running);

    // A collector that dies is restarted, and the restart is reported.
    let victim = *after.iter().next().unwrap();
    // SAFETY: kill(2) on a pid of our own test's collector.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let replaced = eventually("a restarted collector", WAIT, || async {
        let pids: BTreeSet<u32> = agent.collector_processes().iter().map(|p| p.pid).collect();
        (pids.len() == 2 && !pids.contains(&victim)).then_some(pids)
    })
    .await;
    assert_eq!(replaced.len(), 2);
    eventually("restarts=1 reported to the API", WAIT, || async {
        let host = hosts(&stack)
            .await
            .into_iter()
            .find(|h| h.host_id == "web-1")?;
        host.collectors
            .iter()
            .any(|c| c.restarts == 1)
            .then_some(())
    })
    .await;
    drop(agent);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_delivered_twice_changes_nothing() {
    let stack = Stack::start().await;
    let agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    wait_for_hosts(&stack, 1).await;
    stack
        .create_experiment(&experiment_yaml("twice", "role: web", "process-topk"))
        .await;
    stack.wait_for_phase("twice", Phase::Running, WAIT).await;
    let pids: BTreeSet<u32> = wait_for_processes(&agent, 2)
        .await
        .iter()
        .map(|p| p.pid)
        .collect();

    // Deliver the baseline's start task again, exactly as the reconciler wrote it.
    let mut conn = stack.pool.acquire().await.unwrap();
    let payload: serde_json::Value = sqlx::query_scalar(
        "SELECT payload FROM agent_tasks WHERE unit_id = 'twice.baseline' AND action = 'start' LIMIT 1",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let spec: phoenix_wire::agent::CollectorSpec = serde_json::from_value(payload).unwrap();
    assert_eq!(spec.variant, Variant::Baseline);
    let again = tasks::NewTask::apply(
        "web-1",
        phoenix_wire::agent::TaskAction::Start,
        phoenix_wire::agent::UnitSpec::Collector(spec),
    );
    assert_eq!(tasks::insert(&mut conn, &[again]).await.unwrap(), 1);
    eventually("the repeated task to succeed", WAIT, || async {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM agent_tasks WHERE status IN ('pending', 'leased')",
        )
        .fetch_one(&stack.pool)
        .await
        .unwrap();
        (open == 0).then_some(())
    })
    .await;
    let after: BTreeSet<u32> = agent.collector_processes().iter().map(|p| p.pid).collect();
    assert_eq!(
        after, pids,
        "applying the same hash again must not restart anything"
    );
    drop(agent);
    stack.shutdown().await;
}

async fn claim(stack: &Stack, host_id: &str) -> TaskBatch {
    stack
        .request(
            Method::GET,
            &format!("/agent/v1/hosts/{host_id}/tasks?wait=0s"),
            &stack.host_credential(host_id).await,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_lease_expires_and_the_task_is_delivered_again() {
    let stack = Stack::start_with(StackOptions {
        task_lease: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    stack.register_host("web-1", &[("role", "web")]).await;
    stack
        .create_experiment(&experiment_yaml("lease", "role: web", "process-topk"))
        .await;
    let first = eventually("tasks for web-1", WAIT, || async {
        let batch = claim(&stack, "web-1").await;
        (!batch.tasks.is_empty()).then_some(batch)
    })
    .await;
    assert!(first.tasks.iter().all(|t| t.attempt == 1));
    // Leased: not delivered again while the lease holds.
    assert!(claim(&stack, "web-1").await.tasks.is_empty());
    // Not answered: after the lease it comes back, counted as a second attempt.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = claim(&stack, "web-1").await;
    let ids = |b: &TaskBatch| b.tasks.iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(&second), ids(&first));
    assert!(second.tasks.iter().all(|t| t.attempt == 2));
    // Answering twice is harmless: the second answer changes nothing.
    let task = &second.tasks[0];
    for _ in 0..2 {
        let response = stack
            .request(
                Method::POST,
                &format!("/agent/v1/hosts/web-1/tasks/{}", task.id),
                &stack.host_credential("web-1").await,
            )
            .json(&TaskOutcome {
                ok: true,
                error: None,
            })
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
    let status: String = sqlx::query_scalar("SELECT status FROM agent_tasks WHERE id = $1")
        .bind(task.id)
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(status, "succeeded");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reconcilers_never_emit_duplicate_tasks() {
    let mut stack = Stack::start().await;
    stack.spawn_reconciler();
    for i in 0..5 {
        stack
            .register_host(&format!("web-{i}"), &[("role", "web")])
            .await;
    }
    stack
        .create_experiment(&experiment_yaml("dupes", "role: web", "process-topk"))
        .await;
    stack.wait_for_phase("dupes", Phase::Deploying, WAIT).await;
    // Besides the two elected replicas, run unelected passes side by side: the
    // unique index alone must hold the line.
    let config = stack.reconciler_config.clone();
    let mut a = sqlx::PgConnection::connect(&stack.database_url)
        .await
        .unwrap();
    let mut b = sqlx::PgConnection::connect(&stack.database_url)
        .await
        .unwrap();
    // As the current leader's epoch: the fence lets them write.
    let (epoch, _) = phoenix_storage::leader::current(&mut a).await.unwrap();
    for _ in 0..5 {
        let (mut progress_a, mut progress_b) = Default::default();
        let (ra, rb) = tokio::join!(
            phoenix_reconciler::pass::run_pass(
                &mut a,
                &config,
                epoch,
                Scope::Full,
                &mut progress_a,
                None,
            ),
            phoenix_reconciler::pass::run_pass(
                &mut b,
                &config,
                epoch,
                Scope::Full,
                &mut progress_b,
                None,
            )
        );
        // A pass that lost a race to a conflicting write may fail; it must not duplicate.
        let _ = (ra, rb);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM agent_tasks GROUP BY host_id, unit_id, spec_hash, action \
         HAVING count(*) > 1) d",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(duplicates, 0);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_tasks")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(total, 10, "one start per collector per host");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_keeps_failing_fails_the_experiment_with_its_error() {
    let stack = Stack::start().await;
    let agent = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    wait_for_hosts(&stack, 1).await;
    // A template the stand-in collector refuses to start with.
    sqlx::query(
        "INSERT INTO pipeline_templates (name, config) \
         VALUES ('broken', 'processors:\n  transform/stand-in-fail-start:\n    error_mode: ${env:PHOENIX_VAR_CPU_THRESHOLD:-0.1}\n')",
    )
    .execute(&stack.pool)
    .await
    .unwrap();
    stack
        .create_experiment(&experiment_yaml("doomed", "role: web", "broken"))
        .await;
    let failed = eventually("the experiment to fail", WAIT, || async {
        let e = stack.experiment("doomed").await;
        (e.phase == Phase::Failed).then_some(e)
    })
    .await;
    let reason = failed.reason.unwrap();
    assert!(reason.contains("doomed.candidate"), "{reason}");
    assert!(reason.contains("web-1"), "{reason}");
    assert!(
        reason.contains("stand-in asked to fail"),
        "the collector's own error text: {reason}"
    );
    // And the failed experiment's collectors are cleaned up.
    wait_for_processes(&agent, 0).await;
    drop(agent);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_that_times_out_names_the_hosts_that_were_not_ready() {
    let stack = Stack::start_with(StackOptions {
        deploy_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    stack.register_host("silent-1", &[("role", "web")]).await; // no agent behind it
    stack
        .create_experiment(&experiment_yaml("slow", "role: web", "process-topk"))
        .await;
    let failed = eventually("the deploy to time out", WAIT, || async {
        let e = stack.experiment("slow").await;
        (e.phase == Phase::Failed).then_some(e)
    })
    .await;
    let reason = failed.reason.unwrap();
    assert!(reason.starts_with("deploy timed out after 2s"), "{reason}");
    assert!(
        reason.contains("silent-1: slow.baseline not running"),
        "{reason}"
    );
    stack.shutdown().await;
}

/// A rollout's commit wakes many long-polls at once; their claims are coalesced
/// into few statements, and still every agent gets exactly its own tasks, oldest
/// first, at most the per-answer limit each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiting_agents_each_get_exactly_their_own_tasks() {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await;
    const HOSTS: usize = 200;
    let host = |i: usize| format!("burst-{i:03}");
    let mut polls = Vec::new();
    for i in 0..HOSTS {
        stack.register_host(&host(i), &[]).await;
        let poll = stack
            .request(
                Method::GET,
                &format!("/agent/v1/hosts/{}/tasks?wait=30s", host(i)),
                &stack.host_credential(&host(i)).await,
            )
            .send();
        polls.push(tokio::spawn(async move {
            poll.await.unwrap().json::<TaskBatch>().await.unwrap()
        }));
    }
    // Let every long-poll settle into its wait, then write all tasks in one
    // statement, as a reconcile pass does: two per host.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let new_tasks: Vec<tasks::NewTask> = (0..HOSTS)
        .flat_map(|i| {
            ["a", "b"].map(|unit| {
                tasks::NewTask::stop(
                    &host(i),
                    phoenix_wire::agent::TaskKind::Collector,
                    &format!("burst.{unit}"),
                )
            })
        })
        .collect();
    let mut conn = stack.pool.acquire().await.unwrap();
    assert_eq!(
        tasks::insert(&mut conn, &new_tasks).await.unwrap(),
        2 * HOSTS as u64
    );
    for (i, poll) in polls.into_iter().enumerate() {
        let batch = tokio::time::timeout(Duration::from_secs(20), poll)
            .await
            .expect("every waiting agent is answered")
            .unwrap();
        let units: Vec<&str> = batch
            .tasks
            .iter()
            .map(|t| t.collector_id.as_str())
            .collect();
        assert_eq!(units, ["burst.a", "burst.b"], "host {}", host(i));
    }
    // Each task went to one agent once: nothing is left to claim.
    let leftover = tasks::claim_many(
        &mut conn,
        &(0..HOSTS).map(host).collect::<Vec<_>>(),
        Duration::from_secs(60),
        5,
        64,
    )
    .await
    .unwrap();
    assert!(leftover.is_empty(), "{leftover:?}");

    // The per-host limit holds in a batch, oldest first.
    let more: Vec<tasks::NewTask> = ["x", "y", "z"]
        .map(|unit| {
            tasks::NewTask::stop(
                &host(0),
                phoenix_wire::agent::TaskKind::Collector,
                &format!("more.{unit}"),
            )
        })
        .into();
    tasks::insert(&mut conn, &more).await.unwrap();
    let claimed = tasks::claim_many(
        &mut conn,
        &[host(0), host(1)],
        Duration::from_secs(60),
        5,
        2,
    )
    .await
    .unwrap();
    let units: Vec<&str> = claimed[&host(0)]
        .iter()
        .map(|t| t.collector_id.as_str())
        .collect();
    assert_eq!(units, ["more.x", "more.y"]);
    assert!(!claimed.contains_key(&host(1)));
    drop(conn);
    stack.shutdown().await;
}

/// Between an agent's answer to a start and its next status report, the task
/// still counts as open for the reconciler's diff; the report ends that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_task_stays_open_until_the_host_reports() {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await;
    stack.register_host("answer-1", &[]).await;
    let mut conn = stack.pool.acquire().await.unwrap();
    let task = tasks::NewTask::stop(
        "answer-1",
        phoenix_wire::agent::TaskKind::Collector,
        "exp.baseline",
    );
    tasks::insert(&mut conn, &[task]).await.unwrap();
    let claimed = tasks::claim(&mut conn, "answer-1", Duration::from_secs(60), 5, 64)
        .await
        .unwrap();
    let outcome = TaskOutcome {
        ok: true,
        error: None,
    };
    assert!(
        tasks::complete(&mut conn, "answer-1", claimed[0].id, &outcome)
            .await
            .unwrap()
    );
    let open = tasks::list_open(&mut conn, HostFilter::All).await.unwrap();
    assert_eq!(
        open.iter().map(|t| t.status.as_str()).collect::<Vec<_>>(),
        ["succeeded"]
    );
    // A second answer changes nothing; an unknown task is an error.
    assert!(
        !tasks::complete(&mut conn, "answer-1", claimed[0].id, &outcome)
            .await
            .unwrap()
    );
    assert!(
        tasks::complete(&mut conn, "answer-2", claimed[0].id, &outcome)
            .await
            .is_err()
    );
    drop(conn);
    stack.register_host("answer-1", &[]).await;
    let mut conn = stack.pool.acquire().await.unwrap();
    assert!(
        tasks::list_open(&mut conn, HostFilter::All)
            .await
            .unwrap()
            .is_empty()
    );
    drop(conn);
    stack.shutdown().await;
}

/// A healthy collector `id` as an agent reports it.
fn reported(id: &str) -> phoenix_wire::agent::CollectorStatus {
    phoenix_wire::agent::CollectorStatus {
        collector_id: id.into(),
        owner: "exp".into(),
        variant: Variant::Baseline,
        pipeline: "process-baseline".into(),
        config_hash: format!("hash-of-{id}"),
        pid: Some(42),
        health: phoenix_wire::agent::Health::Healthy,
        restarts: 0,
        cpu_seconds: 1.5,
        rss_bytes: 1 << 20,
        last_error: None,
        rolled_back_from: None,
    }
}

fn status(role: &str, collectors: &[&str]) -> phoenix_wire::agent::HostStatus {
    phoenix_wire::agent::HostStatus {
        labels: [("role".to_string(), role.to_string())].into(),
        agent_version: "test".into(),
        collectors: collectors.iter().map(|id| reported(id)).collect(),
        load: vec![],
        max_load_processes: 7,
    }
}

/// `host → its collector ids`, as stored.
async fn stored_collectors(stack: &Stack) -> BTreeMap<String, Vec<String>> {
    let mut conn = stack.pool.acquire().await.unwrap();
    phoenix_storage::hosts::collectors_by_host(&mut conn, HostFilter::All)
        .await
        .unwrap()
        .into_iter()
        .map(|(host, cs)| (host, cs.into_iter().map(|c| c.collector_id).collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_stored_in_one_batch_replace_each_hosts_own_state() {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await;
    let mut conn = stack.pool.acquire().await.unwrap();
    // One batch: web-0 twice (its last report wins), web-1 once.
    let batch = [
        ("web-0".to_string(), status("web", &["a", "b"])),
        ("web-1".to_string(), status("db", &["c"])),
        ("web-0".to_string(), status("web", &["d"])),
    ];
    phoenix_storage::hosts::report_statuses(&mut conn, &batch)
        .await
        .unwrap();
    let expected = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(h, cs)| (h.to_string(), cs.iter().map(|c| c.to_string()).collect()))
            .collect()
    };
    assert_eq!(
        stored_collectors(&stack).await,
        expected(&[("web-0", &["d"]), ("web-1", &["c"])])
    );
    // A later batch naming web-1 alone leaves web-0 as it was.
    let batch = [("web-1".to_string(), status("db", &[]))];
    phoenix_storage::hosts::report_statuses(&mut conn, &batch)
        .await
        .unwrap();
    assert_eq!(
        stored_collectors(&stack).await,
        expected(&[("web-0", &["d"])])
    );
    drop(conn);

    // Through the api: 40 hosts report at once (the reports coalesce), and each
    // host is listed with its own labels and collector.
    let reports = (0..40).map(|i| {
        let stack = &stack;
        async move {
            let host = format!("burst-{i:02}");
            let credential = stack.host_credential(&host).await;
            let id = format!("c-{i:02}");
            let response = stack
                .request(
                    Method::PUT,
                    &format!("/agent/v1/hosts/{host}/status"),
                    &credential,
                )
                .json(&status(&format!("r{i}"), &[&id]))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 204, "{host}");
        }
    });
    futures_util::future::join_all(reports).await;
    let listed = hosts(&stack).await;
    for i in 0..40 {
        let host = listed
            .iter()
            .find(|h| h.host_id == format!("burst-{i:02}"))
            .unwrap_or_else(|| panic!("burst-{i:02} is listed"));
        assert_eq!(host.labels.get("role"), Some(&format!("r{i}")));
        let ids: Vec<&str> = host
            .collectors
            .iter()
            .map(|c| c.collector_id.as_str())
            .collect();
        assert_eq!(ids, [format!("c-{i:02}")]);
    }
    stack.shutdown().await;
}
