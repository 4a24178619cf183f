//! The agent protocol: what the reconciler asks an agent to run, and what the agent
//! reports back.
//!
//! Endpoints (all under `/agent/v1/hosts/{host_id}`, that host's credential required):
//! - `GET  tasks?wait=30s` — long-poll; returns a [`TaskBatch`] (possibly empty). It
//!   also counts as the host's heartbeat, when it arrives and every 10 s it waits.
//! - `GET  configs/{sha256}` — a collector config body a task of this host names by
//!   [`CollectorSpec::config_ref`] (2.1), as text.
//! - `POST tasks/{task_id}` — a [`TaskOutcome`] for a task the agent claimed.
//! - `PUT  status` — the full [`HostStatus`], sent when it changes.
//! - `POST heartbeat` — no body; a cheap "still here", for when no long-poll waits.
//!
//! Every agent request names the protocol it speaks in [`PROTOCOL_HEADER`]
//! (`major.minor`); the api serves an agent its [`ProtocolVersion::accepts`], and
//! answers any other with 426 naming both versions.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::load::{LoadRunSpec, LoadStatus};
use crate::names::Labels;

/// The header every agent request carries: the agent protocol version it speaks.
pub const PROTOCOL_HEADER: &str = "phoenix-agent-protocol";

/// The agent protocol this build speaks. A minor version adds only what an agent
/// or api one minor version older can ignore (fields with defaults, endpoints it
/// does not call); a major version is a break. 2.0: agents enroll with a bootstrap
/// token and use a credential of their own host (releases before it spoke 1.0 and
/// sent no header). 2.1: a task's collector spec may name its config body by
/// [`CollectorSpec::config_ref`] instead of carrying it; the agent fetches a body it
/// does not hold (`GET configs/{sha256}`) and caches it by hash. A 2.0 agent is
/// served every body inline.
pub const AGENT_PROTOCOL: ProtocolVersion = ProtocolVersion { major: 2, minor: 1 };

/// The first agent protocol whose agents fetch config bodies by reference.
pub const CONFIG_BY_REFERENCE: ProtocolVersion = ProtocolVersion { major: 2, minor: 1 };

/// What an agent that sends no [`PROTOCOL_HEADER`] speaks: releases before the
/// header existed (v0.1.0).
pub const UNVERSIONED_AGENT: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };

/// An agent protocol version, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProtocolVersion {
    pub major: u32,
    pub minor: u32,
}

