//! Experiment width: how many hosts' remote writes the bundled Prometheus ingests.
//!
//! `cargo bench -p phoenix-e2e --bench fleet -- --remote-write-hosts 50,100,200,400,1000`
//!
//! An experiment's collectors send every series they keep to Prometheus' remote-write
//! receiver: the baseline all of the host's process series, the candidate what its
//! pipeline keeps. For each host count H this starts a fresh Prometheus as the chart
//! and the demo run it (`--web.enable-remote-write-receiver`), and H simulated hosts
//! that each send, every collection interval, one remote-write request per variant as
//! the collector's `prometheusremotewrite` exporter does (a snappy-compressed
//! protobuf `WriteRequest`, one sample per series). The series look like the
//! baseline pipeline's process metrics (a name, host, experiment, variant, pipeline,
//! pid, executable and state). Over the measure window it compares the samples
//! offered with the samples Prometheus appended (`prometheus_tsdb_head_samples_appended_total`),
//! and records write latency, failed writes, and Prometheus' CPU and RSS. A step
//! keeps up when Prometheus appends at least 95 % of what is offered, no write fails
//! and the p99 write takes less than the interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use phoenix_e2e::measurement::MeasurementStack;
use serde::Serialize;

use super::{Percentiles, process_tree_rss_kib, process_tree_ticks};

/// What one host count measured.
#[derive(Serialize)]
pub struct WidthRow {
    pub hosts: usize,
    pub baseline_series_per_host: usize,
    pub candidate_series_per_host: usize,
    pub interval_s: u64,
    /// Samples per second the hosts sent.
    pub offered_samples_per_s: f64,
    /// Samples per second Prometheus appended to its head.
    pub appended_samples_per_s: f64,
    pub write_latency_ms: Percentiles,
    pub writes: u64,
    pub failed_writes: u64,
    pub prometheus_cpu_cores: f64,
    pub prometheus_rss_peak_mib: f64,
    pub keeps_up: bool,
}

/// The shape of the simulated experiment.
pub struct Shape {
    pub baseline_series: usize,
    pub candidate_series: usize,
    pub interval: Duration,
    pub measure: Duration,
}

/// Series per process in the baseline pipeline (cpu.time × 3 states, memory usage
/// and virtual, disk io × 2 directions, threads, open file descriptors, page faults).
const SERIES_PER_PROCESS: usize = 10;

pub async fn run(hosts: &[usize], shape: &Shape) -> anyhow::Result<Vec<WidthRow>> {
    let mut rows = Vec::new();
    for &h in hosts {
        eprintln!(
            "\n=== remote write: {h} hosts × ({} + {}) series every {} s ===",
            shape.baseline_series,
            shape.candidate_series,
            shape.interval.as_secs()
        );
        let row = run_width(h, shape).await?;
        eprintln!("{}", serde_json::to_string_pretty(&row)?);
        let keeps_up = row.keeps_up;
        rows.push(row);
        if !keeps_up {
            eprintln!("{h} hosts: Prometheus does not keep up; wider steps skipped");
            break;
        }
    }
    print_table(&rows);
    Ok(rows)
}

