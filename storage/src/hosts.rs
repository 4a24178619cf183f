//! Hosts and the collectors their agents report (actual state).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use phoenix_wire::agent::{CollectorStatus, Health, HostStatus, Variant};
use phoenix_wire::names::Labels;
use phoenix_wire::view::{Host, HostState};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, FromRow};

use crate::{Result, StoreError, corrupt};

/// Which hosts a query of per-host state reads: all of them, or only some (the
/// reconciler's incremental pass reads the hosts that changed).
#[derive(Clone, Copy, Debug)]
pub enum HostFilter<'a> {
    All,
    Only(&'a [String]),
}

impl HostFilter<'_> {
    /// The SQL condition on `column`: `TRUE`, or membership in parameter `$n`
    /// (bound by [`HostFilter::bind`]). Two texts rather than one condition with a
    /// NULL test, so each gets a plan of its own.
    ///
    /// Membership is [`in_hosts`], not `= ANY($n)`: a scan filtered by `= ANY` of a
    /// bound array compares every row with every element, which cost 370 to 560 ms
    /// a statement for 3,000 hosts in a 10,000-host rollout (a generic plan, no
    /// index condition); `IN (SELECT unnest(...))` is a semi-join, hashed or by index.
    pub(crate) fn condition(&self, column: &'static str, n: usize) -> String {
        match self {
            HostFilter::All => "TRUE".to_string(),
            HostFilter::Only(_) => in_hosts(column, n),
        }
    }

    /// As [`HostFilter::condition`], for a `column` that leads an index the query
    /// can use: `= ANY($n)`, which becomes that index's condition (one lookup per
    /// host) whatever the table's statistics say. A semi-join there is planned from
    /// the statistics, and right after a rollout's insert they still say the table
    /// is nearly empty: the planner then loops over every row for every host (852
    /// ms for 10,000 open tasks and 1,400 hosts, against 17 ms this way, measured
    /// with `EXPLAIN ANALYZE` on Postgres 15).
    pub(crate) fn index_condition(&self, column: &'static str, n: usize) -> String {
        match self {
            HostFilter::All => "TRUE".to_string(),
            HostFilter::Only(_) => format!("{column} = ANY(${n})"),
        }
    }

    /// Binds the host ids when [`HostFilter::condition`] asked for them.
    pub(crate) fn bind<'q, O>(
        &self,
        query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        match self {
            HostFilter::All => query,
            HostFilter::Only(ids) => query.persistent(false).bind(ids.to_vec()),
        }
    }
}

/// `column IN (SELECT unnest($n::text[]))`: membership in a bound list of host ids,
/// planned as a semi-join (see [`HostFilter::condition`]).
pub(crate) fn in_hosts(column: &'static str, n: usize) -> String {
    format!("{column} IN (SELECT unnest(${n}::text[]))")
}

/// Whether a host last seen at `last_seen` counts as lost at `now`.
pub fn host_state(last_seen: DateTime<Utc>, now: DateTime<Utc>, grace: Duration) -> HostState {
    let silent = now
        .signed_duration_since(last_seen)
        .to_std()
        .unwrap_or_default();
    if silent > grace {
        HostState::Lost
    } else {
        HostState::Ready
    }
}

