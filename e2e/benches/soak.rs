//! Soak (issue 18; not in CI): random faults over a 5-host fleet with process
//! churn, for `PHOENIX_SOAK_MINUTES` (30 by default). Every Phoenix process but the
//! bench's own api runs as a process of its own: an api replica the agents talk
//! to, two reconciler replicas, five agents with their collectors, on a throwaway
//! Postgres, with a standing pipeline on every host and one experiment after
//! another (each round stops the last and creates the next).
//!
//! Faults, one per round, at random: an agent SIGKILLed and restarted; the api
//! replica SIGKILLed and restarted; the reconciler leader SIGKILLed and restarted;
//! Postgres stopped for 10 s; the standing pipeline updated to a config that
//! crash-loops (every agent goes back to its last known good), then to a good one.
//!
//! After each fault it checks the invariants of `e2e/tests/faults_running.rs`:
//! no task pending or leased twice in a row a second apart, every host ready and
//! reporting exactly the collector processes it runs, all healthy, and no orphaned
//! process, within 120 s (a violation otherwise). It prints, per fault, how often
//! it was injected and the recovery time (fault over → invariants hold) p50 and
//! max, and per Phoenix process its RSS at the start and end of its longest life
//! and the slope over it.
//!
//! Run: `cargo bench -p phoenix-e2e --bench soak --profile dev` (as root, like
//! the tests; `--profile dev` measures the debug binaries the tests build, without
//! a release build of the workspace; drop it to soak optimized binaries).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{AgentProcess, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN};
use phoenix_e2e::throwaway::ThrowawayPostgres;
use phoenix_wire::agent::Health;
use phoenix_wire::view::{Host, HostState, List, Phase};
use rand::Rng;
use reqwest::Method;

const HOSTS: usize = 5;
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    AgentKilled,
    ApiKilled,
    LeaderKilled,
    PostgresStopped,
    CrashLoopingUpdate,
}

const FAULTS: [Fault; 5] = [
    Fault::AgentKilled,
    Fault::ApiKilled,
    Fault::LeaderKilled,
    Fault::PostgresStopped,
    Fault::CrashLoopingUpdate,
];

/// RSS samples of one incarnation of a Phoenix process: (minutes since the
/// soak began, KiB).
#[derive(Default)]
struct Life {
    samples: Vec<(f64, f64)>,
}

/// Every incarnation of every Phoenix process, by role ("agent 3", "api", …).
#[derive(Default)]
struct Memory {
    lives: BTreeMap<String, Vec<(u32, Life)>>,
}

impl Memory {
    fn sample(&mut self, role: &str, pid: Option<u32>, minutes: f64) {
        let Some(pid) = pid else { return };
        let Some(kib) = rss_kib(pid) else { return };
        let lives = self.lives.entry(role.to_string()).or_default();
        if lives.last().is_none_or(|(p, _)| *p != pid) {
            lives.push((pid, Life::default()));
        }
        lives.last_mut().unwrap().1.samples.push((minutes, kib));
    }
}

fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Least-squares slope of (x, y).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let num: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

struct Servers {
    api: Child,
    api_port: u16,
    reconcilers: Vec<Child>,
    database_url: String,
    log_dir: PathBuf,
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap()
}

