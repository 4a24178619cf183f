//! Load simulation makes process metrics expensive for real: a high-cardinality run
//! of N processes raises the baseline collector's distinct series in Prometheus by
//! at least N (every process brings several series of its own).

use std::collections::BTreeSet;
use std::time::Duration;

use phoenix_e2e::bins;
use phoenix_e2e::harness::{
    AgentProcess, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN, eventually,
};
use phoenix_e2e::measurement::MeasurementStack;
use phoenix_wire::view::Phase;
use reqwest::Method;
use serde_json::json;

const N: usize = 300;
const BASELINE: &str = r#"{phoenix_experiment="loaded",phoenix_variant="baseline"}"#;

/// Distinct pids and series the baseline reported over the last few seconds.
async fn seen(measurement: &MeasurementStack) -> (usize, usize) {
    let series = measurement
        .series(BASELINE, Duration::from_secs(5))
        .await
        .unwrap();
    let pids: BTreeSet<&String> = series.iter().filter_map(|l| l.get("process_pid")).collect();
    (pids.len(), series.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_cardinality_load_raises_the_baselines_series_in_prometheus() {
    let measurement = MeasurementStack::start(Duration::from_secs(1))
        .await
        .expect("prometheus and pushgateway");
    let stack = Stack::start_with(StackOptions {
        remote_write_url: Some(measurement.remote_write_url()),
        prometheus_url: Some(measurement.prometheus_url.clone()),
        ..Default::default()
    })
    .await;
    let agent = AgentProcess::spawn_with(
        &stack.api_url,
        "web-1",
        &[("role", "web")],
        &bins::collector(),
        None,
    );
    eventually("the agent to register", Duration::from_secs(30), || async {
        let r = stack
            .request(Method::GET, "/api/v1/hosts/web-1", VIEWER_TOKEN)
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    stack
        .create_experiment(
            r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {name: loaded}
spec:
  hosts: {names: [web-1]}
  baseline: {pipeline: process-baseline, vars: {collection_interval: 2s}}
  candidate: {pipeline: process-topk, vars: {collection_interval: 2s}}
  warmup: 0s
  duration: 1h
"#,
        )
        .await;
    stack
        .wait_for_phase("loaded", Phase::Running, Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (pids_before, series_before) = seen(&measurement).await;
    assert!(series_before > 0, "the baseline exports before the load");

    let response = stack
        .request(Method::POST, "/api/v1/loadsims", OPERATOR_TOKEN)
        .json(
            &json!({"name": "hc", "hosts": {"names": ["web-1"]}, "profile": "high-cardinality",
                      "processes": N, "duration": "10m"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    eventually(
        &format!("{N} load processes on the host"),
        Duration::from_secs(60),
        || async { (agent.load_processes().len() >= N).then_some(()) },
    )
    .await;
    // A few scrapes with every worker in them.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (pids_after, series_after) = seen(&measurement).await;
    println!(
        "baseline over 5 s: {pids_before} pids / {series_before} series before the load, {pids_after} pids / {series_after} series with {N} load processes"
    );
    assert!(
        pids_after >= pids_before + N * 9 / 10,
        "pids {pids_before} -> {pids_after} with {N} load processes"
    );
    assert!(
        series_after >= series_before + N,
        "series {series_before} -> {series_after} with {N} load processes"
    );

    let response = stack
        .request(Method::DELETE, "/api/v1/loadsims/hc", OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually(
        "the load processes to be gone",
        Duration::from_secs(30),
        || async { agent.load_processes().is_empty().then_some(()) },
    )
    .await;
    drop(agent);
    stack.shutdown().await;
}
