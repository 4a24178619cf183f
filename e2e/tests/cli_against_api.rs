//! The `phoenix` CLI against the real api: what a user types, end to end.

use std::process::Command;

use std::time::Duration;

use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{OPERATOR_TOKEN, Stack, VIEWER_TOKEN, eventually};
use phoenix_wire::view::{AgentTask, Experiment, List};

fn phoenix(stack: &Stack, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(binary("phoenix"))
        .args(args)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", token)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run phoenix")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_get_stop_delete_through_the_cli() {
    let stack = Stack::start().await;
    stack.register_host("web-1", &[("role", "web")]).await;

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/topk-web.yaml");
    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["experiment", "create", "-f", example],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = phoenix(&stack, VIEWER_TOKEN, &["experiment", "list", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: List<Experiment> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].name, "topk-web");

    let out = phoenix(&stack, VIEWER_TOKEN, &["experiment", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("topk-web"), "{table}");

    let out = phoenix(&stack, VIEWER_TOKEN, &["host", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("web-1"));

    // A viewer cannot stop it; the error says why and the exit code says it failed.
    let out = phoenix(&stack, VIEWER_TOKEN, &["experiment", "stop", "topk-web"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["experiment", "stop", "topk-web", "-o", "json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stopped: Experiment = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stopped.phase, phoenix_wire::view::Phase::Stopped);

    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["experiment", "delete", "topk-web"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = phoenix(&stack, VIEWER_TOKEN, &["experiment", "get", "topk-web"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_list_by_host_and_status() {
    let stack = Stack::start().await;
    stack.register_host("web-1", &[("role", "web")]).await;
    stack.register_host("web-2", &[("role", "web")]).await;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/topk-web.yaml");
    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["experiment", "create", "-f", example],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The reconciler asks each host (no agent behind them) to start both collectors.
    let tasks = eventually("web-1's start tasks", Duration::from_secs(30), || async {
        let out = phoenix(
            &stack,
            VIEWER_TOKEN,
            &["task", "list", "--host", "web-1", "-o", "json"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: List<AgentTask> = serde_json::from_slice(&out.stdout).unwrap();
        (list.items.len() >= 2).then_some(list.items)
    })
    .await;
    let mut units: Vec<&str> = tasks.iter().map(|t| t.unit.as_str()).collect();
    units.sort();
    assert_eq!(units, ["topk-web.baseline", "topk-web.candidate"]);
    for task in &tasks {
        assert_eq!(task.host, "web-1");
        assert_eq!(task.experiment.as_deref(), Some("topk-web"));
        assert_eq!(
            (task.kind.as_str(), task.action.as_str()),
            ("collector", "start")
        );
        assert_eq!(task.status, phoenix_wire::view::TaskStatus::Pending);
        assert!(!task.config_hash.is_empty());
    }
    assert!(tasks[0].id > tasks[1].id, "newest first: {tasks:?}");

    // Every host's, by status, through the `tasks` alias.
    let out = phoenix(
        &stack,
        VIEWER_TOKEN,
        &["tasks", "list", "--status", "pending", "-o", "json"],
    );
    let list: List<AgentTask> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.items.len(), 4, "{:?}", list.items);
    assert!(list.items.iter().any(|t| t.host == "web-2"));
    let out = phoenix(
        &stack,
        VIEWER_TOKEN,
        &["task", "list", "--status", "succeeded"],
    );
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("No tasks in status succeeded."),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The table.
    let out = phoenix(&stack, VIEWER_TOKEN, &["task", "list", "--host", "web-2"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains("experiment/topk-web"), "{table}");
    assert!(!table.contains("web-1"), "{table}");

    // A status that does not exist: a 422 naming the field and the allowed values.
    let out = phoenix(&stack, VIEWER_TOKEN, &["task", "list", "--status", "bogus"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("field: status"), "{stderr}");
    assert!(
        stderr.contains("pending, leased, succeeded, failed, cancelled"),
        "{stderr}"
    );
    let response = stack
        .request(
            reqwest::Method::GET,
            "/api/v1/tasks?status=bogus",
            VIEWER_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let response = stack
        .request(
            reqwest::Method::GET,
            "/api/v1/tasks?limit=5000",
            VIEWER_TOKEN,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["field"], "limit", "{problem}");
    let response = stack
        .request(reqwest::Method::GET, "/api/v1/tasks?limit=1", VIEWER_TOKEN)
        .send()
        .await
        .unwrap();
    let list: List<AgentTask> = response.json().await.unwrap();
    assert_eq!(list.items.len(), 1);
    // Reading tasks needs a token.
    let response = stack
        .http
        .get(stack.url("/api/v1/tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_describe_shows_the_last_heartbeat_and_each_collector() {
    let stack = Stack::start().await;
    // What an agent reports: one healthy collector and one that keeps failing.
    let status = serde_json::json!({
        "labels": {"role": "web"},
        "agentVersion": "0.1.0",
        "collectors": [
            {"collectorId": "topk-web.baseline", "owner": "topk-web", "variant": "baseline",
             "pipeline": "process-baseline", "configHash": "00112233aabbccdd", "pid": 4242,
             "health": "healthy", "restarts": 0},
            {"collectorId": "topk-web.candidate", "owner": "topk-web", "variant": "candidate",
             "pipeline": "process-topk", "configHash": "44556677aabbccdd",
             "health": "restarting", "restarts": 3, "lastError": "bind: address already in use"}
        ]
    });
    let response = stack
        .request(
            reqwest::Method::PUT,
            "/agent/v1/hosts/web-1/status",
            &stack.host_credential("web-1").await,
        )
        .json(&status)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    let out = phoenix(&stack, VIEWER_TOKEN, &["host", "describe", "web-1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let heartbeat = text
        .lines()
        .find(|l| l.starts_with("Last heartbeat: "))
        .unwrap_or_else(|| panic!("no heartbeat line: {text}"));
    assert!(
        heartbeat.ends_with("s ago)") && heartbeat.contains('T'),
        "{heartbeat}"
    );
    assert!(text.contains("Collectors:     1/2 healthy\n"), "{text}");
    for wanted in [
        "COLLECTOR",
        "RESTARTS",
        "topk-web.baseline",
        "healthy",
        "4242",
        "restarting",
        "Last errors:\n  topk-web.candidate: bind: address already in use\n",
    ] {
        assert!(text.contains(wanted), "{wanted}: {text}");
    }

    // `get` is the same command.
    let out = phoenix(&stack, VIEWER_TOKEN, &["host", "get", "web-1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);

    stack.shutdown().await;
}

#[test]
fn completion_and_sync_help_need_no_configuration() {
    // A named config file that does not exist fails every command that talks to the API.
    let run = |args: &[&str]| {
        Command::new(binary("phoenix"))
            .args(args)
            .env("PHOENIX_CONFIG", "/nonexistent/phoenix.yaml")
            .env_remove("PHOENIX_API_URL")
            .env_remove("PHOENIX_TOKEN")
            .env("HOME", "/nonexistent")
            .output()
            .expect("run phoenix")
    };
    let out = run(&["host", "list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/phoenix.yaml"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(&["completion", "bash"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("phoenix"), "{script}");
    assert!(script.contains("complete -F"), "{script}");
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let out = run(&["completion", shell]);
        assert!(out.status.success(), "{shell}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("phoenix"));
    }

    let out = run(&["sync", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--prune"));
}
