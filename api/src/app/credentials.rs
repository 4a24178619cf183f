//! Agent identity: minting bootstrap tokens and host credentials, enrollment, and
//! the check every agent request passes (see `phoenix_wire::credentials` for the
//! model and the text form).
//!
//! Secrets are 32 random bytes; only their SHA-256 digests are stored. A host
//! credential is looked up by id and its digest compared in constant time. The
//! [`CredentialCache`] keeps recently checked credentials so a long-poll or
//! heartbeat does not cost a query; it is trusted only while the process's listener
//! is connected, because a revocation reaches it as a notification
//! (`phoenix_storage::CREDENTIALS_CHANNEL`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::Utc;
use phoenix_storage::credentials::{self, NewBootstrapToken as StoredNew, Standing};
use phoenix_storage::{PgConnection, PgPool, StoreError};
use phoenix_wire::credentials::{
    BootstrapTokenView, Enrollment, NewBootstrapToken, ParsedToken, TokenKind, parse_token,
};
use phoenix_wire::duration::HumanDuration;
use phoenix_wire::names::check_host_id;
use phoenix_wire::problem::FieldError;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::error::ApiError;

/// How long a checked credential is trusted without asking the database again,
/// while the listener is connected (a revocation evicts it at once).
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most credentials cached; past it the cache starts over.
const CACHE_CAPACITY: usize = 100_000;

/// A new token's text and its stored parts.
pub struct Minted {
    pub text: String,
    pub id: String,
    pub secret_sha256: Vec<u8>,
}

/// A fresh random token of `kind`.
pub fn mint(kind: TokenKind) -> Minted {
    let mut rng = rand::rng();
    let mut id = [0u8; 6];
    rng.fill_bytes(&mut id);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Minted {
        text: format!("{}.{id}.{secret}", kind.prefix()),
        secret_sha256: digest(&secret),
        id,
    }
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn digest_matches(secret: &str, stored: &[u8]) -> bool {
    let presented = digest(secret);
    presented.len() == stored.len()
        && presented
            .iter()
            .zip(stored)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Creates a bootstrap token; the answer carries its text, shown this once.
pub async fn create_bootstrap(
    conn: &mut PgConnection,
    request: &NewBootstrapToken,
) -> Result<BootstrapTokenView, ApiError> {
    if request.description.chars().count() > 200 || request.description.contains('\0') {
        return Err(ApiError::Invalid(FieldError::new(
            "description",
            "a description is at most 200 characters, without NUL",
        )));
    }
    let expires_at = match &request.ttl {
        None => None,
        Some(text) => {
            let ttl = HumanDuration::parse(text)
                .map_err(|m| ApiError::Invalid(FieldError::new("ttl", m)))?
                .as_duration();
            let ttl = chrono::Duration::from_std(ttl)
                .ok()
                .filter(|ttl| *ttl > chrono::Duration::zero())
                .and_then(|ttl| Utc::now().checked_add_signed(ttl))
                .ok_or_else(|| {
                    ApiError::Invalid(FieldError::new("ttl", "a ttl is a positive duration"))
                })?;
            Some(ttl)
        }
    };
    let minted = mint(TokenKind::Bootstrap);
    let mut view = credentials::insert_bootstrap(
        conn,
        StoredNew {
            id: &minted.id,
            secret_sha256: &minted.secret_sha256,
            description: &request.description,
            expires_at,
        },
    )
    .await?;
    view.token = Some(minted.text);
    Ok(view)
}

/// Stores the bootstrap token the api was configured with (`PHOENIX_BOOTSTRAP_TOKEN`
/// or `--bootstrap-token-file`), unless it is stored already; revoking it with the
/// CLI sticks across restarts.
pub async fn seed_configured_bootstrap(pool: &PgPool, text: &str) -> anyhow::Result<()> {
    let parsed = parse_token(text.trim())
        .ok()
        .filter(|t| t.kind == TokenKind::Bootstrap)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the configured bootstrap token is not `phoenix-bootstrap.<12 hex>.<43 base64url>`; \
                 make one with `phoenix-api bootstrap-token` or `phoenix bootstrap-token create`"
            )
        })?;
    let mut conn = phoenix_storage::acquire(pool).await?;
    let same = credentials::seed_bootstrap(
        &mut conn,
        StoredNew {
            id: parsed.id,
            secret_sha256: &digest(parsed.secret),
            description: "configured on the api (PHOENIX_BOOTSTRAP_TOKEN)",
            expires_at: None,
        },
    )
    .await?;
    if !same {
        anyhow::bail!(
            "the configured bootstrap token's id {} is stored with another secret; configure a new token",
            parsed.id
        );
    }
    Ok(())
}

