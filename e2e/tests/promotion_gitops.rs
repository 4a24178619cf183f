//! Promotion that git agrees with (docs/ARCHITECTURE.md, "Promotion and GitOps"):
//! a deployment owned by a GitOps source is never changed by a promotion or a
//! rollback (409, "change it in git", saying what to write); the change made in
//! git is rolled out by `phoenix sync`; and a promotion into a deployment git does
//! not own is never undone by a sync, which refuses to take it over and never
//! prunes it. Real api, reconciler, agents (stand-in collectors) and CLI.
//!
//! The analyzer is stood in for as in `promotion.rs`: a verdict row and the move
//! to `completed`, written directly.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{AgentProcess, OPERATOR_TOKEN, Stack, VIEWER_TOKEN, eventually};
use phoenix_storage::experiments;
use phoenix_wire::deployment::PipelineDeployment;
use phoenix_wire::problem::Problem;
use phoenix_wire::view::{List, Phase};
use reqwest::Method;

const WAIT: Duration = Duration::from_secs(60);

fn experiment_yaml(name: &str, role: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {{name: {name}}}
spec:
  hosts: {{selector: {{role: {role}}}}}
  baseline: {{pipeline: process-baseline}}
  candidate: {{pipeline: process-topk, vars: {{cpu_threshold: "0.2"}}}}
  warmup: 0s
  duration: 1h
  criticalProcesses: [nginx]
"#
    )
}

fn deployment_yaml(name: &str, role: &str, pipeline: &str) -> String {
    format!(
        r#"apiVersion: phoenix.dev/v1
kind: PipelineDeployment
metadata: {{name: {name}}}
spec:
  hosts: {{selector: {{role: {role}}}}}
  pipeline: {pipeline}
"#
    )
}

async fn complete_with_verdict(stack: &Stack, name: &str, verdict: &str) {
    stack.wait_for_phase(name, Phase::Running, WAIT).await;
    let mut conn = stack.pool.acquire().await.unwrap();
    sqlx::query(
        "INSERT INTO experiment_results (experiment, window_start, window_end, attempts, verdict, analyzed_at) \
         VALUES ($1, now() - interval '1 minute', now(), 1, $2, now())",
    )
    .bind(name)
    .bind(verdict)
    .execute(&mut *conn)
    .await
    .unwrap();
    assert!(
        experiments::transition(
            &mut conn,
            name,
            Phase::Running,
            Phase::Completed,
            "test: analysis stood in for",
            None
        )
        .await
        .unwrap()
    );
}

/// `phoenix ARGS` as an operator: (success, stdout, stderr).
fn phoenix(stack: &Stack, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("phoenix"))
        .args(args)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", OPERATOR_TOKEN)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run phoenix");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One `phoenix sync --once --prune --source git` round of `dir`.
fn sync(stack: &Stack, dir: &Path) -> (bool, String) {
    let (ok, _, err) = phoenix(
        stack,
        &[
            "sync",
            "--dir",
            dir.to_str().unwrap(),
            "--once",
            "--prune",
            "--source",
            "git",
        ],
    );
    (ok, err)
}

