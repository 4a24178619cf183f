//! phoenix-reconciler settings: flags, each with an environment variable.

use std::net::SocketAddr;

use clap::Parser;
use phoenix_wire::duration::HumanDuration;

/// phoenix-reconciler: turns the gap between desired state (experiments) and what
/// agents report into tasks, and drives each experiment through its phases.
/// Run two or more replicas for availability: one leads (a Postgres advisory lock),
/// the others wait and take over within seconds if it dies.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "phoenix-reconciler",
    version,
    after_help = "Example:\n  phoenix-reconciler --database-url postgres://phoenix@db/phoenix \\\n    --remote-write-url http://prometheus:9090/api/v1/write"
)]
pub struct ReconcilerConfig {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Where experiment collectors send their metrics (Prometheus remote-write endpoint).
    #[arg(
        long,
        env = "PHOENIX_REMOTE_WRITE_URL",
        default_value = "http://127.0.0.1:9090/api/v1/write"
    )]
    pub remote_write_url: String,

    /// Full resync period; a change in the database also wakes the reconciler at once.
    #[arg(long, env = "PHOENIX_RESYNC_INTERVAL", default_value = "10s", value_parser = HumanDuration::parse)]
    pub resync_interval: HumanDuration,

    /// How long an experiment may take to get every collector healthy before it fails.
    #[arg(long, env = "PHOENIX_DEPLOY_TIMEOUT", default_value = "5m", value_parser = HumanDuration::parse)]
    pub deploy_timeout: HumanDuration,

    /// Failed starts of one collector (same config) before its experiment fails.
    #[arg(long, env = "PHOENIX_MAX_START_FAILURES", default_value_t = 3)]
    pub max_start_failures: usize,

    /// Deliveries of one task before it counts as failed (keep equal to the API's).
    #[arg(long, env = "PHOENIX_TASK_MAX_ATTEMPTS", default_value_t = 5)]
    pub task_max_attempts: i32,

    /// How often a standby replica tries to become the leader.
    #[arg(long, env = "PHOENIX_STANDBY_RETRY", default_value = "2s", value_parser = HumanDuration::parse)]
    pub standby_retry: HumanDuration,

    /// Prometheus holding the measurements (its HTTP API), for the analyzer.
    #[arg(
        long,
        env = "PHOENIX_PROMETHEUS_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    pub prometheus_url: String,

    /// Price of one million datapoints per minute for one month, in your currency;
    /// the report's monthly cost is datapoints per minute / 1e6 × this.
    #[arg(long, env = "PHOENIX_PRICE_PER_MILLION_DPM", default_value_t = 100.0)]
    pub price_per_million_dpm: f64,

    /// How long an experiment may wait in `analyzing` (Prometheus unreachable,
    /// retried every resync) before it fails.
    #[arg(long, env = "PHOENIX_ANALYSIS_TIMEOUT", default_value = "5m", value_parser = HumanDuration::parse)]
    pub analysis_timeout: HumanDuration,

    /// How long after the measurement window the analyzer waits, so samples still
    /// in flight (collector batches, remote-write queues, Pushgateway scrapes) are in.
    #[arg(long, env = "PHOENIX_ANALYSIS_DELAY", default_value = "15s", value_parser = HumanDuration::parse)]
    pub analysis_delay: HumanDuration,

    /// The rate() window for collector CPU; at least a few Pushgateway scrapes long.
    #[arg(long, env = "PHOENIX_CPU_RATE_WINDOW", default_value = "1m", value_parser = HumanDuration::parse)]
    pub cpu_rate_window: HumanDuration,

    /// Spacing of the CPU and memory samples compared by the Mann–Whitney test.
    #[arg(long, env = "PHOENIX_SAMPLE_STEP", default_value = "10s", value_parser = HumanDuration::parse)]
    pub sample_step: HumanDuration,

    /// Address for /metrics and /healthz.
    #[arg(
        long,
        env = "PHOENIX_RECONCILER_LISTEN",
        default_value = "127.0.0.1:9465"
    )]
    pub listen: SocketAddr,
}

impl ReconcilerConfig {
    /// The analyzer's settings.
    pub fn analyzer_settings(&self) -> crate::analyzer::AnalyzerSettings {
        crate::analyzer::AnalyzerSettings {
            prometheus: crate::prometheus::Prometheus::new(&self.prometheus_url),
            price_per_million_dpm: self.price_per_million_dpm,
            timeout: self.analysis_timeout.as_duration(),
            settle: self.analysis_delay.as_duration(),
            rate_window: self.cpu_rate_window.as_duration(),
            sample_step: self.sample_step.as_duration(),
        }
    }

    /// Settings for tests and embedding: defaults, with this database.
    pub fn new(database_url: String) -> Self {
        ReconcilerConfig::parse_from([
            "phoenix-reconciler",
            "--database-url",
            &database_url,
            "--listen",
            "127.0.0.1:0",
        ])
    }
}
