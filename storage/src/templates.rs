//! Pipeline templates: the built-in catalog (embedded from `pipelines/` at build
//! time) and user-supplied ones.

use chrono::{DateTime, Utc};
use phoenix_wire::resource::{DocumentFormat, PipelineTemplateDocument, parse_document};
use phoenix_wire::variables::VariableDecl;
use sqlx::FromRow;
use sqlx::postgres::PgConnection;
use sqlx::types::Json;

use crate::{Result, StoreError, corrupt};

include!(concat!(env!("OUT_DIR"), "/builtin_catalog.rs"));

/// The built-in catalog, parsed and validated. A broken file in `pipelines/` is a
/// build defect, reported with the file name.
pub fn builtin() -> Result<Vec<PipelineTemplateDocument>> {
    BUILTIN_FILES
        .iter()
        .map(|(file, text)| {
            let doc: PipelineTemplateDocument =
                parse_document(text.as_bytes(), DocumentFormat::Yaml)
                    .map_err(|e| corrupt(file, e))?;
            doc.validate().map_err(|e| corrupt(file, e))?;
            Ok(doc)
        })
        .collect()
}

/// Inserts or refreshes the built-in templates. User templates of the same name
/// are left alone.
pub async fn seed_builtin(conn: &mut PgConnection) -> Result<()> {
    for doc in builtin()? {
        sqlx::query(
            "INSERT INTO pipeline_templates (name, description, config, variables, builtin) VALUES ($1, $2, $3, $4, TRUE) \
             ON CONFLICT (name) DO UPDATE SET description = EXCLUDED.description, config = EXCLUDED.config, \
             variables = EXCLUDED.variables, updated_at = now() WHERE pipeline_templates.builtin \
             AND (pipeline_templates.config, pipeline_templates.description, pipeline_templates.variables) \
             IS DISTINCT FROM (EXCLUDED.config, EXCLUDED.description, EXCLUDED.variables)",
        )
        .bind(&doc.metadata.name)
        .bind(&doc.spec.description)
        .bind(&doc.spec.config)
        .bind(Json(&doc.spec.variables))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A stored template.
#[derive(Clone, Debug, FromRow)]
pub struct StoredTemplate {
    pub name: String,
    pub description: String,
    pub config: String,
    /// The declared, typed variables.
    pub variables: Json<Vec<VariableDecl>>,
    pub builtin: bool,
    pub managed_by: Option<String>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "name, description, config, variables, builtin, managed_by, updated_at";

pub async fn get(conn: &mut PgConnection, name: &str) -> Result<StoredTemplate> {
    let sql = format!("SELECT {COLUMNS} FROM pipeline_templates WHERE name = $1");
    let row: Option<StoredTemplate> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(conn)
        .await?;
    row.ok_or_else(|| StoreError::NotFound(format!("pipeline {name}")))
}

pub async fn list(conn: &mut PgConnection) -> Result<Vec<StoredTemplate>> {
    let sql = format!("SELECT {COLUMNS} FROM pipeline_templates ORDER BY name");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?)
}
