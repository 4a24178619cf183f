//! phoenix-reconciler settings: flags, each with an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

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
    /// Postgres connection URL. Required
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "URL",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub database_url: String,

    /// Never migrate at start: refuse to start on a schema behind this release's,
    /// naming both versions (`phoenix-api migrate up`, or the Helm chart's
    /// migration Job, moves it). Without it, missing migrations are applied at
    /// start. A schema ahead of this release's is used either way
    #[arg(long, env = "PHOENIX_NO_MIGRATE")]
    pub no_migrate: bool,

    /// Local development: the Prometheus settings not given default to
    /// 127.0.0.1:9090. Without it every deployment setting must be given
    #[arg(long, env = "PHOENIX_DEV")]
    pub dev: bool,

    /// Where experiment collectors send their metrics (Prometheus remote-write
    /// endpoint), e.g. http://prometheus:9090/api/v1/write. Required [--dev:
    /// http://127.0.0.1:9090/api/v1/write]
    #[arg(
        long,
        env = "PHOENIX_REMOTE_WRITE_URL",
        value_name = "URL",
        default_value = "",
        hide_default_value = true
    )]
    pub remote_write_url: String,

    /// Full resync period; a change in the database also wakes the reconciler at once.
    #[arg(long, env = "PHOENIX_RESYNC_INTERVAL", default_value = "10s", value_parser = HumanDuration::parse)]
    pub resync_interval: HumanDuration,

    /// How long an experiment may take to get every collector healthy before it fails.
    #[arg(long, env = "PHOENIX_DEPLOY_TIMEOUT", default_value = "5m", value_parser = HumanDuration::parse)]
    pub deploy_timeout: HumanDuration,

    /// The most hosts one experiment runs on (0: no limit). An experiment that selects
    /// more runs on a stable sample of this many, and says so. Each experiment host
    /// remote-writes every baseline series to Prometheus: set this to the width your
    /// Prometheus ingests (BENCHMARKS.md, "Experiment width"; the chart sets it for
    /// its bundled Prometheus)
    #[arg(long, env = "PHOENIX_MAX_EXPERIMENT_HOSTS", default_value_t = 0)]
    pub max_experiment_hosts: usize,

    /// The most new tasks one pass writes (0: no limit), whole hosts at a time; the
    /// rest are written by the next pass, which follows at once. Bounds a pass's
    /// transaction and the burst of deliveries when thousands of hosts get tasks at
    /// once (BENCHMARKS.md, "Fleet scale")
    #[arg(long, env = "PHOENIX_MAX_NEW_TASKS_PER_PASS", default_value_t = 10_000)]
    pub max_new_tasks_per_pass: usize,

    /// Failed starts of one collector (same config) before its experiment fails.
    #[arg(long, env = "PHOENIX_MAX_START_FAILURES", default_value_t = 3)]
    pub max_start_failures: usize,

    /// Deliveries of one task before it counts as failed (keep equal to the API's).
    #[arg(long, env = "PHOENIX_TASK_MAX_ATTEMPTS", default_value_t = 5)]
    pub task_max_attempts: i32,

    /// How often a standby replica tries to become the leader.
    #[arg(long, env = "PHOENIX_STANDBY_RETRY", default_value = "2s", value_parser = HumanDuration::parse)]
    pub standby_retry: HumanDuration,

    /// How long a leader keeps acting after its lock was last confirmed; it renews
    /// every third of this. The database ends a silent leader's session (and frees
    /// the lock) 3 s after this, by TCP keepalives, so a partitioned leader has
    /// stopped before a standby can lead. Whole seconds, at least 1s.
    #[arg(long, env = "PHOENIX_LEADER_LEASE", default_value = "5s", value_parser = HumanDuration::parse)]
    pub leader_lease: HumanDuration,

    /// How often the roll-out job looks at open roll-outs (it also runs on every
    /// change the database announces).
    #[arg(long, env = "PHOENIX_ROLLOUT_INTERVAL", default_value = "5s", value_parser = HumanDuration::parse)]
    pub rollout_interval: HumanDuration,

    /// How long a host's new collector must have been healthy before its series in
    /// the measurement Prometheus are counted; none fails the host ("its series
    /// dropped to zero") and stops the roll-out. 0s turns the check off: roll-outs
    /// then judge hosts by their collector's health alone.
    #[arg(long, env = "PHOENIX_ROLLOUT_SERIES_WINDOW", default_value = "1m", value_parser = HumanDuration::parse)]
    pub rollout_series_window: HumanDuration,

    /// How often the retention job prunes old rows.
    #[arg(long, env = "PHOENIX_RETENTION_INTERVAL", default_value = "10m", value_parser = HumanDuration::parse)]
    pub retention_interval: HumanDuration,

    /// Finished agent tasks (succeeded, failed, cancelled) older than this are
    /// pruned (at least 1h: recent failures decide retries and phases).
    #[arg(long, env = "PHOENIX_RETAIN_TASKS", default_value = "7d", value_parser = HumanDuration::parse)]
    pub retain_tasks: HumanDuration,

    /// Events older than this are pruned, unless their experiment is still active.
    #[arg(long, env = "PHOENIX_RETAIN_EVENTS", default_value = "30d", value_parser = HumanDuration::parse)]
    pub retain_events: HumanDuration,

    /// Hosts silent for longer than this are forgotten (with what they reported); an
    /// agent that comes back registers again.
    #[arg(long, env = "PHOENIX_RETAIN_HOSTS", default_value = "7d", value_parser = HumanDuration::parse)]
    pub retain_hosts: HumanDuration,

    /// Prometheus holding the measurements (its HTTP API), for the analyzer, e.g.
    /// http://prometheus:9090. Required [--dev: http://127.0.0.1:9090]
    #[arg(
        long,
        env = "PHOENIX_PROMETHEUS_URL",
        value_name = "URL",
        default_value = "",
        hide_default_value = true
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

    /// How long one Prometheus query may take: a Prometheus that accepts and never
    /// answers fails the attempt after this long (and the experiment once the
    /// analysis timeout has passed too).
    #[arg(long, env = "PHOENIX_PROMETHEUS_TIMEOUT", default_value = "30s", value_parser = HumanDuration::parse)]
    pub prometheus_timeout: HumanDuration,

    /// How long after the measurement window the analyzer waits, so samples still
    /// in flight (collector batches, remote-write queues, Pushgateway scrapes) are in.
    #[arg(long, env = "PHOENIX_ANALYSIS_DELAY", default_value = "15s", value_parser = HumanDuration::parse)]
    pub analysis_delay: HumanDuration,

    /// The window each collector CPU sample is a rate over (increase of its CPU seconds
    /// divided by the window). Long enough to be non-zero for a light collector: the
    /// kernel counts CPU in 10 ms ticks, so 0.003 cores over 5 s is 0 or 1 tick. CPU
    /// samples start one window into the measurement, so it must be well shorter than
    /// the experiment's duration (docs/ANALYSIS.md).
    #[arg(long, env = "PHOENIX_CPU_RATE_WINDOW", default_value = "1m", value_parser = HumanDuration::parse)]
    pub cpu_rate_window: HumanDuration,

    /// Early stop: a running experiment whose candidate reported none of a critical
    /// process for this long, on a host where the baseline did, fails at once and its
    /// collectors stop. Several of the candidate's collection intervals (N consecutive
    /// scrapes); `0s` turns early stop off.
    #[arg(long, env = "PHOENIX_EARLY_STOP_AFTER", default_value = "2m", value_parser = HumanDuration::parse)]
    pub early_stop_after: HumanDuration,

    /// Spacing of the CPU and memory samples the paired tests compare.
    #[arg(long, env = "PHOENIX_SAMPLE_STEP", default_value = "10s", value_parser = HumanDuration::parse)]
    pub sample_step: HumanDuration,

    /// Address for /metrics and /healthz.
    #[arg(
        long,
        env = "PHOENIX_RECONCILER_LISTEN",
        default_value = "127.0.0.1:9465"
    )]
    pub listen: SocketAddr,

    /// Logs and traces (`--log-format`, `--otlp-endpoint`; see phoenix-telemetry).
    #[command(flatten)]
    pub telemetry: phoenix_telemetry::TelemetryArgs,
}

