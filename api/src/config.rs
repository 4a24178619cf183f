//! phoenix-api settings: flags, each with an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use phoenix_wire::duration::HumanDuration;

use crate::http::auth::TokenSet;

/// phoenix-api: the Phoenix HTTP API. Stores desired state in Postgres and serves
/// the agents; it never decides what should run (that is phoenix-reconciler's job).
/// Any number of replicas may run against the same database.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "phoenix-api",
    version,
    after_help = "Example:\n  PHOENIX_API_TOKENS='admin:s3cret,viewer:r3ad' \\\n  PHOENIX_BOOTSTRAP_TOKEN_FILE=/etc/phoenix/bootstrap-token \\\n  DATABASE_URL=postgres://phoenix@db/phoenix phoenix-api --listen 0.0.0.0:8443 \\\n    --tls-cert /etc/phoenix/tls.crt --tls-key /etc/phoenix/tls.key"
)]
pub struct ApiConfig {
    /// An admin command instead of serving (`migrate status|up|down`).
    #[command(subcommand)]
    pub command: Option<ApiCommand>,

    /// Address to listen on.
    #[arg(long, env = "PHOENIX_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Postgres connection URL. Required
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        value_name = "URL",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub database_url: String,

    /// Local development: the collector binary may be left out (then configs are
    /// not checked before they are stored, and the validate endpoint answers 503).
    /// Without it every deployment setting must be given
    #[arg(long, env = "PHOENIX_DEV")]
    pub dev: bool,

    /// Bearer tokens of the user API as `role:token` pairs separated by commas;
    /// roles are viewer, operator and admin. (Agents hold credentials of their own
    /// host, enrolled with a bootstrap token.)
    #[arg(
        long,
        env = "PHOENIX_API_TOKENS",
        hide_env_values = true,
        default_value = ""
    )]
    pub tokens: TokenSet,

    /// DEVELOPMENT ONLY: accept every request without a token, as admin and agent.
    #[arg(long, env = "PHOENIX_DEV_NO_AUTH")]
    pub dev_no_auth: bool,

    /// A file holding a bootstrap token (`phoenix-bootstrap.<id>.<secret>`) that
    /// agents may enroll with; stored at start unless stored already, revocable
    /// like any other (`phoenix bootstrap-token revoke ID`). Without it the token is
    /// read from the environment [env: PHOENIX_BOOTSTRAP_TOKEN]. Admins can also
    /// create tokens through the API (`phoenix bootstrap-token create`)
    #[arg(long, env = "PHOENIX_BOOTSTRAP_TOKEN_FILE", value_name = "PATH")]
    pub bootstrap_token_file: Option<std::path::PathBuf>,

    /// Most event-stream WebSockets this replica serves at once; more get 429.
    #[arg(long, env = "PHOENIX_API_MAX_EVENT_STREAMS", default_value_t = 1000)]
    pub max_event_streams: usize,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "PHOENIX_API_MAX_BODY", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Longest an agent's task long-poll may wait.
    #[arg(long, env = "PHOENIX_API_MAX_WAIT", default_value = "30s", value_parser = HumanDuration::parse)]
    pub max_wait: HumanDuration,

    /// How long a claimed task stays leased to an agent before it is delivered again.
    #[arg(long, env = "PHOENIX_TASK_LEASE", default_value = "60s", value_parser = HumanDuration::parse)]
    pub task_lease: HumanDuration,

    /// Deliveries of one task before it counts as failed.
    #[arg(long, env = "PHOENIX_TASK_MAX_ATTEMPTS", default_value_t = 5)]
    pub task_max_attempts: i32,

    /// How often coalesced heartbeats are written, in one statement.
    #[arg(long, env = "PHOENIX_HEARTBEAT_FLUSH", default_value = "1s", value_parser = HumanDuration::parse)]
    pub heartbeat_flush: HumanDuration,

    /// A host silent for longer than this is shown as lost.
    #[arg(long, env = "PHOENIX_HOST_GRACE", default_value = "60s", value_parser = HumanDuration::parse)]
    pub host_grace: HumanDuration,

    /// The Phoenix collector binary, used to validate pipeline configs with the
    /// collector's own `validate` before anything is stored. Required [--dev: unset,
    /// no such check]
    #[arg(long, env = "PHOENIX_COLLECTOR_BIN", value_name = "PATH")]
    pub collector_bin: Option<std::path::PathBuf>,

    /// PEM certificate chain to serve HTTPS with (with --tls-key); unset: plain HTTP
    #[arg(
        long,
        env = "PHOENIX_API_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert
    #[arg(
        long,
        env = "PHOENIX_API_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// Most connections open at once; past it, new ones wait to be accepted
    #[arg(long, env = "PHOENIX_API_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Maximum Postgres connections of this process.
    #[arg(long, env = "PHOENIX_API_DB_CONNECTIONS", default_value_t = 16)]
    pub db_connections: u32,

    /// How long a request waits for a database connection before it is answered
    /// 503 with Retry-After (the database unreachable, or every connection busy)
    #[arg(long, env = "PHOENIX_API_DB_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = HumanDuration::parse)]
    pub db_acquire_timeout: HumanDuration,
    /// Never migrate at start: refuse to start on a schema behind this release's,
    /// naming both versions (`phoenix-api migrate up`, or the Helm chart's
    /// migration Job, moves it). Without it, missing migrations are applied at
    /// start. A schema ahead of this release's is used either way, never migrated
    /// down
    #[arg(long, env = "PHOENIX_NO_MIGRATE")]
    pub no_migrate: bool,

    /// The agent protocol version this api speaks; only compatibility tests set it
    /// (to stand for a newer api)
    #[arg(long, env = "PHOENIX_API_AGENT_PROTOCOL", hide = true, default_value_t = phoenix_wire::agent::AGENT_PROTOCOL)]
    pub agent_protocol: phoenix_wire::agent::ProtocolVersion,

    /// Logs and traces (`--log-format`, `--otlp-endpoint`; see phoenix-telemetry).
    #[command(flatten)]
    pub telemetry: phoenix_telemetry::TelemetryArgs,
}

