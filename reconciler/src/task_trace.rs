//! The trace context of the tasks a pass makes (`phoenix_telemetry::context`).
//!
//! The pass is a span of its own ("reconcile pass"): one pass serves many changes.
//! For each owner (experiment, deployment, load run) that gets new tasks, a
//! "create tasks" span continues the trace of the request that last wrote the
//! owner (its stored `traceparent`), linked to the pass, and lasts until the pass
//! commits. Each task stores that span's `traceparent`, and the agent that claims
//! the task continues it, so one trace reads: request → create tasks → the agent's
//! claim, converge and collector health. An owner without a stored trace context
//! gets its "create tasks" span under the pass. When this process is not traced,
//! the owner's stored context passes to its tasks unchanged.

use std::collections::HashMap;

use phoenix_storage::tasks::NewTask;
use phoenix_storage::{PgConnection, Result, traces};
use phoenix_wire::view::TaskOwner;

/// Sets the `traceparent` of each of `tasks`, and returns the "create tasks" spans,
/// which the caller keeps until its transaction commits.
pub async fn continue_traces(
    conn: &mut PgConnection,
    tasks: &mut [NewTask],
) -> Result<Vec<tracing::Span>> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let owners: Vec<Option<TaskOwner>> = tasks
        .iter()
        .map(|t| TaskOwner::of(t.kind, &t.unit_id))
        .collect();
    let mut distinct: Vec<TaskOwner> = Vec::new();
    for owner in owners.iter().flatten() {
        if !distinct.contains(owner) {
            distinct.push(owner.clone());
        }
    }
    let stored = traces::of_owners(conn, &distinct).await?;
    let pass = tracing::Span::current();
    let pass_traceparent = phoenix_telemetry::traceparent(&pass);

    let mut steps: HashMap<Option<TaskOwner>, (tracing::Span, Option<String>, usize)> =
        HashMap::new();
    for (task, owner) in tasks.iter_mut().zip(owners) {
        let step = steps.entry(owner).or_insert_with_key(|owner| {
            let label = owner.as_ref().map_or_else(|| "none".to_string(), label);
            let cause = owner.as_ref().and_then(|o| stored.get(o));
            let span = match cause {
                Some(cause) => {
                    let span = tracing::info_span!(
                        parent: None,
                        "create tasks",
                        owner = %label,
                        tasks = tracing::field::Empty
                    );
                    phoenix_telemetry::set_parent(&span, cause);
                    if let Some(pass) = &pass_traceparent {
                        phoenix_telemetry::context::add_link(&span, pass);
                    }
                    span
                }
                None => tracing::info_span!(
                    parent: &pass,
                    "create tasks",
                    owner = %label,
                    tasks = tracing::field::Empty
                ),
            };
            let traceparent = phoenix_telemetry::traceparent(&span).or_else(|| cause.cloned());
            (span, traceparent, 0)
        });
        task.traceparent = step.1.clone();
        step.2 += 1;
    }
    Ok(steps
        .into_values()
        .map(|(span, _, count)| {
            span.record("tasks", count);
            span
        })
        .collect())
}

/// `experiment/NAME`, `deployment/NAME`, `loadsim/NAME`.
fn label(owner: &TaskOwner) -> String {
    match owner {
        TaskOwner::Experiment(name) => format!("experiment/{name}"),
        TaskOwner::Deployment(name) => format!("deployment/{name}"),
        TaskOwner::Loadsim(name) => format!("loadsim/{name}"),
    }
}
