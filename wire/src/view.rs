//! What the user API returns: experiments with their phase, events, hosts, agent
//! tasks (and the query that selects them).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::agent::{CollectorStatus, TaskAction, TaskKind};
use crate::load;
use crate::names::{self, Labels};
use crate::problem::FieldError;
use crate::resource::ExperimentSpec;

/// Where an experiment is in its lifecycle.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Pending,
    Deploying,
    Running,
    Analyzing,
    Completed,
    Failed,
    Stopped,
    Promoted,
    RolledBack,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Pending,
        Phase::Deploying,
        Phase::Running,
        Phase::Analyzing,
        Phase::Completed,
        Phase::Failed,
        Phase::Stopped,
        Phase::Promoted,
        Phase::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Deploying => "deploying",
            Phase::Running => "running",
            Phase::Analyzing => "analyzing",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::Stopped => "stopped",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled-back",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// Phases in which the experiment's collectors should be running on its hosts.
    /// Phases the reconciler still moves on (the rest are terminal).
    pub const ACTIVE: [Phase; 4] = [
        Phase::Pending,
        Phase::Deploying,
        Phase::Running,
        Phase::Analyzing,
    ];

    pub fn wants_collectors(self) -> bool {
        matches!(self, Phase::Deploying | Phase::Running | Phase::Analyzing)
    }

    /// Phases an experiment never leaves on its own.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Completed | Phase::Failed | Phase::Stopped | Phase::Promoted | Phase::RolledBack
        )
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An experiment as stored: the document the user wrote plus what Phoenix made of it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Experiment {
    pub name: String,
    pub uid: String,
    #[serde(default)]
    pub labels: Labels,
    pub spec: ExperimentSpec,
    /// Bumped on every change of `spec`.
    pub generation: i64,
    /// The generation the reconciler last acted on.
    pub observed_generation: i64,
    pub phase: Phase,
    /// Why the experiment is in its phase (the reason of the last transition).
    #[serde(default)]
    pub reason: Option<String>,
    /// Hosts resolved from the selector when deploying started.
    #[serde(default)]
    pub target_hosts: Vec<String>,
    #[serde(default)]
    pub managed_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub phase_changed_at: DateTime<Utc>,
}

/// One recorded phase transition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentEvent {
    pub id: i64,
    pub experiment: String,
    pub from_phase: Option<Phase>,
    pub to_phase: Phase,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// Whether a host's agent is heard from.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Ready,
    Lost,
}

/// A host as its agent last reported it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    pub host_id: String,
    pub labels: Labels,
    pub agent_version: String,
    pub state: HostState,
    pub last_seen: DateTime<Utc>,
    pub collectors: Vec<CollectorStatus>,
}

/// Where an agent task is: `pending` → `leased` (delivered, until its lease ends) →
/// `succeeded` | `failed`; or `cancelled` when it was no longer wanted before an
/// agent claimed it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Leased,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Leased,
        TaskStatus::Succeeded,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Leased => "leased",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an agent task works for, read from its kind and unit id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TaskOwner {
    /// `<experiment>.baseline`, `<experiment>.candidate`, `load.experiment.<experiment>`.
    Experiment(String),
    /// `<deployment>.standing`.
    Deployment(String),
    /// `load.run.<name>`: a load simulation started on its own.
    Loadsim(String),
}

impl TaskOwner {
    /// The owner of a task of `kind` (`collector` or `load`) on `unit`; `None` for a
    /// unit id Phoenix does not make.
    pub fn of(kind: TaskKind, unit: &str) -> Option<TaskOwner> {
        match kind {
            TaskKind::Load => {
                let run_id = unit.strip_prefix(load::UNIT_PREFIX)?;
                if let Some(name) = run_id.strip_prefix("experiment.") {
                    Some(TaskOwner::Experiment(name.to_string()))
                } else {
                    run_id
                        .strip_prefix("run.")
                        .map(|name| TaskOwner::Loadsim(name.to_string()))
                }
            }
            TaskKind::Collector => {
                let (name, variant) = unit.split_once('.')?;
                match variant {
                    "baseline" | "candidate" => Some(TaskOwner::Experiment(name.to_string())),
                    "standing" => Some(TaskOwner::Deployment(name.to_string())),
                    _ => None,
                }
            }
        }
    }
}

