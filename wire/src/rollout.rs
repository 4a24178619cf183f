//! Staged roll-outs: how a pipeline deployment's new revision reaches its hosts.
//!
//! A revision made by a deploy or a promotion does not reach every host at once: a
//! roll-out moves the hosts over in batches of `spec.rollout.maxUnavailable`
//! ([`RolloutPolicy`]), waits for each batch's new collectors to be healthy (and,
//! with a measurement Prometheus, to write series) before the next, and when a
//! host fails, stops and puts the deployment back on the revision it came from.
//! Hosts no batch reached yet keep running that revision.
//!
//! - [`RolloutPolicy`], [`MaxUnavailable`]: the deployment spec's `rollout` section.
//! - [`Rollout`], [`RolloutHost`]: a roll-out's progress, as stored and as the API
//!   shows it.
//! - [`RolloutEvent`], [`RolloutStep`]: each step, in the deployment's event stream.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `spec.rollout` of a pipeline deployment.
///
/// ```yaml
/// rollout:
///   maxUnavailable: 2      # hosts moved at once; or a share of them: "25%"
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutPolicy {
    /// How many hosts run the new revision's collector before it proved healthy
    /// (one batch). Default [`MaxUnavailable::DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<MaxUnavailable>,
}

impl RolloutPolicy {
    pub fn is_default(&self) -> bool {
        self.max_unavailable.is_none()
    }

    /// The batch size for a deployment that selects `hosts` hosts.
    pub fn batch_size(&self, hosts: usize) -> usize {
        self.max_unavailable
            .unwrap_or(MaxUnavailable::DEFAULT)
            .of(hosts)
    }
}

/// A number of hosts, or a percentage of the hosts a deployment selects (rounded
/// down, at least one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxUnavailable {
    Hosts(u32),
    Percent(u32),
}

impl MaxUnavailable {
    /// A quarter of the hosts, like a Kubernetes rolling update.
    pub const DEFAULT: MaxUnavailable = MaxUnavailable::Percent(25);

    /// Hosts per batch out of `hosts`: at least one.
    pub fn of(self, hosts: usize) -> usize {
        let n = match self {
            MaxUnavailable::Hosts(n) => n as usize,
            MaxUnavailable::Percent(p) => hosts * p as usize / 100,
        };
        n.max(1)
    }

    /// `2`, `25%`.
    pub fn parse(text: &str) -> Result<MaxUnavailable, String> {
        let hint = "maxUnavailable is a number of hosts (e.g. 2) or a percentage of the \
                    selected hosts (e.g. \"25%\")";
        let text = text.trim();
        let (digits, percent) = match text.strip_suffix('%') {
            Some(digits) => (digits, true),
            None => (text, false),
        };
        let n: u32 = digits
            .parse()
            .map_err(|_| format!("`{text}` is not a number: {hint}"))?;
        match (percent, n) {
            (_, 0) => Err(format!(
                "maxUnavailable must be at least 1 host (or 1%): with 0 a roll-out could never move a host; {hint}"
            )),
            (true, p) if p > 100 => Err(format!("`{text}` is more than 100%: {hint}")),
            (true, p) => Ok(MaxUnavailable::Percent(p)),
            (false, n) => Ok(MaxUnavailable::Hosts(n)),
        }
    }
}

impl fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxUnavailable::Hosts(n) => write!(f, "{n}"),
            MaxUnavailable::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for MaxUnavailable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxUnavailable::Hosts(n) => s.serialize_u32(*n),
            MaxUnavailable::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for MaxUnavailable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, schemars::JsonSchema)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let text = match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "maxUnavailable is a number of hosts (e.g. 2) or a percentage of the selected hosts (e.g. \"25%\")",
            )
        })? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        MaxUnavailable::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Where a roll-out is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Made with its revision; the reconciler starts the first batch.
    Pending,
    /// A batch is in progress.
    Rolling,
    /// Every selected host runs the revision.
    Done,
    /// A host failed; the deployment is back on the revision it came from.
    RolledBack,
    /// A host failed and there was no revision to go back to (the deployment's
    /// first, which goes to every host at once): the hosts keep running it.
    Failed,
    /// Another revision became current before it finished (a deploy, a promotion
    /// or a user's rollback).
    Superseded,
}

