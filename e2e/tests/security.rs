//! One test per attack of issue 12 that the api stops, against the real api and
//! Postgres: a template is code that runs on every host, so the api refuses one
//! that reads files or the agent's environment, sends data anywhere, writes files or
//! listens on the network; variable values are typed, so none can rewrite the
//! filter it stands in; only admins change templates; validation (which starts a
//! process) needs an operator; hostile bodies get a 4xx, never a 500. What the
//! agent enforces itself (the same policy again, an empty environment, an
//! unprivileged user) is tested in `agent_supervisor.rs`.

use phoenix_e2e::harness::{ADMIN_TOKEN, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN};
use phoenix_wire::problem::Problem;
use reqwest::Method;

async fn stack() -> Stack {
    Stack::start_with(StackOptions {
        reconciler: false,
        ..Default::default()
    })
    .await
}

/// A template document (as JSON) whose config is `config` with `variables`.
fn template(name: &str, config: &str, variables: serde_json::Value) -> String {
    serde_json::json!({
        "apiVersion": "phoenix.dev/v1",
        "kind": "PipelineTemplate",
        "metadata": {"name": name},
        "spec": {"variables": variables, "config": config}
    })
    .to_string()
}

const SAFE: &str = "receivers:
  host_metrics:
    root_path: ${env:PHOENIX_HOSTFS}
    scrapers: {process: {}}