/// Stores full status reports of many hosts in one transaction: registers or
/// updates each host and replaces its reported collectors (and load runs, see
/// [`crate::loads`]). The statements are those of one report, each run once for
/// the whole batch, which is what a rollout's burst of reports costs the database.
/// A host reported twice keeps its last report.
pub async fn report_statuses(
    conn: &mut PgConnection,
    reports: &[(String, HostStatus)],
) -> Result<()> {
    // The last report of each host, in host order (every batch locks rows in the
    // same order).
    let latest: BTreeMap<&str, &HostStatus> = reports
        .iter()
        .map(|(host, status)| (host.as_str(), status))
        .collect();
    let host_ids: Vec<&str> = latest.keys().copied().collect();
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO hosts (host_id, labels, agent_version, last_seen, status_at) \
         SELECT host_id, labels, agent_version, now(), now() \
         FROM unnest($1::text[], $2::jsonb[], $3::text[]) AS r(host_id, labels, agent_version) \
         ON CONFLICT (host_id) DO UPDATE SET labels = EXCLUDED.labels, agent_version = EXCLUDED.agent_version, \
         last_seen = now(), status_at = now()",
    )
    .persistent(false)
    .bind(&host_ids)
    .bind(
        latest
            .values()
            .map(|s| serde_json::to_value(&s.labels).expect("labels serialize"))
            .collect::<Vec<_>>(),
    )
    .bind(
        latest
            .values()
            .map(|s| s.agent_version.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    let delete = format!(
        "DELETE FROM host_collectors WHERE {}",
        in_hosts("host_id", 1)
    );
    sqlx::query(sqlx::AssertSqlSafe(delete))
        .persistent(false)
        .bind(&host_ids)
        .execute(&mut *tx)
        .await?;
    let c: Vec<(&str, &CollectorStatus)> = latest
        .iter()
        .flat_map(|(host, s)| s.collectors.iter().map(move |c| (*host, c)))
        .collect();
    if !c.is_empty() {
        sqlx::query(
            "INSERT INTO host_collectors (host_id, collector_id, owner, variant, pipeline, config_hash, pid, health, \
             restarts, cpu_seconds, rss_bytes, last_error, rolled_back_from) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], \
             $8::text[], $9::int[], $10::float8[], $11::int8[], $12::text[], $13::jsonb[])",
        )
        .persistent(false)
        .bind(c.iter().map(|(h, _)| *h).collect::<Vec<_>>())
        .bind(c.iter().map(|(_, c)| c.collector_id.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|(_, c)| c.owner.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|(_, c)| c.variant.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|(_, c)| c.pipeline.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|(_, c)| c.config_hash.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|(_, c)| c.pid.map(|p| p as i32)).collect::<Vec<_>>())
        .bind(c.iter().map(|(_, c)| c.health.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|(_, c)| c.restarts as i32).collect::<Vec<_>>())
        .bind(c.iter().map(|(_, c)| c.cpu_seconds).collect::<Vec<_>>())
        .bind(c.iter().map(|(_, c)| c.rss_bytes as i64).collect::<Vec<_>>())
        .bind(c.iter().map(|(_, c)| c.last_error.as_deref()).collect::<Vec<_>>())
        .bind(
            c.iter()
                .map(|(_, c)| {
                    c.rolled_back_from
                        .as_ref()
                        .map(|r| serde_json::to_value(r).expect("a rollback serializes"))
                })
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    }
    crate::loads::replace_reported(&mut tx, &latest).await?;
    tx.commit().await?;
    Ok(())
}

/// Marks the hosts of a batch of coalesced heartbeats as seen now, by the
/// database's clock (every liveness decision uses that one clock, whichever api
/// replica took the heartbeat), in one statement. Returns the ids that are
/// registered; the others are unknown (an agent registers with a full status
/// report).
pub async fn record_heartbeats(
    conn: &mut PgConnection,
    host_ids: &[String],
) -> Result<Vec<String>> {
    if host_ids.is_empty() {
        return Ok(Vec::new());
    }
    let known: Vec<String> = sqlx::query_scalar(
        "UPDATE hosts SET last_seen = greatest(last_seen, now()) WHERE host_id = ANY($1) RETURNING host_id",
    )
    .persistent(false)
    .bind(host_ids)
    .fetch_all(conn)
    .await?;
    Ok(known)
}

/// Whether `host_id` is registered.
pub async fn exists(conn: &mut PgConnection, host_id: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM hosts WHERE host_id = $1)")
            .bind(host_id)
            .fetch_one(conn)
            .await?,
    )
}

/// The database's clock: the one every liveness decision is made by.
pub async fn database_now(conn: &mut PgConnection) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT now()").fetch_one(conn).await?)
}

/// A host's identity and liveness, without its collectors.
#[derive(Clone, Debug)]
pub struct HostRecord {
    pub host_id: String,
    pub labels: Labels,
    pub agent_version: String,
    pub last_seen: DateTime<Utc>,
}

#[derive(FromRow)]
struct HostRow {
    host_id: String,
    labels: serde_json::Value,
    agent_version: String,
    last_seen: DateTime<Utc>,
}

impl TryFrom<HostRow> for HostRecord {
    type Error = StoreError;
    fn try_from(row: HostRow) -> Result<Self> {
        Ok(HostRecord {
            labels: serde_json::from_value(row.labels)
                .map_err(|e| corrupt(&format!("host {}", row.host_id), e))?,
            host_id: row.host_id,
            agent_version: row.agent_version,
            last_seen: row.last_seen,
        })
    }
}

/// Every registered host `filter` lets through, ordered by id.
pub async fn list_records(
    conn: &mut PgConnection,
    filter: HostFilter<'_>,
) -> Result<Vec<HostRecord>> {
    let sql = format!(
        "SELECT host_id, labels, agent_version, last_seen FROM hosts WHERE {} ORDER BY host_id",
        filter.condition("host_id", 1)
    );
    let rows: Vec<HostRow> = filter
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(HostRecord::try_from).collect()
}