/// An agent task as `GET /api/v1/tasks` lists it. Kind, action and status are plain
/// strings (like the event stream's task events), so a client keeps reading when a
/// newer server adds one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTask {
    pub id: i64,
    pub host: String,
    pub kind: TaskKind,
    pub action: TaskAction,
    /// The collector id (`topk-web.candidate`) or load unit id (`load.run.demo`).
    pub unit: String,
    /// The experiment the task works for, if it works for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// The pipeline deployment whose standing collector it starts or stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// The load simulation (`phoenix loadsim`) it runs or stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loadsim: Option<String>,
    pub status: TaskStatus,
    /// Deliveries so far.
    pub attempts: i32,
    /// The config (or load spec) hash a start or update carries; empty for a stop.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config_hash: String,
    /// Until when the agent that claimed it holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<DateTime<Utc>>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The last change: claimed, answered, cancelled.
    pub updated_at: DateTime<Utc>,
}

impl AgentTask {
    /// Fills `experiment`, `deployment` and `loadsim` from the kind and unit id.
    pub fn set_owner(&mut self) {
        (self.experiment, self.deployment, self.loadsim) =
            match TaskOwner::of(self.kind, &self.unit) {
                Some(TaskOwner::Experiment(name)) => (Some(name), None, None),
                Some(TaskOwner::Deployment(name)) => (None, Some(name), None),
                Some(TaskOwner::Loadsim(name)) => (None, None, Some(name)),
                None => (None, None, None),
            };
    }
}

/// How many tasks `GET /api/v1/tasks` answers without `limit`.
pub const TASK_LIST_DEFAULT_LIMIT: u32 = 100;
/// The most it answers.
pub const TASK_LIST_MAX_LIMIT: u32 = 1_000;

/// The query of `GET /api/v1/tasks?host=H&status=S&limit=N`, as sent; [`check`]
/// turns it into a [`TaskFilter`].
///
/// [`check`]: TaskQuery::check
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// Which tasks to list: newest first, at most `limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFilter {
    pub host: Option<String>,
    pub status: Option<TaskStatus>,
    pub limit: u32,
}

impl TaskQuery {
    /// Checks each parameter, naming it when it is wrong.
    pub fn check(&self) -> Result<TaskFilter, FieldError> {
        if let Some(host) = &self.host {
            names::check_host_id(host).map_err(|m| FieldError::new("host", m))?;
        }
        let status = match &self.status {
            None => None,
            Some(text) => Some(TaskStatus::parse(text).ok_or_else(|| {
                let allowed: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
                FieldError::new(
                    "status",
                    format!(
                        "unknown task status `{text}`; use one of {}",
                        allowed.join(", ")
                    ),
                )
            })?),
        };
        let limit = match &self.limit {
            None => TASK_LIST_DEFAULT_LIMIT,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=TASK_LIST_MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    FieldError::new(
                        "limit",
                        format!("`{text}` is not a number from 1 to {TASK_LIST_MAX_LIMIT}"),
                    )
                })?,
        };
        Ok(TaskFilter {
            host: self.host.clone(),
            status,
            limit,
        })
    }
}

/// A list response: `{"items": [...]}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(rename = "{T}List")]
pub struct List<T> {
    pub items: Vec<T>,
}

/// A pipeline template as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineTemplate {
    pub name: String,
    pub description: String,
    /// Shipped with Phoenix (from `pipelines/`), as opposed to applied by a user.
    pub builtin: bool,
    pub variables: Vec<crate::resource::TemplateVariable>,
    pub config: String,
    pub updated_at: DateTime<Utc>,
}

