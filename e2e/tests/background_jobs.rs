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
