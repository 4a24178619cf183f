//! Content-addressed collector configs (agent protocol 2.1): a rendered config body
//! is stored once whatever the number of hosts, tasks name it by SHA-256, per-host
//! values travel in the task's environment, agents fetch a body by its name (its
//! SHA-256), and agents of 2.0 still get every body inline.

use std::collections::BTreeMap;
use std::time::Duration;

use phoenix_e2e::harness::{OPERATOR_TOKEN, Stack, StackOptions, eventually};
use phoenix_wire::agent::{CollectorSpec, PROTOCOL_HEADER, TaskBatch, body_sha256};
use reqwest::Method;

const WAIT: Duration = Duration::from_secs(30);

fn deployment(threshold: &str) -> String {
    format!(
        "apiVersion: phoenix.dev/v1\nkind: PipelineDeployment\nmetadata: {{name: shared}}\n\
         spec:\n  hosts: {{selector: {{role: web}}}}\n  pipeline: process-topk\n  vars: {{cpu_threshold: \"{threshold}\"}}\n"
    )
}

async fn deploy(stack: &Stack, threshold: &str) {
    let response = stack
        .request(Method::POST, "/api/v1/deployments", OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(deployment(threshold))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

/// The open tasks' specs of the standing collector, by host, as stored.
async fn stored_specs(stack: &Stack) -> BTreeMap<String, (CollectorSpec, Option<String>)> {
    let rows: Vec<(String, serde_json::Value, Option<String>)> = sqlx::query_as(
        "SELECT host_id, payload, config_sha256 FROM agent_tasks \
         WHERE unit_id = 'shared.standing' AND status = 'pending' ORDER BY id",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(host, payload, sha)| (host, (serde_json::from_value(payload).unwrap(), sha)))
        .collect()
}

async fn stored_bodies(stack: &Stack) -> Vec<(String, String)> {
    sqlx::query_as("SELECT sha256, body FROM collector_configs ORDER BY sha256")
        .fetch_all(&stack.pool)
        .await
        .unwrap()
}

/// A long-poll answered at once, speaking agent protocol `protocol`.
async fn claim(stack: &Stack, host: &str, protocol: &str) -> TaskBatch {
    let response = stack
        .request(
            Method::GET,
            &format!("/agent/v1/hosts/{host}/tasks?wait=0s"),
            &stack.host_credential(host).await,
        )
        .header(PROTOCOL_HEADER, protocol)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()[PROTOCOL_HEADER],
        phoenix_wire::agent::AGENT_PROTOCOL.to_string(),
        "every agent answer names the api's protocol"
    );
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_one_stored_body_and_a_changed_variable_changes_only_the_environment() {
    let stack = Stack::start_with(StackOptions::default()).await;
    stack.register_host("web-1", &[("role", "web")]).await;
    stack.register_host("web-2", &[("role", "web")]).await;

    deploy(&stack, "0.1").await;
    let first = eventually("a task for each host", WAIT, || async {
        let specs = stored_specs(&stack).await;
        (specs.len() == 2).then_some(specs)
    })
    .await;
    let bodies = stored_bodies(&stack).await;
    assert_eq!(bodies.len(), 1, "one body for both hosts: {bodies:?}");
    let (sha, body) = &bodies[0];
    assert_eq!(&body_sha256(body), sha, "stored under its own hash");
    for (host, (spec, column)) in &first {
        assert!(spec.config.is_empty(), "{host}: the task carries no body");
        assert_eq!(spec.config_ref.as_ref(), Some(sha), "{host} names the body");
        assert_eq!(
            column.as_ref(),
            Some(sha),
            "{host}: the column names it too"
        );
        assert_eq!(spec.env["PHOENIX_HOST"], *host);
    }
    // What differs between the hosts is the environment, and only the host in it.
    let (env1, env2) = (&first["web-1"].0.env, &first["web-2"].0.env);
    let differing: Vec<&String> = env1
        .keys()
        .filter(|k| env1.get(*k) != env2.get(*k))
        .collect();
    assert_eq!(differing, ["PHOENIX_HOST"]);
    assert_ne!(first["web-1"].0.config_hash, first["web-2"].0.config_hash);

    // A new value of a variable: the same body, each host's environment changed
    // in that variable alone.
    deploy(&stack, "0.2").await;
    let second = eventually("the update's tasks", WAIT, || async {
        let specs = stored_specs(&stack).await;
        let updated = specs
            .values()
            .all(|(s, _)| s.env["PHOENIX_VAR_CPU_THRESHOLD"] == "0.2");
        (specs.len() == 2 && updated).then_some(specs)
    })
    .await;
    assert_eq!(stored_bodies(&stack).await, bodies, "still the one body");
    for host in ["web-1", "web-2"] {
        let (before, after) = (&first[host].0, &second[host].0);
        assert_eq!(after.config_ref, before.config_ref);
        let changed: Vec<&String> = after
            .env
            .keys()
            .filter(|k| after.env.get(*k) != before.env.get(*k))
            .collect();
        assert_eq!(changed, ["PHOENIX_VAR_CPU_THRESHOLD"], "{host}");
        assert_ne!(after.config_hash, before.config_hash, "{host}");
    }

    // A 2.1 agent gets the reference and fetches the body, which hashes to it; a
    // 2.0 agent gets the body inline.
    let by_reference = claim(&stack, "web-1", "2.1").await;
    let spec = by_reference.tasks[0].collector.clone().unwrap();
    assert!(spec.config.is_empty());
    let fetched = stack
        .request(
            Method::GET,
            &format!("/agent/v1/hosts/web-1/configs/{sha}"),
            &stack.host_credential("web-1").await,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let fetched = fetched.text().await.unwrap();
    let spec = spec
        .with_body(fetched.into())
        .expect("the body hashes to its name");
    assert_eq!(&*spec.config, body.as_str());
    let inline = claim(&stack, "web-2", "2.0").await;
    let spec = inline.tasks[0].collector.clone().unwrap();
    assert_eq!(&*spec.config, body.as_str(), "served inline to a 2.0 agent");
    assert_eq!(spec.config_ref, None);

    // A name nothing is stored under is a 404; a name that is no SHA-256 a 422.
    let unknown = stack
        .request(
            Method::GET,
            &format!("/agent/v1/hosts/web-1/configs/{}", "0".repeat(64)),
            &stack.host_credential("web-1").await,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let malformed = stack
        .request(
            Method::GET,
            "/agent/v1/hosts/web-1/configs/not-a-hash",
            &stack.host_credential("web-1").await,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 422);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_the_heartbeat_and_an_unregistered_host_is_told_to_register() {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await;
    let credential = stack.host_credential("quiet-1").await;
    let poll = |wait: &'static str| {
        stack
            .request(
                Method::GET,
                &format!("/agent/v1/hosts/quiet-1/tasks?wait={wait}"),
                &credential,
            )
            .send()
    };
    // Not registered: the poll says so, naming the way to register.
    let response = poll("0s").await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("PUT /agent/v1/hosts/quiet-1/status")
    );

    stack.register_host("quiet-1", &[]).await;
    let last_seen = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "SELECT last_seen FROM hosts WHERE host_id = 'quiet-1'",
        )
        .fetch_one(&stack.pool)
        .await
        .unwrap()
    };
    let registered = last_seen().await;
    // Long-polls one after another, nothing else. Each counts as a heartbeat when it
    // arrives and every 10 s it waits, but the api writes one only when the host's
    // last_seen is due for renewal: 25 s after the last write at the 60 s grace
    // (api `liveness_renewal`), so an idle host costs a row every 30 s, not every 10 s.
    let first = tokio::spawn(poll("30s"));
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        last_seen().await,
        registered,
        "a poll arriving, and waiting 10 s, within the renewal writes nothing"
    );
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    let waiting = tokio::spawn(poll("15s"));
    eventually("a later poll renews the host's liveness", WAIT, || async {
        let seen = last_seen().await;
        (seen >= registered + chrono::Duration::seconds(25)).then_some(())
    })
    .await;
    let answered = waiting.await.unwrap().unwrap();
    assert_eq!(answered.status(), 200);
    stack.shutdown().await;
}
