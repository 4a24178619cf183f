//! The agent's settings, from command-line flags or the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use phoenix_wire::duration::HumanDuration;
use phoenix_wire::names::{self, Labels};

use crate::supervisor::{CollectorUser, SupervisorSettings, can_switch_user};

const ABOUT: &str = "Phoenix host agent: runs the collectors the Phoenix API asks for on this host";

const LONG_ABOUT: &str = "\
Phoenix host agent: runs the collectors the Phoenix API asks for on this host.

The agent long-polls the API for tasks (start, update or stop a collector), runs each
collector as a child process with a config written to its state directory, checks its
health, restarts it with backoff when it dies, and reports what runs (pid, health,
restarts, CPU, memory) when it changes. The waiting long-poll is its heartbeat (a
separate heartbeat goes only while no poll waits), so an idle agent holds one
connection. When the API is unreachable it keeps every collector running and retries.

The agent records its collectors in <state-dir>/state.json. Stopping the agent leaves
its collectors running; a restarted agent adopts them and kills any process it started
but no longer accounts for.

Every flag can also be given as the environment variable shown with it.";

const EXAMPLES: &str = "\
Examples:
  PHOENIX_BOOTSTRAP_TOKEN_FILE=/run/secrets/phoenix-bootstrap-token \\
  phoenix-agent --api-url https://phoenix-api:8443 --ca-file /etc/phoenix/ca.pem \\
      --collector-bin /usr/local/bin/otelcol-phoenix --labels role=web,zone=a

  PHOENIX_API_URL=http://127.0.0.1:8080 PHOENIX_BOOTSTRAP_TOKEN=phoenix-bootstrap.… \\
  PHOENIX_COLLECTOR_BIN=./otelcol PHOENIX_STATE_DIR=/tmp/agent phoenix-agent";

/// Everything the agent is configured with.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "phoenix-agent",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES
)]
pub struct AgentConfig {
    /// Base URL of the Phoenix API, e.g. http://phoenix-api:8080
    #[arg(long, env = "PHOENIX_API_URL", value_name = "URL")]
    pub api_url: reqwest::Url,

    /// File holding a bootstrap token (`phoenix-bootstrap.…`, from `phoenix
    /// bootstrap-token create`): the agent enrolls with it once and keeps the
    /// credential of its own host in <state-dir>/host-credential. Without it the
    /// token is read from the environment [env: PHOENIX_BOOTSTRAP_TOKEN]; secrets
    /// are never flags, since command lines are visible to every user (and exported
    /// as labels by the process-baseline template)
    #[arg(long, env = "PHOENIX_BOOTSTRAP_TOKEN_FILE", value_name = "PATH")]
    pub bootstrap_token_file: Option<PathBuf>,

    /// File holding this host's credential (`phoenix-host.…`), when it was enrolled
    /// by other means; used instead of enrolling [env: PHOENIX_AGENT_TOKEN]
    #[arg(long, env = "PHOENIX_AGENT_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// PEM file of the CA that signed the api's (and the Pushgateway's) certificate,
    /// for an https:// URL with a private CA; only it is trusted then
    #[arg(long, env = "PHOENIX_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// This host's id as the API knows it, e.g. web-01 or the Kubernetes node name
    /// [default: the machine's hostname]
    #[arg(long, env = "PHOENIX_HOST_ID", value_name = "ID")]
    pub host_id: Option<String>,

