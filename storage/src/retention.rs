//! Retention: what only grows is pruned by age. Finished agent tasks (succeeded,
//! failed, cancelled), the events of experiments that are no longer active (or no
//! longer exist), and hosts silent for long (their reported collectors and loads go
//! with them), and collector config bodies no task names any more (older than the
//! task retention: a body is only a cache of a rendering). Each table is pruned in
//! batches, one short statement each, so a large backlog never holds locks for long.

use std::time::Duration;

use sqlx::postgres::PgConnection;

use crate::Result;

/// How old a row may get before it is pruned.
#[derive(Clone, Copy, Debug)]
pub struct RetentionSettings {
    pub tasks: Duration,
    pub events: Duration,
    pub hosts: Duration,
}

/// Rows removed by one [`prune`], by table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub tasks: u64,
    pub events: u64,
    pub hosts: u64,
    pub configs: u64,
}

impl Pruned {
    /// Each table's count, by table name (for metrics and logs).
    pub fn by_table(&self) -> [(&'static str, u64); 4] {
        [
            ("agent_tasks", self.tasks),
            ("experiment_events", self.events),
            ("hosts", self.hosts),
            ("collector_configs", self.configs),
        ]
    }
}

/// Rows deleted per statement.
pub const BATCH: i64 = 5_000;

fn interval(age: Duration) -> f64 {
    age.as_secs_f64()
}

/// Deletes up to [`BATCH`] rows of each table that are older than `settings` say,
/// by the database's clock. Call again while a table returns a full batch.
pub async fn prune(conn: &mut PgConnection, settings: &RetentionSettings) -> Result<Pruned> {
    let tasks = sqlx::query(
        "DELETE FROM agent_tasks WHERE id IN (SELECT id FROM agent_tasks \
         WHERE status IN ('succeeded', 'failed', 'cancelled') \
         AND updated_at < now() - make_interval(secs => $1) LIMIT $2)",
    )
    .bind(interval(settings.tasks))
    .bind(BATCH)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let events = sqlx::query(
        "DELETE FROM experiment_events WHERE id IN (SELECT e.id FROM experiment_events e \
         WHERE e.at < now() - make_interval(secs => $1) AND NOT EXISTS (SELECT 1 FROM experiments x \
         WHERE x.name = e.experiment AND x.phase IN ('pending', 'deploying', 'running', 'analyzing')) \
         LIMIT $2)",
    )
    .bind(interval(settings.events))
    .bind(BATCH)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let hosts = sqlx::query(
        "DELETE FROM hosts WHERE host_id IN (SELECT host_id FROM hosts \
         WHERE last_seen < now() - make_interval(secs => $1) LIMIT $2)",
    )
    .bind(interval(settings.hosts))
    .bind(BATCH)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let configs = sqlx::query(
        "DELETE FROM collector_configs WHERE sha256 IN (SELECT c.sha256 FROM collector_configs c \
         WHERE c.created_at < now() - make_interval(secs => $1) \
         AND NOT EXISTS (SELECT 1 FROM agent_tasks t WHERE t.config_sha256 = c.sha256) LIMIT $2)",
    )
    .bind(interval(settings.tasks))
    .bind(BATCH)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(Pruned {
        tasks,
        events,
        hosts,
        configs,
    })
}
