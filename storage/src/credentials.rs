//! Bootstrap tokens and host credentials (migration 0009): table access only. The
//! api mints the secrets and checks digests (`phoenix_api::app::credentials`).
//!
//! Revoking a host credential announces its id on [`crate::CREDENTIALS_CHANNEL`],
//! so every api replica drops it from its cache at once.

use chrono::{DateTime, Utc};
use phoenix_wire::credentials::{BootstrapTokenView, HostCredentialView};
use sqlx::FromRow;
use sqlx::postgres::PgConnection;

use crate::{CREDENTIALS_CHANNEL, Result, StoreError};

/// Whether a stored token may be used now (by the database's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Usable,
    Revoked,
    Expired,
}

/// A stored token's digest and standing, found by id.
#[derive(Clone, Debug)]
pub struct StoredToken {
    pub secret_sha256: Vec<u8>,
    pub standing: Standing,
    /// For a host credential: its host.
    pub host_id: String,
}

#[derive(FromRow)]
struct StoredRow {
    secret_sha256: Vec<u8>,
    revoked: bool,
    expired: bool,
    host_id: String,
}

impl From<StoredRow> for StoredToken {
    fn from(row: StoredRow) -> Self {
        let standing = if row.revoked {
            Standing::Revoked
        } else if row.expired {
            Standing::Expired
        } else {
            Standing::Usable
        };
        StoredToken {
            secret_sha256: row.secret_sha256,
            standing,
            host_id: row.host_id,
        }
    }
}

/// A new bootstrap token's stored form.
pub struct NewBootstrapToken<'a> {
    pub id: &'a str,
    pub secret_sha256: &'a [u8],
    pub description: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
}

const BOOTSTRAP_COLUMNS: &str = "b.id, b.description, b.created_at, b.expires_at, b.revoked_at, \
     (SELECT count(*) FROM host_credentials h WHERE h.bootstrap_token_id = b.id) AS enrollments";

#[derive(FromRow)]
struct BootstrapRow {
    id: String,
    description: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    enrollments: i64,
}

impl From<BootstrapRow> for BootstrapTokenView {
    fn from(row: BootstrapRow) -> Self {
        BootstrapTokenView {
            id: row.id,
            description: row.description,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            enrollments: row.enrollments,
            token: None,
        }
    }
}

/// Stores a new bootstrap token.
pub async fn insert_bootstrap(
    conn: &mut PgConnection,
    new: NewBootstrapToken<'_>,
) -> Result<BootstrapTokenView> {
    let inserted = sqlx::query(
        "INSERT INTO bootstrap_tokens (id, secret_sha256, description, expires_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
    )
    .bind(new.id)
    .bind(new.secret_sha256)
    .bind(new.description)
    .bind(new.expires_at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(StoreError::AlreadyExists(format!(
            "bootstrap token {}",
            new.id
        )));
    }
    get_bootstrap(conn, new.id).await
}