/// Admin commands of phoenix-api.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum ApiCommand {
    /// Show or move the schema's version (reversible migrations).
    #[command(subcommand)]
    Migrate(crate::migrate::MigrateCommand),
}

/// A setting a deployment must give, not given (or empty).
#[derive(Debug, thiserror::Error)]
#[error("{flag} (environment variable {env}) is required{hint}")]
pub struct MissingSetting {
    pub flag: &'static str,
    pub env: &'static str,
    hint: &'static str,
}

impl ApiConfig {
    /// Settings for tests and embedding: development defaults, with this database
    /// and tokens.
    pub fn new(database_url: String, tokens: TokenSet) -> Self {
        let mut config =
            ApiConfig::parse_from(["phoenix-api", "--dev", "--database-url", &database_url]);
        config.tokens = tokens;
        config
    }

    /// Refuses a missing deployment setting, naming its flag and variable; `--dev`
    /// lets the collector binary be left out.
    pub fn check_required(&mut self) -> Result<(), MissingSetting> {
        if self.database_url.trim().is_empty() {
            return Err(MissingSetting {
                flag: "--database-url",
                env: "DATABASE_URL",
                hint: "",
            });
        }
        if self
            .collector_bin
            .as_ref()
            .is_some_and(|bin| bin.as_os_str().is_empty())
        {
            self.collector_bin = None;
        }
        if self.collector_bin.is_none() && !self.dev {
            return Err(MissingSetting {
                flag: "--collector-bin",
                env: "PHOENIX_COLLECTOR_BIN",
                hint: "; it checks pipeline configs before they are stored (for local development only, --dev (PHOENIX_DEV=1) runs without)",
            });
        }
        Ok(())
    }

    /// The configured bootstrap token: the file's content, or else
    /// `PHOENIX_BOOTSTRAP_TOKEN`; `None` when neither is set.
    pub fn bootstrap_token(&self) -> anyhow::Result<Option<String>> {
        let text = match &self.bootstrap_token_file {
            Some(path) => std::fs::read_to_string(path).map_err(|err| {
                anyhow::anyhow!(
                    "cannot read the bootstrap token file {}: {err}",
                    path.display()
                )
            })?,
            None => std::env::var("PHOENIX_BOOTSTRAP_TOKEN").unwrap_or_default(),
        };
        let text = text.trim();
        Ok((!text.is_empty()).then(|| text.to_string()))
    }

