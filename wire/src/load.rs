//! Load simulation: what crosses a process boundary when Phoenix generates process
//! load on a host.
//!
//! - [`LoadProfile`]: the four profiles and their documented defaults
//!   ([`LoadProfile::defaults`]); [`LoadParameters`] are what a run may override,
//!   each bounded ([`LoadParameters::check`]).
//! - [`LoadRunSpec`]: one run on one host, as a task carries it to the agent (unit id
//!   `load.<run id>`, hashed like a collector spec so applying it twice is a no-op);
//!   [`LoadStatus`]: what the agent reports about a run it has.
//! - [`LoadSimRequest`]: the body of `POST /api/v1/loadsims`; [`LoadSim`]: what the user
//!   API shows about a run; [`LoadProfileInfo`]: `GET /api/v1/loadsims/profiles`.
//!
//! The agent runs a load as real OS processes (re-executions of its own binary that
//! idle or burn), in one process group per run, bounded by count, spawn rate and time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::duration::HumanDuration;
use crate::names;
use crate::problem::FieldError;
use crate::resource::HostTarget;

/// The most processes one run may ask for; a host's own maximum
/// (`phoenix-agent --max-load-processes`) usually allows fewer.
pub const MAX_PROCESSES: u32 = 10_000;
/// The most spawns per second a run may ask for.
pub const MAX_SPAWN_RATE: u32 = 1_000;
/// The longest a run may last. Experiment loads are clamped to it too.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 86_400);
/// The shortest a worker may live (shorter would be all fork and no process).
pub const MIN_WORKER_LIFETIME: Duration = Duration::from_millis(100);
/// The most memory one worker may hold.
pub const MAX_MEMORY_MIB_PER_WORKER: u32 = 1_024;
/// The most memory all workers of a run may hold together.
pub const MAX_MEMORY_MIB_PER_RUN: u64 = 16_384;
/// Every load unit id starts with this (`load.run.demo`); tasks for load units are
/// told apart from collector tasks by their kind ([`crate::agent::TaskKind::Load`]).
pub const UNIT_PREFIX: &str = "load.";

/// A load profile: the shape of the process load a run generates.
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
#[serde(rename_all = "kebab-case")]
pub enum LoadProfile {
    /// 100 mostly idle processes that live 1 to 3 minutes (so some churn), a tenth
    /// of them burning a little CPU, each holding 1 MiB.
    Realistic,
    /// 1000 idle processes with unique command lines that live as long as the run:
    /// many series for a process scraper, no CPU.
    HighCardinality,
    /// 25 short-lived (1 s) spawns per second, at most 100 alive at once.
    ProcessChurn,
    /// Bursts: 200 processes spawned at 100 per second, living 20 s, a tenth of them
    /// burning CPU; when all are gone, 20 s of quiet, then the next burst.
    Spike,
}

impl LoadProfile {
    pub const ALL: [LoadProfile; 4] = [
        LoadProfile::Realistic,
        LoadProfile::HighCardinality,
        LoadProfile::ProcessChurn,
        LoadProfile::Spike,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LoadProfile::Realistic => "realistic",
            LoadProfile::HighCardinality => "high-cardinality",
            LoadProfile::ProcessChurn => "process-churn",
            LoadProfile::Spike => "spike",
        }
    }

    pub fn parse(text: &str) -> Option<LoadProfile> {
        LoadProfile::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// Every profile name, for error messages: `realistic, high-cardinality, ...`.
    pub fn names() -> String {
        LoadProfile::ALL.map(LoadProfile::as_str).join(", ")
    }

    /// One line on what the profile does.
    pub fn description(self) -> &'static str {
        match self {
            LoadProfile::Realistic => {
                "mostly idle processes living 1-3 minutes (some churn), a tenth burning a little CPU"
            }
            LoadProfile::HighCardinality => {
                "many idle processes with unique command lines, living as long as the run"
            }
            LoadProfile::ProcessChurn => {
                "a steady stream of short-lived processes (spawns per second is the knob)"
            }
            LoadProfile::Spike => {
                "bursts of processes burning CPU, then quiet for as long as a burst lives"
            }
        }
    }

    /// The profile's documented defaults.
    pub fn defaults(self) -> LoadParameters {
        let minutes = |m: u64| HumanDuration::from_secs(m * 60);
        match self {
            LoadProfile::Realistic => LoadParameters {
                processes: 100,
                spawn_rate: 20,
                duration: minutes(10),
                worker_lifetime: Some(minutes(2)),
                busy_percent: 10,
                cpu_millicores: 20,
                memory_mib: 1,
            },
            LoadProfile::HighCardinality => LoadParameters {
                processes: 1000,
                spawn_rate: 200,
                duration: minutes(10),
                worker_lifetime: None,
                busy_percent: 0,
                cpu_millicores: 0,
                memory_mib: 0,
            },
            LoadProfile::ProcessChurn => LoadParameters {
                processes: 100,
                spawn_rate: 25,
                duration: minutes(10),
                worker_lifetime: Some(HumanDuration::from_secs(1)),
                busy_percent: 0,
                cpu_millicores: 0,
                memory_mib: 0,
            },
            LoadProfile::Spike => LoadParameters {
                processes: 200,
                spawn_rate: 100,
                duration: minutes(10),
                worker_lifetime: Some(HumanDuration::from_secs(20)),
                busy_percent: 10,
                cpu_millicores: 50,
                memory_mib: 2,
            },
        }
    }

    /// Realistic workers live between half and one and a half times the worker
    /// lifetime, so that they do not all end at once.
    pub fn jitters_lifetime(self) -> bool {
        self == LoadProfile::Realistic
    }

    /// Spike runs in bursts: spawn `processes`, let them all end, stay quiet for a
    /// worker lifetime, again. Every other profile keeps up to `processes` alive.
    pub fn is_bursty(self) -> bool {
        self == LoadProfile::Spike
    }
}