/// Stores a configured bootstrap token unless its id is already stored (a revoked
/// one stays revoked). Returns whether the stored digest is this one.
pub async fn seed_bootstrap(conn: &mut PgConnection, new: NewBootstrapToken<'_>) -> Result<bool> {
    sqlx::query(
        "INSERT INTO bootstrap_tokens (id, secret_sha256, description) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(new.id)
    .bind(new.secret_sha256)
    .bind(new.description)
    .execute(&mut *conn)
    .await?;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT secret_sha256 FROM bootstrap_tokens WHERE id = $1")
            .bind(new.id)
            .fetch_one(conn)
            .await?;
    Ok(stored == new.secret_sha256)
}

pub async fn get_bootstrap(conn: &mut PgConnection, id: &str) -> Result<BootstrapTokenView> {
    let sql = format!("SELECT {BOOTSTRAP_COLUMNS} FROM bootstrap_tokens b WHERE b.id = $1");
    let row: Option<BootstrapRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(Into::into)
        .ok_or_else(|| StoreError::NotFound(format!("bootstrap token {id}")))
}

/// Every bootstrap token, newest first.
pub async fn list_bootstrap(conn: &mut PgConnection) -> Result<Vec<BootstrapTokenView>> {
    let sql = format!(
        "SELECT {BOOTSTRAP_COLUMNS} FROM bootstrap_tokens b ORDER BY b.created_at DESC, b.id"
    );
    let rows: Vec<BootstrapRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Revokes a bootstrap token: it enrolls no more agents. Credentials enrolled with
/// it stay valid. Revoking twice keeps the first time.
pub async fn revoke_bootstrap(conn: &mut PgConnection, id: &str) -> Result<BootstrapTokenView> {
    let found = sqlx::query(
        "UPDATE bootstrap_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if found == 0 {
        return Err(StoreError::NotFound(format!("bootstrap token {id}")));
    }
    get_bootstrap(conn, id).await
}

/// A bootstrap token's digest and standing.
pub async fn find_bootstrap(conn: &mut PgConnection, id: &str) -> Result<Option<StoredToken>> {
    let row: Option<StoredRow> = sqlx::query_as(
        "SELECT secret_sha256, revoked_at IS NOT NULL AS revoked, \
         coalesce(expires_at <= now(), false) AS expired, '' AS host_id \
         FROM bootstrap_tokens WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Into::into))
}

/// A new host credential's stored form.
pub struct NewHostCredential<'a> {
    pub id: &'a str,
    pub host_id: &'a str,
    pub secret_sha256: &'a [u8],
    pub bootstrap_token_id: &'a str,
}

/// Stores a host's credential; a host that already holds one that is not revoked is
/// a [`StoreError::Conflict`].
pub async fn insert_host_credential(
    conn: &mut PgConnection,
    new: NewHostCredential<'_>,
) -> Result<()> {
    let result = sqlx::query(
        "INSERT INTO host_credentials (id, host_id, secret_sha256, bootstrap_token_id) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(new.id)
    .bind(new.host_id)
    .bind(new.secret_sha256)
    .bind(new.bootstrap_token_id)
    .execute(conn)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
            Err(StoreError::Conflict(format!(
                "host {} already holds a credential that is not revoked",
                new.host_id
            )))
        }
        Err(err) => Err(err.into()),
    }
}

/// A host credential's digest, host and standing.
pub async fn find_host_credential(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<StoredToken>> {
    let row: Option<StoredRow> = sqlx::query_as(
        "SELECT secret_sha256, revoked_at IS NOT NULL AS revoked, false AS expired, host_id \
         FROM host_credentials WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Into::into))
}

#[derive(FromRow)]
struct CredentialRow {
    id: String,
    host_id: String,
    bootstrap_token_id: String,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<CredentialRow> for HostCredentialView {
    fn from(row: CredentialRow) -> Self {
        HostCredentialView {
            id: row.id,
            host_id: row.host_id,
            bootstrap_token_id: row.bootstrap_token_id,
            created_at: row.created_at,
            revoked_at: row.revoked_at,
        }
    }
}

/// Host credentials, by host then newest first; only `host_id`'s when given.
pub async fn list_host_credentials(
    conn: &mut PgConnection,
    host_id: Option<&str>,
) -> Result<Vec<HostCredentialView>> {
    let rows: Vec<CredentialRow> = sqlx::query_as(
        "SELECT id, host_id, bootstrap_token_id, created_at, revoked_at FROM host_credentials \
         WHERE $1::text IS NULL OR host_id = $1 ORDER BY host_id, created_at DESC, id",
    )
    .bind(host_id)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Revokes the host's credential that is not revoked yet, and announces it. The
/// host's agent must enroll again. NotFound when the host holds none.
pub async fn revoke_host_credential(
    conn: &mut PgConnection,
    host_id: &str,
) -> Result<HostCredentialView> {
    let row: Option<CredentialRow> = sqlx::query_as(
        "UPDATE host_credentials SET revoked_at = now() WHERE host_id = $1 AND revoked_at IS NULL \
         RETURNING id, host_id, bootstrap_token_id, created_at, revoked_at",
    )
    .bind(host_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound(format!(
            "a credential of host {host_id} that is not revoked"
        )));
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CREDENTIALS_CHANNEL)
        .bind(&row.id)
        .execute(conn)
        .await?;
    Ok(row.into())
}