    /// What to do at start with a schema behind this release's.
    pub fn on_start(&self) -> phoenix_storage::schema::OnStart {
        if self.no_migrate {
            phoenix_storage::schema::OnStart::Refuse
        } else {
            phoenix_storage::schema::OnStart::Migrate
        }
    }

    pub fn max_wait(&self) -> Duration {
        self.max_wait.as_duration()
    }

    /// How often a waiting long-poll counts as its host's heartbeat again: every
    /// 10 s, or a third of the host grace when that is shorter, so a host whose only
    /// traffic is its long-poll never looks lost.
    pub fn long_poll_heartbeat(&self) -> Duration {
        (self.host_grace.as_duration() / 3)
            .clamp(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// How long a host's written `last_seen` stands before a beat renews it. Beats come
    /// every [`Self::long_poll_heartbeat`] (b), and a due beat is written within one
    /// flush (f), so a live host's `last_seen` is at most renewal + b + f old. That
    /// stays within 60 % of the grace: the largest whole number of beat intervals with
    /// renewal + f ≤ 0.6 × grace, less half a beat for timer jitter, and at least half
    /// a beat. At the 60 s default: 25 s, so a host is written every 30 s, not every 10 s.
    pub fn liveness_renewal(&self) -> Duration {
        let beat = self.long_poll_heartbeat();
        let budget = self
            .host_grace
            .as_duration()
            .mul_f64(0.6)
            .saturating_sub(self.heartbeat_flush.as_duration());
        let beats = (budget.as_secs_f64() / beat.as_secs_f64()).floor().max(1.0);
        beat.mul_f64(beats - 0.5)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn check(args: &[&str]) -> Result<ApiConfig, String> {
        let mut all = vec!["phoenix-api"];
        all.extend_from_slice(args);
        // From the flags alone: the environment of whoever runs the tests
        // (scripts/test exports PHOENIX_COLLECTOR_BIN) must not fill them in.
        let matches = ApiConfig::command()
            .mut_args(|a| a.env(None::<&str>))
            .try_get_matches_from(all)
            .map_err(|e| e.to_string())?;
        let mut config = ApiConfig::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        config.check_required().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn the_collector_is_required_unless_dev() {
        let err = check(&["--database-url", "postgres://db/p"]).err().unwrap();
        assert!(err.contains("--collector-bin"), "{err}");
        assert!(err.contains("PHOENIX_COLLECTOR_BIN"), "{err}");
        assert!(err.contains("--dev"), "{err}");
        let err = check(&["--collector-bin", "/bin/otelcol"]).err().unwrap();
        assert!(err.contains("--database-url"), "{err}");
        assert!(err.contains("DATABASE_URL"), "{err}");
        let dev = check(&["--dev", "--database-url", "postgres://db/p"]).unwrap();
        assert!(dev.collector_bin.is_none());
        check(&[
            "--database-url",
            "postgres://db/p",
            "--collector-bin",
            "/bin/otelcol",
        ])
        .unwrap();
    }

    #[test]
    fn liveness_is_renewed_well_within_the_grace() {
        let renewal = |grace: &str, flush: &str| {
            let config = check(&[
                "--dev",
                "--database-url",
                "postgres://db/p",
                "--host-grace",
                grace,
                "--heartbeat-flush",
                flush,
            ])
            .unwrap();
            (config.long_poll_heartbeat(), config.liveness_renewal())
        };
        // The default: beats every 10 s, written every third one.
        assert_eq!(
            renewal("60s", "1s"),
            (Duration::from_secs(10), Duration::from_secs(25))
        );
        // A short grace (the fault tests' 5 s): every beat is written.
        let (beat, every) = renewal("5s", "1s");
        assert!(every < beat, "{every:?} < {beat:?}");
        // The oldest a live host's last_seen gets (the next due beat, plus a flush)
        // stays well inside the grace.
        for (grace, flush) in [("60s", "1s"), ("5s", "1s"), ("30s", "5s"), ("10m", "1s")] {
            let (beat, every) = renewal(grace, flush);
            let written_every = beat.mul_f64((every.as_secs_f64() / beat.as_secs_f64()).ceil());
            let oldest = written_every + HumanDuration::parse(flush).unwrap().as_duration();
            let grace = HumanDuration::parse(grace).unwrap().as_duration();
            assert!(oldest <= grace.mul_f64(0.7), "{oldest:?} of {grace:?}");
        }
    }
}
