//! The incremental reconcile pass (issue 16): a pass scoped to the hosts that
//! changed reads and writes only those hosts, a full pass completes the rest
//! without repeating anything, and a host's own report wakes a scoped pass that
//! acts on it long before the periodic resync. A deploying experiment is decided
//! by passes that read only the hosts that reported, from what earlier passes
//! found. A write larger than `--max-new-tasks-per-pass` is split over passes,
//! whole hosts at a time. Statements over a list of hosts or tasks are planned
//! for the list each run gives them, never from a plan made when the tables held
//! something else, and no session makes the triggers' statements plan per row.

use std::time::Duration;

use phoenix_e2e::harness::{OPERATOR_TOKEN, Stack, StackOptions, eventually};
use phoenix_reconciler::changes::Scope;
use phoenix_reconciler::lifecycle::DeployProgress;
use phoenix_reconciler::metrics::{Metrics, ScopeLabels};
use phoenix_storage::hosts::{self, HostFilter};
use phoenix_storage::leader::{LeaderLock, LeaderSettings};
use phoenix_storage::tasks;
use phoenix_wire::agent::{CollectorSpec, CollectorStatus, Health};
use phoenix_wire::view::Phase;
use reqwest::Method;

const WAIT: Duration = Duration::from_secs(60);

/// A standing pipeline on every `role: web` host.
const DEPLOYMENT: &str = r#"
apiVersion: phoenix.dev/v1
kind: PipelineDeployment
metadata: {name: standing-web}
spec:
  hosts: {selector: {role: web}}
  pipeline: process-topk
"#;

