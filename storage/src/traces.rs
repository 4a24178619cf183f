//! The W3C trace context (`traceparent`) stored with desired state (migration 0017):
//! the api writes the one of the request that created or changed an experiment, a
//! deployment's current revision or a load run (a field of each `New…` value); the
//! reconciler reads them here for the owners of the tasks a pass makes, and stores
//! one on each task ([`crate::tasks::NewTask::traceparent`]), which the agent
//! receives with it. The values are opaque here: whoever continues one checks it.

use std::collections::HashMap;

use phoenix_wire::view::TaskOwner;
use sqlx::postgres::PgConnection;

use crate::Result;

/// The stored trace context of each of `owners` that has one.
pub async fn of_owners(
    conn: &mut PgConnection,
    owners: &[TaskOwner],
) -> Result<HashMap<TaskOwner, String>> {
    let names = |want: fn(&TaskOwner) -> Option<&String>| -> Vec<&str> {
        owners.iter().filter_map(want).map(String::as_str).collect()
    };
    let experiments = names(|o| match o {
        TaskOwner::Experiment(name) => Some(name),
        _ => None,
    });
    let deployments = names(|o| match o {
        TaskOwner::Deployment(name) => Some(name),
        _ => None,
    });
    let loadsims = names(|o| match o {
        TaskOwner::Loadsim(name) => Some(name),
        _ => None,
    });
    if experiments.is_empty() && deployments.is_empty() && loadsims.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT 'experiment', name, traceparent FROM experiments \
           WHERE name = ANY($1) AND traceparent IS NOT NULL \
         UNION ALL SELECT 'deployment', name, traceparent FROM pipeline_deployments \
           WHERE name = ANY($2) AND traceparent IS NOT NULL \
         UNION ALL SELECT 'loadsim', name, traceparent FROM load_runs \
           WHERE name = ANY($3) AND traceparent IS NOT NULL",
    )
    .bind(&experiments)
    .bind(&deployments)
    .bind(&loadsims)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, name, traceparent)| {
            let owner = match kind.as_str() {
                "experiment" => TaskOwner::Experiment(name),
                "deployment" => TaskOwner::Deployment(name),
                _ => TaskOwner::Loadsim(name),
            };
            (owner, traceparent)
        })
        .collect())
}
