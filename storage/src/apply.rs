//! Queries of declarative apply (`POST /api/v1/apply`): ownership (`managed_by`)
//! and the updates apply makes besides creating. The caller runs them, with the
//! creates and deletes of the other modules, in one transaction.

use phoenix_wire::names::Labels;
use phoenix_wire::resource::{ExperimentSpec, PipelineTemplateSpec};
use sqlx::postgres::PgConnection;

use crate::Result;

/// The tables of resources that apply manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Managed {
    Experiments,
    PipelineTemplates,
    PipelineDeployments,
}

impl Managed {
    fn table(self) -> &'static str {
        match self {
            Managed::Experiments => "experiments",
            Managed::PipelineTemplates => "pipeline_templates",
            Managed::PipelineDeployments => "pipeline_deployments",
        }
    }
}

/// Records that `source` manages the resource.
pub async fn set_managed_by(
    conn: &mut PgConnection,
    table: Managed,
    name: &str,
    source: &str,
) -> Result<()> {
    let sql = format!(
        "UPDATE {} SET managed_by = $2 WHERE name = $1",
        table.table()
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .bind(source)
        .execute(conn)
        .await?;
    Ok(())
}

/// Names of the resources `source` manages, sorted.
pub async fn managed_names(
    conn: &mut PgConnection,
    table: Managed,
    source: &str,
) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT name FROM {} WHERE managed_by = $1 ORDER BY name",
        table.table()
    );
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(source)
        .fetch_all(conn)
        .await?)
}

/// Replaces a pending experiment's labels and spec; a new spec bumps `generation`.
/// Returns false (and changes nothing) when the experiment is no longer pending.
pub async fn update_pending_experiment(
    conn: &mut PgConnection,
    name: &str,
    labels: &Labels,
    spec: &ExperimentSpec,
    spec_changed: bool,
) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE experiments SET labels = $2, spec = $3, \
         generation = generation + CASE WHEN $4 THEN 1 ELSE 0 END, updated_at = now() \
         WHERE name = $1 AND phase = 'pending'",
    )
    .bind(name)
    .bind(serde_json::to_value(labels).expect("labels serialize"))
    .bind(serde_json::to_value(spec).expect("spec serializes"))
    .bind(spec_changed)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Replaces an experiment's labels only (any phase; the spec is untouched).
pub async fn set_experiment_labels(
    conn: &mut PgConnection,
    name: &str,
    labels: &Labels,
) -> Result<()> {
    sqlx::query("UPDATE experiments SET labels = $2, updated_at = now() WHERE name = $1")
        .bind(name)
        .bind(serde_json::to_value(labels).expect("labels serialize"))
        .execute(conn)
        .await?;
    Ok(())
}

/// Creates or replaces a user template managed by `source`.
pub async fn upsert_template(
    conn: &mut PgConnection,
    name: &str,
    spec: &PipelineTemplateSpec,
    source: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO pipeline_templates (name, description, config, variables, builtin, managed_by) \
         VALUES ($1, $2, $3, $5, FALSE, $4) \
         ON CONFLICT (name) DO UPDATE SET description = EXCLUDED.description, \
         config = EXCLUDED.config, variables = EXCLUDED.variables, updated_at = now() \
         WHERE NOT pipeline_templates.builtin",
    )
    .bind(name)
    .bind(&spec.description)
    .bind(&spec.config)
    .bind(source)
    .bind(sqlx::types::Json(&spec.variables))
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes a user template.
pub async fn delete_template(conn: &mut PgConnection, name: &str) -> Result<()> {
    sqlx::query("DELETE FROM pipeline_templates WHERE name = $1 AND NOT builtin")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}