/// A template that passed the collector's own `validate`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineValidation {
    pub name: String,
    pub valid: bool,
    pub variables: Vec<crate::resource::TemplateVariable>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_owners_come_from_kind_and_unit() {
        let of = TaskOwner::of;
        assert_eq!(
            of(TaskKind::Collector, "topk-web.candidate"),
            Some(TaskOwner::Experiment("topk-web".into()))
        );
        assert_eq!(
            of(TaskKind::Collector, "topk-web.baseline"),
            Some(TaskOwner::Experiment("topk-web".into()))
        );
        assert_eq!(
            of(TaskKind::Collector, "web-standing.standing"),
            Some(TaskOwner::Deployment("web-standing".into()))
        );
        assert_eq!(
            of(TaskKind::Load, "load.run.hc"),
            Some(TaskOwner::Loadsim("hc".into()))
        );
        assert_eq!(
            of(TaskKind::Load, "load.experiment.topk-web"),
            Some(TaskOwner::Experiment("topk-web".into()))
        );
        assert_eq!(of(TaskKind::Collector, "load.run.hc"), None);
        assert_eq!(of(TaskKind::Load, "topk-web.candidate"), None);
        assert_eq!(of(TaskKind::Collector, "no-variant"), None);
    }

    #[test]
    fn agent_tasks_name_their_owner() {
        let mut task: AgentTask = serde_json::from_value(serde_json::json!({
            "id": 7, "host": "web-1", "kind": "collector", "action": "start",
            "unit": "topk-web.candidate", "status": "pending", "attempts": 0,
            "configHash": "00112233aabbccdd",
            "createdAt": "2025-06-01T12:00:00Z", "updatedAt": "2025-06-01T12:00:00Z"
        }))
        .unwrap();
        task.set_owner();
        assert_eq!(task.experiment.as_deref(), Some("topk-web"));
        assert_eq!(task.deployment, None);
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(json["experiment"], "topk-web");
        assert!(json.get("loadsim").is_none(), "{json}");
        assert!(json.get("error").is_none(), "{json}");
    }

    #[test]
    fn task_queries_are_checked_per_parameter() {
        let query = |host: Option<&str>, status: Option<&str>, limit: Option<&str>| TaskQuery {
            host: host.map(String::from),
            status: status.map(String::from),
            limit: limit.map(String::from),
        };
        assert_eq!(
            query(None, None, None).check().unwrap(),
            TaskFilter {
                host: None,
                status: None,
                limit: TASK_LIST_DEFAULT_LIMIT
            }
        );
        assert_eq!(
            query(Some("web-1"), Some("failed"), Some("1000"))
                .check()
                .unwrap(),
            TaskFilter {
                host: Some("web-1".into()),
                status: Some(TaskStatus::Failed),
                limit: 1000
            }
        );
        let err = query(None, Some("bogus"), None).check().unwrap_err();
        assert_eq!(err.field, "status");
        assert!(
            err.message
                .contains("pending, leased, succeeded, failed, cancelled"),
            "{err}"
        );
        for limit in ["0", "1001", "ten", "-1"] {
            let err = query(None, None, Some(limit)).check().unwrap_err();
            assert_eq!(err.field, "limit", "{limit}");
        }
        let err = query(Some("web 1"), None, None).check().unwrap_err();
        assert_eq!(err.field, "host");
    }

    #[test]
    fn task_statuses_round_trip() {
        for status in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
    }
}

/// What `GET /api/v1/whoami` answers: what the caller's token allows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Whoami {
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// May create, stop, promote and roll back experiments, deploy pipelines, run load.
    pub can_operate: bool,
    /// A host silent longer than this shows as lost.
    pub host_grace_seconds: u64,
    /// Authentication is off (`--dev-no-auth`): everyone is admin.
    pub auth_disabled: bool,
}
