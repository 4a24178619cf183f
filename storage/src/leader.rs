//! Leader election: the reconciler replica holding a session-level advisory lock on
//! a dedicated connection is the leader. If that connection dies, Postgres releases
//! the lock and a standby takes over; the old leader notices on its next query.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::Result;

/// The advisory lock key the reconcilers compete for ("phoenix" in ASCII).
const RECONCILER_LOCK_KEY: i64 = 0x70686f656e6978;

/// Leadership, held as long as this connection lives. Do the leader's writes on
/// [`LeaderLock::connection`] so that no write can happen after leadership is lost.
pub struct LeaderLock {
    conn: PgConnection,
}

impl LeaderLock {
    /// Connects and tries to take the lock once; `None` when another replica leads.
    pub async fn try_acquire(database_url: &str) -> Result<Option<LeaderLock>> {
        let mut conn = PgConnection::connect(database_url).await?;
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RECONCILER_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if acquired {
            Ok(Some(LeaderLock { conn }))
        } else {
            Ok(None)
        }
    }

    /// The connection that holds the lock.
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Confirms the lock is still ours (the connection is alive and holds it).
    pub async fn still_held(&mut self) -> Result<bool> {
        let held: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
             AND granted AND ((classid::bigint << 32) | objid::bigint) = $1)",
        )
        .bind(RECONCILER_LOCK_KEY)
        .fetch_one(&mut self.conn)
        .await?;
        Ok(held)
    }
}
