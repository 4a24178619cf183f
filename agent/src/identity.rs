//! The agent's host credential: where it comes from, and enrolling (again).
//!
//! In order:
//! 1. a credential given to the agent (`--token-file`, `PHOENIX_AGENT_TOKEN`): used
//!    as is, never renewed;
//! 2. the credential this agent enrolled for before, kept in
//!    `<state-dir>/host-credential` (mode 0600);
//! 3. a bootstrap token (`--bootstrap-token-file`, `PHOENIX_BOOTSTRAP_TOKEN`): the
//!    agent enrolls with `POST /agent/v1/enroll` and keeps what it receives.
//!
//! When the api refuses an enrolled credential (401: an admin revoked it), the agent
//! discards it and enrolls again with its bootstrap token, if it has one. This is
//! how a credential is rotated; with the bootstrap token revoked too, the host stays
//! shut out and says so in its log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use phoenix_wire::credentials::{EnrollRequest, Enrollment, TokenKind, parse_token};

use crate::client::{ApiError, RetryPolicy, error_chain, problem_from, retry};

/// The file in the state directory that keeps an enrolled credential.
pub const CREDENTIAL_FILE: &str = "host-credential";

const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the agent was configured with (see [`crate::config::AgentConfig`]).
pub struct IdentitySettings {
    /// A host credential given directly.
    pub given: Option<String>,
    /// A bootstrap token to enroll with.
    pub bootstrap: Option<String>,
    pub state_dir: PathBuf,
    pub host_id: String,
}

/// Why the agent has no credential.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "no credential: give the agent a bootstrap token to enroll with \
         (--bootstrap-token-file or PHOENIX_BOOTSTRAP_TOKEN; `phoenix bootstrap-token create` makes one), \
         or a host credential (--token-file or PHOENIX_AGENT_TOKEN)"
    )]
    Missing,
    #[error("the bootstrap token is malformed: {0}")]
    MalformedBootstrap(String),
    #[error("cannot enroll host {host_id}: {source}")]
    Enroll {
        host_id: String,
        source: Box<ApiError>,
    },
    #[error("cannot keep the host credential in {}: {source}", path.display())]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Renewal {
    bootstrap: String,
    path: PathBuf,
    enroll_url: String,
    host_id: String,
    http: reqwest::Client,
}

/// The credential every request carries, renewable when it came from enrollment.
#[derive(Clone)]
pub struct Identity {
    current: Arc<RwLock<String>>,
    renewal: Option<Arc<Renewal>>,
    renewing: Arc<tokio::sync::Mutex<()>>,
}

impl Identity {
    /// The credential to start with (see the module doc), enrolling if needed;
    /// transient failures of the enrollment are retried.
    pub async fn establish(
        settings: IdentitySettings,
        http: reqwest::Client,
        api_url: &reqwest::Url,
    ) -> Result<Identity, IdentityError> {
        if let Some(given) = settings.given {
            return Ok(Identity {
                current: Arc::new(RwLock::new(given)),
                renewal: None,
                renewing: Arc::default(),
            });
        }
        let path = settings.state_dir.join(CREDENTIAL_FILE);
        let renewal = match settings.bootstrap {
            Some(bootstrap) => {
                match parse_token(&bootstrap) {
                    Ok(parsed) if parsed.kind == TokenKind::Bootstrap => {}
                    Ok(_) => {
                        return Err(IdentityError::MalformedBootstrap(
                            "it is a host credential; give it with --token-file instead".into(),
                        ));
                    }
                    Err(message) => return Err(IdentityError::MalformedBootstrap(message)),
                }
                Some(Arc::new(Renewal {
                    bootstrap,
                    path: path.clone(),
                    enroll_url: format!(
                        "{}/agent/v1/enroll",
                        api_url.as_str().trim_end_matches('/')
                    ),
                    host_id: settings.host_id.clone(),
                    http,
                }))
            }
            None => None,
        };
        let stored = std::fs::read_to_string(&path)
            .ok()
            .map(|text| text.trim().to_string())
            .filter(|text| !text.is_empty());
        let current = match (stored, &renewal) {
            (Some(stored), _) => {
                tracing::info!(file = %path.display(), "using the host credential from an earlier enrollment");
                stored
            }
            (None, Some(renewal)) => renewal.enroll().await?,
            (None, None) => return Err(IdentityError::Missing),
        };
        Ok(Identity {
            current: Arc::new(RwLock::new(current)),
            renewal,
            renewing: Arc::default(),
        })
    }

    /// The credential to send now.
    pub fn current(&self) -> String {
        self.current.read().expect("credential lock").clone()
    }

    /// After the api refused `refused` (401): enrolls again, unless another request
    /// did already. True when there is a new credential to try.
    pub async fn renew(&self, refused: &str) -> bool {
        let Some(renewal) = &self.renewal else {
            return false;
        };
        let _one_at_a_time = self.renewing.lock().await;
        if self.current() != refused {
            return true;
        }
        tracing::warn!(
            host_id = %renewal.host_id,
            "the api refused this host's credential (revoked?); enrolling again with the bootstrap token"
        );
        let _ = std::fs::remove_file(&renewal.path);
        match renewal.enroll_once().await {
            Ok(credential) => {
                *self.current.write().expect("credential lock") = credential;
                true
            }
            Err(err) => {
                tracing::error!("{err}");
                false
            }
        }
    }
}

impl Renewal {
    /// Enrolls, retrying transient failures; keeps the credential on disk.
    async fn enroll(&self) -> Result<String, IdentityError> {
        let enrollment = retry(RetryPolicy::TransientOnly, || self.request())
            .await
            .map_err(|source| IdentityError::Enroll {
                host_id: self.host_id.clone(),
                source: Box::new(source),
            })?;
        self.keep(enrollment)
    }

    /// Enrolls once (a renewal: the caller's loop retries).
    async fn enroll_once(&self) -> Result<String, IdentityError> {
        let enrollment = self
            .request()
            .await
            .map_err(|source| IdentityError::Enroll {
                host_id: self.host_id.clone(),
                source: Box::new(source),
            })?;
        self.keep(enrollment)
    }

    fn keep(&self, enrollment: Enrollment) -> Result<String, IdentityError> {
        write_private(&self.path, &enrollment.credential).map_err(|source| {
            IdentityError::Store {
                path: self.path.clone(),
                source,
            }
        })?;
        tracing::info!(host_id = %enrollment.host_id, credential_id = %enrollment.credential_id, "enrolled");
        Ok(enrollment.credential)
    }

    async fn request(&self) -> Result<Enrollment, ApiError> {
        const ENDPOINT: &str = "enroll";
        let response = self
            .http
            .post(&self.enroll_url)
            .timeout(ENROLL_TIMEOUT)
            .bearer_auth(&self.bootstrap)
            .json(&EnrollRequest {
                host_id: self.host_id.clone(),
            })
            .send()
            .await
            .map_err(|err| ApiError::Transport {
                endpoint: ENDPOINT,
                detail: error_chain(&err),
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(ApiError::Refused {
                endpoint: ENDPOINT,
                problem: problem_from(status, &body),
            });
        }
        response.json().await.map_err(|err| ApiError::Decode {
            endpoint: ENDPOINT,
            detail: error_chain(&err),
        })
    }
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}
