//! The measurement side of a local Phoenix: a Prometheus (remote-write receiver on)
//! and a Pushgateway that Prometheus scrapes, from Debian's packages, each on a free
//! loopback port with its data in a temporary directory.
//!
//! Each server is owned through a pipe, like the throwaway Postgres: a small `sh`
//! wrapper runs it and waits on its stdin; when the handle is dropped or the owner
//! dies in any way, the wrapper stops the server. Nothing outlives the test or demo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

pub use phoenix_reconciler::prometheus::{Prometheus, Sample};

/// Why the measurement stack could not start; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("measurement stack: {0}")]
pub struct MeasurementError(String);

impl MeasurementError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Runs the server; when stdin closes, SIGTERM, and SIGKILL if it is still there
/// 10 s later (an API server whose etcd went first never finishes shutting down).
const OWNER_WRAPPER: &str = r#""$@" & pid=$!
read -r _
kill "$pid" 2>/dev/null
( sleep 10; kill -9 "$pid" 2>/dev/null ) & killer=$!
wait "$pid"
kill "$killer" 2>/dev/null"#;

/// A server process that stops when this handle is dropped or its owner dies.
pub(crate) struct OwnedServer {
    owner_pipe: Option<ChildStdin>,
    wrapper: Child,
}

impl OwnedServer {
    pub(crate) fn spawn(
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Self, MeasurementError> {
        let log_file = std::fs::File::create(log)
            .map_err(|e| MeasurementError(format!("{}: {e}", log.display())))?;
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(OWNER_WRAPPER)
            .arg("sh")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(
                log_file
                    .try_clone()
                    .map_err(|e| MeasurementError(e.to_string()))?,
            )
            .stderr(log_file)
            .spawn()
            .map_err(|e| MeasurementError(format!("cannot start {}: {e}", program.display())))?;
        let owner_pipe = wrapper.stdin.take();
        Ok(Self {
            owner_pipe,
            wrapper,
        })
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        drop(self.owner_pipe.take());
        let _ = self.wrapper.wait();
    }
}

fn find_binary(env: &str, default: &str) -> Result<PathBuf, MeasurementError> {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_string()));
    if path.exists() {
        Ok(path)
    } else {
        Err(MeasurementError(format!(
            "{} not found; install it with `apt-get install -y prometheus prometheus-pushgateway` or set {env}",
            path.display()
        )))
    }
}

/// A loopback port free right now (for a server a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running Prometheus and Pushgateway.
pub struct MeasurementStack {
    pub prometheus_url: String,
    pub pushgateway_url: String,
    http: reqwest::Client,
    // Dropped in order: servers first, then their directory.
    _prometheus: OwnedServer,
    _pushgateway: OwnedServer,
    dir: tempfile::TempDir,
}

impl MeasurementStack {
    /// Starts both servers and waits until they are ready. Prometheus scrapes the
    /// Pushgateway every `scrape_interval`.
    pub async fn start(scrape_interval: Duration) -> Result<Self, MeasurementError> {
        let prometheus = find_binary("PHOENIX_PROMETHEUS_BIN", "/usr/bin/prometheus")?;
        let pushgateway =
            find_binary("PHOENIX_PUSHGATEWAY_BIN", "/usr/bin/prometheus-pushgateway")?;
        let dir = tempfile::Builder::new()
            .prefix("phoenix-measure-")
            .tempdir()
            .map_err(|e| MeasurementError(format!("temporary directory: {e}")))?;
        let (prom_port, push_port) = (free_port(), free_port());
        let pushgateway_url = format!("http://127.0.0.1:{push_port}");
        let prometheus_url = format!("http://127.0.0.1:{prom_port}");
        let interval = format!("{}ms", scrape_interval.as_millis());
        let config = format!(
            "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
             scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n    \
             static_configs:\n      - targets: ['127.0.0.1:{push_port}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).map_err(|e| MeasurementError(e.to_string()))?;
        // Memory only: Debian's default persistence file is shared by every run on
        // the machine, and groups an earlier run left would come back in this one.
        let push = OwnedServer::spawn(
            &pushgateway,
            &[
                format!("--web.listen-address=127.0.0.1:{push_port}"),
                "--persistence.file=".into(),
                // As the chart runs it (pushgateway.disableConsistencyCheck).
                "--push.disable-consistency-check".into(),
            ],
            &dir.path().join("pushgateway.log"),
        )?;
        let prom = OwnedServer::spawn(
            &prometheus,
            &[
                format!("--config.file={}", config_path.display()),
                format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                format!("--web.listen-address=127.0.0.1:{prom_port}"),
                "--web.enable-remote-write-receiver".into(),
                "--storage.tsdb.retention.time=1d".into(),
            ],
            &dir.path().join("prometheus.log"),
        )?;
        let stack = MeasurementStack {
            prometheus_url,
            pushgateway_url,
            http: crate::harness::http_client(),
            _prometheus: prom,
            _pushgateway: push,
            dir,
        };
        stack
            .wait_ready(&stack.prometheus_url, "prometheus.log")
            .await?;
        stack
            .wait_ready(&stack.pushgateway_url, "pushgateway.log")
            .await?;
        Ok(stack)
    }

    /// The processes of Prometheus and the Pushgateway (their owner wrappers: each
    /// server is the wrapper's child), for benchmarks that sample their CPU and memory.
    pub fn server_pids(&self) -> (u32, u32) {
        (
            self._prometheus.wrapper.id(),
            self._pushgateway.wrapper.id(),
        )
    }

    async fn wait_ready(&self, base: &str, log: &str) -> Result<(), MeasurementError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{base}/-/ready")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default();
                return Err(MeasurementError(format!(
                    "{base} did not become ready:\n{log}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where collectors send their metrics.
    pub fn remote_write_url(&self) -> String {
        format!("{}/api/v1/write", self.prometheus_url)
    }

    /// A client for this Prometheus (the one the analyzer uses).
    pub fn prometheus(&self) -> Prometheus {
        Prometheus::new(&self.prometheus_url, Duration::from_secs(30))
    }

    /// Runs an instant PromQL query now.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>, MeasurementError> {
        self.prometheus()
            .query(promql, None)
            .await
            .map_err(|e| MeasurementError(e.to_string()))
    }

    /// Every distinct series matching `selector` with samples in the last `window`.
    pub async fn series(
        &self,
        selector: &str,
        window: Duration,
    ) -> Result<Vec<BTreeMap<String, String>>, MeasurementError> {
        let end = chrono::Utc::now();
        let start = end - chrono::Duration::from_std(window).expect("a short window");
        self.prometheus()
            .series(selector, start, end)
            .await
            .map_err(|e| MeasurementError(e.to_string()))
    }

    /// A query expected to give one number (0 when it gives nothing).
    pub async fn scalar(&self, promql: &str) -> Result<f64, MeasurementError> {
        Ok(self
            .query(promql)
            .await?
            .first()
            .map(|s| s.value)
            .unwrap_or(0.0))
    }
}
