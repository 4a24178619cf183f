//! phoenix-demo: the README's demo. Starts a whole local Phoenix (throwaway
//! Postgres, api, reconciler, two agents running the real collector), runs the
//! example experiment, shows what each host runs, and cleans everything up.
//! Until the analyzer lands the demo ends at `running` (no verdict yet).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use phoenix_e2e::harness::{AgentProcess, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN};
use phoenix_wire::view::{Host, List, Phase};
use reqwest::Method;

/// Runs the example experiment on a local Phoenix and cleans up afterwards.
#[derive(Parser)]
#[command(
    name = "phoenix-demo",
    after_help = "Run through scripts/demo, which builds the collector and the binaries first."
)]
struct Args {
    /// The collector binary the agents run (collector/build.sh prints it).
    #[arg(long)]
    collector: PathBuf,
    /// The experiment document to run.
    #[arg(long, default_value = "examples/topk-web.yaml")]
    experiment: PathBuf,
    /// How long to watch the running experiment before cleaning up.
    #[arg(long, default_value = "20s", value_parser = phoenix_wire::duration::HumanDuration::parse)]
    watch: phoenix_wire::duration::HumanDuration,
}

fn step(text: &str) {
    eprintln!("==> {text}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let document = std::fs::read_to_string(&args.experiment)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.experiment.display()))?;
    let started = Instant::now();

    step("starting Postgres (throwaway), phoenix-api and phoenix-reconciler");
    let stack = Stack::start_with(StackOptions {
        deploy_timeout: Duration::from_secs(120),
        ..Default::default()
    })
    .await;
    eprintln!("    api at {}", stack.api_url);

    step("starting two agents (web-1, web-2) with the Phoenix collector");
    let agents = [
        AgentProcess::spawn_with_collector(
            &stack.api_url,
            "web-1",
            &[("role", "web")],
            &args.collector,
        ),
        AgentProcess::spawn_with_collector(
            &stack.api_url,
            "web-2",
            &[("role", "web")],
            &args.collector,
        ),
    ];
    wait_until(
        "both agents registered",
        Duration::from_secs(60),
        || async { hosts(&stack).await.len() == 2 },
    )
    .await?;

    step(&format!(
        "creating the experiment from {}",
        args.experiment.display()
    ));
    let response = stack
        .request(Method::POST, "/api/v1/experiments", OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(document)
        .send()
        .await?;
    if !response.status().is_success() {
        anyhow::bail!("the API refused the experiment: {}", response.text().await?);
    }
    let experiment: phoenix_wire::view::Experiment = response.json().await?;
    let name = experiment.name;

    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let e = stack.experiment(&name).await;
        if last != Some(e.phase) {
            eprintln!(
                "    {name}: {} — {}",
                e.phase,
                e.reason.clone().unwrap_or_default()
            );
            last = Some(e.phase);
        }
        if e.phase == Phase::Running {
            break;
        }
        if e.phase.is_terminal() || Instant::now() > deadline {
            for agent in &agents {
                eprintln!(
                    "--- {} agent log (tail) ---\n{}",
                    agent.host_id,
                    tail(&agent.log(), 20)
                );
            }
            anyhow::bail!(
                "the experiment did not reach running: {}",
                e.reason.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    step(&format!(
        "both collectors healthy on every host; watching for {}",
        args.watch
    ));
    let watch_until = Instant::now() + args.watch.as_duration();
    while Instant::now() < watch_until {
        tokio::time::sleep(Duration::from_secs(5).min(watch_until - Instant::now())).await;
    }
    println!(
        "{:<8} {:<22} {:<10} {:>7} {:>9} {:>8} {:>9}",
        "HOST", "COLLECTOR", "HEALTH", "PID", "RESTARTS", "CPU(s)", "RSS(MiB)"
    );
    for host in hosts(&stack).await {
        for c in host.collectors {
            println!(
                "{:<8} {:<22} {:<10} {:>7} {:>9} {:>8.2} {:>9.1}",
                host.host_id,
                c.collector_id,
                c.health.as_str(),
                c.pid.map(|p| p.to_string()).unwrap_or_default(),
                c.restarts,
                c.cpu_seconds,
                c.rss_bytes as f64 / 1048576.0
            );
        }
    }
    println!(
        "\nexperiment {name}: running on {} host(s). The verdict (KPIs from Prometheus) arrives with the analyzer.",
        2
    );

    step("cleaning up: deleting the experiment, stopping agents, Postgres");
    stack
        .request(
            Method::DELETE,
            &format!("/api/v1/experiments/{name}"),
            OPERATOR_TOKEN,
        )
        .send()
        .await?;
    wait_until("collectors stopped", Duration::from_secs(60), || async {
        agents.iter().all(|a| a.collector_processes().is_empty())
    })
    .await?;
    drop(agents);
    stack.shutdown().await;
    eprintln!("done in {:.0?}", started.elapsed());
    Ok(())
}

async fn hosts(stack: &Stack) -> Vec<Host> {
    match stack
        .request(Method::GET, "/api/v1/hosts", VIEWER_TOKEN)
        .send()
        .await
    {
        Ok(r) => r
            .json::<List<Host>>()
            .await
            .map(|l| l.items)
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
