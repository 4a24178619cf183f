//! Declarative apply through the `phoenix` CLI against the real api: a directory of
//! documents becomes the state its source owns, all or nothing; applying it again
//! changes nothing; `--prune` deletes only what that source owns.

use std::path::Path;
use std::process::{Command, Output};

use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{ADMIN_TOKEN, Stack, StackOptions};
use phoenix_wire::apply::{Action, PlanEntry};

fn phoenix(stack: &Stack, args: &[&str]) -> Output {
    Command::new(binary("phoenix"))
        .args(args)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", ADMIN_TOKEN)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run phoenix")
}

/// Runs `phoenix <args> -o json`, expecting success, and returns the plan.
fn plan(stack: &Stack, args: &[&str]) -> Vec<PlanEntry> {
    plan_exiting(stack, args, 0)
}

/// Runs `phoenix <args> -o json`, expecting exit code `code`, and returns the plan.
fn plan_exiting(stack: &Stack, args: &[&str], code: i32) -> Vec<PlanEntry> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = phoenix(stack, &all);
    assert_eq!(
        out.status.code(),
        Some(code),
        "phoenix {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut plan: Vec<PlanEntry> = serde_json::from_slice(&out.stdout).expect("plan json");
    plan.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    plan
}

fn actions(plan: &[PlanEntry]) -> Vec<(String, String, Action)> {
    plan.iter()
        .map(|e| (e.kind.clone(), e.name.clone(), e.action))
        .collect()
}

fn entry(kind: &str, name: &str, action: Action) -> (String, String, Action) {
    (kind.to_string(), name.to_string(), action)
}

fn experiment(name: &str, duration: &str) -> String {
    format!(
        "apiVersion: phoenix.dev/v1
kind: Experiment
metadata:
  name: {name}
spec:
  hosts: {{selector: {{role: web}}}}
  baseline: {{pipeline: process-baseline}}
  candidate: {{pipeline: team-topk}}
  warmup: 0s
  duration: {duration}
"
    )
}

const TEMPLATE_AND_DEPLOYMENT: &str = "apiVersion: phoenix.dev/v1
kind: PipelineTemplate
metadata:
  name: team-topk
spec:
  description: the team's own filter
  config: |
    receivers: {hostmetrics: {scrapers: {process: {}}}}
    exporters: {debug: {}}
    service: {pipelines: {metrics: {receivers: [hostmetrics], exporters: [debug]}}}
---
apiVersion: phoenix.dev/v1
kind: PipelineDeployment
metadata:
  name: web-standing
spec:
  hosts: {selector: {role: web}}
  pipeline: team-topk
";

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

/// A directory with a template and a deployment in one file and two experiments.
fn gitops_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "pipelines.yaml", TEMPLATE_AND_DEPLOYMENT);
    write(dir.path(), "exp-a.yaml", &experiment("exp-a", "10m"));
    write(dir.path(), "exp-b.yml", &experiment("exp-b", "10m"));
    dir
}

/// No reconciler: experiments stay `pending`, so their specs may change.
async fn stack() -> Stack {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..StackOptions::default()
    })
    .await;
    stack.register_host("web-1", &[("role", "web")]).await;
    stack
}

/// (name, generation, spec, managed_by) of every experiment, by name.
async fn experiments(stack: &Stack) -> Vec<(String, i64, serde_json::Value, Option<String>)> {
    sqlx::query_as("SELECT name, generation, spec, managed_by FROM experiments ORDER BY name")
        .fetch_all(&stack.pool)
        .await
        .unwrap()
}

