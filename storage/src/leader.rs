//! Leader election: the reconciler replica holding a session-level advisory lock on
//! a dedicated connection is the leader. If that connection dies, Postgres releases
//! the lock and a standby takes over.
//!
//! A leader cut off from the database (a partition, not a crash) must stop acting
//! before anyone else can start. Three things make that so:
//!
//! - **Server side**, the leader's session carries TCP keepalives and a TCP user
//!   timeout ([`LeaderSettings::server_gives_up`]): Postgres ends a session whose
//!   client stopped answering within that time, which releases the lock. Without
//!   them the kernel's defaults keep a dead session (and the lock) for over two hours.
//! - **Client side**, a lease: the leader counts itself leader only until
//!   [`LeaderSettings::lease`] after it last *sent* a check that the database
//!   confirmed ([`LeaderLock::confirm`]); the lease is shorter than the server's
//!   time to give up, so the old leader has stopped before the lock can be free.
//! - **Fencing**, a leadership epoch: taking the lock bumps
//!   `reconciler_leadership.epoch`, and every transaction a leader writes in first
//!   calls [`fence`] with its epoch, which fails with [`StoreError::Deposed`] once a
//!   newer leader took over. It holds the row `FOR SHARE` until the transaction
//!   ends, so a new leader's bump waits for a write in flight, and a late write of
//!   a deposed leader (say, on a pooled connection that outlived the partition) is
//!   refused.
//!
//! The lease is a [`Lease`] the lock shares with work running on its connection: a
//! long pass renews it as it goes, since any answer of the session that holds the
//! lock shows the lock was held when the question was sent.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::{Result, StoreError};

/// The advisory lock key the reconcilers compete for ("phoenix" in ASCII).
const RECONCILER_LOCK_KEY: i64 = 0x70686f656e6978;

/// How leadership is kept and given up.
#[derive(Clone, Copy, Debug)]
pub struct LeaderSettings {
    /// How long a leader keeps acting after the last check the database confirmed.
    pub lease: Duration,
}

impl LeaderSettings {
    /// Keepalive probes the server sends, one a second, after [`Self::lease`] of
    /// silence, before it ends the session.
    const PROBES: u64 = 3;

    /// How long after the leader's last packet the server ends its session (and
    /// frees the lock): the lease, then the keepalive probes. Always longer than
    /// the lease.
    pub fn server_gives_up(&self) -> Duration {
        Duration::from_secs(self.lease.as_secs().max(1) + Self::PROBES)
    }

    /// The session settings of the leader's connection.
    fn session_options(&self) -> Vec<(&'static str, String)> {
        let idle = self.lease.as_secs().max(1);
        vec![
            ("tcp_keepalives_idle", idle.to_string()),
            ("tcp_keepalives_interval", "1".into()),
            ("tcp_keepalives_count", Self::PROBES.to_string()),
            // Unacknowledged data (an answer the leader never received) too.
            (
                "tcp_user_timeout",
                self.server_gives_up().as_millis().to_string(),
            ),
            // A transaction left open by a leader that went away holds its locks
            // no longer than this.
            (
                "idle_in_transaction_session_timeout",
                self.server_gives_up().as_millis().to_string(),
            ),
        ]
    }
}

impl Default for LeaderSettings {
    fn default() -> Self {
        LeaderSettings {
            lease: Duration::from_secs(5),
        }
    }
}

/// Leadership, held as long as this connection lives. Do the leader's writes on
/// [`LeaderLock::connection`] so that no write can happen after leadership is lost.
pub struct LeaderLock {
    conn: PgConnection,
    epoch: i64,
    lease: Lease,
}

/// How long a leader may still act: [`LeaderSettings::lease`] after the last check
/// that the session holding the lock answered was sent. Clones share one lease, so
/// work running on the lock's connection (a reconcile pass) renews it for the loop
/// that bounds that work ([`Lease::bound`]).
#[derive(Clone, Debug)]
pub struct Lease {
    length: Duration,
    /// The backend of the session that holds the lock: only its answers renew.
    pid: i32,
    /// When the last confirmed check was sent.
    confirmed: Arc<Mutex<Instant>>,
}

impl Lease {
    /// The lease left; zero once it has run out.
    pub fn left(&self) -> Duration {
        let confirmed = *self.confirmed.lock().expect("lease lock");
        self.length.saturating_sub(confirmed.elapsed())
    }

