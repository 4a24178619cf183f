//! Load simulation: standalone load runs (desired state, `load_runs`), the load runs
//! agents report (actual state, `host_loads`) and each host's load limit
//! (`hosts.max_load_processes`). Load *tasks* are `agent_tasks` rows of kind `load`
//! (see [`crate::tasks`]).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use phoenix_wire::agent::HostStatus;
use phoenix_wire::load::{LoadParameters, LoadProfile, LoadRunSpec, LoadState, LoadStatus};
use phoenix_wire::resource::HostTarget;
use sqlx::FromRow;
use sqlx::postgres::PgConnection;

use crate::hosts::HostFilter;
use crate::{Result, StoreError, corrupt};

/// Whether a stored run is still wanted: `running` until a user stops it. (That
/// its time ran out is read from `expires_at`.)
pub const PHASE_RUNNING: &str = "running";
pub const PHASE_STOPPED: &str = "stopped";

/// A standalone load run as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredLoadRun {
    pub name: String,
    pub hosts: HostTarget,
    pub target_hosts: Vec<String>,
    pub profile: LoadProfile,
    pub parameters: LoadParameters,
    /// [`PHASE_RUNNING`] or [`PHASE_STOPPED`].
    pub phase: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
}

impl StoredLoadRun {
    /// Still wanted at `now`: not stopped and not expired.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.phase == PHASE_RUNNING && self.expires_at > now
    }

    /// The spec each target host runs (run id `run.<name>`).
    pub fn spec(&self) -> LoadRunSpec {
        LoadRunSpec::new(
            LoadRunSpec::run_id_for_run(&self.name),
            self.name.clone(),
            self.profile,
            self.parameters.clone(),
            self.expires_at,
        )
    }
}

#[derive(FromRow)]
struct RunRow {
    name: String,
    hosts: serde_json::Value,
    target_hosts: Vec<String>,
    profile: String,
    parameters: serde_json::Value,
    phase: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    stopped_at: Option<DateTime<Utc>>,
}

impl TryFrom<RunRow> for StoredLoadRun {
    type Error = StoreError;

    fn try_from(row: RunRow) -> Result<Self> {
        let what = format!("load run {}", row.name);
        Ok(StoredLoadRun {
            hosts: serde_json::from_value(row.hosts).map_err(|e| corrupt(&what, e))?,
            profile: LoadProfile::parse(&row.profile)
                .ok_or_else(|| corrupt(&what, format!("unknown profile {}", row.profile)))?,
            parameters: serde_json::from_value(row.parameters).map_err(|e| corrupt(&what, e))?,
            name: row.name,
            target_hosts: row.target_hosts,
            phase: row.phase,
            created_at: row.created_at,
            expires_at: row.expires_at,
            stopped_at: row.stopped_at,
        })
    }
}

const RUN_COLUMNS: &str =
    "name, hosts, target_hosts, profile, parameters, phase, created_at, expires_at, stopped_at";

/// A run to create, already validated and with its hosts resolved.
pub struct NewLoadRun<'a> {
    pub name: &'a str,
    pub hosts: &'a HostTarget,
    pub target_hosts: &'a [String],
    pub profile: LoadProfile,
    pub parameters: &'a LoadParameters,
    /// The W3C trace context of the request that starts it (see [`crate::traces`]).
    pub traceparent: Option<&'a str>,
}

/// Creates a run that expires `parameters.duration` from now. A run of the same
/// name that is stopped or expired is replaced; one still running is a conflict.
pub async fn create_run(conn: &mut PgConnection, new: NewLoadRun<'_>) -> Result<StoredLoadRun> {
    let sql = format!(
        "INSERT INTO load_runs (name, hosts, target_hosts, profile, parameters, expires_at, traceparent) \
         VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 millisecond', $7) \
         ON CONFLICT (name) DO UPDATE SET hosts = EXCLUDED.hosts, target_hosts = EXCLUDED.target_hosts, \
         profile = EXCLUDED.profile, parameters = EXCLUDED.parameters, phase = '{PHASE_RUNNING}', \
         traceparent = EXCLUDED.traceparent, \
         created_at = now(), expires_at = EXCLUDED.expires_at, stopped_at = NULL \
         WHERE load_runs.phase <> '{PHASE_RUNNING}' OR load_runs.expires_at <= now() \
         RETURNING {RUN_COLUMNS}"
    );
    let row: Option<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(new.name)
        .bind(serde_json::to_value(new.hosts).expect("host target serializes"))
        .bind(new.target_hosts)
        .bind(new.profile.as_str())
        .bind(serde_json::to_value(new.parameters).expect("parameters serialize"))
        .bind(new.parameters.duration.as_duration().as_millis() as f64)
        .bind(new.traceparent)
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => row.try_into(),
        None => Err(StoreError::Conflict(format!(
            "load simulation {name} is still running; stop it first (`phoenix loadsim stop {name}`) or pick another name",
            name = new.name
        ))),
    }
}

pub async fn get_run(conn: &mut PgConnection, name: &str) -> Result<StoredLoadRun> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM load_runs WHERE name = $1");
    let row: Option<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(conn)
        .await?;
    row.ok_or_else(|| StoreError::NotFound(format!("load simulation {name}")))?
        .try_into()
}

/// Every stored run, newest first.
pub async fn list_runs(conn: &mut PgConnection) -> Result<Vec<StoredLoadRun>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM load_runs ORDER BY created_at DESC, name");
    let rows: Vec<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(StoredLoadRun::try_from).collect()
}