/// Row counts of every table apply writes.
async fn counts(stack: &Stack) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "experiments",
        "experiment_events",
        "pipeline_templates",
        "pipeline_deployments",
        "pipeline_deployment_revisions",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_twice_is_a_no_op_and_an_edit_updates_only_that_experiment() {
    let stack = stack().await;
    let dir = gitops_dir();
    let path = dir.path().to_str().unwrap();

    // A dry run plans everything and writes nothing.
    let before = counts(&stack).await;
    // `diff` exits 1 when there are changes, as kubectl diff does.
    let planned = plan_exiting(&stack, &["diff", "-f", path], 1);
    assert_eq!(
        actions(&planned),
        [
            entry("Experiment", "exp-a", Action::Create),
            entry("Experiment", "exp-b", Action::Create),
            entry("PipelineDeployment", "web-standing", Action::Create),
            entry("PipelineTemplate", "team-topk", Action::Create),
        ]
    );
    assert_eq!(counts(&stack).await, before);

    let applied = plan(&stack, &["apply", "-f", path]);
    assert_eq!(actions(&applied), actions(&planned));
    let first = experiments(&stack).await;
    assert_eq!(first.len(), 2);
    for (name, generation, _, managed_by) in &first {
        assert_eq!(*generation, 1, "{name}");
        assert_eq!(managed_by.as_deref(), Some(path), "{name}");
    }
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT managed_by FROM pipeline_deployments WHERE name = 'web-standing'",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(owner.as_deref(), Some(path));
    let after_first = counts(&stack).await;

    // The second time: all unchanged, nothing written.
    let again = plan(&stack, &["apply", "-f", path]);
    assert!(
        again.iter().all(|e| e.action == Action::Unchanged),
        "{again:?}"
    );
    assert_eq!(again.len(), 4);
    assert_eq!(experiments(&stack).await, first);
    assert_eq!(counts(&stack).await, after_first);

    // Nothing to change: diff exits 0 and says so.
    let out = phoenix(&stack, &["diff", "-f", path]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no changes (4 unchanged)\n"
    );

    // One edited file: diff names the field that changes and exits 1...
    write(dir.path(), "exp-b.yml", &experiment("exp-b", "20m"));
    let out = phoenix(&stack, &["diff", "-f", path]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(
        text,
        "~ Experiment exp-b (spec changed (generation 2))\n    spec.duration: \"10m\" -> \"20m\"\n(3 unchanged; nothing was changed)\n"
    );
    assert_eq!(experiments(&stack).await, first);

    // ...and apply updates that experiment (generation 2), the rest unchanged.
    let edited = plan(&stack, &["apply", "-f", path]);
    assert_eq!(
        actions(&edited),
        [
            entry("Experiment", "exp-a", Action::Unchanged),
            entry("Experiment", "exp-b", Action::Update),
            entry("PipelineDeployment", "web-standing", Action::Unchanged),
            entry("PipelineTemplate", "team-topk", Action::Unchanged),
        ]
    );
    let now = experiments(&stack).await;
    assert_eq!(now[0], first[0]);
    assert_eq!(now[1].1, 2);
    assert_eq!(now[1].2["duration"], "20m");

    // The table form of apply names kind, name and action.
    let out = phoenix(&stack, &["apply", "-f", path, "--dry-run"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("KIND"), "{table}");
    assert!(
        table.contains("exp-b") && table.contains("unchanged"),
        "{table}"
    );

    // An error (here a document the api refuses) exits 2, not 1.
    write(
        dir.path(),
        "exp-c.yaml",
        &experiment("exp-c", "10m").replace("team-topk", "no-such-template"),
    );
    let out = phoenix(&stack, &["diff", "-f", path]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_only_what_the_source_owns() {
    let stack = stack().await;
    let dir = gitops_dir();
    let path = dir.path().to_str().unwrap();
    plan(&stack, &["apply", "-f", path, "--source", "team-a"]);

    // One created by hand, one by another source.
    stack
        .create_experiment(&experiment("by-hand", "10m").replace("team-topk", "process-topk"))
        .await;
    let other = tempfile::tempdir().unwrap();
    write(
        other.path(),
        "exp-c.yaml",
        &experiment("exp-c", "10m").replace("team-topk", "process-topk"),
    );
    plan(
        &stack,
        &[
            "apply",
            "-f",
            other.path().to_str().unwrap(),
            "--source",
            "team-b",
        ],
    );

    std::fs::remove_file(dir.path().join("exp-a.yaml")).unwrap();
    // Without --prune, a removed file deletes nothing.
    let kept = plan(&stack, &["apply", "-f", path, "--source", "team-a"]);
    assert!(
        kept.iter().all(|e| e.action == Action::Unchanged),
        "{kept:?}"
    );
    assert_eq!(experiments(&stack).await.len(), 4);

    let pruned = plan(
        &stack,
        &["apply", "-f", path, "--source", "team-a", "--prune"],
    );
    assert_eq!(
        actions(&pruned),
        [
            entry("Experiment", "exp-a", Action::Delete),
            entry("Experiment", "exp-b", Action::Unchanged),
            entry("PipelineDeployment", "web-standing", Action::Unchanged),
            entry("PipelineTemplate", "team-topk", Action::Unchanged),
        ]
    );
    let names: Vec<String> = experiments(&stack).await.into_iter().map(|e| e.0).collect();
    assert_eq!(names, ["by-hand", "exp-b", "exp-c"]);

    // A document equal to a resource created by hand changes nothing and says
    // whose it is (how `get -o yaml | apply -f -` is a no-op)...
    write(
        dir.path(),
        "by-hand.yaml",
        &experiment("by-hand", "10m").replace("team-topk", "process-topk"),
    );
    let same = plan(&stack, &["diff", "-f", path, "--source", "team-a"]);
    let by_hand = same.iter().find(|e| e.name == "by-hand").unwrap();
    assert_eq!(by_hand.action, Action::Unchanged);
    assert_eq!(by_hand.reason.as_deref(), Some("created by hand"));

    // ...but one that would change it is refused; nothing changes.
    write(
        dir.path(),
        "by-hand.yaml",
        &experiment("by-hand", "30m").replace("team-topk", "process-topk"),
    );
    let before = counts(&stack).await;
    let out = phoenix(
        &stack,
        &["apply", "-f", path, "--source", "team-a", "--prune"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("by-hand.yaml") && stderr.contains("created by hand"),
        "{stderr}"
    );
    assert_eq!(counts(&stack).await, before);

    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invalid_document_changes_nothing_and_is_named() {
    let stack = stack().await;
    let dir = gitops_dir();
    let path = dir.path().to_str().unwrap();
    plan(&stack, &["apply", "-f", path]);
    let before_rows = experiments(&stack).await;
    let before_counts = counts(&stack).await;

    // A valid edit, a new valid experiment, and one document with a bad field.
    write(dir.path(), "exp-a.yaml", &experiment("exp-a", "30m"));
    write(dir.path(), "exp-new.yaml", &experiment("exp-new", "10m"));
    write(
        dir.path(),
        "zz-broken.yaml",
        &experiment("exp-broken", "10m").replace("warmup: 0s", "warmup: soon"),
    );
    let out = phoenix(&stack, &["apply", "-f", path, "--prune"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("zz-broken.yaml"), "{stderr}");
    assert!(stderr.contains("spec.warmup"), "{stderr}");
    assert_eq!(experiments(&stack).await, before_rows);
    assert_eq!(counts(&stack).await, before_counts);

    // A document that only the database can refuse (an unknown pipeline) too.
    write(
        dir.path(),
        "zz-broken.yaml",
        &experiment("exp-broken", "10m").replace("team-topk", "no-such-pipeline"),
    );
    let out = phoenix(&stack, &["apply", "-f", path]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("zz-broken.yaml") && stderr.contains("spec.candidate.pipeline"),
        "{stderr}"
    );
    assert_eq!(experiments(&stack).await, before_rows);
    assert_eq!(counts(&stack).await, before_counts);

    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_takes_a_yaml_stream_and_needs_a_source() {
    let stack = stack().await;
    let stream = format!(
        "{TEMPLATE_AND_DEPLOYMENT}---\n{}",
        experiment("exp-a", "10m")
    );
    let post = |query: &str, body: String| {
        stack
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/apply{query}"),
                ADMIN_TOKEN,
            )
            .header("content-type", "application/yaml")
            .body(body)
            .send()
    };

    let response = post("?dryRun=true", stream.clone()).await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("source"));

    let response = post("?source=stream&dryRun=true", stream.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let plan: Vec<PlanEntry> = response.json().await.unwrap();
    assert_eq!(plan.len(), 3);
    assert!(plan.iter().all(|e| e.action == Action::Create), "{plan:?}");
    assert!(experiments(&stack).await.is_empty());

    // An error in the third document names it by position and names the field.
    let broken = stream.replace("duration: 10m", "duration: 10m\n  colour: blue");
    let response = post("?source=stream", broken).await.unwrap();
    assert_eq!(response.status(), 422);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["field"], "spec.colour", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("document 3"),
        "{problem}"
    );
    assert_eq!(counts(&stack).await[0], 0);

    stack.shutdown().await;
}
