//! phoenix-mixed-versions: the previous release's phoenix-api, phoenix-reconciler
//! and phoenix-agent next to this tree's, on one database, until the example
//! experiment reaches a verdict. Run through `scripts/mixed-versions`, which builds
//! the previous release once (`scripts/build-previous`) and this tree.
//!
//! What runs: a throwaway Postgres, a private Prometheus and Pushgateway; the
//! previous api and reconciler (started first, as a running installation is); this
//! tree's api and reconciler (started second, migrating the schema up under the
//! previous ones, as the chart's pre-upgrade hook does); agent `web-1` of the
//! previous release talking to the previous api and agent `web-2` of this tree
//! talking to this api. The example experiment spans both hosts. The previous
//! reconciler leads first; once the experiment runs it is stopped (a roll-out
//! replacing it) and this tree's reconciler takes over and reaches the verdict.
//! Both apis serve the report at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use phoenix_e2e::bins;
use phoenix_e2e::harness::{
    ADMIN_TOKEN, AgentProcess, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN, fresh_database,
    http_client,
};
use phoenix_e2e::measurement::MeasurementStack;
use phoenix_wire::view::{Experiment, Phase};

/// The previous release next to this tree until the example experiment's verdict.
#[derive(Parser)]
#[command(name = "phoenix-mixed-versions")]
struct Args {
    /// Directory with the previous release's phoenix-api, phoenix-reconciler and
    /// phoenix-agent (what scripts/build-previous prints).
    #[arg(long)]
    previous: PathBuf,
    /// The collector binary (collector/build.sh prints it).
    #[arg(long)]
    collector: PathBuf,
    /// The example documents.
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
}

/// The agent token of the previous release's shared-token scheme (v0.1.0).
const PREVIOUS_AGENT_TOKEN: &str = "previous-agent-token-for-mixed-versions";

fn step(text: &str) {
    eprintln!("==> {text}");
}

