//! Fleet-scale benchmark: N simulated agents against the real control plane.
//!
//! Starts a real Postgres (throwaway, or `DATABASE_URL`), R replicas of the real
//! `phoenix-api` and one `phoenix-reconciler` (optimized builds, production
//! defaults), and N simulated agents in S simulator processes (this benchmark's own
//! executable, run with `--simulate`; host i talks to replica i mod R), so that no
//! process passes this machine's open-file limit of 20,000: async clients that
//! speak the real agent
//! protocol 2.1 over HTTP, as the real agent does: register with a status report,
//! long-poll for tasks (the long-poll is the heartbeat: the api records one when a
//! poll arrives and every 10 s it waits, so an idle agent sends nothing else),
//! fetch each config body a task names by hash, acknowledge the tasks, report
//! status when it changes. Then:
//!
//! 1. **soak**: an idle fleet, to measure sustained heartbeat throughput, the
//!    write backlog and the cost of N agents doing nothing;
//! 2. **rollout**: one experiment over all N hosts; measures, per host, the time
//!    from the experiment's creation until the host holds both of its tasks, and
//!    from the commit of the task write (seen here through the same `NOTIFY` the
//!    api listens to) until the host holds them; then the time until every host
//!    reports its collectors and the experiment is running.
//! 3. **measure**: the running experiment's measurement path. Every simulated agent
//!    pushes its two experiment collectors' CPU and RSS as the real agent does (the
//!    agent's own `Pushgateway` client and payload: one group per host, at once when
//!    its collectors change and every `--push-interval`), to a real Pushgateway run
//!    as the chart runs it (`--push.disable-consistency-check`), which a real
//!    Prometheus scrapes every two thirds of the push interval, as the chart does. It
//!    measures push latency and errors, the Pushgateway's and Prometheus' CPU and
//!    RSS, and every 5 s how old each host's newest sample in Prometheus is (the
//!    query time less the `push_time_seconds` Prometheus holds for the host's group):
//!    what the analyzer would read.
//!
//! Throughout, it samples the RSS and CPU of every api replica, the reconciler and
//! the simulators from `/proc`, the machine's CPU use, and Postgres' connections.
//! Times cross processes as wall-clock microseconds (one machine, one clock).
//!
//! ```sh
//! cargo bench -p phoenix-e2e --bench fleet                      # 1k, 5k, 10k
//! cargo bench -p phoenix-e2e --bench fleet -- --agents 25000   # 4 replicas, 4 simulators
//! cargo bench -p phoenix-e2e --bench fleet -- --agents 10000 --api-replicas 1 --simulators 2
//! ```
//!
//! Results print as a Markdown table and are written to
//! `e2e/benches/results/fleet.json` (see BENCHMARKS.md).
//!
//! With `--remote-write-hosts 50,100,…` it measures instead how wide an experiment
//! the bundled Prometheus ingests ([`remote_write`]), into `results/remote_write.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "fleet/push_path.rs"]
mod push_path;
#[path = "fleet/remote_write.rs"]
mod remote_write;

use clap::Parser;
use phoenix_agent::procfs;
use phoenix_agent::pushgateway::{Pushgateway, change_push_delay};
use phoenix_e2e::bins;
use phoenix_e2e::harness::{
    ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, bootstrap_token_file, enroll, fresh_database,
};
use phoenix_e2e::measurement::MeasurementStack;
use phoenix_storage::TASKS_CHANNEL;
use phoenix_wire::agent::{
    CollectorStatus, Health, HostStatus, TaskAction, TaskBatch, TaskOutcome,
};
use phoenix_wire::view::{Experiment, Phase};
use serde::Serialize;
use sqlx::postgres::PgListener;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, Semaphore, watch};

/// The benchmark's command line (`cargo bench` adds `--bench`).
#[derive(Parser)]
struct Args {
    /// Fleet sizes to run, one after the other, each on a fresh database.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 5000, 10000])]
    agents: Vec<usize>,
    /// api replicas (0: one per 8,000 agents).
    #[arg(long, default_value_t = 0)]
    api_replicas: usize,
    /// Simulator processes the agents are spread over (0: one per 8,000 agents).
    #[arg(long, default_value_t = 0)]
    simulators: usize,
    /// (Internal) run as a simulator: agents `FIRST:COUNT` against `--api-urls`.
    #[arg(long, hide = true, value_name = "FIRST:COUNT")]
    simulate: Option<String>,
    #[arg(long, hide = true, value_delimiter = ',')]
    api_urls: Vec<String>,
    /// (Internal) the Pushgateway a simulator's agents push to.
    #[arg(long, hide = true)]
    pushgateway_url: Option<reqwest::Url>,
    /// How often each agent pushes its experiment collectors (the chart's
    /// agent.pushInterval), and Prometheus scrapes the Pushgateway.
    #[arg(long, default_value = "15", value_name = "SECONDS")]
    push_interval: u64,
    /// How long the measure phase lasts, with the experiment running (also each
    /// step of --remote-write-hosts).
    #[arg(long, default_value = "75", value_name = "SECONDS")]
    measure: u64,
    /// Instead of the fleet: the experiment-width table. For each host count, that
    /// many hosts' experiment collectors remote-write to a fresh Prometheus
    /// (benches/fleet/remote_write.rs); stops at the first count it cannot ingest.
    #[arg(long, value_delimiter = ',', value_name = "HOSTS")]
    remote_write_hosts: Vec<usize>,
    /// Instead of the fleet: the measurement-path table. For each host count, that
    /// many hosts push their experiment collectors to a fresh Pushgateway scraped by
    /// a fresh Prometheus, without the control plane (benches/fleet/push_path.rs).
    #[arg(long, value_delimiter = ',', value_name = "HOSTS")]
    push_hosts: Vec<usize>,
    /// Over how long an experiment's collectors start across the fleet (with
    /// --push-hosts).
    #[arg(long, default_value = "4", value_name = "SECONDS")]
    rollout_spread: u64,
    /// Push as soon as collectors start, as agents before the change-push delay did
    /// (with --push-hosts).
    #[arg(long)]
    no_change_delay: bool,
    /// Baseline series each host sends (with --remote-write-hosts).
    #[arg(long, default_value_t = 5000)]
    baseline_series: usize,
    /// Candidate series each host sends (with --remote-write-hosts).
    #[arg(long, default_value_t = 500)]
    candidate_series: usize,
    /// How often each collector sends its series (with --remote-write-hosts): the
    /// baseline pipeline's default collection interval.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    collection_interval: u64,
    /// How long the idle soak lasts.
    #[arg(long, default_value = "40", value_name = "SECONDS")]
    soak: u64,
    /// Where the JSON results go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results/fleet.json"))]
    results: PathBuf,
    #[arg(long, hide = true)]
    bench: bool,
}

/// Agents one process simulates; with a long-poll each (and a few more sockets in
/// bursts) they stay under this machine's open-file limit of 20,000.
const AGENTS_PER_PROCESS: usize = 8_000;

/// Wall-clock microseconds: comparable across the benchmark's processes.
fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// When each of a simulator's hosts held all its experiment tasks (wall-clock
/// microseconds; 0 = not yet), by index within the simulator.
struct HostClock {
    all_tasks_us: Vec<AtomicU64>,
    tasks_received: Vec<AtomicU32>,
}

impl HostClock {
    fn new(n: usize) -> Self {
        Self {
            all_tasks_us: (0..n).map(|_| AtomicU64::new(0)).collect(),
            tasks_received: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn delivered(&self) -> usize {
        self.all_tasks_us
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) != 0)
            .count()
    }
}

/// What the simulated agents count, for throughput figures.
#[derive(Default)]
struct AgentCounters {
    polls: AtomicU64,
    /// Config bodies fetched by hash (one per agent and body: each caches its own).
    config_fetches: AtomicU64,
    poll_errors: AtomicU64,
    acks: AtomicU64,
    status_reports: AtomicU64,
    request_errors: AtomicU64,
    /// 503s: an api replica shedding load (no database connection within its
    /// acquire timeout); retried after Retry-After, as the real agent does.
    shed: AtomicU64,
    pushes: AtomicU64,
    push_errors: AtomicU64,
}

