//! The event stream: what `GET /api/v1/events` (a WebSocket) sends, one JSON
//! [`Event`] per text message, and the [`EventFilter`] its query selects with.
//!
//! An [`Event`] is exactly the JSON that the database triggers of migration 0003
//! announce on `NOTIFY phoenix_events`, so an API replica forwards it without
//! re-querying and every replica sees every event. Events are small and point at
//! their object; the API has the details (`phoenix experiment get`, `host get`).
//!
//! A stream that can no longer promise every event closes with
//! [`CLOSE_RESUBSCRIBE`] (the subscriber fell behind, or the replica's database
//! listener reconnected and may have missed some); one whose server shuts down
//! closes with [`CLOSE_GOING_AWAY`]. Either way the client re-reads the state and
//! subscribes again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::{check_host_id, check_resource_name};
use crate::problem::FieldError;
use crate::rollout::RolloutEvent;
use crate::view::ExperimentEvent;

/// WebSocket close code: events were (or may have been) dropped for this
/// subscriber; re-read the state and subscribe again. (1013, "try again later".)
pub const CLOSE_RESUBSCRIBE: u16 = 1013;
/// WebSocket close code: the API replica is shutting down. (1001, "going away".)
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// The WebSocket subprotocol of the event stream. A browser offers it with its
/// token as a second subprotocol, [`WS_BEARER_PREFIX`]`<base64url(token)>` (it
/// cannot set an Authorization header on a WebSocket); the api selects this one.
pub const WS_PROTOCOL: &str = "phoenix.events.v1";
/// Prefix of the subprotocol that carries a bearer token, base64url without padding.
pub const WS_BEARER_PREFIX: &str = "phoenix.bearer.";
/// The server pings an idle stream this often, so a client that hears nothing for
/// a few of these knows the connection is dead.
pub const KEEPALIVE: Duration = Duration::from_secs(20);

/// One thing that happened, tagged by `kind`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    /// An experiment changed phase (the row `phoenix experiment events` lists; its
    /// reason cut to 500 characters). Creation is `toPhase: pending` with no
    /// `fromPhase`; a deletion is recorded from and to the phase it had.
    Experiment(ExperimentEvent),
    /// A host registered or its agent sent a full status report.
    Host(HostEvent),
    /// An agent task was created or ended.
    Task(TaskEvent),
    /// A step of a pipeline deployment's roll-out (a batch started or done, a host
    /// healthy or failed, the roll-out done or rolled back); its experiment is the
    /// one whose promotion made the revision.
    Rollout(RolloutEvent),
}

/// What happened to a host.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostChange {
    /// Its agent's first status report.
    Registered,
    /// A later full status report (sent when its collectors change, and every few
    /// minutes). Heartbeats are not events.
    Status,
}

/// A host registered or reported its full status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostEvent {
    pub host: String,
    pub change: HostChange,
    pub agent_version: String,
    pub at: DateTime<Utc>,
}

/// An agent task was created (`status: pending`) or ended (`succeeded`, `failed`,
/// `cancelled`). Kind, action and status are plain strings so that a client keeps
/// reading when a newer server adds one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskEvent {
    pub id: i64,
    pub host: String,
    /// The collector id (`topk-web.candidate`) or load unit id (`load.run.demo`).
    pub unit: String,
    /// The experiment the task works for, when it works for one.
    #[serde(default)]
    pub experiment: Option<String>,
    /// `collector` or `load`.
    pub task_kind: String,
    /// `start`, `update` or `stop`.
    pub action: String,
    pub status: String,
    /// Deliveries so far.
    pub attempts: i32,
    /// Why it failed (cut to 500 characters).
    #[serde(default)]
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

impl Event {
    /// The experiment the event is about, if any.
    pub fn experiment(&self) -> Option<&str> {
        match self {
            Event::Experiment(e) => Some(&e.experiment),
            Event::Host(_) => None,
            Event::Task(t) => t.experiment.as_deref(),
            Event::Rollout(r) => r.experiment.as_deref(),
        }
    }

    /// The pipeline deployment the event is about, if any.
    pub fn deployment(&self) -> Option<&str> {
        match self {
            Event::Rollout(r) => Some(&r.deployment),
            _ => None,
        }
    }

    /// The host the event is about, if any.
    pub fn host(&self) -> Option<&str> {
        match self {
            Event::Experiment(_) => None,
            Event::Host(h) => Some(&h.host),
            Event::Task(t) => Some(&t.host),
            Event::Rollout(r) => r.host.as_deref(),
        }
    }

    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Event::Experiment(e) => e.at,
            Event::Host(h) => h.at,
            Event::Task(t) => t.at,
            Event::Rollout(r) => r.at,
        }
    }
}

/// Which events a subscriber wants: `?experiment=NAME&host=ID`. Each given
/// condition must hold, so `experiment` alone selects the experiment's transitions
/// and its tasks, `host` alone the host's own events and its tasks, and both that
/// experiment's tasks on that host. Nothing given: every event.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct EventFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `deployment=NAME`: that deployment's roll-out steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

impl EventFilter {
    /// Checks that the names could exist, naming the query parameter otherwise.
    pub fn check(&self) -> Result<(), FieldError> {
        if let Some(name) = &self.experiment {
            check_resource_name(name).map_err(|m| FieldError::new("experiment", m))?;
        }
        if let Some(host) = &self.host {
            check_host_id(host).map_err(|m| FieldError::new("host", m))?;
        }
        if let Some(name) = &self.deployment {
            check_resource_name(name).map_err(|m| FieldError::new("deployment", m))?;
        }
        Ok(())
    }

