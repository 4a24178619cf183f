//! The `phoenix` CLI against the real api: what a user types, end to end.

use std::process::Command;

use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{OPERATOR_TOKEN, Stack, VIEWER_TOKEN};
use phoenix_wire::view::{Experiment, List};

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
