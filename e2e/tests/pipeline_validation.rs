//! Pipeline configs are checked by the real collector's `validate` before anything
//! is stored or deployed, and a rejection carries the collector's own message.

use std::time::Duration;

use phoenix_e2e::bins;
use phoenix_e2e::harness::{OPERATOR_TOKEN, Stack, StackOptions};
use phoenix_wire::problem::Problem;
use phoenix_wire::view::PipelineValidation;
use reqwest::Method;

async fn stack() -> Stack {
    Stack::start_with(StackOptions {
        collector_bin: Some(bins::collector()),
        reconciler: false,
        deploy_timeout: Duration::from_secs(60),
        ..Default::default()
    })
    .await
}

async fn validate(stack: &Stack, document: &str) -> reqwest::Response {
    stack
        .request(Method::POST, "/api/v1/pipelines/validate", OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(document.to_string())
        .send()
        .await
        .unwrap()
}

/// A template document named `name` with `config` and process-topk's variables.
fn template(name: &str, config: &str) -> String {
    let (_, text) = catalog()
        .into_iter()
        .find(|(path, _)| path.ends_with("process-topk.yaml"))
        .unwrap();
    let mut doc: phoenix_wire::resource::PipelineTemplateDocument =
        phoenix_wire::resource::parse_document(
            text.as_bytes(),
            phoenix_wire::resource::DocumentFormat::Yaml,
        )
        .unwrap();
    doc.metadata.name = name.to_string();
    doc.spec.config = config.to_string();
    serde_json::to_string(&doc).unwrap()
}

fn catalog() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// A real template's config with one line changed.
fn topk_config_with(from: &str, to: &str) -> String {
    let (_, text) = catalog()
        .into_iter()
        .find(|(path, _)| path.ends_with("process-topk.yaml"))
        .unwrap();
    let doc: phoenix_wire::resource::PipelineTemplateDocument =
        phoenix_wire::resource::parse_document(
            text.as_bytes(),
            phoenix_wire::resource::DocumentFormat::Yaml,
        )
        .unwrap();
    assert!(
        doc.spec.config.contains(from),
        "the template changed; update this test"
    );
    doc.spec.config.replacen(from, to, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalog_template_passes_the_collectors_validate() {
    let stack = stack().await;
    let catalog = catalog();
    assert_eq!(catalog.len(), 5, "the catalog has five templates");
    for (path, text) in catalog {
        let response = validate(&stack, &text).await;
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        let answer: PipelineValidation = serde_json::from_str(&body).unwrap();
        assert!(answer.valid);
        assert!(
            answer
                .variables
                .iter()
                .any(|v| v.name == "collection_interval"),
            "{path}"
        );
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ottl_is_rejected_with_the_collectors_message() {
    let stack = stack().await;
    let broken = topk_config_with(
        "delete_key(resource.attributes",
        "delete_kee(resource.attributes",
    );
    let response = validate(&stack, &template("broken-ottl", &broken)).await;
    assert_eq!(response.status(), 422);
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(problem.field.as_deref(), Some("spec.config"));
    let detail = problem.detail.unwrap();
    assert!(detail.starts_with("Error:"), "{detail}");
    assert!(
        detail.contains("delete_kee"),
        "the collector names the bad function: {detail}"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_component_is_refused_by_the_policy_naming_its_path() {
    let stack = stack().await;
    let broken = topk_config_with("filter/topk:", "frobnicate/topk:");
    let response = validate(&stack, &template("unknown-component", &broken)).await;
    assert_eq!(response.status(), 422);
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(problem.field.as_deref(), Some("spec.config"));
    let detail = problem.detail.unwrap();
    assert!(detail.contains("`processors.frobnicate/topk`"), "{detail}");
    assert!(detail.contains("not allowed"), "{detail}");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_whose_variable_is_not_of_its_type_is_refused_and_nothing_is_stored() {
    let stack = stack().await;
    stack.register_host("web-1", &[("role", "web")]).await;
    let document = r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {name: bad-threshold}
spec:
  hosts: {selector: {role: web}}
  baseline: {pipeline: process-baseline}
  candidate: {pipeline: process-topk, vars: {cpu_threshold: "not-a-number"}}
  duration: 10m
"#;
    let response = stack
        .request(Method::POST, "/api/v1/experiments", OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(document)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(
        problem.field.as_deref(),
        Some("spec.candidate.vars.cpu_threshold")
    );
    let detail = problem.detail.unwrap();
    assert!(detail.contains("is not a number"), "{detail}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM experiments")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    stack.shutdown().await;
}