fn spawn_api(database_url: &str, port: u16, log_dir: &Path) -> Child {
    let log = log_file(log_dir, "api.log");
    Command::new(binary("phoenix-api"))
        .args(["--dev", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--task-lease", "15s", "--host-grace", "10s"])
        .arg("--bootstrap-token-file")
        .arg(phoenix_e2e::harness::bootstrap_token_file())
        .env("DATABASE_URL", database_url)
        .env(
            "PHOENIX_API_TOKENS",
            "admin:admin-token-for-tests,operator:operator-token-for-tests,viewer:viewer-token-for-tests",
        )
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start phoenix-api")
}

fn spawn_reconciler(database_url: &str, log_dir: &Path, n: usize) -> Child {
    let log = log_file(log_dir, &format!("reconciler-{n}.log"));
    Command::new(binary("phoenix-reconciler"))
        .args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--resync-interval",
            "1s",
        ])
        .args(["--standby-retry", "500ms", "--leader-lease", "5s"])
        .args(["--deploy-timeout", "60s"])
        .arg("--database-url")
        .arg(database_url)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start phoenix-reconciler")
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

async fn hosts(stack: &Stack) -> Vec<Host> {
    let Ok(response) = stack
        .request(Method::GET, "/api/v1/hosts", VIEWER_TOKEN)
        .send()
        .await
    else {
        return Vec::new();
    };
    response
        .json::<List<Host>>()
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn open_tasks(stack: &Stack) -> Option<(i64, i64)> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'leased') FROM agent_tasks",
    )
    .fetch_one(&stack.pool)
    .await
    .ok()
}

/// The invariants hold now: nothing open, every host ready and reporting exactly
/// its `collectors` processes, healthy, nothing orphaned.
async fn agree(stack: &Stack, agents: &[AgentProcess], collectors: usize) -> bool {
    if open_tasks(stack).await != Some((0, 0)) {
        return false;
    }
    let hosts = hosts(stack).await;
    agents.iter().all(|agent| {
        let mut pids: Vec<u32> = agent.collector_processes().iter().map(|p| p.pid).collect();
        pids.sort();
        hosts.iter().any(|h| {
            let mut reported: Vec<u32> = h.collectors.iter().filter_map(|c| c.pid).collect();
            reported.sort();
            h.host_id == agent.host_id
                && h.state == HostState::Ready
                && reported == pids
                && pids.len() == collectors
                && h.collectors.iter().all(|c| c.health == Health::Healthy)
        }) && agent.load_processes().is_empty()
    })
}

