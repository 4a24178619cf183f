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

    /// Address for /metrics and /healthz.
    #[arg(
        long,
        env = "PHOENIX_RECONCILER_LISTEN",
        default_value = "127.0.0.1:9465"
    )]
    pub listen: SocketAddr,
}

impl ReconcilerConfig {
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
