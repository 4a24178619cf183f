//! Pipeline deployments, promote, rollback and `promotion: auto`, end to end: the
//! real api and reconciler on a real Postgres, real `phoenix-agent` processes
//! supervising `stand-in-collector` processes, and the real `phoenix` CLI.
//!
//! A real analysis needs the real collector and a real Prometheus (see the
//! analysis tests); here it is stood in for: [`complete_with_verdict`] writes an
//! `experiment_results` row with a verdict and moves the experiment to `completed`
//! directly in the test database, exactly the two things the analyzer does.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{
    AgentProcess, CollectorProcess, OPERATOR_TOKEN, Stack, VIEWER_TOKEN, eventually,
};
use phoenix_storage::{experiments, templates};
use phoenix_wire::deployment::{PipelineDeployment, PromotionResult};
use phoenix_wire::problem::Problem;
use phoenix_wire::view::{List, Phase};
use reqwest::Method;

const WAIT: Duration = Duration::from_secs(60);

fn experiment_yaml(name: &str, selector: &str, promotion: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata:
  name: {name}
spec:
  hosts: {{selector: {{{selector}}}}}
  baseline: {{pipeline: process-baseline}}
  candidate: {{pipeline: process-topk, vars: {{cpu_threshold: "0.2"}}}}
  warmup: 0s
  duration: 1h
  criticalProcesses: [nginx, postgres]
  promotion: {promotion}
"#
    )
}

/// Stands in for the analyzer (see the module doc): records `verdict` for a
/// running experiment and moves it to `completed`, directly in the test database.
/// The verdict is written first, so an auto promotion never sees the phase
/// without it.
async fn complete_with_verdict(stack: &Stack, name: &str, verdict: &str) {
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
    let moved = experiments::transition(
        &mut conn,
        name,
        Phase::Running,
        Phase::Completed,
        &format!("test: analysis stood in for, verdict {verdict}"),
        None,
    )
    .await
    .unwrap();
    assert!(moved, "{name} was not running");
}

async fn template_config(stack: &Stack, name: &str) -> String {
    let mut conn = stack.pool.acquire().await.unwrap();
    let config = templates::get(&mut conn, name).await.unwrap().config;
    // What the agent writes for the collector: the checked config, canonical.
    phoenix_wire::policy::CheckedConfig::canonical_text(&config).unwrap()
}