processors:
  transform/phoenix:
    metric_statements:
      - context: resource
        statements:
          - set(resource.attributes[\"phoenix.host\"], \"${env:PHOENIX_HOST}\")
exporters:
  prometheus_remote_write:
    endpoint: ${env:PHOENIX_REMOTE_WRITE_URL}
extensions:
  health_check:
    endpoint: 127.0.0.1:${env:PHOENIX_HEALTH_PORT}
service:
  extensions: [health_check]
  pipelines:
    metrics: {receivers: [host_metrics], processors: [transform/phoenix], exporters: [prometheus_remote_write]}
";

async fn apply(stack: &Stack, token: &str, body: String) -> reqwest::Response {
    stack
        .request(Method::POST, "/api/v1/apply?source=security-test", token)
        .header("content-type", "application/json")
        .body(format!("[{body}]"))
        .send()
        .await
        .unwrap()
}

async fn stored_templates(stack: &Stack, name: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pipeline_templates WHERE name = $1")
        .bind(name)
        .fetch_one(&stack.pool)
        .await
        .unwrap()
}

/// Applies `config` as an admin and expects a 422 naming `path`; nothing stored.
async fn refused(stack: &Stack, name: &str, config: &str, path: &str) -> String {
    let response = apply(
        stack,
        ADMIN_TOKEN,
        template(name, config, serde_json::json!([])),
    )
    .await;
    assert_eq!(response.status(), 422, "{name}");
    let problem: Problem = response.json().await.unwrap();
    let detail = problem.detail.unwrap_or_default();
    assert!(detail.contains(&format!("`{path}`")), "{name}: {detail}");
    assert!(detail.contains("template policy"), "{name}: {detail}");
    assert_eq!(stored_templates(stack, name).await, 0, "{name} was stored");
    detail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_safe_template_is_accepted_for_comparison() {
    let stack = stack().await;
    let response = apply(
        &stack,
        ADMIN_TOKEN,
        template("safe", SAFE, serde_json::json!([])),
    )
    .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(stored_templates(&stack, "safe").await, 1);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_reading_a_file_as_root_is_refused() {
    let stack = stack().await;
    let config = SAFE.replace("\"${env:PHOENIX_HOST}\"", "\"${file:/etc/shadow}\"");
    assert_ne!(config, SAFE);
    refused(
        &stack,
        "reads-shadow",
        &config,
        "processors.transform/phoenix.metric_statements[0].statements[0]",
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_reading_the_agents_environment_is_refused() {
    let stack = stack().await;
    let config = SAFE.replace("${env:PHOENIX_HOST}", "${env:PHOENIX_AGENT_TOKEN}");
    let detail = refused(
        &stack,
        "reads-token",
        &config,
        "processors.transform/phoenix.metric_statements[0].statements[0]",
    )
    .await;
    assert!(detail.contains("not a Phoenix variable"), "{detail}");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_exporting_to_any_address_is_refused() {
    let stack = stack().await;
    let config = SAFE.replace(
        "exporters:\n",
        "exporters:\n  otlp_http/leak:\n    endpoint: http://198.51.100.7:4318\n",
    );
    refused(
        &stack,
        "leaks",
        &config,
        "exporters.otlp_http/leak.endpoint",
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_writing_files_is_refused() {
    let stack = stack().await;
    let config = SAFE.replace(
        "  extensions: [health_check]\n",
        "  extensions: [health_check]\n  telemetry:\n    logs: {output_paths: [/etc/cron.d/phoenix]}\n",
    );
    refused(
        &stack,
        "writes-cron",
        &config,
        "service.telemetry.logs.output_paths",
    )
    .await;
    let config = SAFE.replace(
        "exporters:\n",
        "exporters:\n  debug: {verbosity: detailed}\n",
    );
    refused(&stack, "dumps-data", &config, "exporters.debug.verbosity").await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_listening_on_every_host_interface_is_refused() {
    let stack = stack().await;
    let config = SAFE.replace(
        "receivers:\n",
        "receivers:\n  otlp:\n    protocols: {grpc: {endpoint: '0.0.0.0:4317'}}\n",
    );
    refused(
        &stack,
        "listens",
        &config,
        "receivers.otlp.protocols.grpc.endpoint",
    )
    .await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cannot_create_or_change_templates() {
    let stack = stack().await;
    let response = apply(
        &stack,
        OPERATOR_TOKEN,
        template("by-operator", SAFE, serde_json::json!([])),
    )
    .await;
    assert_eq!(response.status(), 403);
    let problem: Problem = response.json().await.unwrap();
    assert!(problem.detail.unwrap().contains("admin"));
    assert_eq!(stored_templates(&stack, "by-operator").await, 0);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_cannot_start_collector_processes_through_validate() {
    let stack = stack().await;
    let response = stack
        .request(Method::POST, "/api/v1/pipelines/validate", VIEWER_TOKEN)
        .header("content-type", "application/json")
        .body(template("v", SAFE, serde_json::json!([])))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // An operator gets past the role check, to the policy (this stack has no
    // collector, so a valid template is a 503 rather than a process).
    let response = stack
        .request(Method::POST, "/api/v1/pipelines/validate", OPERATOR_TOKEN)
        .header("content-type", "application/json")
        .body(template(
            "v",
            &SAFE.replace("${env:PHOENIX_HOST}", "${file:/x}"),
            serde_json::json!([]),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    stack.shutdown().await;
}

/// A template with one typed variable placed in an OTTL condition and one regex in
/// a string literal, and an experiment giving them `vars`.
async fn experiment_with_vars(stack: &Stack, vars: serde_json::Value) -> reqwest::Response {
    let config = SAFE.replace(
        "          - set(resource.attributes[\"phoenix.host\"], \"${env:PHOENIX_HOST}\")\n",
        "          - set(resource.attributes[\"phoenix.host\"], \"${env:PHOENIX_HOST}\")\n          - set(resource.attributes[\"k\"], true) where resource.attributes[\"cpu\"] > ${env:PHOENIX_VAR_CPU_THRESHOLD:-0.05}\n          - set(resource.attributes[\"k\"], true) where IsMatch(resource.attributes[\"process.executable.name\"], \"${env:PHOENIX_VAR_KEEP_REGEX:-a^}\")\n",
    );
    assert_ne!(config, SAFE);
    let variables = serde_json::json!([
        {"name": "cpu_threshold", "type": "number", "default": "0.05", "min": 0, "max": 1},
        {"name": "keep_regex", "type": "regex", "default": "a^"},
    ]);
    let response = apply(stack, ADMIN_TOKEN, template("typed", &config, variables)).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    stack.register_host("web-1", &[("role", "web")]).await;
    let experiment = serde_json::json!({
        "apiVersion": "phoenix.dev/v1",
        "kind": "Experiment",
        "metadata": {"name": "typed-vars"},
        "spec": {
            "hosts": {"selector": {"role": "web"}},
            "baseline": {"pipeline": "typed"},
            "candidate": {"pipeline": "typed", "vars": vars},
            "duration": "10m"
        }
    });
    stack
        .request(Method::POST, "/api/v1/experiments", OPERATOR_TOKEN)
        .header("content-type", "application/json")
        .body(experiment.to_string())
        .send()
        .await
        .unwrap()
}

async fn experiments_stored(stack: &Stack) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM experiments")
        .fetch_one(&stack.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variable_value_cannot_rewrite_the_filter_it_stands_in() {
    let stack = stack().await;
    let response =
        experiment_with_vars(&stack, serde_json::json!({"cpu_threshold": "0.05 or true"})).await;
    assert_eq!(response.status(), 422);
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(
        problem.field.as_deref(),
        Some("spec.candidate.vars.cpu_threshold")
    );
    assert!(problem.detail.unwrap().contains("is not a number"));
    let response = experiment_with_vars(
        &stack,
        serde_json::json!({"keep_regex": "x\") or true or IsMatch(\"x"}),
    )
    .await;
    assert_eq!(response.status(), 422);
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(
        problem.field.as_deref(),
        Some("spec.candidate.vars.keep_regex")
    );
    assert_eq!(experiments_stored(&stack).await, 0);
    // A value of the type is accepted.
    let response = experiment_with_vars(
        &stack,
        serde_json::json!({"cpu_threshold": "0.2", "keep_regex": "^(nginx|java)$"}),
    )
    .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variable_value_cannot_carry_a_nested_lookup() {
    let stack = stack().await;
    let response = experiment_with_vars(
        &stack,
        serde_json::json!({"keep_regex": "${file:/etc/shadow}"}),
    )
    .await;
    assert_eq!(response.status(), 422);
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(
        problem.field.as_deref(),
        Some("spec.candidate.vars.keep_regex")
    );
    assert!(problem.detail.unwrap().contains("${"));
    assert_eq!(experiments_stored(&stack).await, 0);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_is_a_422_naming_the_field_not_a_500() {
    let stack = stack().await;
    stack.register_host("web-1", &[("role", "web")]).await;
    let body = r#"{"apiVersion":"phoenix.dev/v1","kind":"Experiment","metadata":{"name":"a","labels":{"team":"x\u0000y"}},"spec":{"hosts":{"selector":{"role":"web"}},"baseline":{"pipeline":"process-baseline"},"candidate":{"pipeline":"process-topk"},"duration":"1m"}}"#;
    let response = stack
        .request(Method::POST, "/api/v1/experiments", OPERATOR_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(problem.field.as_deref(), Some("metadata.labels.team"));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_plus_duration_cannot_overflow_into_a_500() {
    let stack = stack().await;
    stack.register_host("web-1", &[("role", "web")]).await;
    let body = r#"{"apiVersion":"phoenix.dev/v1","kind":"Experiment","metadata":{"name":"a"},"spec":{"hosts":{"selector":{"role":"web"}},"baseline":{"pipeline":"process-baseline"},"candidate":{"pipeline":"process-topk"},"warmup":"18446744073709551615s","duration":"18446744073709551615s"}}"#;
    let response = stack
        .request(Method::POST, "/api/v1/experiments", OPERATOR_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(problem.field.as_deref(), Some("spec.duration"));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_made_up_methods_do_not_create_metric_series() {
    let stack = stack().await;
    for i in 0..20 {
        let method = Method::from_bytes(format!("BOGUS{i}").as_bytes()).unwrap();
        let _ = phoenix_e2e::harness::http_client()
            .request(method, stack.url("/api/v1/experiments"))
            .send()
            .await
            .unwrap();
    }
    let metrics = phoenix_e2e::harness::http_client()
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("BOGUS"), "a method became a label value");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    stack.shutdown().await;
}
