//! Standing pipelines in the reconcile pass, as two steps of their own:
//!
//! - [`promote_passing`]: `promotion: auto` — a completed experiment whose verdict
//!   is `pass` is promoted by the api's promotion policy (the same rules and
//!   transaction as a user's promote, so doing it again finds the experiment
//!   `promoted` and does nothing).
//! - [`add_desired`]: every host a pipeline deployment selects runs the
//!   deployment's standing collector. Hosts are resolved on every pass, so standing
//!   pipelines follow the fleet (unlike experiments, whose hosts are fixed when
//!   deploying starts). A host selected by several deployments runs the oldest's.
//!
//! Both feed the same desired state as experiments, before the diff. While a
//! deployment's revision is rolling out ([`crate::rollout`]), only the hosts its
//! batches reached run it; the others keep the revision it came from.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use phoenix_api::app::promotion::{self, PromotedBy, Promotion, PromotionError};
use phoenix_storage::deployments::{self, StoredDeployment};
use phoenix_storage::destinations;
use phoenix_storage::hosts::HostRecord;
use phoenix_storage::rollouts::{self, CurrentRollout};
use phoenix_storage::{PgConnection, Result, tasks, templates};
use phoenix_wire::agent::{CollectorSpec, TaskKind, UnitSpec};
use phoenix_wire::deployment::DeploymentSpec;
use phoenix_wire::destination::DestinationSpec;
use phoenix_wire::render::{Template, standing_collector};
use phoenix_wire::view::Phase;

use crate::config::ReconcilerConfig;
use crate::diff::{self, Blocked, DesiredState};
use crate::lifecycle;
use crate::pass::PassReport;

/// Promotes every completed `promotion: auto` experiment with a passing verdict.
/// One that cannot be promoted (its hosts run several deployments, say) stays
/// `completed` and is logged; a user can promote it naming the deployment.
pub async fn promote_passing(conn: &mut PgConnection, report: &mut PassReport) -> Result<()> {
    for name in deployments::auto_promotable(conn).await? {
        let promotion = Promotion {
            experiment: name.clone(),
            deployment: None,
            by: PromotedBy::Auto,
        };
        match promotion::promote(conn, &promotion).await {
            Ok((_, deployment)) => {
                tracing::info!(experiment = %name, deployment = %deployment.name, revision = deployment.revision, "promoted automatically");
                report
                    .transitions
                    .push((name, Phase::Completed, Phase::Promoted));
            }
            Err(PromotionError::Conflict(reason)) => {
                tracing::warn!(experiment = %name, %reason, "cannot promote automatically");
            }
            Err(PromotionError::Store(err)) => return Err(err),
        }
    }
    Ok(())
}

/// Adds every host's standing collector to `desired`, and to `blocked` those that
/// keep failing to start (retried once `retry_after` has passed since their last
/// failures, so a broken pipeline does not spin the agent).
pub async fn add_desired(
    conn: &mut PgConnection,
    hosts: &[HostRecord],
    template_configs: &HashMap<String, Template>,
    config: &ReconcilerConfig,
    now: DateTime<Utc>,
    desired: &mut DesiredState,
    blocked: &mut Blocked,
) -> Result<()> {
    let deployments = deployments::list(conn).await?;
    if deployments.is_empty() {
        return Ok(());
    }
    // Failed starts count from the later of the revision's start and one deploy
    // timeout ago: a blocked collector is tried again after that long.
    let retry_after = config.deploy_timeout.as_duration();
    let window_start = now - chrono::Duration::from_std(retry_after).unwrap_or_default();
    let failures = tasks::failures_since(conn, TaskKind::Collector, window_start).await?;
    let rollouts: HashMap<String, CurrentRollout> = rollouts::current(conn)
        .await?
        .into_iter()
        .map(|r| (r.deployment.clone(), r))
        .collect();
    let specs = render(
        &deployments,
        &rollouts,
        hosts,
        template_configs,
        &config.remote_write_url,
        &destinations::specs(conn).await?,
    );
    for (host, spec, since) in specs {
        let failed = lifecycle::failures_of(&failures, &host, &spec, since.max(window_start));
        let limit = (failed.len(), config.max_start_failures);
        diff::want(desired, blocked, host, UnitSpec::Collector(spec), limit);
    }
    Ok(())
}

/// Every pipeline template, by name, ready to render.
pub async fn template_configs(conn: &mut PgConnection) -> Result<HashMap<String, Template>> {
    Ok(templates::list(conn)
        .await?
        .into_iter()
        .map(|t| (t.name, Template::new(t.config, t.variables.0)))
        .collect())
}

/// The spec a host runs of its deployment `owner`: the current revision's, unless
/// an open roll-out of it has not reached the host yet (then the revision it
/// comes from, if that one selects the host; a first revision's roll-out reaches
/// every host in its first batch).
fn revision_for<'a>(
    owner: &'a StoredDeployment,
    rollout: Option<&'a CurrentRollout>,
    host: &HostRecord,
) -> Option<&'a DeploymentSpec> {
    match rollout {
        Some(current)
            if current.rollout.state.is_open() && !current.rollout.reached(&host.host_id) =>
        {
            current
                .from_spec
                .as_ref()
                .filter(|from| from.selects(&host.host_id, &host.labels))
        }
        _ => Some(&owner.spec),
    }
}

