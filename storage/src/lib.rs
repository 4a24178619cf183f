//! Phoenix's Postgres layer, shared by the api and the reconciler.
//!
//! - [`connect`] opens a bounded pool. [`schema`] reads and moves the schema's
//!   version (the reversible migrations of `migrations/`, embedded; sqlx serialises
//!   concurrent migrators with an advisory lock, so several replicas may start at
//!   once); [`schema::prepare`], run by every server at start, brings a schema that
//!   is behind up to date (or refuses it) and seeds the built-in pipeline catalog.
//! - [`experiments`], [`hosts`], [`loads`], [`tasks`], [`templates`]: the queries, as free
//!   functions over a `&mut PgConnection`, so a caller chooses the transaction (the
//!   reconciler runs a whole pass in one, on the connection that holds leadership).
//! - [`deployments`]: pipeline deployments (standing pipelines) and their revisions,
//!   with an experiment's promote and rollback, each one transaction.
//! - [`rollouts`]: staged roll-outs of deployment revisions and their steps.
//! - [`credentials`]: bootstrap tokens and host credentials (digests only).
//! - [`destinations`]: the user's backends standing collectors export to
//!   (credential references only).
//! - [`leader`]: leader election with a session advisory lock, a lease, and
//!   fencing by leadership epoch.
//! - [`listen`]: the one LISTEN connection of a process, with backoff.
//! - [`retention`]: pruning finished tasks, old events and long-gone hosts by age.
//! - [`traces`]: the trace context stored with desired state, which the reconciler
//!   continues into the tasks it makes.
//!
//! ## Statements over a bound list are planned for each run
//!
//! sqlx prepares a statement once per connection, and after five runs Postgres
//! may keep one generic plan, made for whatever the tables held then. Phoenix's
//! tables change size by orders of magnitude within a minute (no tasks, then
//! 20,000 in a rollout), and its batch statements take lists of any length: a
//! generic plan made on the empty table stays a scan. In a 10,000-agent rollout
//! the leader's read of 1,200 hosts' open tasks compared every row with every host
//! (669 ms, where a plan for the bound list takes 7 ms), and the api's batched
//! `DELETE` of reported collectors scanned the whole table each time. So every
//! statement that binds a list of hosts, tasks or rows is sent unprepared
//! (`.persistent(false)`, and [`hosts::HostFilter`] does it for the reads it
//! filters): Postgres plans it for the values of that run.
//!
//! Not with the session's `plan_cache_mode = force_custom_plan`: that also reaches
//! the statements of the per-row triggers (`pg_notify` of each new or finished
//! task), which Postgres then parses and plans again for every row. A 10,000-task
//! insert took 1.6 to 3.2 s in the fleet benchmark where it takes 0.4 s without
//! (BENCHMARKS.md).

pub mod apply;
pub mod credentials;
pub mod deployments;
pub mod destinations;
pub mod experiments;
pub mod hosts;
pub mod leader;
pub mod listen;
pub mod loads;
pub mod results;
pub mod retention;
pub mod rollouts;
pub mod schema;
pub mod tasks;
pub mod templates;
pub mod traces;

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
pub use sqlx::postgres::{PgConnection, PgPool};

/// Channel on which a new task's host id is announced (see the migration's trigger).
pub const TASKS_CHANNEL: &str = "phoenix_agent_tasks";
/// Channel on which changes of desired or actual state wake the reconciler.
pub const RECONCILE_CHANNEL: &str = "phoenix_reconcile";
/// Channel on which experiment, host and task events are announced as the JSON of a
/// `phoenix_wire::events::Event` (migration 0003); the API streams them to clients.
pub const EVENTS_CHANNEL: &str = "phoenix_events";
/// Channel on which a revoked host credential's id is announced, so every api
/// replica stops accepting it at once ([`credentials`]).
pub const CREDENTIALS_CHANNEL: &str = "phoenix_credentials";

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "this reconciler's leadership (epoch {epoch}) has ended: epoch {current} leads now; the write was refused"
    )]
    Deposed { epoch: i64, current: i64 },
}

