//! `<state-dir>/state.json`: every collector the agent supervises, so that an agent
//! that restarts (even after SIGKILL) adopts the processes it left running.
//!
//! The file is replaced atomically (write a temporary file, fsync, rename), so a crash
//! leaves either the old or the new version, never half of one.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use phoenix_wire::agent::{CollectorSpec, RolledBack};
use serde::{Deserialize, Serialize};

use crate::ports::CollectorPorts;
use crate::supervisor::last_good::Trial;

/// The name of the state file inside the state directory.
pub const STATE_FILE_NAME: &str = "state.json";

/// The whole state file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub collectors: Vec<RecordedCollector>,
}

/// One supervised collector as recorded on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedCollector {
    pub spec: CollectorSpec,
    pub ports: CollectorPorts,
    /// The running process, if there is one.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The process's start time (field 22 of `/proc/<pid>/stat`), which tells it
    /// apart from a later process that reused the pid.
    #[serde(default)]
    pub pid_start_time: Option<u64>,
    #[serde(default)]
    pub restarts: u32,
    /// An updated config on trial, with the last known good it goes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
    /// The update this collector went back from, reported until the next update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<RolledBack>,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read or write the agent state file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "the agent state file {path} is not valid JSON ({source}); move it aside to start without it"
    )]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The state file's path in `state_dir`.
pub fn state_file_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE_NAME)
}

/// Reads the state file; a missing file is an empty state (first start).
pub fn load(path: &Path) -> Result<AgentState, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(AgentState::default()),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes).map_err(|source| StateError::Malformed {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the state file atomically.
pub fn save(path: &Path, state: &AgentState) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(state).expect("the agent state always serializes");
    write_atomically(path, &json).map_err(|source| StateError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces `path` with `contents` so that readers see the old or the new file whole.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(".tmp");
    let temp_path = PathBuf::from(temp_name);
    let mut file = std::fs::File::create(&temp_path)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp_path, path)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use phoenix_wire::agent::Variant;

    use super::*;

    #[test]
    fn round_trips_and_treats_a_missing_file_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_file_path(dir.path());
        assert_eq!(load(&path).unwrap(), AgentState::default());

        let spec = CollectorSpec::new(
            "exp.baseline".into(),
            "exp".into(),
            Variant::Baseline,
            "process-baseline".into(),
            "receivers: {}",
            BTreeMap::new(),
        );
        let state = AgentState {
            collectors: vec![RecordedCollector {
                spec: spec.clone(),
                ports: CollectorPorts {
                    health: 4000,
                    telemetry: 4001,
                },
                pid: Some(42),
                pid_start_time: Some(1234),
                restarts: 2,
                trial: Some(Trial {
                    previous: spec.clone(),
                    since_unix: 1_700_000_000,
                    exits: 1,
                }),
                rolled_back_from: Some(RolledBack {
                    config_hash: "abc".into(),
                    pipeline: "process-topk".into(),
                    error: "exited with status 2".into(),
                }),
            }],
        };
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), state);

        std::fs::write(&path, b"{not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
    }
}