/// Waits until [`agree`] holds twice a second apart; `None` past the limit.
async fn recovered(stack: &Stack, agents: &[AgentProcess], collectors: usize) -> Option<Duration> {
    let started = Instant::now();
    let mut before = false;
    while started.elapsed() < RECOVERY_LIMIT {
        let now = agree(stack, agents, collectors).await;
        if now && before {
            return Some(started.elapsed());
        }
        before = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}

fn experiment_yaml(name: &str) -> String {
    format!(
        "apiVersion: phoenix.dev/v1\nkind: Experiment\nmetadata: {{name: {name}}}\nspec:\n  hosts: {{selector: {{role: soak}}}}\n  \
         baseline: {{pipeline: process-baseline}}\n  candidate: {{pipeline: process-topk, vars: {{cpu_threshold: \"0.2\"}}}}\n  \
         warmup: 0s\n  duration: 1h\n  criticalProcesses: [nginx]\n"
    )
}

/// Deploys `pipeline` (with `cpu_threshold` 0.N when given) on every host.
async fn deploy(stack: &Stack, pipeline: &str, threshold: Option<u32>) {
    let vars = threshold
        .map(|t| format!("  vars: {{cpu_threshold: \"0.{t}\"}}\n"))
        .unwrap_or_default();
    let doc = format!(
        "apiVersion: phoenix.dev/v1\nkind: PipelineDeployment\nmetadata: {{name: soak-standing}}\n\
         spec:\n  hosts: {{selector: {{role: soak}}}}\n  pipeline: {pipeline}\n{vars}"
    );
    for _ in 0..30 {
        if let Ok(r) = stack
            .request(Method::POST, "/api/v1/deployments", OPERATOR_TOKEN)
            .header("content-type", "application/yaml")
            .body(doc.clone())
            .send()
            .await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("cannot deploy {pipeline}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let minutes: f64 = std::env::var("PHOENIX_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30.0);
    let soak = Duration::from_secs_f64(minutes * 60.0);
    let mut postgres = tokio::task::spawn_blocking(ThrowawayPostgres::start)
        .await
        .unwrap()
        .expect("a throwaway Postgres");
    let stack = Stack::start_with(StackOptions {
        postgres: Some(postgres.url("postgres")),
        reconciler: false,
        ..Default::default()
    })
    .await;
    let log_dir = tempfile::tempdir().unwrap();
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut servers = Servers {
        api: spawn_api(&stack.database_url, api_port, log_dir.path()),
        api_port,
        reconcilers: Vec::new(),
        database_url: stack.database_url.clone(),
        log_dir: log_dir.path().to_path_buf(),
    };
    for n in 0..2 {
        servers
            .reconcilers
            .push(spawn_reconciler(&servers.database_url, &servers.log_dir, n));
    }
    let api_url = format!("http://127.0.0.1:{}", servers.api_port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut agents: Vec<AgentProcess> = (0..HOSTS)
        .map(|i| AgentProcess::spawn(&api_url, &format!("soak-{i}"), &[("role", "soak")]))
        .collect();
    sqlx::query(
        "INSERT INTO pipeline_templates (name, config) \
         VALUES ('crashy', 'processors:\n  transform/stand-in-crash-after-start: {}\n')",
    )
    .execute(&stack.pool)
    .await
    .unwrap();
    deploy(&stack, "process-baseline", None).await;
    let mut round = 0u32;
    stack.create_experiment(&experiment_yaml("soak-0")).await;
    let first = recovered(&stack, &agents, 3).await;
    assert!(first.is_some(), "the fleet never converged at the start");

    let began = Instant::now();
    let mut memory = Memory::default();
    let mut recoveries: BTreeMap<Fault, Vec<Duration>> = BTreeMap::new();
    let mut violations: Vec<String> = Vec::new();
    let mut rng = rand::rng();
    let mut threshold = 1;
    while began.elapsed() < soak {
        let at = began.elapsed().as_secs_f64() / 60.0;
        memory.sample("api", Some(servers.api.id()), at);
        for (n, r) in servers.reconcilers.iter().enumerate() {
            memory.sample(&format!("reconciler {n}"), Some(r.id()), at);
        }
        for (n, a) in agents.iter().enumerate() {
            memory.sample(&format!("agent {n}"), a.pid(), at);
        }
        memory.sample("bench (in-process api)", Some(std::process::id()), at);

        // Churn: the next experiment replaces the last.
        let last = format!("soak-{round}");
        round += 1;
        let _ = stack
            .request(
                Method::POST,
                &format!("/api/v1/experiments/{last}/stop"),
                OPERATOR_TOKEN,
            )
            .send()
            .await;
        stack
            .create_experiment(&experiment_yaml(&format!("soak-{round}")))
            .await;

        let fault = FAULTS[rng.random_range(0..FAULTS.len())];
        match fault {
            Fault::AgentKilled => {
                let agent = &mut agents[rng.random_range(0..HOSTS)];
                agent.kill();
                tokio::time::sleep(Duration::from_secs(2)).await;
                agent.start();
            }
            Fault::ApiKilled => {
                kill(&mut servers.api);
                tokio::time::sleep(Duration::from_secs(2)).await;
                servers.api = spawn_api(&servers.database_url, servers.api_port, &servers.log_dir);
            }
            Fault::LeaderKilled => {
                let holder: Option<String> = sqlx::query_scalar(
                    "SELECT holder FROM reconciler_leadership ORDER BY epoch DESC LIMIT 1",
                )
                .fetch_optional(&stack.pool)
                .await
                .ok()
                .flatten();
                let leader = servers
                    .reconcilers
                    .iter()
                    .position(|r| {
                        holder
                            .as_deref()
                            .is_some_and(|h| h.ends_with(&format!("pid {}", r.id())))
                    })
                    .unwrap_or(0);
                kill(&mut servers.reconcilers[leader]);
                tokio::time::sleep(Duration::from_secs(1)).await;
                servers.reconcilers[leader] =
                    spawn_reconciler(&servers.database_url, &servers.log_dir, leader);
            }
            Fault::PostgresStopped => {
                tokio::task::block_in_place(|| postgres.stop_server()).expect("stop postgres");
                tokio::time::sleep(Duration::from_secs(10)).await;
                tokio::task::block_in_place(|| postgres.start_server()).expect("start postgres");
            }
            Fault::CrashLoopingUpdate => {
                deploy(&stack, "crashy", None).await;
                // Every agent goes back to its last known good.
                let deadline = Instant::now() + RECOVERY_LIMIT;
                loop {
                    let back = hosts(&stack)
                        .await
                        .iter()
                        .filter(|h| {
                            h.collectors.iter().any(|c| {
                                c.rolled_back_from
                                    .as_ref()
                                    .is_some_and(|r| r.pipeline == "crashy")
                                    && c.health == Health::Healthy
                            })
                        })
                        .count();
                    if back == HOSTS {
                        break;
                    }
                    if Instant::now() > deadline {
                        violations.push(format!(
                            "round {round}: only {back} of {HOSTS} hosts went back from the crashing update"
                        ));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                threshold = threshold % 9 + 1;
                deploy(&stack, "process-topk", Some(threshold)).await;
            }
        }
        match recovered(&stack, &agents, 3).await {
            Some(took) => recoveries.entry(fault).or_default().push(took),
            None => violations.push(format!(
                "round {round}: {fault:?}: invariants did not hold within {RECOVERY_LIMIT:?} (open tasks {:?})",
                open_tasks(&stack).await
            )),
        }
        let phase = stack.experiment(&format!("soak-{round}")).await.phase;
        if phase != Phase::Running {
            violations.push(format!("round {round}: {fault:?}: experiment {phase}"));
        }
        eprintln!(
            "{:6.1} min  round {round:3}  {fault:?}  recovered: {:?}",
            began.elapsed().as_secs_f64() / 60.0,
            recoveries.get(&fault).and_then(|r| r.last())
        );
    }
    let ran = began.elapsed();

    println!(
        "\nsoak: {:.1} minutes, {round} rounds over {HOSTS} hosts\n",
        ran.as_secs_f64() / 60.0
    );
    println!("| fault | injected | recovery p50 | recovery max |");
    println!("|---|---:|---:|---:|");
    let mut all = Vec::new();
    for fault in FAULTS {
        let mut r = recoveries.get(&fault).cloned().unwrap_or_default();
        r.sort();
        all.extend(r.iter().copied());
        println!(
            "| {fault:?} | {} | {:.1} s | {:.1} s |",
            r.len(),
            percentile(&r, 0.5).as_secs_f64(),
            r.last().copied().unwrap_or_default().as_secs_f64()
        );
    }
    all.sort();
    println!(
        "| all | {} | {:.1} s | {:.1} s |",
        all.len(),
        percentile(&all, 0.5).as_secs_f64(),
        all.last().copied().unwrap_or_default().as_secs_f64()
    );
    println!("\ninvariant violations: {}", violations.len());
    for v in &violations {
        println!("- {v}");
    }
    println!("\n| process | lives | longest life | RSS start | RSS end | slope |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (role, lives) in &memory.lives {
        let Some((_, longest)) = lives.iter().max_by_key(|(_, l)| l.samples.len()) else {
            continue;
        };
        let (first, last) = (longest.samples[0], *longest.samples.last().unwrap());
        println!(
            "| {role} | {} | {:.1} min | {:.1} MiB | {:.1} MiB | {:+.1} KiB/min |",
            lives.len(),
            last.0 - first.0,
            first.1 / 1024.0,
            last.1 / 1024.0,
            slope(&longest.samples)
        );
    }

    for agent in &mut agents {
        agent.kill();
    }
    drop(agents);
    kill(&mut servers.api);
    for r in &mut servers.reconcilers {
        kill(r);
    }
    stack.shutdown().await;
    drop(postgres);
}