impl ProtocolVersion {
    /// Reads `2.1`; anything else is `None`.
    pub fn parse(text: &str) -> Option<ProtocolVersion> {
        let (major, minor) = text.trim().split_once('.')?;
        Some(ProtocolVersion {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    /// Whether an api speaking `self` serves an agent speaking `agent`: the same
    /// major version, at most one minor version behind (a DaemonSet mid roll-out)
    /// or any minor version ahead (newer minors only add what this api ignores).
    pub fn accepts(self, agent: ProtocolVersion) -> bool {
        agent.major == self.major && agent.minor + 1 >= self.minor
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl std::str::FromStr for ProtocolVersion {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        ProtocolVersion::parse(text).ok_or_else(|| format!("{text:?} is not a version like 2.0"))
    }
}

/// Which side of an experiment a collector is, or a host's standing pipeline.
#[derive(
    Clone,
    Copy,
    Debug,
    Serialize,
    Deserialize,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Baseline,
    Candidate,
    Standing,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Candidate => "candidate",
            Variant::Standing => "standing",
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything an agent needs to run one collector: the rendered config and the
/// environment it is started with. Two specs with the same `config_hash` are the
/// same collector; applying one twice is a no-op.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorSpec {
    /// Unique on a host, e.g. `topk-web.candidate`.
    pub collector_id: String,
    /// The experiment (or standing deployment) this collector belongs to.
    pub owner: String,
    pub variant: Variant,
    pub pipeline: String,
    /// Collector config YAML; may refer to `${env:...}` variables. The same body on
    /// every host (what differs per host is in `env`), so it is shared, not copied.
    /// Empty when the body travels apart, named by `config_ref`: how a task stores
    /// it, and how agents of [`CONFIG_BY_REFERENCE`] and newer receive it.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub config: Arc<str>,
    /// The SHA-256 ([`body_sha256`]) of the config body, when `config` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_ref: Option<String>,
    /// Environment set for the collector process (template variables, experiment,
    /// variant, host, remote-write URL). The agent adds the ports it assigns.
    pub env: BTreeMap<String, String>,
    /// [`config_hash`] of `config` and `env` (and of the two lists below when
    /// either is not empty).
    pub config_hash: String,
    /// The destinations this collector may export to (a standing collector's
    /// deployment names them); the agent checks the config against exactly these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<crate::policy::Destination>,
    /// Credentials the agent reads (from a file in its credentials directory or
    /// its own environment) and sets as the named variables for this collector
    /// alone: references, never values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<crate::destination::CredentialRef>,
}

impl CollectorSpec {
    /// Builds a spec, computing its hash.
    pub fn new(
        collector_id: String,
        owner: String,
        variant: Variant,
        pipeline: String,
        config: impl Into<Arc<str>>,
        env: BTreeMap<String, String>,
    ) -> Self {
        let config = config.into();
        let config_hash = config_hash(&config, &env);
        Self::hashed(
            collector_id,
            owner,
            variant,
            pipeline,
            config,
            env,
            config_hash,
        )
    }

    /// [`CollectorSpec::new`] with its `config_hash` already computed (by a
    /// [`ConfigHasher`] of `config`).
    pub fn hashed(
        collector_id: String,
        owner: String,
        variant: Variant,
        pipeline: String,
        config: Arc<str>,
        env: BTreeMap<String, String>,
        config_hash: String,
    ) -> Self {
        Self {
            collector_id,
            owner,
            variant,
            pipeline,
            config,
            config_ref: None,
            env,
            config_hash,
            destinations: Vec::new(),
            credentials: Vec::new(),
        }
    }

    /// The spec exporting to `destinations` with `credentials`, its hash covering them.
    pub fn with_destinations(
        mut self,
        destinations: Vec<crate::policy::Destination>,
        credentials: Vec<crate::destination::CredentialRef>,
    ) -> Self {
        self.destinations = destinations;
        self.credentials = credentials;
        self.config_hash = if self.destinations.is_empty() && self.credentials.is_empty() {
            config_hash(&self.config, &self.env)
        } else {
            let canonical = serde_json::to_string(&(&self.destinations, &self.credentials))
                .expect("destinations always serialize");
            let mut env = self.env.clone();
            // Not an environment variable: a key no variable can have, for the hash only.
            env.insert(" destinations".into(), canonical);
            config_hash(&self.config, &env)
        };
        self
    }

    /// The policy allowances this spec's collector is checked with.
    pub fn allowances(&self) -> crate::policy::Allowances {
        crate::policy::Allowances {
            destinations: self.destinations.clone(),
        }
    }

    /// This spec with its body taken out and named by [`CollectorSpec::config_ref`]
    /// (`sha256` is [`body_sha256`] of `config`, which the caller may already know).
    pub fn without_body(&self, sha256: String) -> CollectorSpec {
        CollectorSpec {
            config: Arc::from(""),
            config_ref: Some(sha256),
            ..self.clone()
        }
    }

    /// Puts back a body fetched by [`CollectorSpec::config_ref`], after checking it is
    /// the one named: a body that does not hash to the reference is refused.
    pub fn with_body(mut self, body: Arc<str>) -> Result<CollectorSpec, String> {
        let Some(wanted) = self.config_ref.take() else {
            return Ok(self);
        };
        let got = body_sha256(&body);
        if got != wanted {
            return Err(format!(
                "the config body fetched for {} hashes to {got}, not {wanted}",
                self.collector_id
            ));
        }
        self.config = body;
        Ok(self)
    }

    /// The collector id Phoenix gives an owner's variant.
    pub fn id_for(owner: &str, variant: Variant) -> String {
        format!("{owner}.{variant}")
    }
}

/// The identity of a rendered collector: SHA-256 over the config and the sorted
/// environment, as 16 hex digits (64 bits: plenty to tell configs on one host apart).
pub fn config_hash(config: &str, env: &BTreeMap<String, String>) -> String {
    ConfigHasher::new(config).hash(env)
}

/// [`config_hash`] for one config body and many environments: the body is encoded
/// and hashed once, and each environment continues from there. A pass renders an
/// experiment's body for thousands of hosts, each with its own environment.
#[derive(Clone)]
pub struct ConfigHasher {
    /// SHA-256 after `["<config as JSON>",`: the canonical encoding's prefix.
    prefix: Sha256,
}

impl std::fmt::Debug for ConfigHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigHasher")
    }
}

impl ConfigHasher {
    pub fn new(config: &str) -> Self {
        // The canonical encoding is the JSON of the pair (config, env): JSON keeps
        // the boundaries between config, keys and values unambiguous.
        let mut prefix = Sha256::new();
        prefix.update(b"[");
        prefix.update(serde_json::to_vec(config).expect("strings always serialize"));
        prefix.update(b",");
        ConfigHasher { prefix }
    }

