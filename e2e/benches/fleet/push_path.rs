//! The measurement path on its own: H hosts pushing to one Pushgateway.
//!
//! `cargo bench -p phoenix-e2e --bench fleet -- --push-hosts 1000,10000,25000`
//!
//! The fleet run's measure phase measures the push path with the control plane on
//! the same two cores, and only as wide as the control plane holds. This measures
//! the path alone, at widths the control plane does not reach here. For each host
//! count H it starts a fresh Pushgateway and Prometheus as the chart runs them
//! (`--push.disable-consistency-check`; Prometheus scrapes the Pushgateway every two
//! thirds of the push interval, 10 s against the chart's 15 s), and H simulated
//! hosts, each pushing its two experiment collectors with the agent's own client,
//! payload and timing ([`phoenix_agent::pushgateway::change_push_delay`]): every
//! host's collectors start within `--rollout-spread` (as an experiment's tasks
//! reach a fleet, 4 s at 10,000 in the fleet run), each host makes its first push
//! when the agent would (`--no-change-delay`: at once, as agents before it did), then one every push interval from its own phase.
//!
//! It reports push latency separately for the rollout (the first push of every
//! host, and whatever falls in the first interval) and the steady state after it,
//! push errors, connections the kernel dropped because a listener's accept queue
//! was full (`TcpExt ListenOverflows`, the whole machine), how old each host's
//! newest sample in Prometheus is at a check every 5 s of the steady state, and the
//! Pushgateway's and Prometheus' CPU and RSS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use phoenix_agent::pushgateway::{Pushgateway, change_push_delay};
use phoenix_e2e::measurement::MeasurementStack;
use phoenix_wire::agent::{CollectorStatus, Health, Variant};
use serde::Serialize;

use super::{Percentiles, process_tree_rss_kib, process_tree_ticks};

/// What one host count measured.
#[derive(Serialize)]
pub struct PushRow {
    pub hosts: usize,
    pub push_interval_s: u64,
    pub scrape_interval_s: f64,
    pub rollout_spread_s: f64,
    pub change_delay: bool,
    /// Pushes per second in the steady state.
    pub pushes_per_s: f64,
    /// Pushes that began before the steady state: every host's first push, and the
    /// rest of the first interval after the rollout.
    pub rollout_push_latency_ms: Percentiles,
    pub rollout_pushes: u64,
    pub steady_push_latency_ms: Percentiles,
    pub steady_pushes: u64,
    pub push_errors: u64,
    /// Connections dropped by a full accept queue, anywhere on the machine.
    pub listen_overflows: u64,
    /// Query time less the push time of each host's newest sample, every 5 s.
    pub sample_age_s: Percentiles,
    /// The most hosts without any sample at one check.
    pub hosts_without_samples_max: usize,
    pub samples_older_than_two_intervals: usize,
    pub checks: usize,
    pub pushgateway_cpu_cores: f64,
    pub pushgateway_rss_peak_mib: f64,
    pub prometheus_cpu_cores: f64,
    pub prometheus_rss_peak_mib: f64,
}

/// The shape of the run.
pub struct Shape {
    pub push_interval: Duration,
    pub rollout_spread: Duration,
    pub measure: Duration,
    /// Whether hosts wait [`change_push_delay`] before their first push.
    pub change_delay: bool,
}

pub async fn run(hosts: &[usize], shape: &Shape) -> anyhow::Result<Vec<PushRow>> {
    let mut rows = Vec::new();
    for &h in hosts {
        eprintln!(
            "\n=== push path: {h} hosts pushing every {} s ===",
            shape.push_interval.as_secs()
        );
        let row = run_hosts(h, shape).await?;
        eprintln!("{}", serde_json::to_string_pretty(&row)?);
        rows.push(row);
    }
    print_table(&rows);
    Ok(rows)
}

/// One push: when it began (since the rollout began) and how long it took.
struct Push {
    began_s: f64,
    latency_ms: f64,
}