impl std::fmt::Display for LoadProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What shapes a run. Every field is bounded ([`LoadParameters::check`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadParameters {
    /// The most worker processes alive at once.
    pub processes: u32,
    /// The most worker spawns per second.
    pub spawn_rate: u32,
    /// How long the run lasts; every worker ends with it at the latest.
    pub duration: HumanDuration,
    /// How long each worker lives; none: as long as the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_lifetime: Option<HumanDuration>,
    /// The share of workers that burn CPU, in percent.
    pub busy_percent: u32,
    /// The CPU each busy worker burns, in thousandths of a core.
    pub cpu_millicores: u32,
    /// The memory each worker holds (allocated and touched), in MiB.
    pub memory_mib: u32,
}

impl LoadParameters {
    /// Checks every bound, naming the offending field (camelCase, as in requests).
    pub fn check(&self) -> Result<(), FieldError> {
        if !(1..=MAX_PROCESSES).contains(&self.processes) {
            return Err(FieldError::new(
                "processes",
                format!(
                    "must be between 1 and {MAX_PROCESSES}, not {}",
                    self.processes
                ),
            ));
        }
        if !(1..=MAX_SPAWN_RATE).contains(&self.spawn_rate) {
            return Err(FieldError::new(
                "spawnRate",
                format!(
                    "must be between 1 and {MAX_SPAWN_RATE} spawns per second, not {}",
                    self.spawn_rate
                ),
            ));
        }
        let duration = self.duration.as_duration();
        if duration < Duration::from_secs(1) || duration > MAX_DURATION {
            return Err(FieldError::new(
                "duration",
                format!(
                    "must be between 1s and {}, not {}",
                    HumanDuration(MAX_DURATION),
                    self.duration
                ),
            ));
        }
        if let Some(lifetime) = self.worker_lifetime
            && !(MIN_WORKER_LIFETIME..=MAX_DURATION).contains(&lifetime.as_duration())
        {
            return Err(FieldError::new(
                "workerLifetime",
                format!(
                    "must be between {} and {}, not {lifetime}",
                    HumanDuration(MIN_WORKER_LIFETIME),
                    HumanDuration(MAX_DURATION)
                ),
            ));
        }
        if self.busy_percent > 100 {
            return Err(FieldError::new(
                "busyPercent",
                format!("must be between 0 and 100, not {}", self.busy_percent),
            ));
        }
        if self.cpu_millicores > 1000 {
            return Err(FieldError::new(
                "cpuMillicores",
                format!(
                    "must be between 0 and 1000 (one core), not {}",
                    self.cpu_millicores
                ),
            ));
        }
        if self.memory_mib > MAX_MEMORY_MIB_PER_WORKER {
            return Err(FieldError::new(
                "memoryMib",
                format!(
                    "must be between 0 and {MAX_MEMORY_MIB_PER_WORKER}, not {}",
                    self.memory_mib
                ),
            ));
        }
        let total_mib = u64::from(self.processes) * u64::from(self.memory_mib);
        if total_mib > MAX_MEMORY_MIB_PER_RUN {
            return Err(FieldError::new(
                "memoryMib",
                format!(
                    "{} processes holding {} MiB each would hold {total_mib} MiB; a run may hold at most {MAX_MEMORY_MIB_PER_RUN} MiB",
                    self.processes, self.memory_mib
                ),
            ));
        }
        Ok(())
    }

    /// Whether worker number `seq` of a run burns CPU: `busy_percent` of every
    /// hundred consecutive workers do.
    pub fn is_busy(&self, seq: u64) -> bool {
        self.cpu_millicores > 0 && seq % 100 < u64::from(self.busy_percent)
    }
}

/// Overrides of a profile's defaults; every field is optional.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_lifetime: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
}

impl LoadOverrides {
    /// The profile's defaults with these overrides applied, checked.
    pub fn resolve(&self, profile: LoadProfile) -> Result<LoadParameters, FieldError> {
        let mut p = profile.defaults();
        if let Some(v) = self.processes {
            p.processes = v;
        }
        if let Some(v) = self.spawn_rate {
            p.spawn_rate = v;
        }
        if let Some(v) = self.duration {
            p.duration = v;
        }
        if let Some(v) = self.worker_lifetime {
            p.worker_lifetime = Some(v);
        }
        if let Some(v) = self.busy_percent {
            p.busy_percent = v;
        }
        if let Some(v) = self.cpu_millicores {
            p.cpu_millicores = v;
        }
        if let Some(v) = self.memory_mib {
            p.memory_mib = v;
        }
        p.check()?;
        Ok(p)
    }
}

/// One run on one host, as a task carries it: start it (a no-op for the same
/// `spec_hash`), replace it (another hash), or stop it (by unit id).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadRunSpec {
    /// `run.<name>` for a run started on its own, `experiment.<name>` for an
    /// experiment's load section. Unique on a host.
    pub run_id: String,
    /// The run's or the experiment's name.
    pub owner: String,
    pub profile: LoadProfile,
    pub parameters: LoadParameters,
    /// When the run ends, wherever it is: the agent stops it then even if it never
    /// hears from the API again.
    pub expires_at: DateTime<Utc>,
    /// [`LoadRunSpec::hash`] of the fields above.
    pub spec_hash: String,
}

