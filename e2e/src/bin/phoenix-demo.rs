//! phoenix-demo: the README's demo. Starts a whole local Phoenix — a throwaway
//! Postgres, a private Prometheus and Pushgateway, the api, the reconciler and two
//! agents running the real collector — applies the documents in `examples/` as
//! `phoenix apply` does, runs the example experiment to a verdict, prints its
//! report, and shuts everything down (on Ctrl-C too). `--keep-running` keeps the
//! stack up afterwards and prints the web console's URL with a token that signs
//! in; `--stack-only` starts the stack, prints it as one JSON line (for the
//! console's browser tests) and runs until Ctrl-C, SIGTERM or its stdin closes.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use phoenix_e2e::bins;
use phoenix_e2e::harness::{
    ADMIN_TOKEN, AgentProcess, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN,
};
use phoenix_e2e::measurement::MeasurementStack;
use phoenix_wire::duration::HumanDuration;
use phoenix_wire::view::{Host, List, Phase};
use reqwest::Method;

/// Runs the example experiment on a local Phoenix and cleans up afterwards.
#[derive(Parser)]
#[command(
    name = "phoenix-demo",
    after_help = "Run it through scripts/demo, which installs what is missing and builds the collector and the binaries first."
)]
struct Args {
    /// The collector binary the agents run (collector/build.sh prints it).
    #[arg(long)]
    collector: PathBuf,
    /// The directory of documents to apply; its experiments are run to a verdict.
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
    /// Keep the stack running after the report, until Ctrl-C, to explore it (the
    /// web console's URL is printed).
    #[arg(long)]
    keep_running: bool,
    /// Start the stack and run no example: print one line `PHOENIX_STACK {json}`
    /// (api URL, tokens, agents and their pids) on stdout, then run until Ctrl-C,
    /// SIGTERM or stdin closes. For the console's browser tests.
    #[arg(long)]
    stack_only: bool,
    /// How long a silent host takes to show as lost.
    #[arg(long, default_value = "60s", value_parser = HumanDuration::parse)]
    host_grace: HumanDuration,
}