impl AgentCounters {
    /// Every request the fleet sent (long-polls, answers, fetches, status reports).
    fn requests(&self) -> u64 {
        [
            &self.polls,
            &self.config_fetches,
            &self.acks,
            &self.status_reports,
            &self.request_errors,
            &self.poll_errors,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Tasks each host gets for the experiment: start its baseline and its candidate.
const TASKS_PER_HOST: u32 = 2;
const EXPERIMENT: &str = "fleet-bench";

fn host_id(index: usize) -> String {
    format!("fleet-{index:05}")
}

fn host_index(host_id: &str) -> Option<usize> {
    host_id.strip_prefix("fleet-")?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_open_file_limit();
    if let Some(range) = &args.simulate {
        let (first, count) = range
            .split_once(':')
            .and_then(|(f, c)| Some((f.parse().ok()?, c.parse().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--simulate wants FIRST:COUNT, got {range}"))?;
        return tokio::runtime::Runtime::new()?.block_on(simulate(
            first,
            count,
            args.api_urls.clone(),
            args.pushgateway_url.clone(),
            Duration::from_secs(args.push_interval),
        ));
    }
    // A private server that records what every statement costs, to name the
    // database's share of a bottleneck (set DATABASE_URL to use another server).
    let _cluster = match std::env::var("DATABASE_URL") {
        Ok(_) => None,
        Err(_) => {
            let cluster = phoenix_e2e::throwaway::ThrowawayPostgres::start_with(&[(
                "shared_preload_libraries",
                "pg_stat_statements",
            )])?;
            // SAFETY: no other thread exists yet; the runtime starts below.
            unsafe { std::env::set_var("DATABASE_URL", cluster.url("postgres")) };
            Some(cluster)
        }
    };
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !args.push_hosts.is_empty() {
        let rows = push_path::run(
            &args.push_hosts,
            &push_path::Shape {
                push_interval: Duration::from_secs(args.push_interval),
                rollout_spread: Duration::from_secs(args.rollout_spread),
                measure: Duration::from_secs(args.measure),
                change_delay: !args.no_change_delay,
            },
        )
        .await?;
        let path = args.results.with_file_name("push_path.json");
        let results = serde_json::json!({ "machine": machine_description(), "rows": rows });
        std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
        eprintln!("results written to {}", path.display());
        return Ok(());
    }
    if !args.remote_write_hosts.is_empty() {
        let rows = remote_write::run(
            &args.remote_write_hosts,
            &remote_write::Shape {
                baseline_series: args.baseline_series,
                candidate_series: args.candidate_series,
                interval: Duration::from_secs(args.collection_interval),
                measure: Duration::from_secs(args.measure),
            },
        )
        .await?;
        let path = args.results.with_file_name("remote_write.json");
        let results = serde_json::json!({ "machine": machine_description(), "rows": rows });
        std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
        eprintln!("results written to {}", path.display());
        return Ok(());
    }
    let api_bin = bins::binary("phoenix-api");
    let reconciler_bin = bins::binary("phoenix-reconciler");
    let mut rows = Vec::new();
    for &n in &args.agents {
        eprintln!("\n=== {n} agents ===");
        match run_fleet(&args, n, &api_bin, &reconciler_bin).await {
            Ok(row) => {
                eprintln!("{}", serde_json::to_string_pretty(&row)?);
                rows.push(row);
            }
            Err(err) => {
                eprintln!("{n} agents: the run failed: {err:#}");
                break;
            }
        }
    }
    print_table(&rows);
    for row in &rows {
        if row.top_statements.is_empty() {
            continue;
        }
        println!("\nPostgres time during the rollout, {} agents:", row.agents);
        for st in &row.top_statements {
            println!(
                "  {:>9.0} ms {:>7} calls {:>8.2} ms each  {}",
                st.total_ms, st.calls, st.mean_ms, st.query
            );
        }
    }
    let results = Results {
        machine: machine_description(),
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
    Ok(())
}

#[derive(Serialize)]
struct Results {
    machine: String,
    rows: Vec<Row>,
}

/// One fleet size's results.
#[derive(Serialize)]
struct Row {
    agents: usize,
    api_replicas: usize,
    /// Simulator processes the agents ran in.
    simulators: usize,
    register_s: f64,
    long_polls_held: u64,
    /// Heartbeats the api wrote per second in the soak: every one comes from a
    /// waiting long-poll.
    heartbeats_written_per_s: f64,
    /// Requests of any kind the fleet sent per second in the soak.
    agent_requests_per_s: f64,
    heartbeat_backlog_max: f64,
    /// Config bodies fetched in the rollout.
    config_fetches: u64,
    soak_reconcile_pass_mean_ms: f64,
    /// Experiment creation -> host holds both tasks.
    creation_to_tasks_ms: Percentiles,
    /// Task write committed (NOTIFY) -> host holds both tasks.
    write_to_delivery_ms: Percentiles,
    hosts_without_tasks: usize,
    /// Tasks the rollout wrote; 2 per host when nothing was asked twice.
    tasks_per_host: f64,
    creation_to_running_s: Option<f64>,
    rollout_reconcile_passes: u64,
    /// Claim statements the api ran in the rollout, and their mean batch.
    claim_statements: u64,
    hosts_per_claim_statement: f64,
    rollout_reconcile_pass_max_ms: f64,
    api_rss_peak_mib: f64,
    /// Connections (and the few other files) the api holds: about two per agent.
    api_open_files_peak: u64,
    /// This process, N simulated agents with a client each.
    agents_rss_peak_mib: f64,
    api_cpu_soak_cores: f64,
    api_cpu_rollout_cores: f64,
    reconciler_rss_peak_mib: f64,
    reconciler_cpu_rollout_cores: f64,
    /// Postgres (every backend) and the simulated agents share the machine.
    postgres_cpu_soak_cores: f64,
    postgres_cpu_rollout_cores: f64,
    agents_cpu_soak_cores: f64,
    agents_cpu_rollout_cores: f64,
    /// Where Postgres spent the rollout: the costliest statements (needs
    /// pg_stat_statements, which the benchmark's own server loads).
    top_statements: Vec<StatementCost>,
    /// At the end of the soak: N long-polls held, nothing else going on.
    api_rss_idle_fleet_mib: f64,
    machine_cpu_soak: f64,
    machine_cpu_rollout: f64,
    postgres_connections_peak: u64,
    request_errors: u64,
    /// 503s the api replicas answered the fleet (load shed), each retried.
    shed_503: u64,
    /// The measurement path (the measure phase, and the pushes of the rollout).
    measurement: MeasurementRow,
}

/// The measurement path at one fleet size: pushes, and the samples' age in Prometheus.
#[derive(Serialize)]
struct MeasurementRow {
    push_interval_s: u64,
    /// Pushes in the measure phase, per second.
    pushes_per_s: f64,
    /// Pushes from the rollout until one interval into the measure phase: every
    /// host's first push, while the control plane rolls the experiment out.
    rollout_push_latency_ms: Percentiles,
    rollout_pushes: u64,
    /// Pushes after that.
    steady_push_latency_ms: Percentiles,
    steady_pushes: u64,
    push_errors: u64,
    /// Query time less the push time of each host's newest sample, every 5 s.
    sample_age_s: Percentiles,
    /// The most hosts without any sample at one check (after the first interval).
    hosts_without_samples_max: usize,
    /// Host samples older than two push intervals, over all checks.
    samples_older_than_two_intervals: usize,
    checks: usize,
    pushgateway_cpu_cores: f64,
    pushgateway_rss_peak_mib: f64,
    prometheus_cpu_cores: f64,
    prometheus_rss_peak_mib: f64,
    /// Every other process in the measure phase: api, reconciler, Postgres, simulators.
    machine_cpu: f64,
}

/// A push: (wall-clock µs when it began, its latency in µs).
type TimedPush = (u64, u32);

#[derive(Serialize, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut values: Vec<f64>) -> Percentiles {
        if values.is_empty() {
            return Percentiles {
                p50: f64::NAN,
                p99: f64::NAN,
                max: f64::NAN,
            };
        }
        values.sort_by(f64::total_cmp);
        let at = |p: f64| values[((values.len() as f64 - 1.0) * p).round() as usize];
        Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// A child process killed when dropped.
struct Process {
    name: &'static str,
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGTERM first: both binaries shut down cleanly on it.
        // SAFETY: kill with a pid we own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running api replica.
struct Replica {
    process: Process,
    url: String,
}

/// The sum of a metric over every api replica.
async fn replicas_metric(http: &reqwest::Client, replicas: &[Replica], name: &str) -> f64 {
    let mut sum = 0.0;
    for replica in replicas {
        if let Ok(text) = scrape(http, &format!("{}/metrics", replica.url)).await {
            sum += metric(&text, name);
        }
    }
    sum
}

async fn run_fleet(
    args: &Args,
    n: usize,
    api_bin: &std::path::Path,
    reconciler_bin: &std::path::Path,
) -> anyhow::Result<Row> {
    let per_process = |chosen: usize| {
        if chosen > 0 {
            chosen
        } else {
            n.div_ceil(AGENTS_PER_PROCESS).max(1)
        }
    };
    let (replica_count, simulator_count) =
        (per_process(args.api_replicas), per_process(args.simulators));
    eprintln!("{replica_count} api replica(s), {simulator_count} simulator process(es)");
    let database_url = fresh_database().await;
    let tokens = format!("admin:{ADMIN_TOKEN},operator:{OPERATOR_TOKEN},viewer:{VIEWER_TOKEN}");
    let mut replicas = Vec::with_capacity(replica_count);
    for _ in 0..replica_count {
        let port = free_port();
        replicas.push(Replica {
            process: Process {
                name: "phoenix-api",
                child: Command::new(api_bin)
                    .env("DATABASE_URL", &database_url)
                    .env("PHOENIX_API_LISTEN", format!("127.0.0.1:{port}"))
                    .env("PHOENIX_API_TOKENS", &tokens)
                    .env("PHOENIX_BOOTSTRAP_TOKEN_FILE", bootstrap_token_file())
                    .env("PHOENIX_DEV", "true") // no collector: configs are not validated
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .spawn()?,
            },
            url: format!("http://127.0.0.1:{port}"),
        });
    }
    let api_url = replicas[0].url.clone();
    let http = phoenix_e2e::harness::http_client_builder()
        .timeout(Duration::from_secs(90))
        .build()?;
    for replica in &replicas {
        wait_ready(&http, &format!("{}/readyz", replica.url)).await?;
    }
    let reconciler_port = free_port();
    let reconciler = Process {
        name: "phoenix-reconciler",
        child: Command::new(reconciler_bin)
            .env("DATABASE_URL", &database_url)
            .env(
                "PHOENIX_RECONCILER_LISTEN",
                format!("127.0.0.1:{reconciler_port}"),
            )
            .env("PHOENIX_DEPLOY_TIMEOUT", "30m")
            .env("PHOENIX_DEV", "true") // Prometheus on its local default (unused here)
            .env("RUST_LOG", "warn")
            // Its warnings (a slow pass, with its stages) go with the progress.
            .stdout(std::io::stderr())
            .spawn()?,
    };
    let reconciler_url = format!("http://127.0.0.1:{reconciler_port}");
    wait_ready(&http, &format!("{reconciler_url}/metrics")).await?;

    // When each host's task write committed (the api's own signal).
    let notified_us: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let mut listener = PgListener::connect(&database_url).await?;
    listener.listen(TASKS_CHANNEL).await?;
    let notified = tokio::spawn({
        let notified_us = notified_us.clone();
        async move {
            while let Ok(notification) = listener.recv().await {
                if let Some(i) = host_index(notification.payload())
                    && let Some(slot) = notified_us.get(i)
                {
                    let _ =
                        slot.compare_exchange(0, unix_us(), Ordering::Relaxed, Ordering::Relaxed);
                }
            }
        }
    });

    // The measurement path as the chart deploys it: Prometheus scrapes the
    // Pushgateway every two thirds of the push interval (10 s for 15 s).
    let push_interval = Duration::from_secs(args.push_interval);
    let measurement = MeasurementStack::start(push_interval * 2 / 3).await?;

    // The simulators: each registers its agents (bounded concurrency, like a
    // fleet coming up), then runs them.
    eprintln!("registering {n} agents");
    let started = Instant::now();
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    let mut simulators = Vec::with_capacity(simulator_count);
    let chunk = n.div_ceil(simulator_count);
    for first in (0..n).step_by(chunk) {
        simulators.push(Simulator::spawn(
            first,
            chunk.min(n - first),
            &urls,
            &measurement.pushgateway_url,
            args.push_interval,
        )?);
    }
    let pool = phoenix_storage::connect(&database_url, 2).await?;
    let sampler = Sampler::start(
        Watched {
            api_pids: replicas.iter().map(|r| r.process.child.id()).collect(),
            reconciler_pid: reconciler.child.id(),
            agent_pids: simulators.iter().filter_map(|s| s.child.id()).collect(),
            postgres_pid: postmaster_pid(&pool).await,
            measurement_pids: measurement.server_pids(),
        },
        pool.clone(),
        reconciler_url.clone(),
        http.clone(),
    );
    let registered_by = Instant::now() + Duration::from_secs(600);
    while simulators.iter().any(|s| s.progress().registered.is_none()) {
        anyhow::ensure!(
            Instant::now() < registered_by,
            "the agents did not register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let registered: usize = simulators
        .iter()
        .map(|s| s.progress().registered.unwrap_or(0))
        .sum();
    anyhow::ensure!(registered == n, "{registered} of {n} agents registered");
    let register_s = started.elapsed().as_secs_f64();
    eprintln!("registered in {register_s:.1} s; waiting for every long-poll");
    let polls_by = Instant::now() + Duration::from_secs(120);
    let mut long_polls_held = 0.0;
    while Instant::now() < polls_by {
        long_polls_held = replicas_metric(&http, &replicas, "phoenix_api_long_polls_waiting").await;
        if long_polls_held >= n as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let requests = |simulators: &[Simulator]| -> u64 {
        simulators.iter().map(|s| s.progress().requests).sum()
    };

    // Soak: an idle fleet; its long-polls are its heartbeats.
    eprintln!("soak: {} s of an idle fleet", args.soak);
    let written = "phoenix_api_heartbeats_written_total";
    let written_before = replicas_metric(&http, &replicas, written).await;
    let rec_before = scrape(&http, &format!("{reconciler_url}/metrics")).await?;
    let requests_before = requests(&simulators);
    sampler.begin_phase().await;
    let soak_started = Instant::now();
    let mut backlog_max: f64 = 0.0;
    while soak_started.elapsed() < Duration::from_secs(args.soak) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        backlog_max = backlog_max
            .max(replicas_metric(&http, &replicas, "phoenix_api_heartbeats_buffered").await);
    }
    let soak_s = soak_started.elapsed().as_secs_f64();
    let soak = sampler.end_phase().await;
    let api_rss_idle_fleet_mib = replicas
        .iter()
        .map(|r| rss_kib(r.process.child.id()))
        .max()
        .unwrap_or(0) as f64
        / 1024.0;
    let rec_after = scrape(&http, &format!("{reconciler_url}/metrics")).await?;
    let agent_requests_per_s = (requests(&simulators) - requests_before) as f64 / soak_s;
    let heartbeats_written_per_s =
        (replicas_metric(&http, &replicas, written).await - written_before) / soak_s;
    let soak_passes = metric(&rec_after, "phoenix_reconciler_pass_seconds_count")
        - metric(&rec_before, "phoenix_reconciler_pass_seconds_count");
    let soak_reconcile_pass_mean_ms = 1000.0
        * (metric(&rec_after, "phoenix_reconciler_pass_seconds_sum")
            - metric(&rec_before, "phoenix_reconciler_pass_seconds_sum"))
        / soak_passes.max(1.0);

    // Rollout: one experiment over the whole fleet.
    eprintln!("rollout: one experiment over {n} hosts");
    let statements_recorded = reset_statement_stats(&pool).await;
    let claims = "phoenix_api_claim_statements_total";
    let claimed_hosts = "phoenix_api_claim_hosts_total";
    let claims_before = replicas_metric(&http, &replicas, claims).await;
    let claimed_hosts_before = replicas_metric(&http, &replicas, claimed_hosts).await;
    sampler.begin_phase().await;
    let rec_before = scrape(&http, &format!("{reconciler_url}/metrics")).await?;
    let created_us = unix_us();
    let created_at = Instant::now();
    let response = http
        .post(format!("{api_url}/api/v1/experiments"))
        .bearer_auth(OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(experiment_document())
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 201,
        "creating the experiment: {} {}",
        response.status(),
        response.text().await?
    );
    let delivery_deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: usize = simulators.iter().map(|s| s.progress().delivered).sum();
        if done == n || Instant::now() > delivery_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "tasks delivered to every host {:.2} s after creation; waiting for Running",
        created_at.elapsed().as_secs_f64()
    );
    let mut creation_to_running_s = None;
    let running_deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < running_deadline {
        let response = http
            .get(format!("{api_url}/api/v1/experiments/{EXPERIMENT}"))
            .bearer_auth(VIEWER_TOKEN)
            .send()
            .await?;
        if response.status() == 503 {
            // The replica sheds load while the fleet reports; ask again.
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let experiment: Experiment = response.error_for_status()?.json().await?;
        if experiment.phase == Phase::Running {
            creation_to_running_s = Some(created_at.elapsed().as_secs_f64());
            break;
        }
        anyhow::ensure!(
            !experiment.phase.is_terminal(),
            "the experiment ended: {:?} {:?}",
            experiment.phase,
            experiment.reason
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rollout = sampler.end_phase().await;
    let claim_statements = replicas_metric(&http, &replicas, claims).await - claims_before;
    let hosts_per_claim_statement = (replicas_metric(&http, &replicas, claimed_hosts).await
        - claimed_hosts_before)
        / claim_statements.max(1.0);
    let top_statements = if statements_recorded {
        top_statements(&pool).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    let rec_after = scrape(&http, &format!("{reconciler_url}/metrics")).await?;
    let rollout_passes = metric(&rec_after, "phoenix_reconciler_pass_seconds_count")
        - metric(&rec_before, "phoenix_reconciler_pass_seconds_count");
    // The longest pass: the sampled gauge, or the histogram's bucket bound when a
    // pass fell between two samples.
    let longest_pass_s = rollout
        .reconciler_last_pass_max_s
        .max(longest_observation_bound(
            &rec_before,
            &rec_after,
            "phoenix_reconciler_pass_seconds",
        ));
    // Exactly two per host, or the reconciler asked for something twice.
    let tasks_written: i64 = sqlx::query_scalar("SELECT count(*) FROM agent_tasks")
        .fetch_one(&pool)
        .await?;

    // Measure: the running experiment's hosts push; how old is what Prometheus holds?
    eprintln!(
        "measure: {} s of {n} hosts pushing every {} s",
        args.measure, args.push_interval
    );
    let pushes =
        |simulators: &[Simulator]| -> u64 { simulators.iter().map(|s| s.progress().pushes).sum() };
    sampler.begin_phase().await;
    let pushes_before = pushes(&simulators);
    let measure_started = Instant::now();
    let measure_started_us = unix_us();
    let mut sample_ages = Vec::new();
    let mut hosts_without_samples_max = 0;
    let mut checks = 0;
    // The first check after one interval: every host pushed as its collectors
    // started, and Prometheus has scraped since.
    tokio::time::sleep(push_interval).await;
    while measure_started.elapsed() < Duration::from_secs(args.measure) {
        let ages = measurement
            .query(r#"time() - push_time_seconds{job="phoenix_collectors"}"#)
            .await?;
        checks += 1;
        hosts_without_samples_max = hosts_without_samples_max.max(n.saturating_sub(ages.len()));
        sample_ages.extend(ages.iter().map(|s| s.value));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let measure_s = measure_started.elapsed().as_secs_f64();
    let pushes_per_s = (pushes(&simulators) - pushes_before) as f64 / measure_s;
    let measure = sampler.end_phase().await;
    let two_intervals = 2.0 * push_interval.as_secs_f64();
    let samples_older_than_two_intervals = sample_ages
        .iter()
        .filter(|&&age| age > two_intervals)
        .count();

    let mut finals = Vec::with_capacity(simulators.len());
    for simulator in simulators {
        finals.push(simulator.finish().await?);
    }
    // The steady state: pushes that began an interval into the measure phase, after
    // the rollout's first pushes.
    let steady_from_us = measure_started_us + push_interval.as_micros() as u64;
    let (steady_pushes, rollout_pushes): (Vec<TimedPush>, Vec<TimedPush>) = finals
        .iter()
        .flat_map(|f| f.push_latency_us.iter().copied())
        .partition(|&(began_us, _)| began_us >= steady_from_us);
    let latencies_ms = |pushes: &[TimedPush]| -> Vec<f64> {
        pushes
            .iter()
            .map(|&(_, us)| f64::from(us) / 1000.0)
            .collect()
    };
    let mut creation_to_tasks = Vec::with_capacity(n);
    let mut write_to_delivery = Vec::with_capacity(n);
    for (host, delivered) in finals.iter().flat_map(|f| f.all_tasks_us.iter()) {
        creation_to_tasks.push((delivered.saturating_sub(created_us)) as f64 / 1000.0);
        let notified = notified_us
            .get(*host)
            .map_or(0, |t| t.load(Ordering::Relaxed));
        if notified != 0 {
            write_to_delivery.push(delivered.saturating_sub(notified) as f64 / 1000.0);
        }
    }
    let hosts_without_tasks = n - creation_to_tasks.len();
    notified.abort();
    let peaks = sampler.stop().await;
    drop(reconciler);
    drop(replicas);
    drop(measurement);
    pool.close().await;

    Ok(Row {
        agents: n,
        api_replicas: replica_count,
        simulators: simulator_count,
        register_s,
        long_polls_held: long_polls_held as u64,
        heartbeats_written_per_s,
        agent_requests_per_s,
        heartbeat_backlog_max: backlog_max,
        config_fetches: finals.iter().map(|f| f.config_fetches).sum(),
        soak_reconcile_pass_mean_ms,
        creation_to_tasks_ms: Percentiles::of(creation_to_tasks),
        write_to_delivery_ms: Percentiles::of(write_to_delivery),
        hosts_without_tasks,
        tasks_per_host: tasks_written as f64 / n as f64,
        creation_to_running_s,
        rollout_reconcile_passes: rollout_passes as u64,
        claim_statements: claim_statements as u64,
        hosts_per_claim_statement,
        rollout_reconcile_pass_max_ms: longest_pass_s * 1000.0,
        api_rss_peak_mib: peaks.api_rss_peak_mib,
        api_open_files_peak: peaks.api_open_files_peak,
        agents_rss_peak_mib: peaks.agents_rss_peak_mib,
        api_cpu_soak_cores: soak.api_cores,
        api_cpu_rollout_cores: rollout.api_cores,
        reconciler_rss_peak_mib: peaks.reconciler_rss_peak_mib,
        reconciler_cpu_rollout_cores: rollout.reconciler_cores,
        postgres_cpu_soak_cores: soak.postgres_cores,
        postgres_cpu_rollout_cores: rollout.postgres_cores,
        agents_cpu_soak_cores: soak.agents_cores,
        agents_cpu_rollout_cores: rollout.agents_cores,
        api_rss_idle_fleet_mib,
        top_statements,
        machine_cpu_soak: soak.machine_busy,
        machine_cpu_rollout: rollout.machine_busy,
        postgres_connections_peak: peaks.postgres_connections_peak,
        request_errors: finals.iter().map(|f| f.request_errors).sum(),
        shed_503: finals.iter().map(|f| f.shed).sum(),
        measurement: MeasurementRow {
            push_interval_s: args.push_interval,
            pushes_per_s,
            rollout_pushes: rollout_pushes.len() as u64,
            rollout_push_latency_ms: Percentiles::of(latencies_ms(&rollout_pushes)),
            steady_pushes: steady_pushes.len() as u64,
            steady_push_latency_ms: Percentiles::of(latencies_ms(&steady_pushes)),
            push_errors: finals.iter().map(|f| f.push_errors).sum(),
            sample_age_s: Percentiles::of(sample_ages),
            hosts_without_samples_max,
            samples_older_than_two_intervals,
            checks,
            pushgateway_cpu_cores: measure.pushgateway_cores,
            pushgateway_rss_peak_mib: peaks.pushgateway_rss_peak_mib,
            prometheus_cpu_cores: measure.prometheus_cores,
            prometheus_rss_peak_mib: peaks.prometheus_rss_peak_mib,
            machine_cpu: measure.machine_busy,
        },
    })
}

/// What a simulator prints on its stdout, one JSON document per line.
#[derive(Serialize, serde::Deserialize, Clone, Default)]
struct Progress {
    /// Set once every agent of the simulator tried to register: how many did.
    registered: Option<usize>,
    /// Hosts that hold all their experiment tasks.
    delivered: usize,
    /// Requests its agents sent so far.
    requests: u64,
    /// Pushes to the Pushgateway that succeeded so far.
    #[serde(default)]
    pushes: u64,
}

/// What a simulator reports when it stops (its last line).
#[derive(Serialize, serde::Deserialize, Default)]
struct Final {
    /// (host index, wall-clock µs when it held all its experiment tasks).
    all_tasks_us: Vec<(usize, u64)>,
    config_fetches: u64,
    request_errors: u64,
    /// 503s answered to its agents, each retried.
    #[serde(default)]
    shed: u64,
    /// Each successful push: (wall-clock µs when it began, its latency in µs).
    #[serde(default)]
    push_latency_us: Vec<TimedPush>,
    #[serde(default)]
    push_errors: u64,
}

#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Progress(Progress),
    Final(Final),
}

/// A simulator process, as the main benchmark process drives it: its latest
/// progress line, read in the background.
struct Simulator {
    child: tokio::process::Child,
    latest: Arc<std::sync::Mutex<Progress>>,
    finished: tokio::sync::oneshot::Receiver<Final>,
}

impl Simulator {
    fn spawn(
        first: usize,
        count: usize,
        api_urls: &[String],
        pushgateway_url: &str,
        push_interval_s: u64,
    ) -> anyhow::Result<Simulator> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["--simulate", &format!("{first}:{count}")])
            .args(["--api-urls", &api_urls.join(",")])
            .args(["--pushgateway-url", pushgateway_url])
            .args(["--push-interval", &push_interval_s.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let latest = Arc::new(std::sync::Mutex::new(Progress::default()));
        let (done, finished) = tokio::sync::oneshot::channel();
        tokio::spawn({
            let latest = latest.clone();
            async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Line>(&line) {
                        Ok(Line::Progress(progress)) => *latest.lock().unwrap() = progress,
                        Ok(Line::Final(last)) => {
                            let _ = done.send(last);
                            return;
                        }
                        Err(err) => eprintln!("simulator {first}: {err}: {line}"),
                    }
                }
            }
        });
        Ok(Simulator {
            child,
            latest,
            finished,
        })
    }

    fn progress(&self) -> Progress {
        self.latest.lock().unwrap().clone()
    }

    /// Tells it to stop (a line on its stdin) and returns its final report.
    async fn finish(mut self) -> anyhow::Result<Final> {
        if let Some(mut stdin) = self.child.stdin.take() {
            stdin.write_all(b"stop\n").await?;
        }
        let last = tokio::time::timeout(Duration::from_secs(60), self.finished).await??;
        let _ = self.child.wait().await;
        Ok(last)
    }
}

/// A simulator process (`--simulate FIRST:COUNT`): runs agents `FIRST..FIRST+COUNT`,
/// host i against `api_urls[i % len]`, prints [`Progress`] lines every 250 ms and
/// a [`Final`] line once a line arrives on stdin (or stdin closes).
async fn simulate(
    first: usize,
    count: usize,
    api_urls: Vec<String>,
    pushgateway_url: Option<reqwest::Url>,
    push_interval: Duration,
) -> anyhow::Result<()> {
    anyhow::ensure!(!api_urls.is_empty(), "--simulate needs --api-urls");
    let http = phoenix_e2e::harness::http_client_builder()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(90))
        .build()?;
    // The agent's own Pushgateway client settings (no idle connection), shared.
    let push_http = Pushgateway::http_settings(reqwest::Client::builder()).build()?;
    let push_latency_us = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clock = Arc::new(HostClock::new(count));
    let counters = Arc::new(AgentCounters::default());
    let (stop, stopped) = watch::channel(false);
    let registering = Arc::new(Semaphore::new(64));
    let registered = Arc::new(AtomicU64::new(0));
    let mut agents = Vec::with_capacity(count);
    for local in 0..count {
        let index = first + local;
        let agent = SimulatedAgent {
            index: local,
            host_id: host_id(index),
            api_url: api_urls[index % api_urls.len()].clone(),
            // One client for the simulator: the long-poll holds a connection per
            // agent, and answers, fetches and status reports share the idle ones,
            // as a real agent's own client does once its second connection idles out.
            http: http.clone(),
            clock: clock.clone(),
            counters: counters.clone(),
            collectors: Mutex::new(BTreeMap::new()),
            bodies: Mutex::new(BTreeMap::new()),
            stopped: stopped.clone(),
            credential: String::new(),
            pushgateway: pushgateway_url
                .clone()
                .map(|url| Pushgateway::with_client(push_http.clone(), url, host_id(index))),
            push_interval,
            collectors_changed: tokio::sync::Notify::new(),
            push_latency_us: push_latency_us.clone(),
        };
        let permit = registering.clone().acquire_owned().await?;
        let registered = registered.clone();
        agents.push(tokio::spawn(async move {
            let mut agent = agent;
            agent.credential = enroll(&agent.http, &agent.api_url, &agent.host_id).await;
            let ok = agent.report_status().await;
            if ok {
                registered.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
            if ok {
                agent.run().await;
            }
        }));
    }
    let _ = registering.acquire_many(64).await?;
    let print = |line: &Line| println!("{}", serde_json::to_string(line).expect("serializes"));
    let progress = || Progress {
        registered: Some(registered.load(Ordering::Relaxed) as usize),
        delivered: clock.delivered(),
        requests: counters.requests(),
        pushes: counters.pushes.load(Ordering::Relaxed),
    };
    // A line on stdin (or its end) is the stop.
    let (asked, mut stop_asked) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_line(&mut String::new());
        let _ = asked.send(());
    });
    loop {
        print(&Line::Progress(progress()));
        tokio::select! {
            _ = &mut stop_asked => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    let _ = stop.send(true);
    for agent in agents {
        agent.abort();
    }
    let all_tasks_us = clock
        .all_tasks_us
        .iter()
        .enumerate()
        .filter_map(|(local, t)| {
            let at = t.load(Ordering::Relaxed);
            (at != 0).then_some((first + local, at))
        })
        .collect();
    print(&Line::Final(Final {
        all_tasks_us,
        config_fetches: counters.config_fetches.load(Ordering::Relaxed),
        request_errors: counters.request_errors.load(Ordering::Relaxed)
            + counters.poll_errors.load(Ordering::Relaxed),
        shed: counters.shed.load(Ordering::Relaxed),
        push_latency_us: std::mem::take(&mut *push_latency_us.lock().unwrap()),
        push_errors: counters.push_errors.load(Ordering::Relaxed),
    }));
    Ok(())
}

fn experiment_document() -> String {
    format!(
        "apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {{name: {EXPERIMENT}}}
spec:
  hosts: {{selector: {{fleet: bench}}}}
  baseline: {{pipeline: process-baseline}}
  candidate: {{pipeline: process-topk, vars: {{cpu_threshold: \"0.05\"}}}}
  warmup: 1m
  duration: 1h
  criteria: {{minSeriesReduction: 50}}
"
    )
}

/// One simulated agent: the real protocol, no collectors behind it.
struct SimulatedAgent {
    index: usize,
    host_id: String,
    api_url: String,
    http: reqwest::Client,
    clock: Arc<HostClock>,
    counters: Arc<AgentCounters>,
    /// Config bodies it holds, by SHA-256 (a real agent's cache).
    bodies: Mutex<BTreeMap<String, Arc<str>>>,
    /// The collectors it "runs", by id, as it reports them.
    collectors: Mutex<BTreeMap<String, CollectorStatus>>,
    stopped: watch::Receiver<bool>,
    /// Its host credential, from enrolling with the bootstrap token.
    credential: String,
    /// Where it pushes its experiment collectors' CPU and RSS (the agent's client).
    pushgateway: Option<Pushgateway>,
    push_interval: Duration,
    collectors_changed: tokio::sync::Notify,
    /// The simulator's record of each successful push's latency (µs).
    push_latency_us: Arc<std::sync::Mutex<Vec<TimedPush>>>,
}

impl SimulatedAgent {
    async fn run(self) {
        tokio::join!(self.poll_loop(), self.push_loop());
    }

    /// Pushes as the real agent's push loop does: its change-push delay after its
    /// collectors change, and every push interval; nothing while it runs no
    /// experiment collector (the group is deleted once). The first tick falls at a
    /// random point of the interval, as agents that started at different times.
    async fn push_loop(&self) {
        let Some(gateway) = &self.pushgateway else {
            return;
        };
        let started = Instant::now();
        let mut stopped = self.stopped.clone();
        let change_delay = change_push_delay(&self.host_id, self.push_interval);
        let offset = self.push_interval.mul_f64(rand::random::<f64>());
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + offset, self.push_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut group_held = false;
        loop {
            let changed = tokio::select! {
                _ = ticker.tick() => false,
                _ = self.collectors_changed.notified() => true,
                _ = stopped.wait_for(|&s| s) => return,
            };
            if changed {
                // As the agent: a change is pushed after the host's delay.
                tokio::time::sleep(change_delay).await;
            }
            let mut measured: Vec<CollectorStatus> = self
                .collectors
                .lock()
                .await
                .values()
                .filter(|s| phoenix_agent::pushgateway::is_measured(s))
                .cloned()
                .collect();
            if measured.is_empty() {
                if group_held && gateway.delete().await.is_ok() {
                    group_held = false;
                }
                continue;
            }
            // A light collector: a hundredth of a core.
            for status in &mut measured {
                status.cpu_seconds = started.elapsed().as_secs_f64() / 100.0;
            }
            let pushing = Instant::now();
            match gateway.push(&measured.iter().collect::<Vec<_>>()).await {
                Ok(()) => {
                    group_held = true;
                    let us = pushing.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    let began_us = unix_us().saturating_sub(u64::from(us));
                    self.push_latency_us.lock().unwrap().push((began_us, us));
                    self.counters.pushes.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    if !*self.stopped.borrow() {
                        eprintln!("{}: push failed: {err}", self.host_id);
                        self.counters.push_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    async fn poll_loop(&self) {
        loop {
            if *self.stopped.borrow() {
                return;
            }
            let result = self
                .http
                .get(format!(
                    "{}/agent/v1/hosts/{}/tasks?wait=30s",
                    self.api_url, self.host_id
                ))
                .bearer_auth(&self.credential)
                .send()
                .await;
            let batch = match result {
                Ok(response) if response.status() == 200 => response.json::<TaskBatch>().await,
                other => {
                    if !*self.stopped.borrow() {
                        if let Err(err) = other {
                            eprintln!("{}: poll failed: {err}", self.host_id);
                        }
                        self.counters.poll_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            };
            self.counters.polls.fetch_add(1, Ordering::Relaxed);
            let Ok(batch) = batch else {
                self.counters.poll_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if batch.tasks.is_empty() {
                continue;
            }
            self.handle(batch).await;
        }
    }

    /// Records the delivery, "applies" each task, acknowledges it, and reports
    /// the new state, as the real agent does.
    async fn handle(&self, batch: TaskBatch) {
        let experiment_tasks = batch
            .tasks
            .iter()
            .filter(|t| t.collector_id.starts_with(EXPERIMENT))
            .count() as u32;
        if experiment_tasks > 0 {
            let before = self.clock.tasks_received[self.index]
                .fetch_add(experiment_tasks, Ordering::Relaxed);
            if before < TASKS_PER_HOST && before + experiment_tasks >= TASKS_PER_HOST {
                self.clock.all_tasks_us[self.index].store(unix_us(), Ordering::Relaxed);
            }
        }
        let mut changed = false;
        for task in &batch.tasks {
            if let Some(sha) = task.collector.as_ref().and_then(|c| c.config_ref.as_ref()) {
                self.fetch_body(sha).await;
            }
            {
                let mut collectors = self.collectors.lock().await;
                match (task.action, &task.collector) {
                    (TaskAction::Start, Some(spec)) => {
                        collectors.insert(
                            spec.collector_id.clone(),
                            CollectorStatus {
                                collector_id: spec.collector_id.clone(),
                                owner: spec.owner.clone(),
                                variant: spec.variant,
                                pipeline: spec.pipeline.clone(),
                                config_hash: spec.config_hash.clone(),
                                pid: Some(4000 + self.index as u32),
                                health: Health::Healthy,
                                restarts: 0,
                                cpu_seconds: 0.0,
                                rss_bytes: 50 << 20,
                                last_error: None,
                                rolled_back_from: None,
                            },
                        );
                        changed = true;
                    }
                    (TaskAction::Stop, _) => {
                        changed |= collectors.remove(&task.collector_id).is_some();
                    }
                    _ => {}
                }
            }
            let ack = self
                .http
                .post(format!(
                    "{}/agent/v1/hosts/{}/tasks/{}",
                    self.api_url, self.host_id, task.id
                ))
                .bearer_auth(&self.credential)
                .json(&TaskOutcome {
                    ok: true,
                    error: None,
                });
            let ack = self.send(ack).await;
            match ack {
                Ok(response) if response.status() == 204 => {
                    self.counters.acks.fetch_add(1, Ordering::Relaxed);
                }
                other => self.request_failed("task acknowledgement", other),
            }
        }
        if changed {
            self.collectors_changed.notify_one();
            self.report_status().await;
        }
    }

    /// Sends `request`; a 503 (a replica shedding load) is counted and sent again
    /// after its Retry-After plus up to a second of jitter, as the real agent
    /// treats it (transient).
    async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
        loop {
            let attempt = request
                .try_clone()
                .expect("bodies are bytes")
                .send()
                .await?;
            if attempt.status() != 503 {
                return Ok(attempt);
            }
            self.counters.shed.fetch_add(1, Ordering::Relaxed);
            let after = attempt
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(2);
            let jitter = rand::random_range(0..1000);
            tokio::time::sleep(Duration::from_secs(after) + Duration::from_millis(jitter)).await;
        }
    }

    /// Fetches a config body it does not hold, as the real agent does.
    async fn fetch_body(&self, sha: &str) {
        if self.bodies.lock().await.contains_key(sha) {
            return;
        }
        let fetched = self
            .http
            .get(format!(
                "{}/agent/v1/hosts/{}/configs/{sha}",
                self.api_url, self.host_id
            ))
            .bearer_auth(&self.credential);
        let fetched = self.send(fetched).await;
        match fetched {
            Ok(response) if response.status() == 200 => {
                let body = response.text().await.unwrap_or_default();
                self.counters.config_fetches.fetch_add(1, Ordering::Relaxed);
                self.bodies
                    .lock()
                    .await
                    .insert(sha.to_string(), body.into());
            }
            other => self.request_failed("config fetch", other),
        }
    }

    /// Counts a failed request, and says what failed for the first few of a
    /// simulator.
    fn request_failed(&self, what: &str, result: reqwest::Result<reqwest::Response>) {
        if self.counters.request_errors.fetch_add(1, Ordering::Relaxed) < 5 {
            let why = match result {
                Ok(response) => format!("answered {}", response.status()),
                Err(err) => format!("{err:#}"),
            };
            eprintln!("{}: {what} failed: {why}", self.host_id);
        }
    }

    /// Sends the full status; true when the api stored it.
    async fn report_status(&self) -> bool {
        let status = HostStatus {
            labels: [("fleet".to_string(), "bench".to_string())].into(),
            agent_version: "fleet-bench".into(),
            collectors: self.collectors.lock().await.values().cloned().collect(),
            load: Vec::new(),
            max_load_processes: 0,
        };
        let result = self
            .http
            .put(format!(
                "{}/agent/v1/hosts/{}/status",
                self.api_url, self.host_id
            ))
            .bearer_auth(&self.credential)
            .json(&status);
        let result = self.send(result).await;
        match result {
            Ok(response) if response.status() == 204 => {
                self.counters.status_reports.fetch_add(1, Ordering::Relaxed);
                true
            }
            other => {
                eprintln!("{}: status report failed: {other:?}", self.host_id);
                self.counters.request_errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// The processes a [`Sampler`] watches.
struct Watched {
    api_pids: Vec<u32>,
    reconciler_pid: u32,
    /// The simulator processes.
    agent_pids: Vec<u32>,
    /// The postmaster (0: not local).
    postgres_pid: u32,
    /// Prometheus' and the Pushgateway's owner wrappers.
    measurement_pids: (u32, u32),
}

/// Samples processes, the machine and Postgres twice a second.
struct Sampler {
    api_pids: Vec<u32>,
    reconciler_pid: u32,
    /// The simulator processes.
    agent_pids: Vec<u32>,
    /// The postmaster, whose children are the server's backends (0: not local).
    postgres_pid: u32,
    /// Prometheus' and the Pushgateway's owner wrappers (each server is a child).
    measurement_pids: (u32, u32),
    state: Arc<std::sync::Mutex<SamplerState>>,
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct SamplerState {
    api_rss_peak_kib: u64,
    api_open_files_peak: u64,
    agents_rss_peak_kib: u64,
    reconciler_rss_peak_kib: u64,
    postgres_connections_peak: u64,
    prometheus_rss_peak_kib: u64,
    pushgateway_rss_peak_kib: u64,
    /// Longest reconcile pass seen since the current phase began.
    last_pass_max_s: f64,
    phase: Option<PhaseStart>,
}

struct PhaseStart {
    at: Instant,
    api_ticks: u64,
    reconciler_ticks: u64,
    postgres_ticks: u64,
    agents_ticks: u64,
    prometheus_ticks: u64,
    pushgateway_ticks: u64,
    machine: MachineTicks,
}

struct PhaseUse {
    api_cores: f64,
    reconciler_cores: f64,
    postgres_cores: f64,
    /// The simulator processes.
    agents_cores: f64,
    machine_busy: f64,
    reconciler_last_pass_max_s: f64,
    prometheus_cores: f64,
    pushgateway_cores: f64,
}

struct Peaks {
    api_rss_peak_mib: f64,
    api_open_files_peak: u64,
    agents_rss_peak_mib: f64,
    reconciler_rss_peak_mib: f64,
    postgres_connections_peak: u64,
    prometheus_rss_peak_mib: f64,
    pushgateway_rss_peak_mib: f64,
}

impl Sampler {
    fn start(
        watched: Watched,
        pool: phoenix_storage::PgPool,
        reconciler_url: String,
        http: reqwest::Client,
    ) -> Sampler {
        let Watched {
            api_pids,
            reconciler_pid,
            agent_pids,
            postgres_pid,
            measurement_pids,
        } = watched;
        let state = Arc::new(std::sync::Mutex::new(SamplerState::default()));
        let running = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn({
            let state = state.clone();
            let running = running.clone();
            let (api_pids, agent_pids) = (api_pids.clone(), agent_pids.clone());
            async move {
                while running.load(Ordering::Relaxed) {
                    let connections: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
                    let last_pass = match scrape(&http, &format!("{reconciler_url}/metrics")).await
                    {
                        Ok(text) => {
                            metric_line(&text, r#"phoenix_reconciler_job_last_seconds{job="pass"}"#)
                        }
                        Err(_) => 0.0,
                    };
                    {
                        let mut s = state.lock().unwrap();
                        // The largest replica: what one api pod must be sized for.
                        for &pid in &api_pids {
                            s.api_rss_peak_kib = s.api_rss_peak_kib.max(rss_kib(pid));
                            s.api_open_files_peak = s.api_open_files_peak.max(open_files(pid));
                        }
                        s.agents_rss_peak_kib = s
                            .agents_rss_peak_kib
                            .max(agent_pids.iter().map(|&p| rss_kib(p)).sum());
                        s.reconciler_rss_peak_kib =
                            s.reconciler_rss_peak_kib.max(rss_kib(reconciler_pid));
                        // Less this sampler's own connection and the benchmark's listener.
                        s.postgres_connections_peak = s
                            .postgres_connections_peak
                            .max((connections as u64).saturating_sub(2));
                        s.last_pass_max_s = s.last_pass_max_s.max(last_pass);
                        s.prometheus_rss_peak_kib = s
                            .prometheus_rss_peak_kib
                            .max(process_tree_rss_kib(measurement_pids.0));
                        s.pushgateway_rss_peak_kib = s
                            .pushgateway_rss_peak_kib
                            .max(process_tree_rss_kib(measurement_pids.1));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        Sampler {
            api_pids,
            reconciler_pid,
            agent_pids,
            postgres_pid,
            measurement_pids,
            state,
            running,
            task,
        }
    }

    async fn begin_phase(&self) {
        let mut s = self.state.lock().unwrap();
        s.last_pass_max_s = 0.0;
        s.phase = Some(PhaseStart {
            at: Instant::now(),
            api_ticks: self.api_pids.iter().map(|&p| cpu_ticks(p)).sum(),
            reconciler_ticks: cpu_ticks(self.reconciler_pid),
            postgres_ticks: process_tree_ticks(self.postgres_pid),
            agents_ticks: self.agent_pids.iter().map(|&p| cpu_ticks(p)).sum(),
            prometheus_ticks: process_tree_ticks(self.measurement_pids.0),
            pushgateway_ticks: process_tree_ticks(self.measurement_pids.1),
            machine: MachineTicks::now(),
        });
    }

    async fn end_phase(&self) -> PhaseUse {
        let mut s = self.state.lock().unwrap();
        let start = s.phase.take().expect("a phase began");
        let seconds = start.at.elapsed().as_secs_f64();
        let ticks_per_s = procfs::clock_ticks_per_second() as f64;
        let cores = |ticks: u64| ticks as f64 / ticks_per_s / seconds;
        PhaseUse {
            api_cores: cores(
                self.api_pids
                    .iter()
                    .map(|&p| cpu_ticks(p))
                    .sum::<u64>()
                    .saturating_sub(start.api_ticks),
            ),
            reconciler_cores: cores(cpu_ticks(self.reconciler_pid) - start.reconciler_ticks),
            postgres_cores: cores(
                process_tree_ticks(self.postgres_pid).saturating_sub(start.postgres_ticks),
            ),
            agents_cores: cores(
                self.agent_pids
                    .iter()
                    .map(|&p| cpu_ticks(p))
                    .sum::<u64>()
                    .saturating_sub(start.agents_ticks),
            ),
            machine_busy: MachineTicks::now().busy_since(&start.machine),
            reconciler_last_pass_max_s: s.last_pass_max_s,
            prometheus_cores: cores(
                process_tree_ticks(self.measurement_pids.0).saturating_sub(start.prometheus_ticks),
            ),
            pushgateway_cores: cores(
                process_tree_ticks(self.measurement_pids.1).saturating_sub(start.pushgateway_ticks),
            ),
        }
    }

    async fn stop(self) -> Peaks {
        self.running.store(false, Ordering::Relaxed);
        let _ = self.task.await;
        let s = self.state.lock().unwrap();
        Peaks {
            api_rss_peak_mib: s.api_rss_peak_kib as f64 / 1024.0,
            api_open_files_peak: s.api_open_files_peak,
            agents_rss_peak_mib: s.agents_rss_peak_kib as f64 / 1024.0,
            reconciler_rss_peak_mib: s.reconciler_rss_peak_kib as f64 / 1024.0,
            postgres_connections_peak: s.postgres_connections_peak,
            prometheus_rss_peak_mib: s.prometheus_rss_peak_kib as f64 / 1024.0,
            pushgateway_rss_peak_mib: s.pushgateway_rss_peak_kib as f64 / 1024.0,
        }
    }
}

/// Open file descriptors of a process (sockets, mostly).
fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64)
}

/// One statement's share of the database's time.
#[derive(Serialize, sqlx::FromRow)]
struct StatementCost {
    query: String,
    calls: i64,
    total_ms: f64,
    mean_ms: f64,
    rows: i64,
}

/// Starts recording statement costs afresh; false when pg_stat_statements is
/// not loaded (a server given through DATABASE_URL).
async fn reset_statement_stats(pool: &phoenix_storage::PgPool) -> bool {
    let created = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(pool)
        .await;
    created.is_ok()
        && sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(pool)
            .await
            .is_ok()
}

/// The statements that took the most database time since the reset.
async fn top_statements(pool: &phoenix_storage::PgPool) -> anyhow::Result<Vec<StatementCost>> {
    Ok(sqlx::query_as(
        "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 120) AS query, calls, \
         total_exec_time AS total_ms, mean_exec_time AS mean_ms, rows \
         FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY total_exec_time DESC LIMIT 8",
    )
    .fetch_all(pool)
    .await?)
}

/// Resident memory of a process, in KiB (0 once it is gone).
fn rss_kib(pid: u32) -> u64 {
    procfs::rss_bytes(pid).map_or(0, |bytes| bytes / 1024)
}

/// User plus system CPU time of a process, in clock ticks (0 once it is gone).
fn cpu_ticks(pid: u32) -> u64 {
    procfs::read_stat(pid).map_or(0, |stat| stat.user_ticks + stat.system_ticks)
}

/// A process and its children (a postmaster and its backends; a server's wrapper
/// and the server).
fn process_tree(root: u32) -> Vec<u32> {
    if root == 0 {
        return Vec::new();
    }
    let mut pids: Vec<u32> = procfs::all_pids()
        .unwrap_or_default()
        .into_iter()
        .filter(|&pid| procfs::read_stat(pid).is_ok_and(|stat| stat.parent == root))
        .collect();
    pids.push(root);
    pids
}

/// CPU ticks of a process and its children.
fn process_tree_ticks(root: u32) -> u64 {
    process_tree(root).into_iter().map(cpu_ticks).sum()
}

/// Resident memory of a process and its children, in KiB.
fn process_tree_rss_kib(root: u32) -> u64 {
    process_tree(root).into_iter().map(rss_kib).sum()
}

/// The postmaster's pid, from `postmaster.pid` in the server's data directory;
/// 0 when the server is not on this machine (or not readable).
async fn postmaster_pid(pool: &phoenix_storage::PgPool) -> u32 {
    let Ok(data) = sqlx::query_scalar::<_, String>(
        "SELECT setting FROM pg_settings WHERE name = 'data_directory'",
    )
    .fetch_one(pool)
    .await
    else {
        return 0;
    };
    std::fs::read_to_string(format!("{data}/postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse().ok())
        .unwrap_or(0)
}

/// The machine's busy and total CPU ticks, from `/proc/stat`.
struct MachineTicks {
    busy: u64,
    total: u64,
}

impl MachineTicks {
    fn now() -> MachineTicks {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let values: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: u64 = values.iter().sum();
        // idle and iowait are the fourth and fifth.
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        MachineTicks {
            busy: total - idle,
            total,
        }
    }

    /// Share of the machine's CPU time that was busy since `earlier`, 0..1.
    fn busy_since(&self, earlier: &MachineTicks) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// Lets this process (and the api and reconciler it starts, which inherit it)
/// hold one connection per simulated agent.
fn raise_open_file_limit() {
    let wanted: libc::rlim_t = 1 << 18;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let raised = libc::rlimit {
            rlim_cur: wanted.max(limit.rlim_cur),
            rlim_max: wanted.max(limit.rlim_max),
        };
        // Only root may raise the hard limit; otherwise take what it allows.
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    eprintln!("open files limit: {}", limit.rlim_cur);
}

async fn wait_ready(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = http.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{url} did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    Ok(http.get(url).send().await?.text().await?)
}

/// The sum of a metric's samples over all label sets in OpenMetrics text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The upper bound of the longest observation a histogram took between two
/// scrapes: the smallest bucket bound that holds every new observation.
fn longest_observation_bound(before: &str, after: &str, histogram: &str) -> f64 {
    let total = metric(after, &format!("{histogram}_count"))
        - metric(before, &format!("{histogram}_count"));
    if total == 0.0 {
        return 0.0;
    }
    let bucket = format!("{histogram}_bucket{{le=\"");
    let mut bounds: Vec<(f64, String)> = after
        .lines()
        .filter_map(|line| {
            let le = line.strip_prefix(&bucket)?.split('"').next()?;
            Some((le.parse().ok()?, format!("{bucket}{le}\"}}")))
        })
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    bounds
        .into_iter()
        .find(|(_, series)| metric_line(after, series) - metric_line(before, series) >= total)
        .map_or(f64::INFINITY, |(bound, _)| bound)
}

/// The value of one exact series (name and labels) in OpenMetrics text.
fn metric_line(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn machine_description() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs, {memory_gib:.0} GiB, {os}")
}

fn print_table(rows: &[Row]) {
    println!(
        "\n| agents (api replicas, simulators) | creation → all tasks p50 / p99 / max | write → delivery p50 / p99 / max | to Running | heartbeats written/s (agent requests/s) idle | backlog max | pass: soak mean / rollout max | api RSS idle / peak, largest replica (open files) | reconciler RSS | CPU cores in rollout: api / reconciler / Postgres / agents | PG conns | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let c = r.creation_to_tasks_ms;
        let w = r.write_to_delivery_ms;
        println!(
            "| {} ({}, {}) | {:.0} / {:.0} / {:.0} ms | {:.0} / {:.0} / {:.0} ms | {} | {:.0} ({:.0}) | {:.0} | {:.0} / {:.0} ms | {:.0} / {:.0} MiB ({}) | {:.0} MiB | {:.2} / {:.2} / {:.2} / {:.2} | {} | {} ({} 503s retried) |",
            r.agents,
            r.api_replicas,
            r.simulators,
            c.p50,
            c.p99,
            c.max,
            w.p50,
            w.p99,
            w.max,
            r.creation_to_running_s
                .map_or("never".to_string(), |s| format!("{s:.1} s")),
            r.heartbeats_written_per_s,
            r.agent_requests_per_s,
            r.heartbeat_backlog_max,
            r.soak_reconcile_pass_mean_ms,
            r.rollout_reconcile_pass_max_ms,
            r.api_rss_idle_fleet_mib,
            r.api_rss_peak_mib,
            r.api_open_files_peak,
            r.reconciler_rss_peak_mib,
            r.api_cpu_rollout_cores,
            r.reconciler_cpu_rollout_cores,
            r.postgres_cpu_rollout_cores,
            r.agents_cpu_rollout_cores,
            r.postgres_connections_peak,
            r.request_errors,
            r.shed_503,
        );
    }
    println!(
        "\n| agents | push interval | pushes/s | push p50 / p99 / max, rollout | push p50 / p99 / max, steady | push errors | sample age p50 / p99 / max | hosts without samples (worst check) | samples older than 2 intervals | Pushgateway CPU / RSS | Prometheus CPU / RSS | machine busy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let m = &r.measurement;
        println!(
            "| {} | {} s | {:.0} | {:.1} / {:.1} / {:.0} ms | {:.1} / {:.1} / {:.0} ms | {} of {} | {:.1} / {:.1} / {:.1} s | {} | {} of {} | {:.2} cores / {:.0} MiB | {:.2} cores / {:.0} MiB | {:.0} % |",
            r.agents,
            m.push_interval_s,
            m.pushes_per_s,
            m.rollout_push_latency_ms.p50,
            m.rollout_push_latency_ms.p99,
            m.rollout_push_latency_ms.max,
            m.steady_push_latency_ms.p50,
            m.steady_push_latency_ms.p99,
            m.steady_push_latency_ms.max,
            m.push_errors,
            m.rollout_pushes + m.steady_pushes + m.push_errors,
            m.sample_age_s.p50,
            m.sample_age_s.p99,
            m.sample_age_s.max,
            m.hosts_without_samples_max,
            m.samples_older_than_two_intervals,
            m.checks * r.agents,
            m.pushgateway_cpu_cores,
            m.pushgateway_rss_peak_mib,
            m.prometheus_cpu_cores,
            m.prometheus_rss_peak_mib,
            m.machine_cpu * 100.0,
        );
    }
}