/// Waits until the agent's collector processes are exactly `variants` (sorted).
async fn wait_for_variants(agent: &AgentProcess, variants: &[&str]) -> Vec<CollectorProcess> {
    let mut want: Vec<&str> = variants.to_vec();
    want.sort_unstable();
    let what = format!("collectors {want:?} on {}", agent.host_id);
    tokio::time::timeout(WAIT, async {
        loop {
            let found = agent.collector_processes();
            let mut have: Vec<&str> = found
                .iter()
                .map(|p| p.env.get("PHOENIX_VARIANT").map_or("?", String::as_str))
                .collect();
            have.sort_unstable();
            if have == want {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}; agent log:\n{}", agent.log()))
}

/// Waits until the agent runs exactly one collector, the standing collector of
/// `deployment` with `config`, and returns its environment.
async fn wait_for_standing(
    agent: &AgentProcess,
    deployment: &str,
    config: &str,
) -> BTreeMap<String, String> {
    let what = format!("{deployment}.standing alone on {}", agent.host_id);
    tokio::time::timeout(WAIT, async {
        loop {
            let found = agent.collector_processes();
            if let [only] = found.as_slice()
                && only.env.get("PHOENIX_VARIANT").map(String::as_str) == Some("standing")
                && only.env.get("PHOENIX_DEPLOYMENT").map(String::as_str) == Some(deployment)
                && only.config() == config
            {
                return only.env.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "timed out waiting for {what}; it runs {:?}; agent log:\n{}",
            agent
                .collector_processes()
                .iter()
                .map(|p| (
                    p.env.get("PHOENIX_VARIANT"),
                    p.env.get("PHOENIX_DEPLOYMENT")
                ))
                .collect::<Vec<_>>(),
            agent.log()
        )
    })
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

fn phoenix(stack: &Stack, args: &[&str]) -> String {
    let out = Command::new(binary("phoenix"))
        .args(args)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", OPERATOR_TOKEN)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run phoenix");
    assert!(
        out.status.success(),
        "phoenix {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn wait_for_hosts(stack: &Stack, n: usize) {
    eventually(&format!("{n} registered hosts"), WAIT, || async {
        let list: List<serde_json::Value> = stack
            .request(Method::GET, "/api/v1/hosts", VIEWER_TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (list.items.len() == n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_runs_only_the_candidate_and_rollback_removes_it_again() {
    let stack = Stack::start().await;
    let web1 = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    let web2 = AgentProcess::spawn(&stack.api_url, "web-2", &[("role", "web")]);
    let db1 = AgentProcess::spawn(&stack.api_url, "db-1", &[("role", "db")]);
    wait_for_hosts(&stack, 3).await;
    stack
        .create_experiment(&experiment_yaml("topk-web", "role: web", "manual"))
        .await;
    stack.wait_for_phase("topk-web", Phase::Running, WAIT).await;
    for agent in [&web1, &web2] {
        wait_for_variants(agent, &["baseline", "candidate"]).await;
    }

    // Only a completed experiment can be promoted.
    let (status, body) = post(&stack, "/api/v1/experiments/topk-web/promote").await;
    assert_eq!(status, 409, "{body}");
    let problem: Problem = serde_json::from_str(&body).unwrap();
    assert!(
        problem.detail.unwrap().contains("topk-web is running"),
        "{body}"
    );
    let (status, body) = post(&stack, "/api/v1/experiments/topk-web/rollback").await;
    assert_eq!(status, 409, "{body}");

    complete_with_verdict(&stack, "topk-web", "pass").await;
    let (status, body) = post(&stack, "/api/v1/experiments/topk-web/promote").await;
    assert_eq!(status, 200, "{body}");
    let promoted: PromotionResult = serde_json::from_str(&body).unwrap();
    assert_eq!(promoted.experiment.phase, Phase::Promoted);
    let deployment = promoted.deployment.expect("a deployment");
    assert_eq!(deployment.name, "topk-web");
    assert_eq!(deployment.revision, 1);
    assert_eq!(deployment.promoted_from.as_deref(), Some("topk-web"));
    assert_eq!(deployment.spec.pipeline, "process-topk");
    assert_eq!(
        deployment.spec.hosts.names,
        Some(vec!["web-1".to_string(), "web-2".to_string()])
    );

    // Each target host runs the candidate as its one standing collector, and no
    // experiment collector; the other host runs nothing.
    let topk = template_config(&stack, "process-topk").await;
    for agent in [&web1, &web2] {
        let env = wait_for_standing(agent, "topk-web", &topk).await;
        assert_eq!(env["PHOENIX_HOST"], agent.host_id);
        assert_eq!(env["PHOENIX_VAR_CPU_THRESHOLD"], "0.2");
        assert_eq!(
            env["PHOENIX_CRITICAL_PROCESSES_REGEX"],
            "^(nginx|postgres)$"
        );
        assert_eq!(
            env["PHOENIX_REMOTE_WRITE_URL"],
            stack.reconciler_config.remote_write_url
        );
    }
    assert!(db1.collector_processes().is_empty());

    // Promoting twice is refused.
    let (status, body) = post(&stack, "/api/v1/experiments/topk-web/promote").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already promoted"), "{body}");

    // The deployment reports its hosts healthy.
    eventually("both hosts ready", WAIT, || async {
        let d: PipelineDeployment = stack
            .request(Method::GET, "/api/v1/deployments/topk-web", VIEWER_TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        d.hosts
            .iter()
            .all(|h| {
                h.collector
                    .as_ref()
                    .is_some_and(|c| c.health == phoenix_wire::agent::Health::Healthy)
            })
            .then_some(())
    })
    .await;

    // Rollback: the promotion made the deployment, so it goes, and so do the collectors.
    let (status, body) = post(&stack, "/api/v1/experiments/topk-web/rollback").await;
    assert_eq!(status, 200, "{body}");
    let rolled: PromotionResult = serde_json::from_str(&body).unwrap();
    assert_eq!(rolled.experiment.phase, Phase::RolledBack);
    assert!(rolled.deployment.is_none());
    for agent in [&web1, &web2] {
        wait_for_variants(agent, &[]).await;
    }
    let response = stack
        .request(Method::GET, "/api/v1/deployments/topk-web", VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let events = stack
        .request(
            Method::GET,
            "/api/v1/experiments/topk-web/events",
            VIEWER_TOKEN,
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(events.contains("\"toPhase\":\"promoted\""), "{events}");
    assert!(events.contains("\"toPhase\":\"rolled-back\""), "{events}");
    drop((web1, web2, db1));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_replaces_the_standing_pipeline_and_rollback_restores_it_through_the_cli() {
    let stack = Stack::start().await;
    let web1 = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    let web2 = AgentProcess::spawn(&stack.api_url, "web-2", &[("role", "web")]);
    wait_for_hosts(&stack, 2).await;
    let baseline = template_config(&stack, "process-baseline").await;
    let topk = template_config(&stack, "process-topk").await;

    // A standing pipeline for every web host, by hand.
    let out = phoenix(
        &stack,
        &[
            "pipeline",
            "deploy",
            "--name",
            "web-standing",
            "--pipeline",
            "process-baseline",
            "--selector",
            "role=web",
        ],
    );
    assert!(
        out.contains("deployment/web-standing at revision 1"),
        "{out}"
    );
    for agent in [&web1, &web2] {
        wait_for_standing(agent, "web-standing", &baseline).await;
    }

    // An experiment runs beside it.
    stack
        .create_experiment(&experiment_yaml("topk-web", "role: web", "manual"))
        .await;
    stack.wait_for_phase("topk-web", Phase::Running, WAIT).await;
    for agent in [&web1, &web2] {
        wait_for_variants(agent, &["baseline", "candidate", "standing"]).await;
    }

    // A failing verdict is not promoted unless forced.
    complete_with_verdict(&stack, "topk-web", "fail").await;
    let (status, body) = post(&stack, "/api/v1/experiments/topk-web/promote").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("verdict `fail`"), "{body}");
    let out = phoenix(&stack, &["experiment", "promote", "topk-web", "--force"]);
    assert!(
        out.contains("into pipeline deployment web-standing (revision 2)"),
        "the hosts' standing deployment takes the candidate: {out}"
    );
    for agent in [&web1, &web2] {
        let env = wait_for_standing(agent, "web-standing", &topk).await;
        assert_eq!(env["PHOENIX_VAR_CPU_THRESHOLD"], "0.2");
    }

    // Rolling the experiment back restores the standing pipeline from before.
    let out = phoenix(&stack, &["experiment", "rollback", "topk-web"]);
    assert!(out.contains("web-standing is at revision 1 again"), "{out}");
    for agent in [&web1, &web2] {
        let env = wait_for_standing(agent, "web-standing", &baseline).await;
        assert!(!env.contains_key("PHOENIX_VAR_CPU_THRESHOLD"));
    }
    assert_eq!(stack.experiment("topk-web").await.phase, Phase::RolledBack);

    // `phoenix pipeline deploy` with a change makes a revision; rollback undoes it.
    let doc = "apiVersion: phoenix.dev/v1\nkind: PipelineDeployment\nmetadata: {name: web-standing}\n\
               spec:\n  hosts: {selector: {role: web}}\n  pipeline: process-topk\n  vars: {cpu_threshold: 0.5}\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web-standing.yaml");
    std::fs::write(&file, doc).unwrap();
    let out = phoenix(
        &stack,
        &["pipeline", "deploy", "-f", file.to_str().unwrap()],
    );
    assert!(out.contains("at revision 3"), "{out}");
    // The same document again changes nothing.
    let out = phoenix(
        &stack,
        &["pipeline", "deploy", "-f", file.to_str().unwrap()],
    );
    assert!(out.contains("at revision 3"), "{out}");
    for agent in [&web1, &web2] {
        let env = wait_for_standing(agent, "web-standing", &topk).await;
        assert_eq!(env["PHOENIX_VAR_CPU_THRESHOLD"], "0.5");
    }
    let out = phoenix(&stack, &["pipeline", "rollback", "web-standing"]);
    assert!(out.contains("rolled back to revision 1"), "{out}");
    for agent in [&web1, &web2] {
        wait_for_standing(agent, "web-standing", &baseline).await;
    }
    // Nothing earlier than revision 1: a clear refusal.
    let (status, body) = post(&stack, "/api/v1/deployments/web-standing/rollback").await;
    assert_eq!(status, 409, "{body}");

    let out = phoenix(&stack, &["pipeline", "list-deployments", "-o", "json"]);
    let list: List<PipelineDeployment> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].revision, 1);
    let out = phoenix(&stack, &["pipeline", "show-deployment", "web-standing"]);
    assert!(out.contains("rolled back"), "{out}");
    let table = phoenix(&stack, &["pipeline", "list-deployments"]);
    assert!(table.starts_with("NAME"), "{table}");

    // A second deployment may not take hosts the first runs on.
    let response = stack
        .request(Method::POST, "/api/v1/deployments", OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(doc.replace("name: web-standing", "name: other"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);

    // Deleting the deployment stops its collectors.
    phoenix(&stack, &["pipeline", "delete-deployment", "web-standing"]);
    for agent in [&web1, &web2] {
        wait_for_variants(agent, &[]).await;
    }
    drop((web1, web2));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_auto_promotes_a_pass_and_not_a_fail() {
    let stack = Stack::start().await;
    let web1 = AgentProcess::spawn(&stack.api_url, "web-1", &[("team", "a")]);
    let web2 = AgentProcess::spawn(&stack.api_url, "web-2", &[("team", "b")]);
    wait_for_hosts(&stack, 2).await;
    stack
        .create_experiment(&experiment_yaml("auto-pass", "team: a", "auto"))
        .await;
    stack
        .create_experiment(&experiment_yaml("auto-fail", "team: b", "auto"))
        .await;
    stack
        .wait_for_phase("auto-pass", Phase::Running, WAIT)
        .await;
    stack
        .wait_for_phase("auto-fail", Phase::Running, WAIT)
        .await;

    complete_with_verdict(&stack, "auto-fail", "fail").await;
    complete_with_verdict(&stack, "auto-pass", "pass").await;
    // (Not `wait_for_phase`: `completed` is terminal, and it is where this starts.)
    let promoted = eventually("auto-pass to be promoted", WAIT, || async {
        let e = stack.experiment("auto-pass").await;
        (e.phase == Phase::Promoted).then_some(e)
    })
    .await;
    assert!(
        promoted
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("automatically")),
        "{:?}",
        promoted.reason
    );
    let topk = template_config(&stack, "process-topk").await;
    wait_for_standing(&web1, "auto-pass", &topk).await;

    // The failing one's collectors go (it is completed) and nothing replaces them.
    wait_for_variants(&web2, &[]).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // a few more passes
    assert_eq!(stack.experiment("auto-fail").await.phase, Phase::Completed);
    assert!(web2.collector_processes().is_empty());
    let list: List<PipelineDeployment> = stack
        .request(Method::GET, "/api/v1/deployments", VIEWER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list.items.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["auto-pass"]);
    drop((web1, web2));
    stack.shutdown().await;
}

/// Promote of an experiment into a deployment, racing a rollback of that same
/// deployment, 100 times: never a 500 (they once deadlocked in Postgres), and the
/// end state is always one of the two orders (or a 409 that changed nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_racing_rollback_ends_in_one_of_the_two_outcomes() {
    let stack = Stack::start_with(phoenix_e2e::harness::StackOptions {
        reconciler: false, // experiments are moved to `completed` by hand below
        ..Default::default()
    })
    .await;
    stack.register_host("race-1", &[("role", "race")]).await;
    let deployment = |threshold: u32| {
        format!(
            r#"
apiVersion: phoenix.dev/v1
kind: PipelineDeployment
metadata: {{name: raced}}
spec:
  hosts: {{names: [race-1]}}
  pipeline: process-topk
  vars: {{cpu_threshold: "0.{threshold}"}}
"#
        )
    };
    let deploy = |threshold: u32| {
        let body = deployment(threshold);
        let stack = &stack;
        async move {
            let response = stack
                .request(Method::POST, "/api/v1/deployments", OPERATOR_TOKEN)
                .header("content-type", "application/yaml")
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            let deployed: PipelineDeployment = response.json().await.unwrap();
            deployed.revision
        }
    };
    deploy(1).await;
    let mut orders = BTreeMap::new();
    for round in 0..100u32 {
        // A fresh revision to roll back from, and a fresh completed experiment.
        let revision = deploy(round % 2 + 2).await;
        let name = format!("race-{round}");
        stack
            .create_experiment(&experiment_yaml(&name, "role: race", "manual"))
            .await;
        sqlx::query(
            "INSERT INTO experiment_results (experiment, window_start, window_end, attempts, verdict, analyzed_at) \
             VALUES ($1, now() - interval '1 minute', now(), 1, 'pass', now())",
        )
        .bind(&name)
        .execute(&stack.pool)
        .await
        .unwrap();
        let mut conn = stack.pool.acquire().await.unwrap();
        let targets = ["race-1".to_string()];
        assert!(
            experiments::transition(
                &mut conn,
                &name,
                Phase::Pending,
                Phase::Completed,
                "test: analysis stood in for, verdict pass",
                Some(&targets),
            )
            .await
            .unwrap()
        );
        drop(conn);

        let promote_path = format!("/api/v1/experiments/{name}/promote?deployment=raced");
        let (promoted, rolled_back) = tokio::join!(
            post(&stack, &promote_path),
            post(&stack, "/api/v1/deployments/raced/rollback"),
        );
        for (what, (status, body)) in [("promote", &promoted), ("rollback", &rolled_back)] {
            assert!(
                *status == 200 || *status == 409,
                "round {round}: {what} answered {status}: {body}"
            );
        }
        let experiment = stack.experiment(&name).await;
        let current: PipelineDeployment = stack
            .request(Method::GET, "/api/v1/deployments/raced", VIEWER_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let order = match (promoted.0, rolled_back.0, experiment.phase) {
            // Rollback first (to the revision before `revision`), then the promotion.
            (200, 200, Phase::Promoted) => {
                assert_eq!(current.promoted_from.as_deref(), Some(name.as_str()));
                "rollback, then promote"
            }
            // Promotion first, then the rollback undid it: back at `revision`.
            (200, 200, Phase::RolledBack) => {
                assert_eq!(current.revision, revision, "round {round}");
                "promote, then rollback"
            }
            // A collision answered with a 409 changed nothing on that side.
            (409, 200, Phase::Completed) => "promote refused, rollback done",
            (200, 409, Phase::Promoted) => {
                assert_eq!(current.promoted_from.as_deref(), Some(name.as_str()));
                "promote done, rollback refused"
            }
            other => panic!(
                "round {round}: an end state that is neither order: {other:?}, {}, {}",
                promoted.1, rolled_back.1
            ),
        };
        *orders.entry(order).or_insert(0) += 1;
    }
    eprintln!("outcomes of 100 races: {orders:?}");
    stack.shutdown().await;
}
