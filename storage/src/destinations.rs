//! Destinations (desired state): the user's backends that standing collectors
//! export to. Table access only; what a destination may hold is checked by
//! `phoenix_wire::destination` before anything reaches here, and the table holds
//! credential references only, never a secret.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use phoenix_wire::destination::{Destination, DestinationSpec};
use phoenix_wire::names::Labels;
use sqlx::FromRow;
use sqlx::postgres::PgConnection;

use crate::{Result, StoreError, corrupt};

#[derive(FromRow)]
struct Row {
    name: String,
    labels: serde_json::Value,
    spec: serde_json::Value,
    used_by: Vec<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<Row> for Destination {
    type Error = StoreError;

    fn try_from(row: Row) -> Result<Self> {
        let what = format!("destination {}", row.name);
        Ok(Destination {
            labels: serde_json::from_value(row.labels).map_err(|e| corrupt(&what, e))?,
            spec: serde_json::from_value(row.spec).map_err(|e| corrupt(&what, e))?,
            name: row.name,
            used_by: row.used_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

const SELECT: &str = "SELECT d.name, d.labels, d.spec, d.created_at, d.updated_at, \
     COALESCE((SELECT array_agg(p.name ORDER BY p.name) FROM pipeline_deployments p \
               WHERE p.spec -> 'destinations' ? d.name), '{}') AS used_by \
     FROM destinations d";

/// Creates the destination, or replaces its spec and labels; true when it is new.
pub async fn upsert(
    conn: &mut PgConnection,
    name: &str,
    labels: &Labels,
    spec: &DestinationSpec,
) -> Result<bool> {
    let (created,): (bool,) = sqlx::query_as(
        "INSERT INTO destinations (name, labels, spec) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET labels = EXCLUDED.labels, spec = EXCLUDED.spec, \
           updated_at = CASE WHEN destinations.spec = EXCLUDED.spec THEN destinations.updated_at ELSE now() END \
         RETURNING (xmax = 0)",
    )
    .bind(name)
    .bind(serde_json::to_value(labels).expect("labels serialize"))
    .bind(serde_json::to_value(spec).expect("a spec serializes"))
    .fetch_one(conn)
    .await?;
    Ok(created)
}

pub async fn get(conn: &mut PgConnection, name: &str) -> Result<Destination> {
    let row: Option<Row> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE d.name = $1")))
            .bind(name)
            .fetch_optional(conn)
            .await?;
    row.map(Destination::try_from)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("destination {name}")))
}

/// Every destination, by name.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<Destination>> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} ORDER BY d.name")))
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(Destination::try_from).collect()
}

/// Every destination's spec by name: what rendering needs.
pub async fn specs(conn: &mut PgConnection) -> Result<BTreeMap<String, DestinationSpec>> {
    Ok(list(conn)
        .await?
        .into_iter()
        .map(|d| (d.name, d.spec))
        .collect())
}

/// Deletes a destination no deployment names; a [`StoreError::Conflict`] naming
/// the deployments that still do.
pub async fn delete(conn: &mut PgConnection, name: &str) -> Result<()> {
    let deleted = sqlx::query(
        "DELETE FROM destinations WHERE name = $1 AND NOT EXISTS \
         (SELECT 1 FROM pipeline_deployments WHERE spec -> 'destinations' ? $1)",
    )
    .bind(name)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if deleted == 1 {
        return Ok(());
    }
    let existing = get(conn, name).await?;
    Err(StoreError::Conflict(format!(
        "destination {name} is used by pipeline deployment(s) {}; remove it from their spec.destinations first",
        existing.used_by.join(", ")
    )))
}