/// Enrolls `host_id` with a bootstrap token: a new host credential, unless the
/// host holds one already (an admin revokes it first).
pub async fn enroll(
    conn: &mut PgConnection,
    bootstrap: &str,
    host_id: &str,
) -> Result<Enrollment, ApiError> {
    check_host_id(host_id).map_err(|m| ApiError::Invalid(FieldError::new("host_id", m)))?;
    let parsed = parse_presented(bootstrap, TokenKind::Bootstrap)?;
    let stored = credentials::find_bootstrap(conn, parsed.id).await?;
    let stored = match stored {
        Some(stored) if digest_matches(parsed.secret, &stored.secret_sha256) => stored,
        _ => {
            return Err(ApiError::Unauthorized(
                "the bootstrap token is not valid".into(),
            ));
        }
    };
    match stored.standing {
        Standing::Usable => {}
        Standing::Revoked => {
            return Err(ApiError::Unauthorized(format!(
                "bootstrap token {} was revoked; ask an admin for a new one",
                parsed.id
            )));
        }
        Standing::Expired => {
            return Err(ApiError::Unauthorized(format!(
                "bootstrap token {} has expired; ask an admin for a new one",
                parsed.id
            )));
        }
    }
    let minted = mint(TokenKind::Host);
    let inserted = credentials::insert_host_credential(
        conn,
        credentials::NewHostCredential {
            id: &minted.id,
            host_id,
            secret_sha256: &minted.secret_sha256,
            bootstrap_token_id: parsed.id,
        },
    )
    .await;
    match inserted {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::Conflict(format!(
                "host {host_id} is already enrolled; if this agent lost its credential, an admin \
                 revokes the old one (`phoenix agent-credential revoke {host_id}`) and it enrolls again"
            )));
        }
        Err(err) => return Err(err.into()),
    }
    tracing::info!(%host_id, credential_id = %minted.id, bootstrap_token_id = %parsed.id, "agent enrolled");
    Ok(Enrollment {
        host_id: host_id.to_string(),
        credential_id: minted.id,
        credential: minted.text,
    })
}

fn parse_presented(text: &str, kind: TokenKind) -> Result<ParsedToken<'_>, ApiError> {
    match parse_token(text) {
        Ok(parsed) if parsed.kind == kind => Ok(parsed),
        _ => Err(ApiError::Unauthorized(
            match kind {
                TokenKind::Bootstrap => {
                    "enrollment needs a bootstrap token (`phoenix-bootstrap.…`)"
                }
                TokenKind::Host => "the agent API needs a host credential (`phoenix-host.…`)",
            }
            .into(),
        )),
    }
}

#[derive(Clone)]
struct Cached {
    host_id: String,
    secret_sha256: Vec<u8>,
    checked: Instant,
}

/// Recently checked host credentials, by id (see the module doc).
#[derive(Clone)]
pub struct CredentialCache {
    entries: Arc<Mutex<HashMap<String, Cached>>>,
    /// Bumped by every eviction, so a lookup that raced one does not cache.
    generation: Arc<AtomicU64>,
    listener_connected: watch::Receiver<bool>,
}

impl CredentialCache {
    pub fn new(listener_connected: watch::Receiver<bool>) -> Self {
        Self {
            entries: Arc::default(),
            generation: Arc::default(),
            listener_connected,
        }
    }

    /// Forgets a revoked credential.
    pub fn evict(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.lock().expect("cache lock").remove(id);
    }

    /// Forgets everything (the listener reconnected: revocations may have been missed).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.lock().expect("cache lock").clear();
    }

    /// Whether a credential checked when a request began is still valid, for a
    /// request that lasts (a woken long-poll). While the listener is connected a
    /// revocation evicts the credential at once, so one still cached, however old,
    /// was not revoked: no query, which matters when a rollout wakes every agent.
    /// Otherwise as [`Self::host_of`].
    pub async fn still_valid(&self, pool: &PgPool, presented: &str) -> Result<(), ApiError> {
        let parsed = parse_presented(presented, TokenKind::Host)?;
        if *self.listener_connected.borrow() {
            let entries = self.entries.lock().expect("cache lock");
            if let Some(cached) = entries.get(parsed.id)
                && digest_matches(parsed.secret, &cached.secret_sha256)
            {
                return Ok(());
            }
        }
        self.host_of(pool, presented).await.map(drop)
    }

    /// The host a presented host credential belongs to, or 401 saying why not.
    pub async fn host_of(&self, pool: &PgPool, presented: &str) -> Result<String, ApiError> {
        let parsed = parse_presented(presented, TokenKind::Host)?;
        let trusted = *self.listener_connected.borrow();
        if trusted {
            let entries = self.entries.lock().expect("cache lock");
            if let Some(cached) = entries.get(parsed.id)
                && cached.checked.elapsed() < CACHE_TTL
            {
                return if digest_matches(parsed.secret, &cached.secret_sha256) {
                    Ok(cached.host_id.clone())
                } else {
                    Err(not_valid())
                };
            }
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let mut conn = phoenix_storage::acquire(pool).await?;
        let stored = credentials::find_host_credential(&mut conn, parsed.id)
            .await?
            .filter(|stored| digest_matches(parsed.secret, &stored.secret_sha256))
            .ok_or_else(not_valid)?;
        if stored.standing != Standing::Usable {
            return Err(ApiError::Unauthorized(format!(
                "host credential {} was revoked; the agent must enroll again with a bootstrap token",
                parsed.id
            )));
        }
        if trusted {
            let mut entries = self.entries.lock().expect("cache lock");
            if self.generation.load(Ordering::SeqCst) != generation {
                return Ok(stored.host_id);
            }
            if entries.len() >= CACHE_CAPACITY {
                entries.clear();
            }
            entries.insert(
                parsed.id.to_string(),
                Cached {
                    host_id: stored.host_id.clone(),
                    secret_sha256: stored.secret_sha256,
                    checked: Instant::now(),
                },
            );
        }
        Ok(stored.host_id)
    }
}

fn not_valid() -> ApiError {
    ApiError::Unauthorized("the host credential is not valid".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_match_their_digest() {
        for kind in [TokenKind::Bootstrap, TokenKind::Host] {
            let minted = mint(kind);
            let parsed = parse_token(&minted.text).unwrap();
            assert_eq!(parsed.kind, kind);
            assert_eq!(parsed.id, minted.id);
            assert!(digest_matches(parsed.secret, &minted.secret_sha256));
            assert!(!digest_matches("another", &minted.secret_sha256));
        }
        assert_ne!(mint(TokenKind::Host).text, mint(TokenKind::Host).text);
    }
}