/// A setting a deployment must give, not given (or empty).
#[derive(Debug, thiserror::Error)]
#[error("{flag} (environment variable {env}) is required{hint}")]
pub struct MissingSetting {
    pub flag: &'static str,
    pub env: &'static str,
    hint: &'static str,
}

/// The local default of a setting under `--dev`; none for settings without one.
const DEV_HINT: &str = "; for local development only, --dev (PHOENIX_DEV=1) uses 127.0.0.1:9090";

impl ReconcilerConfig {
    /// Refuses a missing deployment setting, naming its flag and variable; under
    /// `--dev` fills the Prometheus settings with local defaults instead. A binary
    /// that quietly fell back to localhost in a pod would query itself.
    pub fn check_required(&mut self) -> Result<(), MissingSetting> {
        if self.database_url.trim().is_empty() {
            return Err(MissingSetting {
                flag: "--database-url",
                env: "DATABASE_URL",
                hint: "",
            });
        }
        let dev = self.dev;
        for (value, flag, env, local) in [
            (
                &mut self.remote_write_url,
                "--remote-write-url",
                "PHOENIX_REMOTE_WRITE_URL",
                "http://127.0.0.1:9090/api/v1/write",
            ),
            (
                &mut self.prometheus_url,
                "--prometheus-url",
                "PHOENIX_PROMETHEUS_URL",
                "http://127.0.0.1:9090",
            ),
        ] {
            if value.trim().is_empty() {
                if !dev {
                    return Err(MissingSetting {
                        flag,
                        env,
                        hint: DEV_HINT,
                    });
                }
                *value = local.to_string();
            }
        }
        Ok(())
    }