async fn deployment(stack: &Stack, name: &str) -> PipelineDeployment {
    stack
        .request(
            Method::GET,
            &format!("/api/v1/deployments/{name}"),
            VIEWER_TOKEN,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn post(stack: &Stack, path: &str) -> (u16, String) {
    let response = stack
        .request(Method::POST, path, OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_owned_deployments_change_in_git_and_a_sync_never_undoes_a_promotion() {
    let stack = Stack::start().await;
    let _web = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    let _db = AgentProcess::spawn(&stack.api_url, "db-1", &[("role", "db")]);
    eventually("2 hosts", WAIT, || async {
        let list: List<serde_json::Value> = stack
            .request(Method::GET, "/api/v1/hosts", VIEWER_TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (list.items.len() == 2).then_some(())
    })
    .await;

    // Git owns deployment `web`.
    let git = tempfile::tempdir().unwrap();
    let doc = git.path().join("web.yaml");
    std::fs::write(&doc, deployment_yaml("web", "web", "process-baseline")).unwrap();
    let (ok, err) = sync(&stack, git.path());
    assert!(ok, "{err}");
    let web = deployment(&stack, "web").await;
    assert_eq!(web.managed_by.as_deref(), Some("git"));
    assert_eq!(web.revision, 1);

    // A promotion into it is refused and says what to change in git.
    stack
        .create_experiment(&experiment_yaml("topk-web", "web"))
        .await;
    complete_with_verdict(&stack, "topk-web", "pass").await;
    let (status, body) = post(&stack, "/api/v1/experiments/topk-web/promote").await;
    assert_eq!(status, 409, "{body}");
    let problem: Problem = serde_json::from_str(&body).unwrap();
    let detail = problem.detail.unwrap();
    assert!(detail.contains("change it in git"), "{detail}");
    assert!(detail.contains("`git`"), "{detail}");
    assert!(
        detail.contains("spec.pipeline: process-topk") && detail.contains("cpu_threshold: \"0.2\""),
        "{detail}"
    );
    let (ok, _, err) = phoenix(&stack, &["experiment", "promote", "topk-web"]);
    assert!(!ok && err.contains("change it in git"), "{err}");
    // Nothing changed: the experiment is still completed, the deployment at revision 1.
    assert_eq!(stack.experiment("topk-web").await.phase, Phase::Completed);
    assert_eq!(deployment(&stack, "web").await.revision, 1);
    // A rollback by hand would be undone by the sync as well.
    let (ok, _, err) = phoenix(&stack, &["pipeline", "rollback", "web"]);
    assert!(!ok && err.contains("change it in git"), "{err}");

    // The change made in git is rolled out, and the next round keeps it.
    std::fs::write(&doc, deployment_yaml("web", "web", "process-topk")).unwrap();
    let (ok, err) = sync(&stack, git.path());
    assert!(ok, "{err}");
    let web = deployment(&stack, "web").await;
    assert_eq!(
        (web.revision, web.spec.pipeline.as_str()),
        (2, "process-topk")
    );
    let (ok, err) = sync(&stack, git.path());
    assert!(ok, "{err}");
    assert_eq!(deployment(&stack, "web").await.revision, 2);

    // A promotion into a deployment git does not own: no sync undoes it.
    stack
        .create_experiment(&experiment_yaml("topk-db", "db"))
        .await;
    complete_with_verdict(&stack, "topk-db", "pass").await;
    let (status, body) = post(&stack, "/api/v1/experiments/topk-db/promote").await;
    assert_eq!(status, 200, "{body}");
    let promoted = deployment(&stack, "topk-db").await;
    assert_eq!(promoted.spec.pipeline, "process-topk");
    assert_eq!(promoted.managed_by, None);
    // --prune deletes only what git owns: the promoted deployment stays.
    let (ok, err) = sync(&stack, git.path());
    assert!(ok, "{err}");
    let kept = deployment(&stack, "topk-db").await;
    assert_eq!(
        (kept.revision, &kept.spec),
        (promoted.revision, &promoted.spec)
    );
    // A document naming it is refused, loudly, and changes nothing.
    std::fs::write(
        git.path().join("db.yaml"),
        deployment_yaml("topk-db", "db", "process-baseline"),
    )
    .unwrap();
    let (ok, err) = sync(&stack, git.path());
    assert!(
        !ok,
        "a sync taking over the promoted deployment must fail: {err}"
    );
    assert!(err.contains("topk-db"), "{err}");
    let after = deployment(&stack, "topk-db").await;
    assert_eq!(
        (after.revision, after.spec.pipeline.as_str()),
        (promoted.revision, "process-topk")
    );
    assert_eq!(stack.experiment("topk-db").await.phase, Phase::Promoted);
    stack.shutdown().await;
}