    /// The [`config_hash`] of this body with `env`.
    pub fn hash(&self, env: &BTreeMap<String, String>) -> String {
        let mut hasher = self.prefix.clone();
        hasher.update(serde_json::to_vec(env).expect("strings always serialize"));
        hasher.update(b"]");
        let digest = hasher.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The key a config body is stored and fetched under: its SHA-256, 64 hex digits
/// (content-addressed: equal bodies, one row, whatever the host).
pub fn body_sha256(body: &str) -> String {
    Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `text` has the shape of a [`body_sha256`] (checked where a path carries one).
pub fn is_body_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_empty(text: &Arc<str>) -> bool {
    text.is_empty()
}

/// What a task asks of the agent.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskAction {
    /// Run a collector that is not running.
    Start,
    /// Replace a running collector's config.
    Update,
    /// Stop a collector and forget it.
    Stop,
}

impl TaskAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskAction::Start => "start",
            TaskAction::Update => "update",
            TaskAction::Stop => "stop",
        }
    }

    pub fn parse(text: &str) -> Option<TaskAction> {
        [TaskAction::Start, TaskAction::Update, TaskAction::Stop]
            .into_iter()
            .find(|a| a.as_str() == text)
    }
}

/// What a task's unit is: a collector, or a load run ([`crate::load`]).
#[derive(
    Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    #[default]
    Collector,
    Load,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Collector => "collector",
            TaskKind::Load => "load",
        }
    }

    pub fn parse(text: &str) -> Option<TaskKind> {
        [TaskKind::Collector, TaskKind::Load]
            .into_iter()
            .find(|k| k.as_str() == text)
    }

    fn is_collector(&self) -> bool {
        *self == TaskKind::Collector
    }
}

/// What a start or update task brings about on a host: a unit of one of the
/// [`TaskKind`]s. Collectors and load runs travel through one task pipeline (one
/// diff, one table, one failure query), keyed by kind; a new kind of unit is a new
/// variant here.
#[derive(Clone, Debug, PartialEq)]
pub enum UnitSpec {
    Collector(CollectorSpec),
    Load(LoadRunSpec),
}

impl UnitSpec {
    pub fn kind(&self) -> TaskKind {
        match self {
            UnitSpec::Collector(_) => TaskKind::Collector,
            UnitSpec::Load(_) => TaskKind::Load,
        }
    }

    /// The unit's id on its host: a collector id, or `load.<run id>`.
    pub fn unit_id(&self) -> String {
        match self {
            UnitSpec::Collector(spec) => spec.collector_id.clone(),
            UnitSpec::Load(spec) => spec.unit_id(),
        }
    }

    /// The spec's identity: equal hashes are the same unit, applying it twice is a no-op.
    pub fn hash(&self) -> &str {
        match self {
            UnitSpec::Collector(spec) => &spec.config_hash,
            UnitSpec::Load(spec) => &spec.spec_hash,
        }
    }