    /// Labels experiments select this host by, as comma-separated key=value pairs,
    /// e.g. role=web,zone=a
    #[arg(
        long,
        env = "PHOENIX_HOST_LABELS",
        value_name = "KEY=VALUE,...",
        value_parser = parse_labels,
        default_value = ""
    )]
    pub labels: Labels,

    /// Directory for state.json and each collector's config and log
    /// (collectors/<id>/config.yaml, collectors/<id>/collector.log)
    #[arg(
        long,
        env = "PHOENIX_STATE_DIR",
        value_name = "DIR",
        default_value = "/var/lib/phoenix-agent"
    )]
    pub state_dir: PathBuf,

    /// The collector executable, started as `<collector-bin> --config=<file>`,
    /// e.g. /usr/local/bin/otelcol-phoenix. Required
    #[arg(long, env = "PHOENIX_COLLECTOR_BIN", value_name = "PATH")]
    pub collector_bin: Option<PathBuf>,

    /// The unprivileged user collectors run as, UID:GID (they keep only
    /// CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, which the process scraper needs), or
    /// `agent` to run them as the agent's own user. An agent that is not root
    /// cannot switch and runs them as itself.
    #[arg(
        long,
        env = "PHOENIX_COLLECTOR_USER",
        value_name = "UID:GID|agent",
        default_value = "65532:65532"
    )]
    pub collector_user: String,

    /// Where the host's root filesystem is mounted, passed to collectors as
    /// PHOENIX_HOSTFS, e.g. /hostfs in a container (empty: the agent runs on the host)
    #[arg(long, env = "PHOENIX_HOSTFS", value_name = "DIR", default_value = "")]
    pub hostfs: String,

    /// Where destination credentials are read from (a mounted Secret): a
    /// destination's `credentials[].file` is a path inside it. Nothing outside it
    /// is ever read for a collector.
    #[arg(
        long,
        env = "PHOENIX_CREDENTIALS_DIR",
        value_name = "DIR",
        default_value = "/etc/phoenix/credentials"
    )]
    pub credentials_dir: PathBuf,

    /// Address for the agent's own /metrics and /healthz, e.g. 0.0.0.0:9464
    /// (port 0 picks a free port)
    #[arg(
        long,
        env = "PHOENIX_AGENT_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub listen: SocketAddr,

    /// How often to tell the API this agent is alive while no task long-poll waits
    /// (a waiting long-poll is the heartbeat for an api of protocol 2.1), e.g. 10s
    #[arg(
        long,
        env = "PHOENIX_HEARTBEAT_INTERVAL",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub heartbeat_interval: Duration,

    /// How long a started collector may take to pass its health check before the
    /// start fails, e.g. 30s
    #[arg(
        long,
        env = "PHOENIX_START_TIMEOUT",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub start_timeout: Duration,

    /// How long a collector may take to exit after SIGTERM before it gets SIGKILL,
    /// e.g. 10s
    #[arg(
        long,
        env = "PHOENIX_STOP_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub stop_timeout: Duration,

    /// Stop every collector when the agent exits, instead of leaving them running
    /// for the next agent to adopt
    #[arg(long, env = "PHOENIX_STOP_COLLECTORS_ON_EXIT")]
    pub stop_collectors_on_exit: bool,

    /// The most load-simulation processes this host runs at once, over all load
    /// runs; a run asking for more is refused (0: run no load)
    #[arg(
        long,
        env = "PHOENIX_MAX_LOAD_PROCESSES",
        value_name = "N",
        default_value_t = 2000
    )]
    pub max_load_processes: u32,

    /// The agent protocol version to send instead of this build's; only
    /// compatibility tests set it (to stand for an older or newer agent)
    #[arg(long, env = "PHOENIX_AGENT_PROTOCOL", hide = true, default_value_t = phoenix_wire::agent::AGENT_PROTOCOL)]
    pub protocol_version: phoenix_wire::agent::ProtocolVersion,

    /// Prometheus Pushgateway to push the CPU seconds and RSS of each collector in a
    /// running experiment to, labelled with experiment, variant and host, e.g.
    /// http://pushgateway:9091.
    /// Required: experiments measure collector overhead from it [--dev: unset, no
    /// pushes]
    #[arg(long, env = "PHOENIX_PUSHGATEWAY_URL", value_name = "URL")]
    pub pushgateway_url: Option<reqwest::Url>,

    /// Local development: the Pushgateway may be left out (no resource pushes).
    /// Without it every deployment setting must be given
    #[arg(long, env = "PHOENIX_DEV")]
    pub dev: bool,

    /// How often experiment collectors' resource use is pushed (and, when they change,
    /// after a delay of this host's own, up to a third of this and at most 5 s, so a
    /// fleet's pushes do not all arrive together). Let Prometheus scrape the Pushgateway a little more often (the chart:
    /// every 10 s), so its newest sample is at most the two intervals old
    #[arg(
        long,
        env = "PHOENIX_PUSH_INTERVAL",
        value_name = "DURATION",
        default_value = "15s",
        value_parser = parse_duration
    )]
    pub push_interval: Duration,

    /// Logs and traces (`--log-format`, `--otlp-endpoint`; see phoenix-telemetry).
    #[command(flatten)]
    pub telemetry: phoenix_telemetry::TelemetryArgs,
}