#[derive(FromRow)]
struct CollectorRow {
    host_id: String,
    collector_id: String,
    owner: String,
    variant: String,
    pipeline: String,
    config_hash: String,
    pid: Option<i32>,
    health: String,
    restarts: i32,
    cpu_seconds: f64,
    rss_bytes: i64,
    last_error: Option<String>,
    rolled_back_from: Option<serde_json::Value>,
}

impl TryFrom<CollectorRow> for (String, CollectorStatus) {
    type Error = StoreError;
    fn try_from(row: CollectorRow) -> Result<Self> {
        let what = format!("collector {} on {}", row.collector_id, row.host_id);
        let variant = match row.variant.as_str() {
            "baseline" => Variant::Baseline,
            "candidate" => Variant::Candidate,
            "standing" => Variant::Standing,
            other => return Err(corrupt(&what, format!("unknown variant {other}"))),
        };
        let health = match row.health.as_str() {
            "starting" => Health::Starting,
            "healthy" => Health::Healthy,
            "unhealthy" => Health::Unhealthy,
            "restarting" => Health::Restarting,
            other => return Err(corrupt(&what, format!("unknown health {other}"))),
        };
        Ok((
            row.host_id,
            CollectorStatus {
                collector_id: row.collector_id,
                owner: row.owner,
                variant,
                pipeline: row.pipeline,
                config_hash: row.config_hash,
                pid: row.pid.map(|p| p as u32),
                health,
                restarts: row.restarts as u32,
                cpu_seconds: row.cpu_seconds,
                rss_bytes: row.rss_bytes as u64,
                last_error: row.last_error,
                rolled_back_from: row
                    .rolled_back_from
                    .map(serde_json::from_value)
                    .transpose()
                    .map_err(|e| corrupt(&what, format!("rolled_back_from: {e}")))?,
            },
        ))
    }
}

const COLLECTOR_COLUMNS: &str = "host_id, collector_id, owner, variant, pipeline, config_hash, pid, health, restarts, \
                                 cpu_seconds, rss_bytes, last_error, rolled_back_from";

/// Every reported collector of the hosts `filter` lets through, grouped by host.
pub async fn collectors_by_host(
    conn: &mut PgConnection,
    filter: HostFilter<'_>,
) -> Result<HashMap<String, Vec<CollectorStatus>>> {
    let sql = format!(
        "SELECT {COLLECTOR_COLUMNS} FROM host_collectors WHERE {} ORDER BY host_id, collector_id",
        filter.condition("host_id", 1)
    );
    let rows: Vec<CollectorRow> = filter
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .fetch_all(conn)
        .await?;
    let mut by_host: HashMap<String, Vec<CollectorStatus>> = HashMap::new();
    for row in rows {
        let (host, status) = row.try_into()?;
        by_host.entry(host).or_default().push(status);
    }
    Ok(by_host)
}

fn to_view(
    record: HostRecord,
    collectors: Vec<CollectorStatus>,
    now: DateTime<Utc>,
    grace: Duration,
) -> Host {
    Host {
        state: host_state(record.last_seen, now, grace),
        host_id: record.host_id,
        labels: record.labels,
        agent_version: record.agent_version,
        last_seen: record.last_seen,
        collectors,
    }
}

/// Every host with its collectors; hosts silent for longer than `grace` are `lost`.
pub async fn list(conn: &mut PgConnection, grace: Duration) -> Result<Vec<Host>> {
    let now = database_now(conn).await?;
    let records = list_records(conn, HostFilter::All).await?;
    let mut collectors = collectors_by_host(conn, HostFilter::All).await?;
    Ok(records
        .into_iter()
        .map(|r| {
            let c = collectors.remove(&r.host_id).unwrap_or_default();
            to_view(r, c, now, grace)
        })
        .collect())
}

pub async fn get(conn: &mut PgConnection, host_id: &str, grace: Duration) -> Result<Host> {
    let row: Option<HostRow> = sqlx::query_as(
        "SELECT host_id, labels, agent_version, last_seen FROM hosts WHERE host_id = $1",
    )
    .bind(host_id)
    .fetch_optional(&mut *conn)
    .await?;
    let record: HostRecord = row
        .ok_or_else(|| StoreError::NotFound(format!("host {host_id}")))?
        .try_into()?;
    let sql = format!(
        "SELECT {COLLECTOR_COLUMNS} FROM host_collectors WHERE host_id = $1 ORDER BY collector_id"
    );
    let rows: Vec<CollectorRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(host_id)
        .fetch_all(&mut *conn)
        .await?;
    let now = database_now(conn).await?;
    let collectors = rows
        .into_iter()
        .map(|row| <(String, CollectorStatus)>::try_from(row).map(|(_, c)| c))
        .collect::<Result<Vec<_>>>()?;
    Ok(to_view(record, collectors, now, grace))
}
