//! Schemathesis (PyPI, `ensure_schemathesis` in scripts/lib.sh installs it once per
//! machine) fuzzes a running api, on real Postgres, from the OpenAPI document it
//! serves (`GET /api/v1/openapi.json`): a bounded number of generated requests per
//! operation, valid and invalid, with an admin token for the user API, a host's
//! credential for the agent API (its `{host_id}` fixed to that host, so the
//! authorized paths run) and the bootstrap token for enrollment.
//!
//! It fails on any 5xx, and on any answer the document does not describe: a status
//! code, a content type, a header or a body outside the document. What it found
//! is kept as plain requests in `api_input.rs` (the `fuzz_found_*` tests).
//!
//! `PHOENIX_FUZZ_EXAMPLES` sets the examples per operation (default 100: about 1.5
//! minutes on 2 cores).

use std::time::Duration;

use phoenix_e2e::harness::{
    ADMIN_TOKEN, BOOTSTRAP_TOKEN, api_config, enroll, fresh_database, http_client,
};
use phoenix_wire::duration::HumanDuration;
use tokio::sync::watch;

/// The `st` command, installed (and cached) by scripts/lib.sh.
fn schemathesis() -> String {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg("source scripts/lib.sh && ensure_schemathesis")
        .current_dir(repo)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "installing schemathesis failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

const EXPERIMENT: &str = "
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {name: fuzz-exp}
spec:
  hosts: {selector: {role: web}}
  baseline: {pipeline: process-baseline}
  candidate: {pipeline: process-topk}
  duration: 10m
  criticalProcesses: [nginx]
";

const DEPLOYMENT: &str = "
apiVersion: phoenix.dev/v1
kind: PipelineDeployment
metadata: {name: fuzz-standing}
spec:
  hosts: {names: [fuzz-1]}
  pipeline: process-topk
";

const DESTINATION: &str = "
apiVersion: phoenix.dev/v1
kind: Destination
metadata: {name: fuzz-dest}
spec:
  protocol: otlp_grpc
  endpoint: 127.0.0.1:4317
  tls: {insecure: true}
";

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let st = schemathesis();
    let mut config = api_config(&fresh_database().await);
    // A long-poll without `wait` waits this long: short, so it costs the fuzzer little.
    config.max_wait = HumanDuration(Duration::from_secs(1));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stop_rx) = watch::channel(false);
    let api = tokio::spawn(phoenix_api::serve(config, listener, stop_rx));
    let http = http_client();
    phoenix_e2e::harness::eventually("the api is ready", Duration::from_secs(30), || async {
        let ready = http.get(format!("{api_url}/readyz")).send().await.ok()?;
        ready.status().is_success().then_some(())
    })
    .await;

    // One registered host whose credential the agent operations use.
    let credential = enroll(&http, &api_url, "fuzz-1").await;
    let registered = http
        .put(format!("{api_url}/agent/v1/hosts/fuzz-1/status"))
        .bearer_auth(&credential)
        .json(&serde_json::json!({"labels": {"role": "web"}, "agentVersion": "test", "collectors": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 204);
    // One resource of each kind, so the lists and the reports the fuzzer reads hold
    // objects whose shape is checked against the document.
    for (path, document) in [
        ("/api/v1/experiments", EXPERIMENT),
        ("/api/v1/deployments", DEPLOYMENT),
        ("/api/v1/destinations", DESTINATION),
        ("/api/v1/bootstrap-tokens", r#"{"description": "fuzz"}"#),
    ] {
        let created = http
            .post(format!("{api_url}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/yaml")
            .body(document)
            .send()
            .await
            .unwrap();
        assert_eq!(
            created.status(),
            201,
            "{path}: {}",
            created.text().await.unwrap()
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config_file,
        format!(
            r#"
[auth.openapi.userToken]
bearer = "{ADMIN_TOKEN}"
[auth.openapi.hostCredential]
bearer = "{credential}"
[auth.openapi.bootstrapToken]
bearer = "{BOOTSTRAP_TOKEN}"

[[operations]]
include-path-regex = "^/agent/v1/hosts/"
parameters = {{ "path.host_id" = "fuzz-1" }}

# Revoking the fuzzing host's own credential would leave the agent operations
# nothing but 401s; every other host id is fair game.
[[operations]]
include-path = "/api/v1/agent-credentials/{{host_id}}"
include-method = "DELETE"
parameters = {{ "path.host_id" = "another-host" }}
"#
        ),
    )
    .unwrap();
    let examples = std::env::var("PHOENIX_FUZZ_EXAMPLES").unwrap_or_else(|_| "100".into());
    let started = std::time::Instant::now();
    let output = tokio::process::Command::new(&st)
        .arg("--config-file")
        .arg(&config_file)
        .arg("--no-color")
        .args(["run", &format!("{api_url}/api/v1/openapi.json")])
        .args(["--url", &api_url])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", &examples])
        // One worker: two raced inside schemathesis's generation (a KeyError in a run).
        .args(["--workers", "1", "--seed", "20", "--request-timeout", "20"])
        .args(["--phases", "examples,coverage,fuzzing"])
        // A failure is reported as found, not shrunk: shrinking can take minutes.
        .arg("--no-shrink")
        .arg("--report-dir")
        .arg(dir.path())
        // Its cache (`.schemathesis/`) goes there too, not into the repository.
        .current_dir(dir.path())
        .output()
        .await
        .expect("st runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    println!("schemathesis took {:.0?}", started.elapsed());
    assert!(
        output.status.success(),
        "schemathesis found failures (above)"
    );
    // It did test: every operation of the served document, in each phase.
    let document: serde_json::Value = http
        .get(format!("{api_url}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Schemathesis counts `/ui` and `/ui/` as one path.
    let operations = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            let path = path.trim_end_matches('/').to_string();
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(
        stdout.contains(&format!("{operations} selected / {operations} total")),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches(&format!("{operations} passed")).count(),
        2,
        "coverage and fuzzing each pass every operation: {stdout}"
    );
    stop.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), api).await;
}
