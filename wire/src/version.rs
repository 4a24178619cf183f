//! `GET /version`: what an api build is (`phoenix version` shows it beside the
//! client's own), and the limits a client should know before it sends.

use serde::{Deserialize, Serialize};

/// A build of a Phoenix program.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    /// The crate version, e.g. `0.1.0`.
    pub version: String,
    /// The git commit it was built from, when the build was given one
    /// (`PHOENIX_GIT_COMMIT` at build time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl BuildInfo {
    /// The build of the program that calls this (both values are fixed when the
    /// calling crate is compiled, through the macro's `env!`).
    pub fn new(version: &str, commit: Option<&str>) -> Self {
        BuildInfo {
            version: version.to_string(),
            commit: commit.filter(|c| !c.is_empty()).map(str::to_string),
        }
    }
}

impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.commit {
            Some(commit) => write!(f, "{} (commit {commit})", self.version),
            None => write!(f, "{} (commit unknown)", self.version),
        }
    }
}

/// The answer of `GET /version`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerVersion {
    #[serde(flatten)]
    pub build: BuildInfo,
    /// The largest request body this api accepts, in bytes (`--max-body-bytes`).
    pub max_body_bytes: usize,
}