async fn deploy(stack: &Stack) {
    let response = stack
        .request(Method::POST, "/api/v1/deployments", OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(DEPLOYMENT)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

/// `(host, action, status)` of every task, ordered.
async fn tasks(stack: &Stack) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT host_id, action, status FROM agent_tasks ORDER BY host_id, id")
        .fetch_all(&stack.pool)
        .await
        .unwrap()
}

/// Three `role: web` hosts with the standing deployment and no reconciler: the
/// test leads by hand, and the roll-out job has started the first revision (which
/// reaches every host at once), so each host wants one start task.
async fn three_hosts_led_by_hand() -> (Stack, LeaderLock) {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await;
    for host in ["web-0", "web-1", "web-2"] {
        stack.register_host(host, &[("role", "web")]).await;
    }
    deploy(&stack).await;
    let lock = LeaderLock::try_acquire(&stack.database_url, LeaderSettings::default(), "test")
        .await
        .unwrap()
        .expect("nobody else leads");
    let settings = stack.reconciler_config.rollout_settings();
    phoenix_reconciler::rollout::advance(&stack.pool, &settings, lock.epoch())
        .await
        .unwrap();
    (stack, lock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_pass_touches_only_its_hosts_and_a_full_pass_completes_the_rest() {
    let (stack, mut lock) = three_hosts_led_by_hand().await;
    let epoch = lock.epoch();
    let config = &stack.reconciler_config;

    let scope = Scope::Hosts(vec!["web-1".to_string()]);
    let report = phoenix_reconciler::pass::run_pass(
        lock.connection(),
        config,
        epoch,
        scope,
        &mut Default::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(report.scope, Some("hosts"));
    assert_eq!(report.tasks_created, 1, "{report:?}");
    let start = |host: &str| (host.to_string(), "start".to_string(), "pending".to_string());
    assert_eq!(
        tasks(&stack).await,
        [start("web-1")],
        "only web-1 was looked at"
    );

    // The same scope again asks for nothing new (idempotent); a full pass adds
    // the other two hosts and nothing for web-1 a second time.
    let again = Scope::Hosts(vec!["web-1".to_string()]);
    let report = phoenix_reconciler::pass::run_pass(
        lock.connection(),
        config,
        epoch,
        again,
        &mut Default::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(report.tasks_created, 0, "{report:?}");
    let report = phoenix_reconciler::pass::run_pass(
        lock.connection(),
        config,
        epoch,
        Scope::Full,
        &mut Default::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.scope, report.tasks_created),
        (Some("full"), 2),
        "{report:?}"
    );
    assert_eq!(
        tasks(&stack).await,
        [start("web-0"), start("web-1"), start("web-2")]
    );

    // A host leaving the selector, seen by a pass scoped to it alone: its
    // unclaimed start is cancelled, the others' stay.
    stack.register_host("web-2", &[("role", "db")]).await;
    let scope = Scope::Hosts(vec!["web-2".to_string()]);
    let report = phoenix_reconciler::pass::run_pass(
        lock.connection(),
        config,
        epoch,
        scope,
        &mut Default::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(report.tasks_cancelled, 1, "{report:?}");
    let cancelled = (
        "web-2".to_string(),
        "start".to_string(),
        "cancelled".to_string(),
    );
    assert_eq!(
        tasks(&stack).await,
        [start("web-0"), start("web-1"), cancelled]
    );
    drop(lock);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_report_wakes_a_pass_for_that_host_long_before_the_resync() {
    // One resync an hour: only announced changes can move anything in this test.
    let mut stack = Stack::start_with(StackOptions {
        reconciler: false,
        resync: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let metrics = Metrics::new();
    stack.spawn_reconciler_with(metrics.clone());
    for host in ["web-0", "web-1"] {
        stack.register_host(host, &[("role", "web")]).await;
    }
    deploy(&stack).await;
    let start = |host: &str| (host.to_string(), "start".to_string(), "pending".to_string());
    eventually("a start task for each host", WAIT, || async {
        (tasks(&stack).await == [start("web-0"), start("web-1")]).then_some(())
    })
    .await;
    let passes = |scope: &'static str| {
        metrics
            .passes_by_scope
            .get_or_create(&ScopeLabels { scope })
            .get()
    };
    let scoped = || passes("hosts");
    // Let the passes the deployment asked for run first: a full pass still queued
    // when web-1 reports would take web-1's announcement into itself.
    eventually("the reconciler to settle", WAIT, || async {
        let seen = (passes("full"), scoped());
        tokio::time::sleep(Duration::from_secs(1)).await;
        (seen == (passes("full"), scoped())).then_some(())
    })
    .await;
    // What the reconciler hears from here on, heard alongside it.
    let mut heard = sqlx::postgres::PgListener::connect(&stack.database_url)
        .await
        .unwrap();
    heard.listen("phoenix_reconcile").await.unwrap();

    // web-1 reports a new label that changes nothing it should run: its report
    // names web-1 alone, and a pass scoped to hosts looks at it. (A relabel that
    // moves web-1 out of the deployment also changes the roll-out's progress,
    // which the roll-out job saves and announces as a table change: a pass that
    // hears both is rightly a full one.)
    let before = scoped();
    stack
        .register_host("web-1", &[("role", "web"), ("zone", "b")])
        .await;
    eventually("a pass scoped to hosts", WAIT, || async {
        (scoped() > before).then_some(())
    })
    .await;
    let mut announcements = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), heard.recv()).await {
        announcements.push(n.payload().to_string());
    }
    assert_eq!(announcements, ["host:web-1"]);

    // web-1 is relabelled out of the deployment: a pass cancels its start long
    // before the hourly resync.
    stack.register_host("web-1", &[("role", "db")]).await;
    let cancelled = (
        "web-1".to_string(),
        "start".to_string(),
        "cancelled".to_string(),
    );
    eventually("web-1's start cancelled", WAIT, || async {
        (tasks(&stack).await == [start("web-0"), cancelled.clone()]).then_some(())
    })
    .await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_write_is_split_over_passes_whole_hosts_at_a_time() {
    let (stack, mut lock) = three_hosts_led_by_hand().await;
    let epoch = lock.epoch();
    let mut config = stack.reconciler_config.clone();
    config.max_new_tasks_per_pass = 2;

    // Three hosts want a task each; a pass writes two, in host order, and says
    // one is left; the next writes it; the one after has nothing to do.
    let start = |host: &str| (host.to_string(), "start".to_string(), "pending".to_string());
    let mut written = Vec::new();
    for _ in 0..3 {
        let report = phoenix_reconciler::pass::run_pass(
            lock.connection(),
            &config,
            epoch,
            Scope::Full,
            &mut Default::default(),
            None,
        )
        .await
        .unwrap();
        written.push((report.tasks_created, report.tasks_deferred));
    }
    assert_eq!(written, [(2, 1), (1, 0), (0, 0)]);
    assert_eq!(
        tasks(&stack).await,
        [start("web-0"), start("web-1"), start("web-2")]
    );
    drop(lock);
    stack.shutdown().await;
}

/// An experiment on every `role: web` host.
const EXPERIMENT: &str = r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {name: deploy-progress}
spec:
  hosts: {selector: {role: web}}
  baseline: {pipeline: process-baseline}
  candidate: {pipeline: process-topk}
  warmup: 0s
  duration: 1h
"#;

/// Reports `host`'s experiment collectors healthy, with the configs its tasks name.
async fn report_healthy(stack: &Stack, host: &str) {
    let payloads: Vec<String> = sqlx::query_scalar(
        "SELECT payload::text FROM agent_tasks WHERE host_id = $1 AND kind = 'collector' \
         AND action = 'start' ORDER BY id",
    )
    .bind(host)
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert_eq!(payloads.len(), 2, "{host} has a start for each variant");
    let collectors: Vec<CollectorStatus> = payloads
        .iter()
        .map(|payload| {
            let spec: CollectorSpec = serde_json::from_str(payload).unwrap();
            CollectorStatus {
                collector_id: spec.collector_id,
                owner: spec.owner,
                variant: spec.variant,
                pipeline: spec.pipeline,
                config_hash: spec.config_hash,
                pid: Some(100),
                health: Health::Healthy,
                restarts: 0,
                cpu_seconds: 0.0,
                rss_bytes: 0,
                last_error: None,
                rolled_back_from: None,
            }
        })
        .collect();
    let status = serde_json::json!({
        "labels": {"role": "web"}, "agentVersion": "test", "collectors": collectors
    });
    let credential = stack.host_credential(host).await;
    let response = stack
        .request(
            Method::PUT,
            &format!("/agent/v1/hosts/{host}/status"),
            &credential,
        )
        .json(&status)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "{host}'s report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploying_experiment_runs_from_passes_that_read_only_the_hosts_that_reported() {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await;
    for host in ["web-0", "web-1", "web-2"] {
        stack.register_host(host, &[("role", "web")]).await;
    }
    stack.create_experiment(EXPERIMENT).await;
    let mut lock = LeaderLock::try_acquire(&stack.database_url, LeaderSettings::default(), "test")
        .await
        .unwrap()
        .expect("nobody else leads");
    let epoch = lock.epoch();
    let config = &stack.reconciler_config;
    let mut progress = DeployProgress::default();
    let mut pass = async |scope: Scope| {
        phoenix_reconciler::pass::run_pass(
            lock.connection(),
            config,
            epoch,
            scope,
            &mut progress,
            None,
        )
        .await
        .unwrap()
    };

    // The full pass starts deploying on all three hosts.
    let report = pass(Scope::Full).await;
    assert_eq!((report.hosts, report.tasks_created), (3, 6), "{report:?}");
    assert_eq!(
        report.transitions,
        [(
            "deploy-progress".to_string(),
            Phase::Pending,
            Phase::Deploying
        )]
    );

    // Two hosts report ready; a pass reads those two alone, and the experiment
    // waits for web-2.
    report_healthy(&stack, "web-0").await;
    report_healthy(&stack, "web-1").await;
    let scope = Scope::Hosts(vec!["web-0".into(), "web-1".into()]);
    let report = pass(scope).await;
    assert_eq!(
        (report.hosts, report.transitions.len()),
        (2, 0),
        "{report:?}"
    );
    let deploying = stack.experiment("deploy-progress").await;
    assert_eq!(deploying.phase, Phase::Deploying);
    let reason = deploying.reason.unwrap_or_default();
    assert!(reason.starts_with("deploying to 3 host(s)"), "{reason}");

    // The last one reports: a pass that reads web-2 alone runs the experiment.
    report_healthy(&stack, "web-2").await;
    let report = pass(Scope::Hosts(vec!["web-2".into()])).await;
    assert_eq!(report.hosts, 1, "{report:?}");
    assert_eq!(
        report.transitions,
        [(
            "deploy-progress".to_string(),
            Phase::Deploying,
            Phase::Running
        )]
    );
    let running = stack.experiment("deploy-progress").await;
    assert_eq!(
        running.reason.as_deref(),
        Some("both collectors healthy on all 3 host(s)")
    );
    drop(lock);
    stack.shutdown().await;
}

/// The statements `conn` has prepared that bind a list and that Postgres now runs
/// with a generic plan, made once for whatever the tables held then.
async fn generic_list_statements(conn: &mut sqlx::PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT statement FROM pg_prepared_statements \
         WHERE generic_plans > 0 AND statement ~ '(unnest|ANY)\\('",
    )
    .persistent(false)
    .fetch_all(conn)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_over_a_list_are_planned_for_each_run_and_triggers_keep_their_plans() {
    let (stack, mut lock) = three_hosts_led_by_hand().await;
    let hosts = ["web-0".to_string(), "web-1".to_string()];
    // What a pass and the api run over and over in a rollout, more than the five
    // runs after which Postgres may settle on a generic plan.
    for _ in 0..6 {
        tasks::list_open(lock.connection(), HostFilter::Only(&hosts))
            .await
            .unwrap();
        tasks::claim_many(lock.connection(), &hosts, Duration::from_secs(30), 3, 10)
            .await
            .unwrap();
        hosts::record_heartbeats(lock.connection(), &hosts)
            .await
            .unwrap();
    }
    assert_eq!(
        generic_list_statements(lock.connection()).await,
        Vec::<String>::new()
    );

    // The same read, prepared by name and run six times, does settle on one.
    sqlx::raw_sql(
        "PREPARE open_of(text[]) AS SELECT id FROM agent_tasks \
         WHERE status IN ('pending', 'leased') AND host_id = ANY($1)",
    )
    .execute(lock.connection())
    .await
    .unwrap();
    for _ in 0..6 {
        sqlx::raw_sql("EXECUTE open_of('{web-0}')")
            .execute(lock.connection())
            .await
            .unwrap();
    }
    let generic = generic_list_statements(lock.connection()).await;
    assert!(
        generic.len() == 1 && generic[0].contains("PREPARE open_of"),
        "{generic:?}"
    );

    // No session forces custom plans: that would plan the per-row triggers'
    // statements again for every row a rollout writes.
    let mut pooled = stack.pool.acquire().await.unwrap();
    for conn in [lock.connection(), &mut *pooled] {
        let mode: String = sqlx::query_scalar("SHOW plan_cache_mode")
            .fetch_one(conn)
            .await
            .unwrap();
        assert_eq!(mode, "auto");
    }
    drop(pooled);
    drop(lock);
    stack.shutdown().await;
}