impl LoadRunSpec {
    /// Builds a spec, computing its hash.
    pub fn new(
        run_id: String,
        owner: String,
        profile: LoadProfile,
        parameters: LoadParameters,
        expires_at: DateTime<Utc>,
    ) -> Self {
        let mut spec = Self {
            run_id,
            owner,
            profile,
            parameters,
            expires_at,
            spec_hash: String::new(),
        };
        spec.spec_hash = spec.hash();
        spec
    }

    /// SHA-256 over everything but the hash, as 16 hex digits.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(&(
            &self.run_id,
            &self.owner,
            self.profile,
            &self.parameters,
            self.expires_at,
        ))
        .expect("a load spec always serializes");
        Sha256::digest(&canonical)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The run id of a run started on its own.
    pub fn run_id_for_run(name: &str) -> String {
        format!("run.{name}")
    }

    /// The run id of an experiment's load.
    pub fn run_id_for_experiment(name: &str) -> String {
        format!("experiment.{name}")
    }

    /// The unit id the task carries in its `collectorId`: `load.<run id>`.
    pub fn unit_id(&self) -> String {
        unit_id(&self.run_id)
    }
}

/// The unit id of a run id: `load.<run id>`.
pub fn unit_id(run_id: &str) -> String {
    format!("{UNIT_PREFIX}{run_id}")
}

/// Checks that a run id is `run.<name>` or `experiment.<name>` with a valid name
/// (so it is also safe in a command line and a file name).
pub fn check_run_id(run_id: &str) -> Result<(), String> {
    let name = run_id
        .strip_prefix("run.")
        .or_else(|| run_id.strip_prefix("experiment."))
        .ok_or_else(|| format!("`{run_id}` is not `run.<name>` or `experiment.<name>`"))?;
    names::check_resource_name(name)
}

/// Where a run is on the agent.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoadState {
    /// Workers are being kept alive.
    Running,
    /// The run reached its end; its workers are gone. Kept until a stop task.
    Finished,
}

impl LoadState {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadState::Running => "running",
            LoadState::Finished => "finished",
        }
    }
}

/// A run as the agent reports it in its host status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadStatus {
    pub run_id: String,
    pub owner: String,
    pub profile: LoadProfile,
    pub spec_hash: String,
    pub state: LoadState,
    /// Worker processes alive now.
    pub live_processes: u32,
    /// Worker processes spawned since the run started.
    pub spawned_total: u64,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The last error spawning a worker, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `POST /api/v1/loadsims`: start a run on hosts chosen by name or selector.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadSimRequest {
    pub name: String,
    pub hosts: HostTarget,
    pub profile: LoadProfile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_rate: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_lifetime: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
}