    /// The spec as JSON text (how a task row stores it).
    pub fn to_json(&self) -> String {
        match self {
            UnitSpec::Collector(spec) => serde_json::to_string(spec),
            UnitSpec::Load(spec) => serde_json::to_string(spec),
        }
        .expect("specs always serialize")
    }

    /// Reads a spec of `kind` from [`UnitSpec::to_json`]'s text.
    pub fn from_json(kind: TaskKind, json: &str) -> serde_json::Result<UnitSpec> {
        Ok(match kind {
            TaskKind::Collector => UnitSpec::Collector(serde_json::from_str(json)?),
            TaskKind::Load => UnitSpec::Load(serde_json::from_str(json)?),
        })
    }
}

/// One unit of work for one host, leased to its agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub id: i64,
    pub action: TaskAction,
    /// The unit the task is for: a collector id, or `load.<run id>` for a load run.
    pub collector_id: String,
    /// 1 on first delivery; higher when a lease expired and the task came back.
    pub attempt: i32,
    /// The collector to run, for `start` and `update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<CollectorSpec>,
    /// Whether the unit is a collector (the default, and all older agents know) or
    /// a load run.
    #[serde(default, skip_serializing_if = "TaskKind::is_collector")]
    pub kind: TaskKind,
    /// The load run to run, for `start` and `update` of a load unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadRunSpec>,
    /// The W3C trace context (`traceparent`) of the reconcile step that made the
    /// task, continued from the request that changed the desired state: the agent's
    /// spans for the task join that trace. Optional, so it needs no protocol version:
    /// older agents ignore it, and an untraced api sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Task {
    /// The spec a start or update brings about, by kind; `None` for a stop (or a
    /// task that lacks the spec of its kind).
    pub fn spec(&self) -> Option<UnitSpec> {
        match self.kind {
            TaskKind::Collector => self.collector.clone().map(UnitSpec::Collector),
            TaskKind::Load => self.load.clone().map(UnitSpec::Load),
        }
    }
}

/// The answer to a task long-poll.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default, schemars::JsonSchema)]
pub struct TaskBatch {
    pub tasks: Vec<Task>,
}

/// What came of a task.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskOutcome {
    pub ok: bool,
    /// The collector's own error text when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a supervised collector is doing.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Started, health check not yet passing.
    Starting,
    /// Health check passing.
    Healthy,
    /// Running but its health check fails.
    Unhealthy,
    /// Exited; waiting for its restart backoff.
    Restarting,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Restarting => "restarting",
        }
    }
}

/// One collector as the agent sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CollectorStatus {
    pub collector_id: String,
    pub owner: String,
    pub variant: Variant,
    pub pipeline: String,
    pub config_hash: String,
    #[serde(default)]
    pub pid: Option<u32>,
    pub health: Health,
    /// Times the supervisor restarted it after it died.
    pub restarts: u32,
    /// Total CPU time of the process, in seconds.
    #[serde(default)]
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    #[serde(default)]
    pub rss_bytes: u64,
    /// The last error the collector printed or the supervisor saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The config this collector was last updated to, which failed (its start
    /// health check, or it crash-looped) so the agent went back to the config it
    /// runs now, its last known good. The reconciler does not send that config to
    /// this host again while this is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<RolledBack>,
}

/// A collector config that failed on a host after an update, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolledBack {
    pub config_hash: String,
    pub pipeline: String,
    pub error: String,
}

/// The full actual state of a host, sent when it changes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    pub labels: Labels,
    pub agent_version: String,
    pub collectors: Vec<CollectorStatus>,
    /// The load runs the agent has (running, or finished and not yet stopped).
    #[serde(default)]
    pub load: Vec<LoadStatus>,
    /// The most load processes this host runs at once (`--max-load-processes`);
    /// 0 for an agent that runs no load (older agents report nothing).
    #[serde(default)]
    pub max_load_processes: u32,
}