impl StoreError {
    /// A deadlock or a serialization failure: the transaction lost a race with a
    /// concurrent one and may be tried again.
    pub fn is_concurrency_failure(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("40001" | "40P01"))
            }
            _ => false,
        }
    }

    /// The database is unreachable or going away (connection refused or lost, no
    /// connection within the pool's acquire timeout, the server shutting down or
    /// out of connections): the same request may well succeed shortly.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(err) => match err {
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed => true,
                // Class 08: connection exception; 57P01-57P03: admin shutdown, crash
                // shutdown, cannot connect now; 53300: too many connections.
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    code.starts_with("08")
                        || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
                }),
                _ => false,
            },
            _ => false,
        }
    }

    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "not_found",
            StoreError::AlreadyExists(_) => "already_exists",
            StoreError::Conflict(_) => "conflict",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Database(_) => "database",
            StoreError::Migrate(_) => "migrate",
            StoreError::Deposed { .. } => "deposed",
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Opens a pool of at most `max_connections`, waiting up to 10 s for a connection.
pub async fn connect(database_url: &str, max_connections: u32) -> Result<PgPool> {
    connect_with(database_url, max_connections, Duration::from_secs(10)).await
}

/// Opens a pool of at most `max_connections` whose `acquire` gives up after
/// `acquire_timeout` (a dead pooled connection is noticed by the ping before use,
/// and a refused connect is retried, all within that time), so a request fails fast
/// with [`sqlx::Error::PoolTimedOut`] while the database is unreachable. The first
/// connection is opened lazily: the caller's first query says whether it answers.
pub async fn connect_with(
    database_url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect(database_url)
        .await?;
    Ok(pool)
}

/// [`connect_with`], with every connection opened (in the background) and kept: the
/// pool of a process that serves many clients (the api). Take its connections with
/// [`acquire`], which checks each one itself.
///
/// The pool does not ping a connection before handing it out. sqlx runs that ping
/// inside `acquire`'s timeout, and a timeout during it (a busy process, not a dead
/// database) destroys a healthy connection; the next waiter then opens one, under
/// the same timeout, and abandons it half-open in turn. At 10,000 agents that was a
/// storm of connects that left both api replicas without a connection
/// (BENCHMARKS.md, "Liveness renewal and the connect storm").
pub fn connect_warm(
    database_url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(max_connections)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        // Opened in the background: the caller's first query says whether the
        // database answers, as with `connect_with`.
        .connect_lazy(database_url)?;
    Ok(pool)
}

/// A live connection from `pool`, within the pool's acquire timeout, and
/// cancel-safely: the work runs as its own task, so a caller dropped while it waits
/// (a client gone, an outer timeout) does not abandon a connection being opened.
///
/// The connection is pinged before it is handed out, so a frozen or stopped
/// database fails the request within the timeout (at least a quarter of it is left
/// for the ping) instead of hanging its query. A ping that times out gives the
/// connection back to the pool, which checks it again in the background and keeps
/// it if it answers: waiting never destroys a healthy connection.
pub async fn acquire(pool: &PgPool) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    use sqlx::Connection;

    let pool = pool.clone();
    let checked = async move {
        let budget = pool.options().get_acquire_timeout();
        let started = std::time::Instant::now();
        let mut conn = pool.acquire().await?;
        let left = budget.saturating_sub(started.elapsed()).max(budget / 4);
        match tokio::time::timeout(left, conn.ping()).await {
            Ok(Ok(())) => Ok(conn),
            Ok(Err(err)) => Err(StoreError::Database(err)),
            Err(_) => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
        }
    };
    match tokio::spawn(checked).await {
        Ok(acquired) => acquired,
        Err(_) => Err(StoreError::Database(sqlx::Error::WorkerCrashed)),
    }
}

/// Every migration of `migrations/`, embedded at build time (see [`schema`]).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {err}"))
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgConnectOptions;

    /// A DATABASE_URL without a user connects as PGUSER, else as the process's OS
    /// user, as libpq does (not as sqlx 0.9's "anonymous" without whoami's `std`).
    #[test]
    fn default_user_is_the_os_user() {
        let options: PgConnectOptions = "postgres://127.0.0.1:5432/phoenix".parse().unwrap();
        let expected = match std::env::var("PGUSER") {
            Ok(user) => user,
            Err(_) => {
                let id = std::process::Command::new("id")
                    .arg("-un")
                    .output()
                    .unwrap();
                assert!(id.status.success(), "id -un: {id:?}");
                String::from_utf8(id.stdout).unwrap().trim().to_string()
            }
        };
        assert_eq!(options.get_username(), expected);
    }
}