async fn run_hosts(hosts: usize, shape: &Shape) -> anyhow::Result<PushRow> {
    let scrape_interval = shape.push_interval * 2 / 3;
    let measurement = MeasurementStack::start(scrape_interval).await?;
    let (prometheus_pid, pushgateway_pid) = measurement.server_pids();
    let base: reqwest::Url = measurement.pushgateway_url.parse()?;
    let client = Pushgateway::http_settings(reqwest::Client::builder()).build()?;
    let pushes = Arc::new(std::sync::Mutex::new(Vec::<Push>::with_capacity(hosts * 8)));
    let errors = Arc::new(AtomicU64::new(0));
    let overflows_before = listen_overflows();
    let pg_ticks_before = process_tree_ticks(pushgateway_pid);
    let prom_ticks_before = process_tree_ticks(prometheus_pid);
    let rollout = Instant::now();
    let mut tasks = Vec::with_capacity(hosts);
    for i in 0..hosts {
        let host = format!("push-{i:05}");
        let host_pushes = HostPushes {
            gateway: Pushgateway::with_client(client.clone(), base.clone(), host.clone()),
            collectors: collectors(&host),
            started: shape.rollout_spread.mul_f64(rand::random::<f64>()),
            change_delay: if shape.change_delay {
                change_push_delay(&host, shape.push_interval)
            } else {
                Duration::ZERO
            },
            phase: shape.push_interval.mul_f64(rand::random::<f64>()),
            interval: shape.push_interval,
            rollout,
            pushes: pushes.clone(),
            errors: errors.clone(),
        };
        tasks.push(tokio::spawn(host_pushes.run()));
    }

    // The steady state begins one interval after the last host's collectors started.
    let steady_from = shape.rollout_spread + shape.push_interval;
    let mut pg_rss_kib = 0;
    let mut prom_rss_kib = 0;
    let mut sample_ages = Vec::new();
    let mut hosts_without_samples_max = 0;
    let mut checks = 0;
    let mut next_check = steady_from;
    let end = steady_from + shape.measure;
    while rollout.elapsed() < end {
        pg_rss_kib = pg_rss_kib.max(process_tree_rss_kib(pushgateway_pid));
        prom_rss_kib = prom_rss_kib.max(process_tree_rss_kib(prometheus_pid));
        if rollout.elapsed() >= next_check {
            let ages = measurement
                .query(r#"time() - push_time_seconds{job="phoenix_collectors"}"#)
                .await?;
            checks += 1;
            hosts_without_samples_max =
                hosts_without_samples_max.max(hosts.saturating_sub(ages.len()));
            sample_ages.extend(ages.iter().map(|s| s.value));
            next_check += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seconds = rollout.elapsed().as_secs_f64();
    let ticks_per_s = phoenix_agent::procfs::clock_ticks_per_second() as f64;
    let pushgateway_cpu_cores =
        (process_tree_ticks(pushgateway_pid) - pg_ticks_before) as f64 / ticks_per_s / seconds;
    let prometheus_cpu_cores =
        (process_tree_ticks(prometheus_pid) - prom_ticks_before) as f64 / ticks_per_s / seconds;
    let listen_overflows = listen_overflows().saturating_sub(overflows_before);
    for task in tasks {
        task.abort();
    }
    let pushes = std::mem::take(&mut *pushes.lock().unwrap());
    let steady_s = steady_from.as_secs_f64();
    let (steady, rollout_pushes): (Vec<&Push>, Vec<&Push>) =
        pushes.iter().partition(|p| p.began_s >= steady_s);
    let two_intervals = 2.0 * shape.push_interval.as_secs_f64();
    Ok(PushRow {
        hosts,
        push_interval_s: shape.push_interval.as_secs(),
        scrape_interval_s: scrape_interval.as_secs_f64(),
        rollout_spread_s: shape.rollout_spread.as_secs_f64(),
        change_delay: shape.change_delay,
        pushes_per_s: steady.len() as f64 / shape.measure.as_secs_f64(),
        rollout_push_latency_ms: Percentiles::of(
            rollout_pushes.iter().map(|p| p.latency_ms).collect(),
        ),
        rollout_pushes: rollout_pushes.len() as u64,
        steady_push_latency_ms: Percentiles::of(steady.iter().map(|p| p.latency_ms).collect()),
        steady_pushes: steady.len() as u64,
        push_errors: errors.load(Ordering::Relaxed),
        listen_overflows,
        samples_older_than_two_intervals: sample_ages
            .iter()
            .filter(|&&age| age > two_intervals)
            .count(),
        sample_age_s: Percentiles::of(sample_ages),
        hosts_without_samples_max,
        checks,
        pushgateway_cpu_cores,
        pushgateway_rss_peak_mib: pg_rss_kib as f64 / 1024.0,
        prometheus_cpu_cores,
        prometheus_rss_peak_mib: prom_rss_kib as f64 / 1024.0,
    })
}

/// A host's baseline and candidate collectors, running.
fn collectors(host: &str) -> Vec<CollectorStatus> {
    [Variant::Baseline, Variant::Candidate]
        .into_iter()
        .map(|variant| CollectorStatus {
            collector_id: format!("bench.{variant}"),
            owner: "bench".into(),
            variant,
            pipeline: format!("process-{variant}"),
            config_hash: host.into(),
            pid: Some(4242),
            health: Health::Healthy,
            restarts: 0,
            cpu_seconds: 0.0,
            rss_bytes: 48 << 20,
            last_error: None,
            rolled_back_from: None,
        })
        .collect()
}

/// One simulated host's pushes, timed as the agent's push loop times them.
struct HostPushes {
    gateway: Pushgateway,
    collectors: Vec<CollectorStatus>,
    /// When its collectors start, after the rollout began.
    started: Duration,
    /// How long after they start the agent pushes them ([`change_push_delay`]).
    change_delay: Duration,
    /// Where its push interval falls (the agent's ticker runs from its own start).
    phase: Duration,
    interval: Duration,
    rollout: Instant,
    pushes: Arc<std::sync::Mutex<Vec<Push>>>,
    errors: Arc<AtomicU64>,
}

impl HostPushes {
    async fn run(mut self) {
        let rollout = tokio::time::Instant::from_std(self.rollout);
        tokio::time::sleep_until(rollout + self.started + self.change_delay).await;
        self.push().await;
        let mut ticker = tokio::time::interval_at(rollout + self.phase, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.push().await;
        }
    }

    async fn push(&mut self) {
        // A light collector: a hundredth of a core.
        let elapsed = self.rollout.elapsed();
        for status in &mut self.collectors {
            status.cpu_seconds = elapsed.as_secs_f64() / 100.0;
        }
        let began = Instant::now();
        match self
            .gateway
            .push(&self.collectors.iter().collect::<Vec<_>>())
            .await
        {
            Ok(()) => self.pushes.lock().unwrap().push(Push {
                began_s: began.duration_since(self.rollout).as_secs_f64(),
                latency_ms: began.elapsed().as_secs_f64() * 1000.0,
            }),
            Err(err) => {
                if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("push failed: {err}");
                }
            }
        }
    }
}

/// `TcpExt: ListenOverflows` of `/proc/net/netstat`: connections dropped because a
/// listener's accept queue was full.
pub fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

fn print_table(rows: &[PushRow]) {
    println!(
        "\n| hosts | push / scrape interval | first push | pushes/s | push p50 / p99 / max, rollout | push p50 / p99 / max, steady | push errors | accept-queue drops | sample age p50 / p99 / max | hosts without samples | samples older than 2 intervals | Pushgateway CPU / RSS | Prometheus CPU / RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} s / {:.0} s | {} | {:.0} | {:.1} / {:.1} / {:.0} ms | {:.1} / {:.1} / {:.0} ms | {} of {} | {} | {:.1} / {:.1} / {:.1} s | {} | {} of {} | {:.2} cores / {:.0} MiB | {:.2} cores / {:.0} MiB |",
            r.hosts,
            r.push_interval_s,
            r.scrape_interval_s,
            if r.change_delay {
                "spread (change-push delay)"
            } else {
                "at once"
            },
            r.pushes_per_s,
            r.rollout_push_latency_ms.p50,
            r.rollout_push_latency_ms.p99,
            r.rollout_push_latency_ms.max,
            r.steady_push_latency_ms.p50,
            r.steady_push_latency_ms.p99,
            r.steady_push_latency_ms.max,
            r.push_errors,
            r.rollout_pushes + r.steady_pushes + r.push_errors,
            r.listen_overflows,
            r.sample_age_s.p50,
            r.sample_age_s.p99,
            r.sample_age_s.max,
            r.hosts_without_samples_max,
            r.samples_older_than_two_intervals,
            r.checks * r.hosts,
            r.pushgateway_cpu_cores,
            r.pushgateway_rss_peak_mib,
            r.prometheus_cpu_cores,
            r.prometheus_rss_peak_mib,
        );
    }
}
