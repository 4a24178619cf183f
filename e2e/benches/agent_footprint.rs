//! The agent's own footprint: one real `phoenix-agent` (an optimized build) with
//! real collectors, against the real api and reconciler (in this process) and a
//! private Prometheus and Pushgateway. It samples the agent process alone (its
//! collectors and load workers are processes of their own, not counted) twice a
//! second through four phases:
//!
//! 1. **idle**: registered, nothing to run;
//! 2. **rollout**: an experiment over the host, from its creation until both
//!    collectors (baseline and candidate) are healthy and the experiment runs;
//! 3. **idle with two collectors**: supervising them, pushing their CPU and RSS;
//! 4. **process churn**: a load run spawning 25 short-lived workers a second.
//!
//! ```sh
//! cargo bench -p phoenix-e2e --bench agent_footprint
//! cargo bench -p phoenix-e2e --bench agent_footprint -- --phase-seconds 60
//! ```
//!
//! Targets (issue 16): RSS ≤ 20 MiB and idle CPU ≤ 0.5 % of a core. Results print
//! as a Markdown table and go to `e2e/benches/results/agent_footprint.json`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use phoenix_agent::procfs;
use phoenix_e2e::bins;
use phoenix_e2e::harness::{
    AgentProcess, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN, eventually,
};
use phoenix_e2e::measurement::MeasurementStack;
use phoenix_wire::view::Phase;
use reqwest::Method;
use serde::Serialize;

#[derive(Parser)]
struct Args {
    /// How long each steady phase (idle, idle with collectors, churn) lasts.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    phase_seconds: u64,
    /// Where the JSON results go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results/agent_footprint.json"))]
    results: PathBuf,
    #[arg(long, hide = true)]
    bench: bool,
}

/// One phase's figures for the agent process.
#[derive(Serialize)]
struct PhaseRow {
    phase: &'static str,
    seconds: f64,
    rss_max_mib: f64,
    rss_mean_mib: f64,
    /// CPU time over wall time, in percent of one core.
    cpu_percent_of_a_core: f64,
}

#[derive(Serialize)]
struct Results {
    machine: String,
    rows: Vec<PhaseRow>,
}

fn rss_kib(pid: u32) -> u64 {
    procfs::rss_bytes(pid).map_or(0, |b| b / 1024)
}

fn cpu_seconds(pid: u32) -> f64 {
    procfs::read_stat(pid).map_or(0.0, |s| s.cpu_seconds())
}

/// Samples `pid` twice a second until `until` resolves; returns the phase's row.
async fn measure<F: std::future::Future<Output = ()>>(
    phase: &'static str,
    pid: u32,
    until: F,
) -> PhaseRow {
    let started = Instant::now();
    let cpu_before = cpu_seconds(pid);
    let mut samples = Vec::new();
    tokio::pin!(until);
    loop {
        samples.push(rss_kib(pid));
        tokio::select! {
            () = &mut until => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    samples.push(rss_kib(pid));
    let seconds = started.elapsed().as_secs_f64();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let row = PhaseRow {
        phase,
        seconds,
        rss_max_mib: mib(samples.iter().copied().max().unwrap_or(0)),
        rss_mean_mib: mib(samples.iter().sum::<u64>()) / samples.len() as f64,
        cpu_percent_of_a_core: 100.0 * (cpu_seconds(pid) - cpu_before) / seconds,
    };
    eprintln!(
        "{phase}: {seconds:.1} s, RSS max {:.1} MiB, CPU {:.2} % of a core",
        row.rss_max_mib, row.cpu_percent_of_a_core
    );
    row
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let steady = Duration::from_secs(args.phase_seconds);
    let measurement = MeasurementStack::start(Duration::from_secs(5)).await?;
    let stack = Stack::start_with(StackOptions {
        remote_write_url: Some(measurement.remote_write_url()),
        prometheus_url: Some(measurement.prometheus_url.clone()),
        collector_bin: Some(bins::collector()),
        deploy_timeout: Duration::from_secs(120),
        ..Default::default()
    })
    .await;
    let agent = AgentProcess::spawn_with(
        &stack.api_url,
        "footprint-1",
        &[("role", "footprint")],
        &bins::collector(),
        Some(&measurement.pushgateway_url),
    );
    let pid = agent.pid().expect("the agent runs");
    eventually("the agent registers", Duration::from_secs(60), || async {
        let r = stack
            .request(Method::GET, "/api/v1/hosts/footprint-1", VIEWER_TOKEN)
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let mut rows = Vec::new();
    rows.push(measure("idle", pid, tokio::time::sleep(steady)).await);

    let experiment = "apiVersion: phoenix.dev/v1\nkind: Experiment\nmetadata: {name: footprint}\n\
        spec:\n  hosts: {selector: {role: footprint}}\n  baseline: {pipeline: process-baseline}\n  \
        candidate: {pipeline: process-topk}\n  duration: 1h\n";
    stack.create_experiment(experiment).await;
    rows.push(
        measure("rollout (to both collectors running)", pid, async {
            stack
                .wait_for_phase("footprint", Phase::Running, Duration::from_secs(180))
                .await;
        })
        .await,
    );
    rows.push(measure("idle with two collectors", pid, tokio::time::sleep(steady)).await);

    let response = stack
        .request(Method::POST, "/api/v1/loadsims", OPERATOR_TOKEN)
        .json(&serde_json::json!({
            "name": "churn", "hosts": {"names": ["footprint-1"]},
            "profile": "process-churn", "duration": "1h"
        }))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "starting the churn: {}",
        response.text().await?
    );
    eventually("the churn workers run", Duration::from_secs(60), || async {
        (!agent.load_processes().is_empty()).then_some(())
    })
    .await;
    rows.push(
        measure(
            "process churn, 25 spawns/s",
            pid,
            tokio::time::sleep(steady),
        )
        .await,
    );

    println!("\n| phase | seconds | agent RSS max / mean | agent CPU (% of a core) |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.1} / {:.1} MiB | {:.2} % |",
            r.phase, r.seconds, r.rss_max_mib, r.rss_mean_mib, r.cpu_percent_of_a_core
        );
    }
    let results = Results {
        machine: format!(
            "{} CPUs",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        rows,
    };
    if let Some(dir) = args.results.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.results,
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    eprintln!("results written to {}", args.results.display());
    drop(agent);
    stack.shutdown().await;
    Ok(())
}