/// A child process killed (and reaped) when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).expect("log file")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let logs = tempfile::Builder::new()
        .prefix("phoenix-mixed-")
        .tempdir()?;
    let previous = |name: &str| args.previous.join(name);
    for name in ["phoenix-api", "phoenix-reconciler", "phoenix-agent"] {
        anyhow::ensure!(
            previous(name).is_file(),
            "{} is missing",
            previous(name).display()
        );
    }
    let version = |bin: &Path| -> String {
        Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };

    step("starting Prometheus and the Pushgateway, and a throwaway Postgres");
    let measurement = MeasurementStack::start(Duration::from_secs(2)).await?;
    let database_url = fresh_database().await;

    step(&format!(
        "previous api and reconciler ({}) on the empty database",
        version(&previous("phoenix-api"))
    ));
    let previous_api_url = format!("http://127.0.0.1:{}", free_port());
    let _previous_api = Owned(
        Command::new(previous("phoenix-api"))
            .env("DATABASE_URL", &database_url)
            .env(
                "PHOENIX_API_TOKENS",
                format!(
                    "admin:{ADMIN_TOKEN},operator:{OPERATOR_TOKEN},viewer:{VIEWER_TOKEN},agent:{PREVIOUS_AGENT_TOKEN}"
                ),
            )
            .arg("--listen")
            .arg(previous_api_url.trim_start_matches("http://"))
            .arg("--collector-bin")
            .arg(&args.collector)
            .env("RUST_LOG", "info")
            .stdout(log_file(logs.path(), "previous-api.log"))
            .stderr(log_file(logs.path(), "previous-api.log"))
            .spawn()?
    );
    let http = http_client();
    wait_until("the previous api ready", Duration::from_secs(60), || {
        let (http, url) = (http.clone(), previous_api_url.clone());
        async move {
            http.get(format!("{url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await?;
    let previous_reconciler = Owned(
        Command::new(previous("phoenix-reconciler"))
            .env("DATABASE_URL", &database_url)
            .args([
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--deploy-timeout",
                "120s",
            ])
            .args(["--resync-interval", "1s", "--standby-retry", "200ms"])
            .args([
                "--cpu-rate-window",
                "5s",
                "--sample-step",
                "2s",
                "--analysis-delay",
                "5s",
            ])
            .arg("--remote-write-url")
            .arg(measurement.remote_write_url())
            .arg("--prometheus-url")
            .arg(&measurement.prometheus_url)
            .env("RUST_LOG", "info")
            .stdout(log_file(logs.path(), "previous-reconciler.log"))
            .stderr(log_file(logs.path(), "previous-reconciler.log"))
            .spawn()?,
    );
    // Let it take the leadership before this tree's reconciler starts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    step("this tree's api and reconciler on the same database (they migrate it up)");
    let stack = Stack::start_with(StackOptions {
        database_url: Some(database_url.clone()),
        deploy_timeout: Duration::from_secs(120),
        remote_write_url: Some(measurement.remote_write_url()),
        prometheus_url: Some(measurement.prometheus_url.clone()),
        collector_bin: Some(args.collector.clone()),
        ..Default::default()
    })
    .await;
    {
        let mut conn = stack.pool.acquire().await?;
        let status = phoenix_storage::schema::status(&mut conn).await?;
        eprintln!(
            "    schema at version {} ({:?} for this tree)",
            status.current, status.standing
        );
    }

    step("agent web-1 of the previous release (previous api), web-2 of this tree (this api)");
    let previous_state = logs.path().join("web-1-state");
    let _previous_agent = Owned(
        Command::new(previous("phoenix-agent"))
            .env("PHOENIX_AGENT_TOKEN", PREVIOUS_AGENT_TOKEN)
            .arg("--dev")
            .arg("--api-url")
            .arg(&previous_api_url)
            .args([
                "--host-id",
                "web-1",
                "--labels",
                "role=web",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--heartbeat-interval", "1s", "--push-interval", "1s"])
            .arg("--state-dir")
            .arg(&previous_state)
            .arg("--collector-bin")
            .arg(&args.collector)
            .arg("--pushgateway-url")
            .arg(&measurement.pushgateway_url)
            .env("RUST_LOG", "info")
            .stdout(log_file(logs.path(), "previous-agent.log"))
            .stderr(log_file(logs.path(), "previous-agent.log"))
            .stdin(Stdio::null())
            .spawn()?,
    );
    let current_agent = AgentProcess::spawn_with(
        &stack.api_url,
        "web-2",
        &[("role", "web")],
        &args.collector,
        Some(&measurement.pushgateway_url),
    );
    wait_until("both hosts registered", Duration::from_secs(60), || async {
        hosts(&stack).await == 2
    })
    .await?;

    step(&format!("phoenix apply -f {}", args.examples.display()));
    let out = Command::new(bins::binary("phoenix"))
        .arg("apply")
        .arg("-f")
        .arg(&args.examples)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", OPERATOR_TOKEN)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = "topk-web";

    let mut previous_reconciler = Some(previous_reconciler);
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let e: Experiment = get(
            &http,
            &stack.api_url,
            &format!("/api/v1/experiments/{name}"),
        )
        .await?;
        if last != Some(e.phase) {
            eprintln!(
                "    {name}: {} — {}",
                e.phase,
                e.reason.clone().unwrap_or_default()
            );
            last = Some(e.phase);
        }
        if e.phase == Phase::Running && previous_reconciler.is_some() {
            step("the experiment runs: stopping the previous reconciler (this tree's takes over)");
            previous_reconciler = None;
        }
        if e.phase == Phase::Completed {
            break;
        }
        if e.phase.is_terminal() || Instant::now() > deadline {
            for log in [
                "previous-api.log",
                "previous-reconciler.log",
                "previous-agent.log",
            ] {
                let text = std::fs::read_to_string(logs.path().join(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("--- {log} (tail) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
            eprintln!("--- web-2 agent (tail) ---\n{}", current_agent.log());
            anyhow::bail!("{name} ended {} instead of completing", e.phase);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let from_current: serde_json::Value = get(
        &http,
        &stack.api_url,
        &format!("/api/v1/experiments/{name}/report"),
    )
    .await?;
    let from_previous: serde_json::Value = get(
        &http,
        &previous_api_url,
        &format!("/api/v1/experiments/{name}/report"),
    )
    .await?;
    println!(
        "verdict: {} (this api), {} (previous api); series baseline {} → candidate {}",
        from_current["verdict"],
        from_previous["verdict"],
        from_current["baseline"]["series"],
        from_current["candidate"]["series"]
    );
    anyhow::ensure!(
        from_current["verdict"] == from_previous["verdict"],
        "the two apis serve different reports"
    );
    let out = Command::new(bins::binary("phoenix"))
        .args(["host", "list"])
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", VIEWER_TOKEN)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    drop(current_agent);
    stack.shutdown().await;
    drop(measurement);
    eprintln!("done in {:.0?}", started.elapsed());
    Ok(())
}

async fn get<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    api: &str,
    path: &str,
) -> anyhow::Result<T> {
    let response = http
        .get(format!("{api}{path}"))
        .bearer_auth(VIEWER_TOKEN)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{api}{path}: {}",
        response.status()
    );
    Ok(response.json().await?)
}

async fn hosts(stack: &Stack) -> usize {
    let http = http_client();
    get::<serde_json::Value>(&http, &stack.api_url, "/api/v1/hosts")
        .await
        .ok()
        .and_then(|v| v["items"].as_array().map(Vec::len))
        .unwrap_or(0)
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