    pub fn matches(&self, event: &Event) -> bool {
        let wanted = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        wanted(&self.experiment, event.experiment())
            && wanted(&self.host, event.host())
            && wanted(&self.deployment, event.deployment())
    }

    /// The query string (without `?`); names are checked to need no escaping.
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(name) = &self.experiment {
            parts.push(format!("experiment={name}"));
        }
        if let Some(host) = &self.host {
            parts.push(format!("host={host}"));
        }
        if let Some(name) = &self.deployment {
            parts.push(format!("deployment={name}"));
        }
        parts.join("&")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::Phase;

    // The payloads below are what the triggers of migrations/0003_event_stream.sql
    // produce (the e2e tests check that against a real Postgres).
    const EXPERIMENT: &str = r#"{"kind" : "experiment", "id" : 7, "experiment" : "topk-web", "fromPhase" : null, "toPhase" : "pending", "reason" : "created", "at" : "2025-06-01T12:00:00.123456Z"}"#;
    const HOST: &str = r#"{"kind" : "host", "host" : "web-1", "change" : "registered", "agentVersion" : "0.1.0", "at" : "2025-06-01T12:00:00.000000Z"}"#;
    const TASK: &str = r#"{"kind" : "task", "id" : 42, "host" : "web-1", "unit" : "topk-web.candidate", "experiment" : "topk-web", "taskKind" : "collector", "action" : "start", "status" : "failed", "attempts" : 3, "error" : "exit status 1", "at" : "2025-06-01T12:00:01.000000Z"}"#;

    #[test]
    fn trigger_payloads_parse() {
        let Event::Experiment(e) = serde_json::from_str(EXPERIMENT).unwrap() else {
            panic!("not an experiment event");
        };
        assert_eq!(e.from_phase, None);
        assert_eq!(e.to_phase, Phase::Pending);
        let Event::Host(h) = serde_json::from_str(HOST).unwrap() else {
            panic!("not a host event");
        };
        assert_eq!(h.change, HostChange::Registered);
        let Event::Task(t) = serde_json::from_str(TASK).unwrap() else {
            panic!("not a task event");
        };
        assert_eq!(t.experiment.as_deref(), Some("topk-web"));
        assert_eq!(t.attempts, 3);
    }

    const ROLLOUT: &str = r#"{"kind" : "rollout", "id" : 3, "deployment" : "web", "revision" : 2, "experiment" : "topk-web", "step" : "host-failed", "batch" : 2, "host" : "web-4", "reason" : "host web-4 failed", "at" : "2025-06-01T12:00:02.000000Z"}"#;

    #[test]
    fn rollout_steps_select_by_deployment_experiment_and_host() {
        let event: Event = serde_json::from_str(ROLLOUT).unwrap();
        let filter =
            |experiment: Option<&str>, host: Option<&str>, deployment: Option<&str>| EventFilter {
                experiment: experiment.map(String::from),
                host: host.map(String::from),
                deployment: deployment.map(String::from),
            };
        assert!(filter(None, None, Some("web")).matches(&event));
        assert!(filter(Some("topk-web"), Some("web-4"), None).matches(&event));
        assert!(!filter(None, None, Some("db")).matches(&event));
        let task: Event = serde_json::from_str(TASK).unwrap();
        assert!(!filter(None, None, Some("web")).matches(&task));
    }

    #[test]
    fn events_round_trip() {
        for text in [EXPERIMENT, HOST, TASK, ROLLOUT] {
            let event: Event = serde_json::from_str(text).unwrap();
            let again: Event =
                serde_json::from_str(&serde_json::to_string(&event).unwrap()).unwrap();
            assert_eq!(event, again);
        }
    }

    #[test]
    fn filters_select_by_experiment_and_host() {
        let experiment: Event = serde_json::from_str(EXPERIMENT).unwrap();
        let host: Event = serde_json::from_str(HOST).unwrap();
        let task: Event = serde_json::from_str(TASK).unwrap();
        let filter = |experiment: Option<&str>, host: Option<&str>| EventFilter {
            experiment: experiment.map(String::from),
            host: host.map(String::from),
            deployment: None,
        };
        let selected = |f: &EventFilter| {
            [&experiment, &host, &task]
                .iter()
                .map(|e| f.matches(e))
                .collect::<Vec<_>>()
        };
        assert_eq!(selected(&filter(None, None)), [true, true, true]);
        assert_eq!(
            selected(&filter(Some("topk-web"), None)),
            [true, false, true]
        );
        assert_eq!(selected(&filter(None, Some("web-1"))), [false, true, true]);
        assert_eq!(
            selected(&filter(Some("topk-web"), Some("web-1"))),
            [false, false, true]
        );
        assert_eq!(
            selected(&filter(Some("other"), None)),
            [false, false, false]
        );
    }

    #[test]
    fn filters_check_names_and_make_queries() {
        let filter = EventFilter {
            experiment: Some("topk-web".into()),
            host: Some("web-1.example".into()),
            deployment: None,
        };
        assert!(filter.check().is_ok());
        assert_eq!(filter.to_query(), "experiment=topk-web&host=web-1.example");
        assert_eq!(EventFilter::default().to_query(), "");
        let bad = EventFilter {
            experiment: Some("Topk/../x".into()),
            host: None,
            deployment: None,
        };
        assert_eq!(bad.check().unwrap_err().field, "experiment");
    }
}