    /// How leadership is kept and given up.
    pub fn leader_settings(&self) -> phoenix_storage::leader::LeaderSettings {
        phoenix_storage::leader::LeaderSettings {
            lease: self.leader_lease.as_duration().max(Duration::from_secs(1)),
        }
    }

    /// What the retention job keeps.
    pub fn retention_settings(&self) -> phoenix_storage::retention::RetentionSettings {
        phoenix_storage::retention::RetentionSettings {
            tasks: self
                .retain_tasks
                .as_duration()
                .max(Duration::from_secs(3600)),
            events: self.retain_events.as_duration(),
            hosts: self.retain_hosts.as_duration(),
        }
    }

    /// The cap on an experiment's hosts, if any.
    pub fn max_new_tasks_per_pass(&self) -> Option<usize> {
        (self.max_new_tasks_per_pass > 0).then_some(self.max_new_tasks_per_pass)
    }

    pub fn max_experiment_hosts(&self) -> Option<usize> {
        (self.max_experiment_hosts > 0).then_some(self.max_experiment_hosts)
    }

    /// The roll-out job's settings.
    pub fn rollout_settings(&self) -> crate::rollout::RolloutSettings {
        let window = self.rollout_series_window.as_duration();
        crate::rollout::RolloutSettings {
            prometheus: crate::prometheus::Prometheus::new(
                &self.prometheus_url,
                self.prometheus_timeout.as_duration(),
            ),
            health_timeout: self.deploy_timeout.as_duration(),
            series_window: (!window.is_zero()).then_some(window),
            max_start_failures: self.max_start_failures,
            remote_write_url: self.remote_write_url.clone(),
        }
    }

    /// The analyzer's settings.
    pub fn analyzer_settings(&self) -> crate::analyzer::AnalyzerSettings {
        crate::analyzer::AnalyzerSettings {
            prometheus: crate::prometheus::Prometheus::new(
                &self.prometheus_url,
                self.prometheus_timeout.as_duration(),
            ),
            price_per_million_dpm: self.price_per_million_dpm,
            timeout: self.analysis_timeout.as_duration(),
            settle: self.analysis_delay.as_duration(),
            rate_window: self.cpu_rate_window.as_duration(),
            early_stop_after: self.early_stop_after.as_duration(),
            sample_step: self.sample_step.as_duration(),
        }
    }

    /// Settings for tests and embedding: development defaults, with this database.
    pub fn new(database_url: String) -> Self {
        let mut config = ReconcilerConfig::parse_from([
            "phoenix-reconciler",
            "--dev",
            "--database-url",
            &database_url,
            "--listen",
            "127.0.0.1:0",
        ]);
        config
            .check_required()
            .expect("--dev fills every setting but the database");
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str]) -> Result<ReconcilerConfig, String> {
        let mut all = vec!["phoenix-reconciler"];
        all.extend_from_slice(args);
        let mut config = ReconcilerConfig::try_parse_from(all).map_err(|e| e.to_string())?;
        config.check_required().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn prometheus_settings_are_required_unless_dev() {
        let err = check(&["--database-url", "postgres://db/p"]).err().unwrap();
        assert!(err.contains("--remote-write-url"), "{err}");
        assert!(err.contains("PHOENIX_REMOTE_WRITE_URL"), "{err}");
        assert!(err.contains("--dev"), "{err}");
        let err = check(&[
            "--database-url",
            "postgres://db/p",
            "--remote-write-url",
            "http://prom:9090/api/v1/write",
        ])
        .err()
        .unwrap();
        assert!(err.contains("--prometheus-url"), "{err}");
        assert!(err.contains("PHOENIX_PROMETHEUS_URL"), "{err}");

        let err = check(&["--dev"]).err().unwrap();
        assert!(err.contains("--database-url"), "{err}");
        assert!(err.contains("DATABASE_URL"), "{err}");

        let dev = check(&["--dev", "--database-url", "postgres://db/p"]).unwrap();
        assert_eq!(dev.prometheus_url, "http://127.0.0.1:9090");
        assert_eq!(dev.remote_write_url, "http://127.0.0.1:9090/api/v1/write");

        let given = check(&[
            "--database-url",
            "postgres://db/p",
            "--remote-write-url",
            "http://prom:9090/api/v1/write",
            "--prometheus-url",
            "http://prom:9090",
        ])
        .unwrap();
        assert_eq!(given.prometheus_url, "http://prom:9090");
    }
}
