//! The api serves HTTPS from a certificate and key file; the agent and the CLI
//! reach it through a private CA given by file, and refuse it without that CA.

use std::process::Command;
use std::time::Duration;

use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{AgentProcess, Stack, StackOptions, TestCa, VIEWER_TOKEN, eventually};
use phoenix_wire::view::{Host, List};
use reqwest::Method;

async fn https_stack(ca: &TestCa) -> Stack {
    Stack::start_with(StackOptions {
        reconciler: false,
        tls: Some(ca.clone()),
        ..Default::default()
    })
    .await
}

fn phoenix(stack: &Stack, args: &[&str]) -> std::process::Output {
    Command::new(binary("phoenix"))
        .args(args)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", VIEWER_TOKEN)
        .env_remove("PHOENIX_CONFIG")
        .env_remove("PHOENIX_CA_FILE")
        .env("HOME", "/nonexistent")
        .output()
        .expect("run phoenix")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_and_the_cli_speak_https_with_a_private_ca() {
    let ca = TestCa::new();
    let stack = https_stack(&ca).await;
    assert!(stack.api_url.starts_with("https://"), "{}", stack.api_url);

    // The agent registers and heartbeats over HTTPS.
    let _agent =
        AgentProcess::spawn_with_ca(&stack.api_url, "tls-1", &[("role", "web")], &ca.ca_cert);
    eventually(
        "the agent registers over https",
        Duration::from_secs(30),
        || async {
            let response = stack
                .request(Method::GET, "/api/v1/hosts", VIEWER_TOKEN)
                .send()
                .await
                .ok()?;
            let hosts: List<Host> = response.json().await.ok()?;
            hosts
                .items
                .iter()
                .any(|h| h.host_id == "tls-1")
                .then_some(())
        },
    )
    .await;

    // The CLI with the CA file lists it; without, it refuses the unknown issuer.
    let ca_file = ca.ca_cert.to_str().unwrap();
    let output = phoenix(&stack, &["host", "list", "--ca-file", ca_file]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("tls-1"), "{stdout}");
    let output = phoenix(&stack, &["host", "list"]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the machine's roots do not know this CA"
    );

    // Plain HTTP to the TLS port gets no answer an HTTP client could use.
    let plain = stack.api_url.replace("https://", "http://");
    let refused = phoenix_e2e::harness::http_client()
        .get(format!("{plain}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(refused.is_err() || !refused.unwrap().status().is_success());
    stack.shutdown().await;
}