fn step(text: &str) {
    eprintln!("==> {text}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.examples.is_dir(),
        "{} is not a directory of example documents",
        args.examples.display()
    );
    let started = Instant::now();

    step("starting Prometheus and the Pushgateway (private, on loopback)");
    let measurement = MeasurementStack::start(Duration::from_secs(2)).await?;
    step("starting Postgres (throwaway), phoenix-api and phoenix-reconciler");
    let stack = Stack::start_with(StackOptions {
        deploy_timeout: Duration::from_secs(120),
        remote_write_url: Some(measurement.remote_write_url()),
        prometheus_url: Some(measurement.prometheus_url.clone()),
        collector_bin: Some(args.collector.clone()),
        host_grace: args.host_grace.as_duration(),
        ..Default::default()
    })
    .await;
    step("starting two agents (web-1, web-2) running the Phoenix collector");
    let agents = [
        AgentProcess::spawn_with(
            &stack.api_url,
            "web-1",
            &[("role", "web")],
            &args.collector,
            Some(&measurement.pushgateway_url),
        ),
        AgentProcess::spawn_with(
            &stack.api_url,
            "web-2",
            &[("role", "web")],
            &args.collector,
            Some(&measurement.pushgateway_url),
        ),
    ];

    if args.stack_only {
        let outcome = serve_stack(&stack, &agents, &measurement).await;
        step("shutting down");
        drop(agents);
        stack.shutdown().await;
        drop(measurement);
        return outcome;
    }

    let outcome = tokio::select! {
        outcome = run_examples(&stack, &agents, &args.examples) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    match &outcome {
        Ok(name) => {
            println!("\nWhere to look next (while it runs, with --keep-running):");
            println!(
                "  export PHOENIX_API_URL={} PHOENIX_TOKEN={VIEWER_TOKEN}",
                stack.api_url
            );
            println!(
                "  phoenix experiment report {name}      # this report again (-o json for machines)"
            );
            println!("  phoenix experiment events {name}      # every phase change and why");
            println!(
                "  phoenix host describe web-1            # its collectors and last heartbeat"
            );
            println!("  phoenix task list --host web-1         # what the agent was told to do");
            println!(
                "  Prometheus: {}   Pushgateway: {}",
                measurement.prometheus_url, measurement.pushgateway_url
            );
            if args.keep_running {
                println!(
                    "\nThe web console (signs in as operator; the token stays in the browser tab):\n  {}/ui/#token={OPERATOR_TOKEN}\n  read-only: {}/ui/#token={VIEWER_TOKEN}",
                    stack.api_url, stack.api_url
                );
                eprintln!("\nkeeping everything running; Ctrl-C to stop");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        Err(err) => eprintln!("demo stopped: {err}"),
    }

    step("shutting down: agents and their collectors, api, reconciler, Postgres, Prometheus");
    // Dropping an agent kills it and every collector process it owns.
    drop(agents);
    stack.shutdown().await;
    drop(measurement);
    eprintln!("done in {:.0?}", started.elapsed());
    outcome.map(|_| ())
}

/// Waits for the agents, applies the examples, follows the (first) experiment they
/// hold to a verdict and prints its report.
async fn run_examples(
    stack: &Stack,
    agents: &[AgentProcess],
    examples: &std::path::Path,
) -> anyhow::Result<String> {
    wait_until(
        "both agents registered",
        Duration::from_secs(60),
        || async { hosts(stack).await.len() == 2 },
    )
    .await?;
    step(&format!(
        "phoenix apply -f {} (the api validates every config with the collector first)",
        examples.display()
    ));
    let out = Command::new(bins::binary("phoenix"))
        .arg("apply")
        .arg("-f")
        .arg(examples)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", OPERATOR_TOKEN)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let experiments: List<phoenix_wire::view::Experiment> = stack
        .request(Method::GET, "/api/v1/experiments", VIEWER_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let Some(experiment) = experiments.items.into_iter().next() else {
        anyhow::bail!("{} holds no Experiment document", examples.display());
    };
    let name = experiment.name;
    let measuring = experiment.spec.warmup.as_duration() + experiment.spec.duration.as_duration();

    let mut last = None;
    let mut running_since = None;
    let interactive = std::io::stderr().is_terminal();
    let mut last_logged = u64::MAX;
    let deadline = Instant::now() + measuring + Duration::from_secs(300);
    loop {
        let e = stack.experiment(&name).await;
        if last != Some(e.phase) {
            let reason = e.reason.clone().unwrap_or_else(|| "created".into());
            if interactive && last == Some(Phase::Running) {
                eprintln!(); // end the progress line
            }
            eprintln!("    {name}: {} — {reason}", e.phase);
            last = Some(e.phase);
            if e.phase == Phase::Running {
                running_since = Some(Instant::now());
            }
        }
        if e.phase == Phase::Running
            && let Some(since) = running_since
        {
            let done = since.elapsed().min(measuring);
            let line = format!(
                "    measuring: {:>3}s of {}s (warmup {}, then {})",
                done.as_secs(),
                measuring.as_secs(),
                e.spec.warmup,
                e.spec.duration
            );
            // A terminal gets one line rewritten in place; a log, a line per 10 s.
            if interactive {
                eprint!("\r{line}   ");
            } else if done.as_secs() / 10 != last_logged {
                last_logged = done.as_secs() / 10;
                eprintln!("{line}");
            }
        }
        if e.phase == Phase::Completed {
            break;
        }
        if e.phase.is_terminal() || Instant::now() > deadline {
            for agent in agents {
                eprintln!(
                    "--- {} agent log (tail) ---\n{}",
                    agent.host_id,
                    tail(&agent.log(), 20)
                );
            }
            anyhow::bail!(
                "the experiment ended {} instead of completing: {}",
                e.phase,
                e.reason.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    step("the report, as `phoenix experiment report` shows it");
    let out = Command::new(bins::binary("phoenix"))
        .args(["experiment", "report", &name])
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", VIEWER_TOKEN)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        anyhow::bail!(
            "phoenix experiment report failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(name)
}

/// `--stack-only`: waits for both agents, prints the stack as one JSON line, and
/// runs until Ctrl-C, SIGTERM or stdin closes (its parent is gone).
async fn serve_stack(
    stack: &Stack,
    agents: &[AgentProcess],
    measurement: &MeasurementStack,
) -> anyhow::Result<()> {
    wait_until(
        "both agents registered",
        Duration::from_secs(60),
        || async { hosts(stack).await.len() == agents.len() },
    )
    .await?;
    let description = serde_json::json!({
        "apiUrl": stack.api_url,
        "consoleUrl": format!("{}/ui/", stack.api_url),
        "tokens": {"admin": ADMIN_TOKEN, "operator": OPERATOR_TOKEN, "viewer": VIEWER_TOKEN},
        "agents": agents.iter().map(|a| serde_json::json!({"host": a.host_id, "pid": a.pid()})).collect::<Vec<_>>(),
        "phoenix": bins::binary("phoenix"),
        "prometheusUrl": measurement.prometheus_url,
    });
    println!("PHOENIX_STACK {description}");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buffer = [0u8; 256];
        while matches!(std::io::stdin().read(&mut buffer), Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
    });
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        _ = closed => {}
    }
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