async fn run_width(hosts: usize, shape: &Shape) -> anyhow::Result<WidthRow> {
    let measurement = MeasurementStack::start(Duration::from_secs(15)).await?;
    let write_url = format!("{}/api/v1/write", measurement.prometheus_url);
    let (prometheus_pid, _) = measurement.server_pids();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut senders = Vec::with_capacity(hosts);
    for host in 0..hosts {
        for (variant, series) in [
            ("baseline", shape.baseline_series),
            ("candidate", shape.candidate_series),
        ] {
            let sender = Sender {
                http: http.clone(),
                url: write_url.clone(),
                series: SeriesSet::new(&format!("rw-{host:05}"), variant, series),
                interval: shape.interval,
                counters: counters.clone(),
                latencies: latencies.clone(),
                stopped: stopped.clone(),
            };
            senders.push(tokio::spawn(sender.run()));
        }
    }
    // One interval to reach a steady state (every host has sent once).
    tokio::time::sleep(shape.interval).await;
    let appended = || async {
        let text = http
            .get(format!("{}/metrics", measurement.prometheus_url))
            .send()
            .await?
            .text()
            .await?;
        anyhow::Ok(super::metric(
            &text,
            "prometheus_tsdb_head_samples_appended_total",
        ))
    };
    let started = Instant::now();
    let appended_before = appended().await?;
    let offered_before = counters.samples.load(Ordering::Relaxed);
    let writes_before = counters.writes.load(Ordering::Relaxed);
    let failed_before = counters.failed.load(Ordering::Relaxed);
    latencies.lock().unwrap().clear();
    let ticks_before = process_tree_ticks(prometheus_pid);
    let mut rss_peak_kib = 0;
    while started.elapsed() < shape.measure {
        rss_peak_kib = rss_peak_kib.max(process_tree_rss_kib(prometheus_pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ticks = process_tree_ticks(prometheus_pid).saturating_sub(ticks_before);
    let appended_samples_per_s = (appended().await? - appended_before) / seconds;
    let offered_samples_per_s =
        (counters.samples.load(Ordering::Relaxed) - offered_before) as f64 / seconds;
    let writes = counters.writes.load(Ordering::Relaxed) - writes_before;
    let failed_writes = counters.failed.load(Ordering::Relaxed) - failed_before;
    let _ = stop.send(true);
    for sender in senders {
        sender.abort();
    }
    let write_latency_ms = Percentiles::of(std::mem::take(&mut *latencies.lock().unwrap()));
    let keeps_up = appended_samples_per_s >= 0.95 * offered_samples_per_s
        && failed_writes == 0
        && write_latency_ms.p99 < shape.interval.as_secs_f64() * 1000.0;
    Ok(WidthRow {
        hosts,
        baseline_series_per_host: shape.baseline_series,
        candidate_series_per_host: shape.candidate_series,
        interval_s: shape.interval.as_secs(),
        offered_samples_per_s,
        appended_samples_per_s,
        write_latency_ms,
        writes,
        failed_writes,
        prometheus_cpu_cores: ticks as f64
            / phoenix_agent::procfs::clock_ticks_per_second() as f64
            / seconds,
        prometheus_rss_peak_mib: rss_peak_kib as f64 / 1024.0,
        keeps_up,
    })
}

#[derive(Default)]
struct Counters {
    samples: AtomicU64,
    writes: AtomicU64,
    failed: AtomicU64,
}

/// One simulated collector: its series, sent every interval.
struct Sender {
    http: reqwest::Client,
    url: String,
    series: SeriesSet,
    interval: Duration,
    counters: Arc<Counters>,
    latencies: Arc<std::sync::Mutex<Vec<f64>>>,
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl Sender {
    async fn run(self) {
        // Collectors started at different times.
        let offset = self.interval.mul_f64(rand::random::<f64>());
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + offset, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round = 0u64;
        loop {
            ticker.tick().await;
            if *self.stopped.borrow() {
                return;
            }
            round += 1;
            let body = self.series.write_request(unix_ms(), round);
            let started = Instant::now();
            let result = self
                .http
                .post(&self.url)
                .header("content-type", "application/x-protobuf")
                .header("content-encoding", "snappy")
                .header("x-prometheus-remote-write-version", "0.1.0")
                .body(body)
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    self.latencies
                        .lock()
                        .unwrap()
                        .push(started.elapsed().as_secs_f64() * 1000.0);
                    self.counters
                        .samples
                        .fetch_add(self.series.len() as u64, Ordering::Relaxed);
                    self.counters.writes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(response) => {
                    if !*self.stopped.borrow() {
                        let status = response.status();
                        let text = response.text().await.unwrap_or_default();
                        eprintln!("remote write answered {status}: {}", text.trim());
                        self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(err) => {
                    if !*self.stopped.borrow() {
                        eprintln!("remote write failed: {err}");
                        self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// A collector's series: each one's encoded labels, built once.
struct SeriesSet {
    /// Each series' `Label` fields, protobuf-encoded, sorted by name.
    labels: Vec<Vec<u8>>,
}

impl SeriesSet {
    fn new(host: &str, variant: &str, count: usize) -> SeriesSet {
        const STATES: [(&str, &str); SERIES_PER_PROCESS] = [
            ("process_cpu_time_seconds_total", "user"),
            ("process_cpu_time_seconds_total", "system"),
            ("process_cpu_time_seconds_total", "wait"),
            ("process_memory_usage_bytes", ""),
            ("process_memory_virtual_bytes", ""),
            ("process_disk_io_bytes_total", "read"),
            ("process_disk_io_bytes_total", "write"),
            ("process_threads", ""),
            ("process_open_file_descriptors", ""),
            ("process_paging_faults_total", "major"),
        ];
        let labels = (0..count)
            .map(|i| {
                let (name, state) = STATES[i % SERIES_PER_PROCESS];
                let process = i / SERIES_PER_PROCESS;
                let pid = (1000 + process).to_string();
                let executable = format!("worker-{}", process % 97);
                let mut pairs = vec![
                    ("__name__", name),
                    ("experiment", "width-bench"),
                    ("host", host),
                    ("pipeline", "process-baseline"),
                    ("process_executable_name", &executable),
                    ("process_pid", &pid),
                    ("variant", variant),
                ];
                if !state.is_empty() {
                    pairs.push(("state", state));
                }
                pairs.sort();
                let mut encoded = Vec::new();
                for (name, value) in pairs {
                    let mut label = Vec::new();
                    bytes_field(&mut label, 0x0a, name.as_bytes());
                    bytes_field(&mut label, 0x12, value.as_bytes());
                    bytes_field(&mut encoded, 0x0a, &label);
                }
                encoded
            })
            .collect();
        SeriesSet { labels }
    }

    fn len(&self) -> usize {
        self.labels.len()
    }

    /// A snappy-compressed `WriteRequest` with one sample of each series at `at_ms`.
    fn write_request(&self, at_ms: i64, round: u64) -> Vec<u8> {
        let mut request = Vec::with_capacity(self.labels.len() * 200);
        let mut series = Vec::with_capacity(256);
        for (i, labels) in self.labels.iter().enumerate() {
            series.clear();
            series.extend_from_slice(labels);
            let mut sample = Vec::with_capacity(20);
            sample.push(0x09); // value: double
            sample.extend_from_slice(&((round * 10 + i as u64 % 7) as f64).to_le_bytes());
            sample.push(0x10); // timestamp: int64 varint
            varint(&mut sample, at_ms as u64);
            bytes_field(&mut series, 0x12, &sample);
            bytes_field(&mut request, 0x0a, &series);
        }
        snap::raw::Encoder::new()
            .compress_vec(&request)
            .expect("snappy compresses any input")
    }
}

fn varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// A length-delimited field: `tag`, the length, the bytes.
fn bytes_field(buf: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    buf.push(tag);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

fn print_table(rows: &[WidthRow]) {
    println!(
        "\n| hosts | series per host (baseline + candidate) | offered samples/s | appended samples/s | write p50 / p99 / max | failed writes | Prometheus CPU / RSS | keeps up |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} + {} every {} s | {:.0} | {:.0} | {:.0} / {:.0} / {:.0} ms | {} of {} | {:.2} cores / {:.0} MiB | {} |",
            r.hosts,
            r.baseline_series_per_host,
            r.candidate_series_per_host,
            r.interval_s,
            r.offered_samples_per_s,
            r.appended_samples_per_s,
            r.write_latency_ms.p50,
            r.write_latency_ms.p99,
            r.write_latency_ms.max,
            r.failed_writes,
            r.writes + r.failed_writes,
            r.prometheus_cpu_cores,
            r.prometheus_rss_peak_mib,
            if r.keeps_up { "yes" } else { "no" },
        );
    }
}
