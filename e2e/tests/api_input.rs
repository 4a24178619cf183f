//! Bad input gets the right 4xx with an `application/problem+json` body naming the
//! field, and leaves the database exactly as it was. One test per case.

use phoenix_e2e::harness::{ADMIN_TOKEN, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN};
use phoenix_wire::problem::Problem;
use phoenix_wire::view::{Host, List};
use reqwest::Method;

const GOOD: &str = r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata:
  name: topk-web
spec:
  hosts: {selector: {role: web}}
  baseline: {pipeline: process-baseline}
  candidate: {pipeline: process-topk}
  duration: 10m
  criticalProcesses: [nginx]
"#;

/// A stack with one registered host labelled role=web. No reconciler: these tests
/// compare the database before and after a request, and a reconciler acting on an
/// earlier, accepted experiment would change it in between.
async fn stack_with_host() -> Stack {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await;
    stack.register_host("web-1", &[("role", "web")]).await;
    stack
}

/// Row counts of every desired-state and work table.
async fn snapshot(stack: &Stack) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "experiments",
        "experiment_events",
        "agent_tasks",
        "pipeline_templates",
    ] {
        // `table` is one of the fixed names above.
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&stack.pool)
                .await
                .unwrap();
        counts.push(n);
    }
    counts
}

