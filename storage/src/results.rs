//! Experiment results: the measurement window, analysis attempts, and the report.

use chrono::{DateTime, Utc};
use phoenix_wire::report::ExperimentReport;
use sqlx::FromRow;
use sqlx::postgres::PgConnection;

use crate::{Result, StoreError, corrupt};

/// An experiment's analysis so far.
#[derive(Clone, Debug, FromRow)]
pub struct AnalysisState {
    pub experiment: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// Records the window to analyze (when the experiment leaves `running`); a repeat
/// resets the attempts.
pub async fn begin(
    conn: &mut PgConnection,
    experiment: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO experiment_results (experiment, window_start, window_end) VALUES ($1, $2, $3) \
         ON CONFLICT (experiment) DO UPDATE SET window_start = $2, window_end = $3, attempts = 0, \
         last_error = NULL, verdict = NULL, report = NULL, analyzed_at = NULL, updated_at = now()",
    )
    .bind(experiment)
    .bind(start)
    .bind(end)
    .execute(conn)
    .await?;
    Ok(())
}

/// The verdict of an experiment's report, if it has one.
pub async fn verdict(conn: &mut PgConnection, experiment: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT verdict FROM experiment_results WHERE experiment = $1")
            .bind(experiment)
            .fetch_optional(conn)
            .await?
            .flatten(),
    )
}

pub async fn state(conn: &mut PgConnection, experiment: &str) -> Result<Option<AnalysisState>> {
    Ok(sqlx::query_as(
        "SELECT experiment, window_start, window_end, attempts, last_error FROM experiment_results WHERE experiment = $1",
    )
    .bind(experiment)
    .fetch_optional(conn)
    .await?)
}

/// Counts a failed attempt and keeps its error.
pub async fn record_failure(conn: &mut PgConnection, experiment: &str, error: &str) -> Result<i32> {
    let attempts: Option<i32> = sqlx::query_scalar(
        "UPDATE experiment_results SET attempts = attempts + 1, last_error = $2, updated_at = now() \
         WHERE experiment = $1 RETURNING attempts",
    )
    .bind(experiment)
    .bind(error)
    .fetch_optional(conn)
    .await?;
    attempts.ok_or_else(|| StoreError::NotFound(format!("results of experiment {experiment}")))
}

/// Stores the report and its verdict.
pub async fn store(conn: &mut PgConnection, report: &ExperimentReport) -> Result<()> {
    sqlx::query(
        "UPDATE experiment_results SET attempts = attempts + 1, last_error = NULL, verdict = $2, report = $3, \
         analyzed_at = $4, updated_at = now() WHERE experiment = $1",
    )
    .bind(&report.experiment)
    .bind(report.verdict.as_str())
    .bind(serde_json::to_value(report).expect("report serializes"))
    .bind(report.analyzed_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The stored report of an experiment, if the analysis reached one.
pub async fn report(conn: &mut PgConnection, experiment: &str) -> Result<Option<ExperimentReport>> {
    let value: Option<Option<serde_json::Value>> =
        sqlx::query_scalar("SELECT report FROM experiment_results WHERE experiment = $1")
            .bind(experiment)
            .fetch_optional(conn)
            .await?;
    value
        .flatten()
        .map(|v| {
            serde_json::from_value(v).map_err(|e| corrupt(&format!("report of {experiment}"), e))
        })
        .transpose()
}
