//! The reconciler's background jobs do not hold each other up: with Prometheus hung
//! (it accepts connections and never answers) while an experiment waits for its
//! analysis, a new experiment still gets its tasks from the very next passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use phoenix_e2e::harness::{AgentProcess, Stack, StackOptions, eventually};
use phoenix_wire::view::Phase;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(60);

/// A "Prometheus" that accepts every connection and never answers. Counts the
/// connections accepted, and those the client gave up on (closed).
struct HungServer {
    url: String,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl HungServer {
    async fn start() -> HungServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        tokio::spawn({
            let (accepted, closed) = (accepted.clone(), closed.clone());
            async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let closed = closed.clone();
                    tokio::spawn(async move {
                        // Read the request and whatever follows; never write.
                        let mut buffer = [0u8; 4096];
                        while matches!(socket.read(&mut buffer).await, Ok(n) if n > 0) {}
                        closed.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
        });
        HungServer {
            url,
            accepted,
            closed,
        }
    }
}

fn experiment(name: &str, host: &str, duration: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {{name: {name}}}
spec:
  hosts: {{names: [{host}]}}
  baseline: {{pipeline: process-baseline}}
  candidate: {{pipeline: process-topk}}
  warmup: 0s
  duration: {duration}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_prometheus_does_not_delay_a_new_experiments_tasks() {
    let prometheus = HungServer::start().await;
    let stack = Stack::start_with(StackOptions {
        prometheus_url: Some(prometheus.url.clone()),
        analysis_timeout: Duration::from_secs(600),
        ..Default::default()
    })
    .await;
    let _web1 = AgentProcess::spawn(&stack.api_url, "web-1", &[]);
    let _web2 = AgentProcess::spawn(&stack.api_url, "web-2", &[]);
    eventually("two registered hosts", WAIT, || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM hosts")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
        (count == 2).then_some(())
    })
    .await;

    // The first experiment runs briefly, then its analysis hangs on Prometheus.
    stack
        .create_experiment(&experiment("measured", "web-1", "2s"))
        .await;
    stack
        .wait_for_phase("measured", Phase::Analyzing, WAIT)
        .await;
    eventually(
        "the analyzer to wait on the hung Prometheus",
        WAIT,
        || async { (prometheus.accepted.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;

    // A second experiment on the other host gets its tasks and runs while that
    // first request is still unanswered: the pass did not wait for the analysis.
    stack
        .create_experiment(&experiment("next", "web-2", "1h"))
        .await;
    stack.wait_for_phase("next", Phase::Running, WAIT).await;
    let tasks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agent_tasks WHERE host_id = 'web-2' AND action = 'start'",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(tasks, 2, "both collectors of `next` were asked for");
    assert_eq!(
        prometheus.closed.load(Ordering::SeqCst),
        0,
        "the analyzer's first request to Prometheus must still be waiting (it gives up after 30 s): \
         the new experiment was served while the analysis hung, not after it gave up"
    );
    assert_eq!(
        stack.experiment("measured").await.phase,
        Phase::Analyzing,
        "the hung analysis neither completes nor fails"
    );
    stack.shutdown().await;
}

/// The retention job prunes what only grew: finished tasks older than their
/// retention, events of experiments that ended (never of an active one), hosts
/// silent for days, config bodies no task names; it keeps everything newer (and
/// every body a task names), and counts what it removed on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_finished_tasks_events_and_long_gone_hosts() {
    let mut stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await;
    stack.register_host("gone-1", &[("role", "old")]).await;
    stack.register_host("live-1", &[("role", "live")]).await;
    stack
        .create_experiment(&experiment("current", "live-1", "1h"))
        .await;
    let sql = |q: &'static str| {
        let pool = stack.pool.clone();
        async move { sqlx::query(q).execute(&pool).await.unwrap() }
    };
    sql("UPDATE hosts SET last_seen = now() - interval '10 days' WHERE host_id = 'gone-1'").await;
    // Bodies by their (made-up) hashes: old and unnamed, old and named, new and unnamed.
    let (unnamed, named, fresh) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    sqlx::query(
        "INSERT INTO collector_configs (sha256, body, created_at) VALUES \
         ($1, 'x: 1', now() - interval '10 days'), ($2, 'x: 2', now() - interval '10 days'), \
         ($3, 'x: 3', now())",
    )
    .bind(&unnamed)
    .bind(&named)
    .bind(&fresh)
    .execute(&stack.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO agent_tasks (host_id, unit_id, action, spec_hash, status, updated_at, config_sha256) VALUES \
         ('gone-1', 'old.baseline', 'start', 'h1', 'succeeded', now() - interval '10 days', NULL), \
         ('gone-1', 'old.candidate', 'start', 'h2', 'failed', now() - interval '8 days', NULL), \
         ('live-1', 'recent.baseline', 'start', 'h3', 'succeeded', now() - interval '1 day', $1)",
    )
    .bind(&named)
    .execute(&stack.pool)
    .await
    .unwrap();
    sql(
        "INSERT INTO experiment_events (experiment, from_phase, to_phase, reason, at) VALUES \
         ('ancient', 'running', 'completed', 'done long ago', now() - interval '40 days'), \
         ('ancient', 'completed', 'completed', 'deleted by user', now() - interval '40 days'), \
         ('recent', 'running', 'completed', 'done yesterday', now() - interval '1 day')",
    )
    .await;
    // The active experiment's creation event is old too, and must stay.
    sql(
        "UPDATE experiment_events SET at = now() - interval '40 days' WHERE experiment = 'current'",
    )
    .await;

    stack.reconciler_config.retention_interval =
        phoenix_wire::duration::HumanDuration(Duration::from_secs(1));
    let metrics = phoenix_reconciler::metrics::Metrics::new();
    stack.spawn_reconciler_with(metrics.clone());
    let count = |q: &'static str| {
        let pool = stack.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(q)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    eventually("old rows pruned", WAIT, || async {
        (count("SELECT count(*) FROM agent_tasks WHERE unit_id LIKE 'old.%'").await == 0
            && count("SELECT count(*) FROM experiment_events WHERE experiment = 'ancient'").await
                == 0
            && count("SELECT count(*) FROM hosts WHERE host_id = 'gone-1'").await == 0
            && count("SELECT count(*) FROM collector_configs WHERE body = 'x: 1'").await == 0)
            .then_some(())
    })
    .await;
    assert_eq!(
        count("SELECT count(*) FROM agent_tasks WHERE unit_id = 'recent.baseline'").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM experiment_events WHERE experiment = 'recent'").await,
        1,
        "newer events stay"
    );
    assert_eq!(
        count("SELECT count(*) FROM experiment_events WHERE experiment = 'current' AND reason = 'created'").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM hosts WHERE host_id = 'live-1'").await,
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM collector_configs WHERE body IN ('x: 2', 'x: 3')").await,
        2,
        "a body a task names, and a new one, stay"
    );
    let text = metrics.encode();
    for line in [
        r#"phoenix_reconciler_pruned_rows_total{table="agent_tasks"} 2"#,
        r#"phoenix_reconciler_pruned_rows_total{table="experiment_events"} 2"#,
        r#"phoenix_reconciler_pruned_rows_total{table="hosts"} 1"#,
        r#"phoenix_reconciler_pruned_rows_total{table="collector_configs"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    stack.shutdown().await;
}
