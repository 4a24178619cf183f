//! What the user API returns: experiments with their phase, events, hosts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::agent::CollectorStatus;
use crate::names::Labels;
use crate::resource::ExperimentSpec;

/// Where an experiment is in its lifecycle.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Ready,
    Lost,
}

/// A host as its agent last reported it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    pub host_id: String,
    pub labels: Labels,
    pub agent_version: String,
    pub state: HostState,
    pub last_seen: DateTime<Utc>,
    pub collectors: Vec<CollectorStatus>,
}

/// A list response: `{"items": [...]}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct List<T> {
    pub items: Vec<T>,
}

/// A pipeline template as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineValidation {
    pub name: String,
    pub valid: bool,
    pub variables: Vec<crate::resource::TemplateVariable>,
}