impl HostStatus {
    /// What the api checks before storing a report: valid labels, and each
    /// collector and load run reported once.
    pub fn check(&self) -> Result<(), crate::problem::FieldError> {
        use crate::problem::FieldError;
        crate::names::check_labels(&self.labels).map_err(|m| FieldError::new("labels", m))?;
        let mut collectors = std::collections::HashSet::new();
        for (i, c) in self.collectors.iter().enumerate() {
            if !collectors.insert(c.collector_id.as_str()) {
                return Err(FieldError::new(
                    format!("collectors[{i}].collectorId"),
                    format!("collector {} is reported twice", c.collector_id),
                ));
            }
        }
        let mut runs = std::collections::HashSet::new();
        for (i, l) in self.load.iter().enumerate() {
            if !runs.insert(l.run_id.as_str()) {
                return Err(FieldError::new(
                    format!("load[{i}].runId"),
                    format!("load run {} is reported twice", l.run_id),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_travels_apart_and_comes_back_only_if_it_hashes_to_its_name() {
        let env = BTreeMap::from([("PHOENIX_HOST".to_string(), "web-1".to_string())]);
        let spec = CollectorSpec::new(
            "e.baseline".into(),
            "e".into(),
            Variant::Baseline,
            "p".into(),
            "receivers: {}",
            env,
        );
        let sha = body_sha256(&spec.config);
        assert!(is_body_sha256(&sha) && !is_body_sha256("abc"));
        let apart = spec.without_body(sha.clone());
        let json = serde_json::to_string(&apart).unwrap();
        assert!(!json.contains("receivers") && json.contains(&sha), "{json}");
        assert_eq!(apart.config_hash, spec.config_hash, "the same collector");
        let back = apart.clone().with_body(Arc::from("receivers: {}")).unwrap();
        assert_eq!(back, spec);
        let forged = apart.with_body(Arc::from("receivers: {evil: {}}"));
        assert!(forged.unwrap_err().contains(&sha));
    }

    #[test]
    fn an_api_serves_its_major_version_from_one_minor_behind() {
        let v = |text: &str| ProtocolVersion::parse(text).unwrap();
        assert_eq!(v("2.1"), ProtocolVersion { major: 2, minor: 1 });
        assert_eq!(v("2.1").to_string(), "2.1");
        assert!(ProtocolVersion::parse("2").is_none());
        assert!(ProtocolVersion::parse("two.one").is_none());
        let api = v("2.1");
        assert!(api.accepts(v("2.1")));
        assert!(api.accepts(v("2.0")), "one minor behind");
        assert!(api.accepts(v("2.2")), "a newer minor");
        assert!(!v("2.2").accepts(v("2.0")), "two minors behind");
        assert!(!api.accepts(v("1.9")));
        assert!(!api.accepts(v("3.0")));
        assert!(!AGENT_PROTOCOL.accepts(UNVERSIONED_AGENT));
    }

    #[test]
    fn hash_covers_config_and_env() {
        let env: BTreeMap<String, String> = [("A".into(), "1".into())].into();
        // The incremental hasher gives exactly the digest of the whole encoding,
        // so hashes of collectors already running do not change.
        let canonical = serde_json::to_vec(&("receivers: {}\n\"q\"", &env)).unwrap();
        let whole: String = Sha256::digest(&canonical)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(config_hash("receivers: {}\n\"q\"", &env), whole);
        let h = config_hash("receivers: {}", &env);
        assert_eq!(h.len(), 16);
        assert_eq!(h, config_hash("receivers: {}", &env));
        assert_ne!(h, config_hash("receivers: {} ", &env));
        let other: BTreeMap<String, String> = [("A".into(), "2".into())].into();
        assert_ne!(h, config_hash("receivers: {}", &other));
        // Key/value boundaries matter: A=1,B=2 differs from A=1\0B=2 as a single value.
        let split: BTreeMap<String, String> =
            [("A".into(), "1".into()), ("B".into(), "2".into())].into();
        let joined: BTreeMap<String, String> = [("A".into(), "1\0B=2".into())].into();
        assert_ne!(config_hash("", &split), config_hash("", &joined));
    }
}