/// A setting that is wrong in a way flag parsing cannot tell.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --host-id: {0}")]
    HostId(String),
    #[error("invalid --collector-user: {0}")]
    CollectorUser(String),
    #[error("cannot read the token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--pushgateway-url (environment variable PHOENIX_PUSHGATEWAY_URL) is required: experiments measure each collector's CPU and memory through it (for local development only, --dev (PHOENIX_DEV=1) runs without)"
    )]
    NoPushgateway,
    #[error("--collector-bin (environment variable PHOENIX_COLLECTOR_BIN) is required")]
    NoCollector,
}

impl AgentConfig {
    /// Refuses a missing deployment setting, naming its flag and variable (the API
    /// URL and the token are required by the flags themselves); `--dev` lets the
    /// Pushgateway be left out.
    pub fn check_required(&self) -> Result<(), ConfigError> {
        if self.collector_bin.is_none() {
            return Err(ConfigError::NoCollector);
        }
        if self.pushgateway_url.is_none() && !self.dev {
            return Err(ConfigError::NoPushgateway);
        }
        Ok(())
    }

    /// The host id: the flag, or else the machine's hostname; checked either way.
    pub fn resolved_host_id(&self) -> Result<String, ConfigError> {
        let id = match &self.host_id {
            Some(id) => id.clone(),
            None => hostname(),
        };
        names::check_host_id(&id).map_err(ConfigError::HostId)?;
        Ok(id)
    }

    /// A host credential given directly: the token file's content, or else
    /// `PHOENIX_AGENT_TOKEN`; `None` when neither is set.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        secret(self.token_file.as_deref(), "PHOENIX_AGENT_TOKEN")
    }

    /// The bootstrap token: the file's content, or else `PHOENIX_BOOTSTRAP_TOKEN`.
    pub fn bootstrap_token(&self) -> Result<Option<String>, ConfigError> {
        secret(
            self.bootstrap_token_file.as_deref(),
            "PHOENIX_BOOTSTRAP_TOKEN",
        )
    }

    /// The user collectors run as: `None` for `agent`, or when this agent is not
    /// root (it could not switch; said once in the log).
    pub fn collector_user(&self) -> Result<Option<CollectorUser>, ConfigError> {
        if self.collector_user == "agent" {
            return Ok(None);
        }
        let user: CollectorUser = self
            .collector_user
            .parse()
            .map_err(ConfigError::CollectorUser)?;
        if !can_switch_user() {
            tracing::warn!(
                "the agent is not root, so collectors run as its own user, not {}:{}",
                user.uid,
                user.gid
            );
            return Ok(None);
        }
        Ok(Some(user))
    }

    /// The part of the settings the supervisor needs.
    pub fn supervisor_settings(&self) -> Result<SupervisorSettings, ConfigError> {
        Ok(SupervisorSettings {
            state_dir: self.state_dir.clone(),
            // Checked at start-up (check_required).
            collector_bin: self.collector_bin.clone().unwrap_or_default(),
            hostfs: self.hostfs.clone(),
            credentials_dir: self.credentials_dir.clone(),
            start_timeout: self.start_timeout,
            stop_timeout: self.stop_timeout,
            collector_user: self.collector_user()?,
        })
    }
}

/// A secret from a file, or else from an environment variable; trimmed, `None`
/// when empty.
fn secret(file: Option<&std::path::Path>, env: &str) -> Result<Option<String>, ConfigError> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::TokenFile {
            path: path.to_path_buf(),
            source,
        })?,
        None => std::env::var(env).unwrap_or_default(),
    };
    let text = text.trim();
    Ok((!text.is_empty()).then(|| text.to_string()))
}