/// A run name that would read as another endpoint.
const RESERVED_NAMES: [&str; 1] = ["profiles"];

impl LoadSimRequest {
    /// Checks the name and the host target, and resolves the parameters from the
    /// profile's defaults and the overrides, naming the first field that is wrong.
    pub fn validate(&self) -> Result<LoadParameters, FieldError> {
        names::check_resource_name(&self.name).map_err(|m| FieldError::new("name", m))?;
        if RESERVED_NAMES.contains(&self.name.as_str()) {
            return Err(FieldError::new(
                "name",
                format!("`{}` is reserved; pick another name", self.name),
            ));
        }
        self.hosts.validate("hosts")?;
        self.overrides().resolve(self.profile)
    }

    pub fn overrides(&self) -> LoadOverrides {
        LoadOverrides {
            processes: self.processes,
            spawn_rate: self.spawn_rate,
            duration: self.duration,
            worker_lifetime: self.worker_lifetime,
            busy_percent: self.busy_percent,
            cpu_millicores: self.cpu_millicores,
            memory_mib: self.memory_mib,
        }
    }
}

/// Where a load simulation is, as the user sees it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoadSimPhase {
    Running,
    Stopped,
    Expired,
}

impl LoadSimPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadSimPhase::Running => "running",
            LoadSimPhase::Stopped => "stopped",
            LoadSimPhase::Expired => "expired",
        }
    }
}

/// A load simulation on one of its target hosts.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoadHostState {
    /// Asked for; the host's agent has not reported it yet.
    Pending,
    Running,
    /// Reached its end on the host.
    Finished,
    /// The host's agent refused or failed to start it (see `lastError`).
    Failed,
    /// Not running on the host (the run was stopped or expired).
    Gone,
}

impl LoadHostState {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadHostState::Pending => "pending",
            LoadHostState::Running => "running",
            LoadHostState::Finished => "finished",
            LoadHostState::Failed => "failed",
            LoadHostState::Gone => "gone",
        }
    }
}

/// One target host of a load simulation, from what its agent reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadHostStatus {
    pub host_id: String,
    pub state: LoadHostState,
    pub live_processes: u32,
    pub spawned_total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A load simulation started on its own, as the user API shows it. (An
/// experiment's load is part of the experiment.)
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadSim {
    pub name: String,
    pub profile: LoadProfile,
    pub parameters: LoadParameters,
    pub hosts: HostTarget,
    /// The hosts resolved from `hosts` when the run started.
    pub target_hosts: Vec<String>,
    pub phase: LoadSimPhase,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
    /// Each target host, as its agent reports the run.
    pub host_status: Vec<LoadHostStatus>,
}

/// A profile and its defaults, for `GET /api/v1/loadsims/profiles`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadProfileInfo {
    pub name: LoadProfile,
    pub description: String,
    pub defaults: LoadParameters,
}