/// Runs that are neither stopped nor expired (the reconciler's working set).
pub async fn active_runs(conn: &mut PgConnection) -> Result<Vec<StoredLoadRun>> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM load_runs WHERE phase = '{PHASE_RUNNING}' AND expires_at > now() \
         ORDER BY created_at, name"
    );
    let rows: Vec<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(StoredLoadRun::try_from).collect()
}

/// A user's stop. Its workers go away because nothing desires the run any more.
/// Stopping a run that already ended is a conflict that says how it ended.
pub async fn stop_run(conn: &mut PgConnection, name: &str) -> Result<StoredLoadRun> {
    let sql = format!(
        "UPDATE load_runs SET phase = '{PHASE_STOPPED}', stopped_at = now() \
         WHERE name = $1 AND phase = '{PHASE_RUNNING}' AND expires_at > now() RETURNING {RUN_COLUMNS}"
    );
    let row: Option<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = row {
        return row.try_into();
    }
    let existing = get_run(conn, name).await?;
    let how = if existing.phase == PHASE_STOPPED {
        "was already stopped"
    } else {
        "already expired"
    };
    Err(StoreError::Conflict(format!(
        "load simulation {name} {how}; there is nothing to stop"
    )))
}

/// Replaces the load runs (and the process budget) the hosts of a batch of
/// status reports ([`crate::hosts::report_statuses`]) report, inside its transaction.
pub async fn replace_reported(
    conn: &mut PgConnection,
    reports: &BTreeMap<&str, &HostStatus>,
) -> Result<()> {
    let host_ids: Vec<&str> = reports.keys().copied().collect();
    sqlx::query(
        "UPDATE hosts h SET max_load_processes = r.max_load_processes \
         FROM unnest($1::text[], $2::int[]) AS r(host_id, max_load_processes) \
         WHERE h.host_id = r.host_id",
    )
    .persistent(false)
    .bind(&host_ids)
    .bind(
        reports
            .values()
            .map(|s| i32::try_from(s.max_load_processes).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?;
    let delete = format!(
        "DELETE FROM host_loads WHERE {}",
        crate::hosts::in_hosts("host_id", 1)
    );
    sqlx::query(sqlx::AssertSqlSafe(delete))
        .persistent(false)
        .bind(&host_ids)
        .execute(&mut *conn)
        .await?;
    let l: Vec<(&str, &LoadStatus)> = reports
        .iter()
        .flat_map(|(host, s)| s.load.iter().map(move |l| (*host, l)))
        .collect();
    if l.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO host_loads (host_id, run_id, owner, profile, spec_hash, state, live_processes, \
         spawned_total, started_at, expires_at, last_error) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], \
         $8::int8[], $9::timestamptz[], $10::timestamptz[], $11::text[])",
    )
    .persistent(false)
    .bind(l.iter().map(|(h, _)| *h).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, s)| s.run_id.as_str()).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, s)| s.owner.as_str()).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, s)| s.profile.as_str()).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, s)| s.spec_hash.as_str()).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, s)| s.state.as_str()).collect::<Vec<_>>())
    .bind(
        l.iter()
            .map(|(_, s)| i32::try_from(s.live_processes).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(
        l.iter()
            .map(|(_, s)| i64::try_from(s.spawned_total).unwrap_or(i64::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(l.iter().map(|(_, s)| s.started_at).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, s)| s.expires_at).collect::<Vec<_>>())
    .bind(l.iter().map(|(_, s)| s.last_error.as_deref()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(FromRow)]
struct ReportedRow {
    host_id: String,
    run_id: String,
    owner: String,
    profile: String,
    spec_hash: String,
    state: String,
    live_processes: i32,
    spawned_total: i64,
    started_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    last_error: Option<String>,
}

/// Every reported load run of the hosts `filter` lets through, grouped by host.
pub async fn reported_by_host(
    conn: &mut PgConnection,
    filter: HostFilter<'_>,
) -> Result<HashMap<String, Vec<LoadStatus>>> {
    let sql = format!(
        "SELECT host_id, run_id, owner, profile, spec_hash, state, live_processes, spawned_total, \
         started_at, expires_at, last_error FROM host_loads WHERE {} ORDER BY host_id, run_id",
        filter.condition("host_id", 1)
    );
    let rows: Vec<ReportedRow> = filter
        .bind(sqlx::query_as(sqlx::AssertSqlSafe(sql)))
        .fetch_all(conn)
        .await?;
    let mut by_host: HashMap<String, Vec<LoadStatus>> = HashMap::new();
    for row in rows {
        let what = format!("load run {} on {}", row.run_id, row.host_id);
        let status = LoadStatus {
            profile: LoadProfile::parse(&row.profile)
                .ok_or_else(|| corrupt(&what, format!("unknown profile {}", row.profile)))?,
            state: match row.state.as_str() {
                "running" => LoadState::Running,
                "finished" => LoadState::Finished,
                other => return Err(corrupt(&what, format!("unknown state {other}"))),
            },
            run_id: row.run_id,
            owner: row.owner,
            spec_hash: row.spec_hash,
            live_processes: u32::try_from(row.live_processes).unwrap_or(0),
            spawned_total: u64::try_from(row.spawned_total).unwrap_or(0),
            started_at: row.started_at,
            expires_at: row.expires_at,
            last_error: row.last_error,
        };
        by_host.entry(row.host_id).or_default().push(status);
    }
    Ok(by_host)
}

/// Each registered host's load limit, as its agent last reported it.
pub async fn max_processes_by_host(conn: &mut PgConnection) -> Result<HashMap<String, u32>> {
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT host_id, max_load_processes FROM hosts ORDER BY host_id")
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(host, max)| (host, u32::try_from(max).unwrap_or(0)))
        .collect())
}