    /// Records a check sent at `sent` that the lock's session answered.
    fn confirmed(&self, sent: Instant) {
        let mut confirmed = self.confirmed.lock().expect("lease lock");
        *confirmed = (*confirmed).max(sent);
    }

    /// Renews the lease from a check sent now on `conn`, when `conn` is the session
    /// that holds the lock (the lock's connection, or a transaction on it); on any
    /// other connection it renews nothing and says so (`false`). The session holds
    /// its advisory lock until it ends, so its answer shows the lock was held when
    /// the check was sent, and the server cannot free the lock sooner than
    /// [`LeaderSettings::server_gives_up`] after that.
    pub async fn renew_on(&self, conn: &mut PgConnection) -> Result<bool> {
        let sent = Instant::now();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await?;
        if pid != self.pid {
            return Ok(false);
        }
        self.confirmed(sent);
        Ok(true)
    }

    /// Runs `work` while the lease lasts, renewals included; `None` when the lease
    /// ran out first (the work is dropped: the caller must stop acting).
    pub async fn bound<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        let mut work = std::pin::pin!(work);
        loop {
            let left = self.left();
            if left.is_zero() {
                return None;
            }
            tokio::select! {
                out = &mut work => return Some(out),
                _ = tokio::time::sleep(left) => {}
            }
        }
    }
}

impl LeaderLock {
    /// Connects and tries to take the lock once; `None` when another replica leads.
    /// Taking it bumps the leadership epoch; `holder` names this replica there.
    pub async fn try_acquire(
        database_url: &str,
        settings: LeaderSettings,
        holder: &str,
    ) -> Result<Option<LeaderLock>> {
        let sent = Instant::now();
        let options = PgConnectOptions::from_str(database_url)?.options(settings.session_options());
        let mut conn = options.connect().await?;
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RECONCILER_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if !acquired {
            return Ok(None);
        }
        let epoch: i64 = sqlx::query_scalar(
            "UPDATE reconciler_leadership SET epoch = epoch + 1, holder = $1, acquired_at = now() \
             WHERE id = 1 RETURNING epoch",
        )
        .bind(holder)
        .fetch_one(&mut conn)
        .await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        Ok(Some(LeaderLock {
            conn,
            epoch,
            lease: Lease {
                length: settings.lease,
                pid,
                confirmed: Arc::new(Mutex::new(sent)),
            },
        }))
    }

    /// The connection that holds the lock.
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// This leadership's epoch (see [`fence`]).
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The lease left: how long this replica may still act without a new
    /// confirmation. Zero once it has run out.
    pub fn lease_left(&self) -> Duration {
        self.lease.left()
    }

    /// The lease, shared: renewed by [`LeaderLock::confirm`] and by
    /// [`Lease::renew_on`] the lock's connection.
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    /// Checks that the lock is still ours (the connection is alive and holds it)
    /// and renews the lease. An answer must come within the lease left; a check
    /// that fails or comes too late means leadership is lost (`false`), and the
    /// caller must stop acting and drop the lock.
    pub async fn confirm(&mut self) -> Result<bool> {
        let sent = Instant::now();
        let left = self.lease_left();
        let check = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
             AND granted AND ((classid::bigint << 32) | objid::bigint) = $1)",
        )
        .bind(RECONCILER_LOCK_KEY)
        .fetch_one(&mut self.conn);
        match tokio::time::timeout(left, check).await {
            Ok(Ok(true)) => {
                self.lease.confirmed(sent);
                Ok(true)
            }
            Ok(Ok(false)) | Err(_) => Ok(false),
            Ok(Err(err)) => Err(err.into()),
        }
    }
}

/// Refuses a write of a deposed leader: checks, inside the caller's transaction,
/// that `epoch` is still the current leadership epoch, and holds the row `FOR
/// SHARE` until the transaction ends (a new leader's epoch bump waits for it).
pub async fn fence(conn: &mut PgConnection, epoch: i64) -> Result<()> {
    let current: i64 =
        sqlx::query_scalar("SELECT epoch FROM reconciler_leadership WHERE id = 1 FOR SHARE")
            .fetch_one(conn)
            .await?;
    if current != epoch {
        return Err(StoreError::Deposed { epoch, current });
    }
    Ok(())
}

/// The current leadership epoch and who holds it (for tests and diagnostics).
pub async fn current(conn: &mut PgConnection) -> Result<(i64, String)> {
    Ok(
        sqlx::query_as("SELECT epoch, holder FROM reconciler_leadership WHERE id = 1")
            .fetch_one(conn)
            .await?,
    )
}