impl LoadProfileInfo {
    pub fn all() -> Vec<LoadProfileInfo> {
        LoadProfile::ALL
            .into_iter()
            .map(|p| LoadProfileInfo {
                name: p,
                description: p.description().to_string(),
                defaults: p.defaults(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{DocumentFormat, parse_document};

    #[test]
    fn every_profile_default_is_within_bounds() {
        for profile in LoadProfile::ALL {
            profile.defaults().check().unwrap();
            assert_eq!(LoadProfile::parse(profile.as_str()), Some(profile));
        }
        assert_eq!(
            LoadProfile::names(),
            "realistic, high-cardinality, process-churn, spike"
        );
    }

    #[test]
    fn overrides_apply_and_bounds_name_the_field() {
        let overrides = LoadOverrides {
            processes: Some(50),
            duration: Some(HumanDuration::from_secs(30)),
            ..LoadOverrides::default()
        };
        let p = overrides.resolve(LoadProfile::HighCardinality).unwrap();
        assert_eq!(p.processes, 50);
        assert_eq!(p.spawn_rate, 200);
        assert_eq!(p.duration, HumanDuration::from_secs(30));

        let field = |o: LoadOverrides| o.resolve(LoadProfile::Spike).unwrap_err().field;
        let o = LoadOverrides::default;
        assert_eq!(
            field(LoadOverrides {
                processes: Some(0),
                ..o()
            }),
            "processes"
        );
        assert_eq!(
            field(LoadOverrides {
                processes: Some(MAX_PROCESSES + 1),
                ..o()
            }),
            "processes"
        );
        assert_eq!(
            field(LoadOverrides {
                spawn_rate: Some(0),
                ..o()
            }),
            "spawnRate"
        );
        assert_eq!(
            field(LoadOverrides {
                duration: Some(HumanDuration::from_secs(8 * 86_400)),
                ..o()
            }),
            "duration"
        );
        assert_eq!(
            field(LoadOverrides {
                worker_lifetime: Some(HumanDuration(Duration::from_millis(10))),
                ..o()
            }),
            "workerLifetime"
        );
        assert_eq!(
            field(LoadOverrides {
                cpu_millicores: Some(1001),
                ..o()
            }),
            "cpuMillicores"
        );
        assert_eq!(
            field(LoadOverrides {
                busy_percent: Some(101),
                ..o()
            }),
            "busyPercent"
        );
        assert_eq!(
            field(LoadOverrides {
                processes: Some(10_000),
                memory_mib: Some(1024),
                ..o()
            }),
            "memoryMib"
        );
    }

    #[test]
    fn busy_workers_are_the_configured_share() {
        let p = LoadProfile::Realistic.defaults();
        let busy = (0..1000).filter(|&seq| p.is_busy(seq)).count();
        assert_eq!(busy, 100);
        let idle = LoadProfile::HighCardinality.defaults();
        assert!((0..1000).all(|seq| !idle.is_busy(seq)));
    }

    #[test]
    fn the_spec_hash_covers_every_field() {
        let at = DateTime::parse_from_rfc3339("2025-06-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let spec = LoadRunSpec::new(
            LoadRunSpec::run_id_for_run("demo"),
            "demo".into(),
            LoadProfile::ProcessChurn,
            LoadProfile::ProcessChurn.defaults(),
            at,
        );
        assert_eq!(spec.spec_hash.len(), 16);
        assert_eq!(spec.unit_id(), "load.run.demo");
        assert_eq!(spec.hash(), spec.spec_hash);
        let mut other = spec.clone();
        other.parameters.processes += 1;
        assert_ne!(other.hash(), spec.spec_hash);
        let mut later = spec.clone();
        later.expires_at = at + chrono::Duration::seconds(1);
        assert_ne!(later.hash(), spec.spec_hash);
        check_run_id(&spec.run_id).unwrap();
        check_run_id("experiment.topk-web").unwrap();
        assert!(check_run_id("demo").is_err());
        assert!(check_run_id("run.../etc").is_err());
    }

    #[test]
    fn an_experiment_load_section_names_its_field() {
        use crate::resource::LoadSpec;
        let load = |profile: &str, processes: Option<u32>| LoadSpec {
            profile: profile.into(),
            processes,
        };
        let (profile, p) = load("high-cardinality", Some(500)).parameters().unwrap();
        assert_eq!(profile, LoadProfile::HighCardinality);
        assert_eq!(p.processes, 500);
        let err = load("huge", None).parameters().unwrap_err();
        assert_eq!(err.field, "spec.load.profile");
        assert!(err.message.contains("high-cardinality"), "{err}");
        let err = load("spike", Some(0)).parameters().unwrap_err();
        assert_eq!(err.field, "spec.load.processes");
    }

    #[test]
    fn requests_parse_and_validate_naming_the_field() {
        let parse = |yaml: &str| -> Result<LoadParameters, FieldError> {
            let request: LoadSimRequest = parse_document(yaml.as_bytes(), DocumentFormat::Yaml)?;
            request.validate()
        };
        let p = parse("name: hc\nhosts: {names: [web-1]}\nprofile: high-cardinality\nprocesses: 500\nduration: 5m\n").unwrap();
        assert_eq!(p.processes, 500);
        assert_eq!(p.duration.to_string(), "5m");

        let err = parse("name: hc\nhosts: {names: [web-1]}\nprofile: huge\n").unwrap_err();
        assert_eq!(err.field, "profile", "{err}");
        let err = parse("name: hc\nhosts: {}\nprofile: spike\n").unwrap_err();
        assert_eq!(err.field, "hosts", "{err}");
        let err = parse("name: Hc\nhosts: {names: [a]}\nprofile: spike\n").unwrap_err();
        assert_eq!(err.field, "name", "{err}");
        let err = parse("name: profiles\nhosts: {names: [a]}\nprofile: spike\n").unwrap_err();
        assert_eq!(err.field, "name", "{err}");
        let err =
            parse("name: hc\nhosts: {names: [a]}\nprofile: spike\nprocesses: 0\n").unwrap_err();
        assert_eq!(err.field, "processes", "{err}");
        let err =
            parse("name: hc\nhosts: {names: [a]}\nprofile: spike\ncolour: red\n").unwrap_err();
        assert_eq!(err.field, "colour", "{err}");
    }
}