/// Sends a create request and checks status, problem body, named field, and that
/// nothing changed in the database.
async fn assert_rejected(
    stack: &Stack,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    status: u16,
    field: Option<&str>,
) -> Problem {
    let before = snapshot(stack).await;
    let mut request = stack
        .http
        .post(stack.url("/api/v1/experiments"))
        .header("content-type", content_type);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.body(body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(problem.status, status);
    assert_eq!(problem.field.as_deref(), field, "{problem}");
    assert_eq!(snapshot(stack).await, before, "the database changed");
    problem
}

#[tokio::test]
async fn a_valid_document_is_accepted_as_yaml_and_json() {
    let stack = stack_with_host().await;
    let created = stack.create_experiment(GOOD).await;
    assert_eq!(created.phase, phoenix_wire::view::Phase::Pending);
    let mut doc: serde_json::Value = serde_json::to_value(serde_saphyr_free_parse(GOOD)).unwrap();
    doc["metadata"]["name"] = "topk-web-json".into();
    let response = stack
        .request(Method::POST, "/api/v1/experiments", OPERATOR_TOKEN)
        .json(&doc)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    stack.shutdown().await;
}

fn serde_saphyr_free_parse(yaml: &str) -> serde_json::Value {
    phoenix_wire::resource::parse_tree(
        yaml.as_bytes(),
        phoenix_wire::resource::DocumentFormat::Yaml,
    )
    .unwrap()
}

#[tokio::test]
async fn malformed_json_is_400() {
    let stack = stack_with_host().await;
    let p = assert_rejected(
        &stack,
        Some(OPERATOR_TOKEN),
        "application/json",
        "{\"apiVersion\": ",
        400,
        None,
    )
    .await;
    assert!(p.detail.unwrap().contains("malformed JSON"));
    stack.shutdown().await;
}

#[tokio::test]
async fn malformed_yaml_is_400() {
    let stack = stack_with_host().await;
    let p = assert_rejected(
        &stack,
        Some(OPERATOR_TOKEN),
        "application/yaml",
        "spec: [unclosed",
        400,
        None,
    )
    .await;
    assert!(p.detail.unwrap().contains("malformed YAML"));
    stack.shutdown().await;
}

#[tokio::test]
async fn unknown_field_is_422_naming_it() {
    let stack = stack_with_host().await;
    let body = GOOD.replace("  duration: 10m", "  duration: 10m\n  colour: red");
    let p = assert_rejected(
        &stack,
        Some(OPERATOR_TOKEN),
        "application/yaml",
        body,
        422,
        Some("spec.colour"),
    )
    .await;
    assert!(p.detail.unwrap().contains("unknown field `colour`"));
    stack.shutdown().await;
}

#[tokio::test]
async fn missing_name_is_422() {
    let stack = stack_with_host().await;
    let body = GOOD.replace("  name: topk-web\n", "  labels: {team: sre}\n");
    assert_rejected(
        &stack,
        Some(OPERATOR_TOKEN),
        "application/yaml",
        body,
        422,
        Some("metadata.name"),
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test]
async fn invalid_name_is_422() {
    let stack = stack_with_host().await;
    let body = GOOD.replace("name: topk-web", "name: Top_K");
    assert_rejected(
        &stack,
        Some(OPERATOR_TOKEN),
        "application/yaml",
        body,
        422,
        Some("metadata.name"),
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test]
async fn invalid_selector_is_422() {
    let stack = stack_with_host().await;
    let body = GOOD.replace("{selector: {role: web}}", "{selector: {'bad key!': web}}");
    assert_rejected(
        &stack,
        Some(OPERATOR_TOKEN),
        "application/yaml",
        body,
        422,
        Some("spec.hosts.selector"),
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test]
async fn selector_matching_no_host_is_422() {
    let stack = stack_with_host().await;
    let body = GOOD.replace("{role: web}", "{role: db}");
    let p = assert_rejected(
        &stack,
        Some(OPERATOR_TOKEN),
        "application/yaml",
        body,
        422,
        Some("spec.hosts.selector"),
    )
    .await;
    assert!(p.detail.unwrap().contains("matches none"));
    stack.shutdown().await;
}

#[tokio::test]
async fn unknown_pipeline_is_422() {
    let stack = stack_with_host().await;
    let body = GOOD.replace("process-topk", "process-nope");
    assert_rejected(
        &stack,
        Some(OPERATOR_TOKEN),
        "application/yaml",
        body,
        422,
        Some("spec.candidate.pipeline"),
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test]
async fn duplicate_name_is_409() {
    let stack = stack_with_host().await;
    stack.create_experiment(GOOD).await;
    let p = assert_rejected(
        &stack,
        Some(OPERATOR_TOKEN),
        "application/yaml",
        GOOD,
        409,
        None,
    )
    .await;
    assert!(p.detail.unwrap().contains("already exists"));
    stack.shutdown().await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let stack = stack_with_host().await;
    let body = format!("{GOOD}\n# {}\n", "x".repeat(2 * 1024 * 1024));
    assert_rejected(
        &stack,
        Some(OPERATOR_TOKEN),
        "application/yaml",
        body,
        413,
        None,
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test]
async fn no_token_is_401() {
    let stack = stack_with_host().await;
    assert_rejected(&stack, None, "application/yaml", GOOD, 401, None).await;
    stack.shutdown().await;
}

#[tokio::test]
async fn invalid_token_is_401() {
    let stack = stack_with_host().await;
    assert_rejected(
        &stack,
        Some("not-a-real-token"),
        "application/yaml",
        GOOD,
        401,
        None,
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test]
async fn viewer_token_on_a_write_is_403() {
    let stack = stack_with_host().await;
    assert_rejected(
        &stack,
        Some(VIEWER_TOKEN),
        "application/yaml",
        GOOD,
        403,
        None,
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test]
async fn a_host_credential_on_a_user_endpoint_is_403() {
    let stack = stack_with_host().await;
    let credential = stack.host_credential("web-1").await;
    assert_rejected(
        &stack,
        Some(&credential),
        "application/yaml",
        GOOD,
        403,
        None,
    )
    .await;
    let response = stack
        .request(Method::GET, "/api/v1/experiments", &credential)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    stack.shutdown().await;
}

#[tokio::test]
async fn user_token_on_an_agent_endpoint_is_403() {
    let stack = stack_with_host().await;
    let response = stack
        .request(Method::POST, "/agent/v1/hosts/web-1/heartbeat", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    stack.shutdown().await;
}

/// In a burst of status reports, one that names a collector twice is refused on
/// its own (422, naming the field) and every other one is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_status_reports_is_stored_and_a_bad_one_is_refused_alone() {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await;
    let collector = |id: &str| {
        serde_json::json!({
            "collectorId": id, "owner": "e", "variant": "baseline", "pipeline": "p",
            "configHash": "h", "health": "healthy", "restarts": 0
        })
    };
    let mut reports = Vec::new();
    for i in 0..60 {
        let collectors = if i == 30 {
            vec![collector("e.baseline"), collector("e.baseline")]
        } else {
            vec![collector("e.baseline"), collector("e.candidate")]
        };
        let status = serde_json::json!({
            "labels": {"burst": "yes"}, "agentVersion": "test", "collectors": collectors
        });
        let credential = stack.host_credential(&format!("burst-{i:02}")).await;
        let request = stack
            .request(
                Method::PUT,
                &format!("/agent/v1/hosts/burst-{i:02}/status"),
                &credential,
            )
            .json(&status)
            .send();
        reports.push(tokio::spawn(request));
    }
    for (i, report) in reports.into_iter().enumerate() {
        let response = report.await.unwrap().unwrap();
        if i == 30 {
            assert_eq!(response.status(), 422);
            let body = response.text().await.unwrap();
            assert!(body.contains("collectors[1].collectorId"), "{body}");
        } else {
            assert_eq!(response.status(), 204, "burst-{i:02}");
        }
    }
    let hosts: List<Host> = stack
        .request(Method::GET, "/api/v1/hosts", VIEWER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hosts.items.len(), 59);
    assert!(hosts.items.iter().all(|h| h.collectors.len() == 2));
    stack.shutdown().await;
}

/// An error answer as the OpenAPI document describes every one: `status`, as
/// `application/problem+json`, naming `field`.
async fn assert_problem(response: reqwest::Response, status: u16, field: Option<&str>) -> Problem {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(problem.status, status);
    assert_eq!(problem.field.as_deref(), field, "{problem}");
    problem
}

/// Found by schemathesis (e2e/tests/api_fuzz.rs): a destination name that no
/// destination can have was a 400 titled "Malformed request body", for a request
/// without a body, and a status the document did not list. It is a 422 naming
/// `name`.
#[tokio::test]
async fn fuzz_found_a_destination_name_no_destination_can_have_is_a_422_naming_it() {
    let stack = stack_with_host().await;
    for method in [Method::GET, Method::DELETE] {
        let response = stack
            .request(
                method.clone(),
                "/api/v1/destinations/collection_interval",
                ADMIN_TOKEN,
            )
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 422, Some("name")).await;
        assert!(
            problem.detail.unwrap().contains("collection_interval"),
            "{method}"
        );
    }
    stack.shutdown().await;
}

/// Found by schemathesis: `?force=null` on a promote was axum's own 400 in
/// `text/plain`; every error answer is a problem.
#[tokio::test]
async fn fuzz_found_a_promote_flag_that_is_no_boolean_is_a_problem() {
    let stack = stack_with_host().await;
    let response = stack
        .request(
            Method::POST,
            "/api/v1/experiments/topk-web/promote?force=null&force=null",
            OPERATOR_TOKEN,
        )
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 400, None).await;
    assert!(problem.detail.unwrap().contains("force"));
    stack.shutdown().await;
}

/// Found by schemathesis: `GET /api/v1/events` that is no WebSocket handshake was
/// axum's own 400 in `text/plain`; it is a problem saying what is missing. So is a
/// task id that is no number on the agent API (the same kind of answer).
#[tokio::test]
async fn fuzz_found_a_request_that_is_no_websocket_handshake_is_a_problem() {
    let stack = stack_with_host().await;
    let response = stack
        .request(Method::GET, "/api/v1/events", VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!(status == 400 || status == 426, "{status}");
    let problem = assert_problem(response, status, None).await;
    assert!(!problem.detail.unwrap_or_default().is_empty());

    let credential = stack.host_credential("web-1").await;
    let response = stack
        .request(
            Method::POST,
            "/agent/v1/hosts/web-1/tasks/first",
            &credential,
        )
        .json(&serde_json::json!({"ok": true}))
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, None).await;
    stack.shutdown().await;
}