/// Every (host, standing collector, time its revision became current) desired.
/// A deployment whose template is gone is left out, with a warning.
pub fn render(
    deployments: &[StoredDeployment],
    rollouts: &HashMap<String, CurrentRollout>,
    hosts: &[HostRecord],
    template_configs: &HashMap<String, Template>,
    remote_write_url: &str,
    destinations: &BTreeMap<String, DestinationSpec>,
) -> Vec<(String, CollectorSpec, DateTime<Utc>)> {
    let mut specs = Vec::new();
    for host in hosts {
        let Some(owner) = deployments::standing_owner(deployments, &host.host_id, &host.labels)
        else {
            continue;
        };
        let Some(revision) = revision_for(owner, rollouts.get(&owner.name), host) else {
            continue;
        };
        let Some(config) = template_configs.get(&revision.pipeline) else {
            tracing::warn!(deployment = %owner.name, pipeline = %revision.pipeline, host = %host.host_id, "the deployment's pipeline template no longer exists");
            continue;
        };
        let spec = standing_collector(
            &owner.name,
            revision,
            &host.host_id,
            config,
            remote_write_url,
            destinations,
        );
        specs.push((host.host_id.clone(), spec, owner.updated_at));
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;
    use phoenix_wire::names::Labels;

    fn deployment(name: &str, hosts: serde_json::Value, pipeline: &str) -> StoredDeployment {
        let spec: DeploymentSpec = serde_json::from_value(serde_json::json!({
            "hosts": hosts,
            "pipeline": pipeline,
        }))
        .unwrap();
        StoredDeployment {
            name: name.into(),
            labels: Labels::new(),
            spec,
            revision: 1,
            promoted_from: None,
            change: "deployed by user".into(),
            managed_by: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn host(id: &str, role: &str) -> HostRecord {
        HostRecord {
            host_id: id.into(),
            labels: [("role".to_string(), role.to_string())].into(),
            agent_version: "test".into(),
            last_seen: Utc::now(),
        }
    }

    #[test]
    fn standing_pipelines_follow_the_fleet_and_the_oldest_deployment_wins() {
        let deployments = [
            deployment(
                "web",
                serde_json::json!({"selector": {"role": "web"}}),
                "p1",
            ),
            deployment(
                "pinned",
                serde_json::json!({"names": ["web-2", "db-1"]}),
                "p2",
            ),
            deployment("gone", serde_json::json!({"names": ["db-2"]}), "missing"),
        ];
        let templates = HashMap::from([
            ("p1".to_string(), Template::new("one", vec![])),
            ("p2".to_string(), Template::new("two", vec![])),
        ]);
        let hosts = [
            host("web-1", "web"),
            host("web-2", "web"),
            host("db-1", "db"),
            host("db-2", "db"),
            host("cache-1", "cache"),
        ];
        let specs = render(
            &deployments,
            &HashMap::new(),
            &hosts,
            &templates,
            "http://prom",
            &BTreeMap::new(),
        );
        let got: Vec<(&str, &str, &str)> = specs
            .iter()
            .map(|(h, s, _)| (h.as_str(), s.collector_id.as_str(), &*s.config))
            .collect();
        assert_eq!(
            got,
            vec![
                ("web-1", "web.standing", "one"),
                // web-2 is selected by both; the older deployment wins.
                ("web-2", "web.standing", "one"),
                ("db-1", "pinned.standing", "two"),
                // db-2's deployment has no template; cache-1 is selected by none.
            ]
        );
        // A host that joins later is picked up on the next pass.
        let mut more = hosts.to_vec();
        more.push(host("web-3", "web"));
        assert_eq!(
            render(
                &deployments,
                &HashMap::new(),
                &more,
                &templates,
                "http://prom",
                &BTreeMap::new()
            )
            .len(),
            4
        );
    }

    #[test]
    fn hosts_a_rollout_has_not_reached_keep_the_revision_it_comes_from() {
        use phoenix_wire::rollout::{HostRollout, Rollout, RolloutHost, RolloutState};
        let mut web = deployment(
            "web",
            serde_json::json!({"selector": {"role": "web"}}),
            "p2",
        );
        web.revision = 2;
        let from = deployment(
            "web",
            serde_json::json!({"selector": {"role": "web"}}),
            "p1",
        )
        .spec;
        let reached = RolloutHost {
            batch: 1,
            state: HostRollout::Updating,
            since: Utc::now(),
            reason: None,
        };
        let mut rollout = CurrentRollout {
            deployment: "web".into(),
            rollout: Rollout {
                revision: 2,
                from_revision: Some(1),
                state: RolloutState::Rolling,
                batch: 1,
                batch_started_at: Some(Utc::now()),
                hosts: [("web-1".to_string(), reached)].into(),
                reason: None,
                started_at: Utc::now(),
                finished_at: None,
            },
            from_spec: Some(from),
        };
        let templates = HashMap::from([
            ("p1".to_string(), Template::new("one", vec![])),
            ("p2".to_string(), Template::new("two", vec![])),
        ]);
        let hosts = [host("web-1", "web"), host("web-2", "web")];
        let configs = |rollout: &CurrentRollout| -> Vec<String> {
            let rollouts = HashMap::from([("web".to_string(), rollout.clone())]);
            render(
                std::slice::from_ref(&web),
                &rollouts,
                &hosts,
                &templates,
                "http://prom",
                &BTreeMap::new(),
            )
            .into_iter()
            .map(|(h, s, _)| format!("{h}={}", s.config))
            .collect()
        };
        assert_eq!(configs(&rollout), ["web-1=two", "web-2=one"]);
        // Once it is done (or rolled back, when revision 1 is current again) every
        // host runs the current revision.
        rollout.rollout.state = RolloutState::Done;
        assert_eq!(configs(&rollout), ["web-1=two", "web-2=two"]);
        // A first revision's hosts not reached yet run nothing of it.
        rollout.rollout.state = RolloutState::Rolling;
        rollout.from_spec = None;
        assert_eq!(configs(&rollout), ["web-1=two"]);
    }
}