impl RolloutState {
    pub const ALL: [RolloutState; 6] = [
        RolloutState::Pending,
        RolloutState::Rolling,
        RolloutState::Done,
        RolloutState::RolledBack,
        RolloutState::Failed,
        RolloutState::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Pending => "pending",
            RolloutState::Rolling => "rolling",
            RolloutState::Done => "done",
            RolloutState::RolledBack => "rolled-back",
            RolloutState::Failed => "failed",
            RolloutState::Superseded => "superseded",
        }
    }

    pub fn parse(text: &str) -> Option<RolloutState> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Still moving hosts.
    pub fn is_open(self) -> bool {
        matches!(self, RolloutState::Pending | RolloutState::Rolling)
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one host a batch reached is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HostRollout {
    /// Asked to run the new revision; its collector is not healthy yet.
    Updating,
    /// Its new collector is healthy; its series are being checked.
    Healthy,
    /// Healthy, with series: this host is done.
    Done,
    /// Its new collector failed (see the reason).
    Failed,
}

impl HostRollout {
    pub fn as_str(self) -> &'static str {
        match self {
            HostRollout::Updating => "updating",
            HostRollout::Healthy => "healthy",
            HostRollout::Done => "done",
            HostRollout::Failed => "failed",
        }
    }
}

/// One host a batch reached.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutHost {
    /// The batch (from 1) that moved it.
    pub batch: u32,
    pub state: HostRollout,
    /// When it entered `state`.
    pub since: DateTime<Utc>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A roll-out of one revision.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The revision rolled out.
    pub revision: i64,
    /// The revision hosts ran before (and run until a batch reaches them); none for
    /// a deployment's first.
    #[serde(default)]
    pub from_revision: Option<i64>,
    pub state: RolloutState,
    /// The batch in progress, from 1 (0 before the first started).
    pub batch: u32,
    #[serde(default)]
    pub batch_started_at: Option<DateTime<Utc>>,
    /// Every host a batch reached.
    #[serde(default)]
    pub hosts: BTreeMap<String, RolloutHost>,
    /// How it ended, or what it waits for.
    #[serde(default)]
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl Rollout {
    /// Hosts the roll-out moved to the new revision so far (any state).
    pub fn reached(&self, host: &str) -> bool {
        self.hosts.contains_key(host)
    }

    /// Hosts done (healthy, with series).
    pub fn done_hosts(&self) -> usize {
        self.hosts
            .values()
            .filter(|h| h.state == HostRollout::Done)
            .count()
    }
}

/// A step of a roll-out.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutStep {
    BatchStarted,
    HostHealthy,
    BatchDone,
    HostFailed,
    RolledBack,
    Failed,
    Done,
    Superseded,
}

impl RolloutStep {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutStep::BatchStarted => "batch-started",
            RolloutStep::HostHealthy => "host-healthy",
            RolloutStep::BatchDone => "batch-done",
            RolloutStep::HostFailed => "host-failed",
            RolloutStep::RolledBack => "rolled-back",
            RolloutStep::Failed => "failed",
            RolloutStep::Done => "done",
            RolloutStep::Superseded => "superseded",
        }
    }
}

impl fmt::Display for RolloutStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a deployment's roll-out, as `GET /api/v1/deployments/{name}/events`
/// lists it and the event stream announces it (`kind: rollout`). The step is a
/// plain string so a client keeps reading when a newer server adds one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutEvent {
    pub id: i64,
    pub deployment: String,
    pub revision: i64,
    /// The experiment whose promotion made the revision, if one did.
    #[serde(default)]
    pub experiment: Option<String>,
    /// `batch-started`, `host-healthy`, `batch-done`, `host-failed`, `rolled-back`,
    /// `failed`, `done`, `superseded`.
    pub step: String,
    #[serde(default)]
    pub batch: Option<u32>,
    #[serde(default)]
    pub host: Option<String>,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_unavailable_is_a_count_or_a_percentage() {
        assert_eq!(MaxUnavailable::parse("2"), Ok(MaxUnavailable::Hosts(2)));
        assert_eq!(
            MaxUnavailable::parse("25%"),
            Ok(MaxUnavailable::Percent(25))
        );
        for bad in ["0", "0%", "101%", "-1", "two", "2.5"] {
            assert!(MaxUnavailable::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(MaxUnavailable::Hosts(2).of(6), 2);
        assert_eq!(MaxUnavailable::Percent(25).of(6), 1);
        assert_eq!(MaxUnavailable::Percent(50).of(6), 3);
        assert_eq!(MaxUnavailable::Percent(1).of(3), 1, "at least one host");
        assert_eq!(RolloutPolicy::default().batch_size(8), 2);
        let policy: RolloutPolicy =
            serde_json::from_value(serde_json::json!({"maxUnavailable": "50%"})).unwrap();
        assert_eq!(
            serde_json::to_value(&policy).unwrap(),
            serde_json::json!({"maxUnavailable": "50%"})
        );
        let policy: RolloutPolicy =
            serde_json::from_value(serde_json::json!({"maxUnavailable": 2})).unwrap();
        assert_eq!(
            serde_json::to_value(&policy).unwrap(),
            serde_json::json!({"maxUnavailable": 2})
        );
    }
}