/// Parses `role=web,zone=a` into labels, checking keys and values.
pub fn parse_labels(text: &str) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not key=value (e.g. role=web,zone=a)"))?;
        let (key, value) = (key.trim(), value.trim());
        names::check_label_key(key)?;
        names::check_label_value(value)?;
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            return Err(format!("label `{key}` is given twice"));
        }
    }
    Ok(labels)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    HumanDuration::parse(text).map(HumanDuration::as_duration)
}

/// The machine's hostname (`uname`'s nodename, what gethostname(2) returns).
fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    #[test]
    fn labels_parse_and_explain_mistakes() {
        let labels = parse_labels("role=web, zone=a").unwrap();
        assert_eq!(labels["role"], "web");
        assert_eq!(labels["zone"], "a");
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels("role").unwrap_err().contains("key=value"));
        assert!(
            parse_labels("role=web,role=db")
                .unwrap_err()
                .contains("twice")
        );
        assert!(parse_labels("ro le=web").is_err());
    }

    #[test]
    fn flags_parse_with_defaults() {
        let config = AgentConfig::try_parse_from([
            "phoenix-agent",
            "--api-url",
            "http://127.0.0.1:8080",
            "--token-file",
            "/run/secrets/t",
            "--collector-bin",
            "/bin/otelcol",
            "--host-id",
            "web-01",
            "--dev",
        ])
        .unwrap();
        assert_eq!(config.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(config.start_timeout, Duration::from_secs(30));
        assert_eq!(config.stop_timeout, Duration::from_secs(10));
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/phoenix-agent"));
        assert_eq!(config.resolved_host_id().unwrap(), "web-01");
        assert!(!config.stop_collectors_on_exit);
        assert_eq!(config.max_load_processes, 2000);
        assert!(
            config.check_required().is_ok(),
            "--dev: no Pushgateway needed"
        );
    }

    #[test]
    fn deployment_settings_are_required_without_dev() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["phoenix-agent", "--api-url", "http://api:8080"];
            args.extend_from_slice(extra);
            // From the flags alone: the environment of whoever runs the tests
            // (scripts/test exports PHOENIX_COLLECTOR_BIN) must not fill them in.
            let matches = AgentConfig::command()
                .mut_args(|a| a.env(None::<&str>))
                .try_get_matches_from(args)
                .unwrap();
            AgentConfig::from_arg_matches(&matches)
                .unwrap()
                .check_required()
        };
        let err = parse(&["--collector-bin", "/bin/otelcol"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--pushgateway-url"), "{err}");
        assert!(err.contains("PHOENIX_PUSHGATEWAY_URL"), "{err}");
        assert!(err.contains("--dev"), "{err}");
        let err = parse(&["--pushgateway-url", "http://pg:9091"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--collector-bin"), "{err}");
        assert!(err.contains("PHOENIX_COLLECTOR_BIN"), "{err}");
        parse(&[
            "--collector-bin",
            "/bin/otelcol",
            "--pushgateway-url",
            "http://pg:9091",
        ])
        .expect("everything given");
    }

    #[test]
    fn the_token_is_never_a_flag() {
        let err = AgentConfig::try_parse_from([
            "phoenix-agent",
            "--api-url",
            "http://127.0.0.1:8080",
            "--token",
            "secret",
            "--collector-bin",
            "/bin/otelcol",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let config = AgentConfig::try_parse_from([
            "phoenix-agent",
            "--api-url",
            "http://127.0.0.1:8080",
            "--token-file",
            file.to_str().unwrap(),
            "--collector-bin",
            "/bin/otelcol",
        ])
        .unwrap();
        assert_eq!(config.token().unwrap().as_deref(), Some("from-a-file"));
        let config = AgentConfig::try_parse_from([
            "phoenix-agent",
            "--api-url",
            "http://127.0.0.1:8080",
            "--bootstrap-token-file",
            file.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(
            config.bootstrap_token().unwrap().as_deref(),
            Some("from-a-file")
        );
    }
}
