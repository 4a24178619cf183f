//! Checking rendered configs with the real collector (`otelcol-phoenix validate`)
//! before anything is stored or deployed. The collector's own error text is what
//! the user gets back.
//!
//! `validate` starts a process and may take seconds, so it never runs while a
//! request holds a database connection or transaction. A request runs its checks
//! twice around it ([`Validation`]): first with quick reads, gathering the rendered
//! configs; then, with no connection held, the collector checks them; then the
//! checks run again in the short write, and every config rendered there must be one
//! the collector accepted (a template changed meanwhile is a 409 that asks to retry).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use phoenix_wire::agent::CollectorSpec;
use phoenix_wire::problem::FieldError;
use tokio::process::Command;

use crate::error::ApiError;

/// Values for what an agent sets per collector (ports, host filesystem), so a config
/// can be validated away from any host. `validate` does not bind the ports.
const AGENT_PLACEHOLDERS: [(&str, &str); 3] = [
    ("PHOENIX_HEALTH_PORT", "13133"),
    ("PHOENIX_TELEMETRY_PORT", "8888"),
    ("PHOENIX_HOSTFS", ""),
];

/// How long one `validate` may take.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a config could not be checked or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The collector rejected the config; its message, verbatim.
    #[error("{0}")]
    Rejected(String),
    /// The check itself could not run.
    #[error("could not run the collector's validate: {0}")]
    Unavailable(String),
}

/// Where a request stands with the collector's `validate` (see the module doc).
pub enum Validation {
    /// No collector configured: nothing is validated.
    Off,
    /// First round: rendered configs to validate, each with the field it answers for.
    Collect(Vec<(String, CollectorSpec)>),
    /// Second round: the hashes of the configs the collector accepted.
    Require(HashSet<String>),
}

impl Validation {
    pub fn new(collector: Option<&Path>) -> Validation {
        match collector {
            Some(_) => Validation::Collect(Vec::new()),
            None => Validation::Off,
        }
    }

    /// Whether a first round of checks must gather configs.
    pub fn collecting(&self) -> bool {
        matches!(self, Validation::Collect(_))
    }

    /// Notes that `spec`, rendered for `field`, must pass the collector; in the
    /// second round, refuses one the collector did not see.
    pub fn expect(&mut self, field: &str, spec: &CollectorSpec) -> Result<(), ApiError> {
        match self {
            Validation::Off => Ok(()),
            Validation::Collect(pending) => {
                pending.push((field.to_string(), spec.clone()));
                Ok(())
            }
            Validation::Require(accepted) if accepted.contains(&spec.config_hash) => Ok(()),
            Validation::Require(_) => Err(ApiError::Conflict(format!(
                "{field}: the `{}` pipeline template changed while its rendered config was being \
                 validated; nothing was written, send the request again",
                spec.pipeline
            ))),
        }
    }

    /// Validates every gathered config with `collector` (no connection is held)
    /// and moves to the second round; a rejection names its field.
    pub async fn run(self, collector: Option<&Path>) -> Result<Validation, ApiError> {
        let (Validation::Collect(pending), Some(collector)) = (&self, collector) else {
            return Ok(self);
        };
        let mut accepted = HashSet::new();
        for (field, spec) in pending {
            if accepted.contains(&spec.config_hash) {
                continue;
            }
            validate(collector, &spec.config, &spec.env)
                .await
                .map_err(|err| match err {
                    ValidateError::Rejected(message) => ApiError::Invalid(FieldError::new(
                        field.clone(),
                        format!(
                            "the collector rejects the rendered `{}` config: {message}",
                            spec.pipeline
                        ),
                    )),
                    ValidateError::Unavailable(message) => ApiError::Unavailable(message),
                })?;
            accepted.insert(spec.config_hash.clone());
        }
        Ok(Validation::Require(accepted))
    }
}

/// Runs `<collector> validate --config=<file>` on `config` with `env` (plus the
/// agent placeholders) and nothing else of this process's environment but PATH.
pub async fn validate(
    collector: &Path,
    config: &str,
    env: &BTreeMap<String, String>,
) -> Result<(), ValidateError> {
    let dir = tempfile::Builder::new()
        .prefix("phoenix-validate-")
        .tempdir()
        .map_err(|e| ValidateError::Unavailable(format!("temporary directory: {e}")))?;
    let file = dir.path().join("config.yaml");
    tokio::fs::write(&file, config)
        .await
        .map_err(|e| ValidateError::Unavailable(e.to_string()))?;
    let mut command = Command::new(collector);
    command
        .arg("validate")
        .arg(format!("--config={}", file.display()))
        .env_clear()
        .kill_on_drop(true);
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command.envs(AGENT_PLACEHOLDERS).envs(env);
    let output = tokio::time::timeout(VALIDATE_TIMEOUT, command.output())
        .await
        .map_err(|_| {
            ValidateError::Unavailable(format!("validate took longer than {VALIDATE_TIMEOUT:?}"))
        })?
        .map_err(|e| ValidateError::Unavailable(format!("{}: {e}", collector.display())))?;
    if output.status.success() {
        return Ok(());
    }
    Err(ValidateError::Rejected(collector_message(
        &String::from_utf8_lossy(&output.stderr),
    )))
}

/// The collector's error, without the informational log lines it prints first.
fn collector_message(stderr: &str) -> String {
    match stderr.find("Error:") {
        Some(start) => stderr[start..].trim_end().to_string(),
        None => stderr.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_collectors_error_and_drops_info_lines() {
        let stderr = "2026-11-27T10:03:19Z\tinfo\tenvprovider@v1.66.0/provider.go:71\tConfiguration references empty environment variable\n\
                      Error: invalid configuration: processors::transform/select: statement has invalid syntax\n";
        assert_eq!(
            collector_message(stderr),
            "Error: invalid configuration: processors::transform/select: statement has invalid syntax"
        );
        assert_eq!(collector_message("  boom \n"), "boom");
    }
}
