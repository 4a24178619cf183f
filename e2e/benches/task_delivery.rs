//! How fast does a new task reach an agent that is waiting in a long-poll?
//!
//! A real api on a real Postgres; a client speaking the agent protocol waits in
//! `GET tasks?wait=30s`; the benchmark writes a task (as the reconciler does) and
//! measures the time from the write's commit to the agent holding the task.
//! Run: `cargo bench -p phoenix-e2e --bench task_delivery`.

use std::time::{Duration, Instant};

use phoenix_e2e::harness::{Stack, StackOptions};
use phoenix_storage::tasks::{self, NewTask};
use phoenix_wire::agent::{TaskBatch, TaskOutcome};
use reqwest::Method;

const ROUNDS: usize = 100;

#[tokio::main]
async fn main() {
    // The api alone: a reconciler would rightly cancel tasks nobody desires.
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await;
    stack.register_host("bench-1", &[]).await;
    let credential = stack.host_credential("bench-1").await;

    let mut latencies = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let poll = stack
            .request(
                Method::GET,
                "/agent/v1/hosts/bench-1/tasks?wait=30s",
                &credential,
            )
            .send();
        let waiting =
            tokio::spawn(async move { poll.await.unwrap().json::<TaskBatch>().await.unwrap() });
        // Let the long-poll settle into its wait.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut conn = stack.pool.acquire().await.unwrap();
        let task = NewTask::stop(
            "bench-1",
            phoenix_wire::agent::TaskKind::Collector,
            &format!("bench-{round}.baseline"),
        );
        let written = Instant::now();
        assert_eq!(tasks::insert(&mut conn, &[task]).await.unwrap(), 1);
        let batch = waiting.await.unwrap();
        latencies.push(written.elapsed());
        assert_eq!(batch.tasks.len(), 1, "round {round}");
        let ack = stack
            .request(
                Method::POST,
                &format!("/agent/v1/hosts/bench-1/tasks/{}", batch.tasks[0].id),
                &credential,
            )
            .json(&TaskOutcome {
                ok: true,
                error: None,
            })
            .send()
            .await
            .unwrap();
        assert_eq!(ack.status(), 204);
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "task delivery to a waiting agent, {ROUNDS} rounds (write committed -> agent has the task):"
    );
    println!(
        "  p50 {:.2?}  p90 {:.2?}  p99 {:.2?}  max {:.2?}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    println!("  (polling every 15 s instead would average 7.5 s)");
    stack.shutdown().await;
}
