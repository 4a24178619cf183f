//! Destinations end to end: an admin declares the user's backend, a deployment
//! names it, and the standing collectors export to it besides the measurement
//! Prometheus; experiments never do.
//!
//! - `destinations_are_admin_only_checked_and_hold_no_secret`: the API and CLI
//!   (admin only, field errors with nothing stored, deletion refused while used),
//!   and the agent handing a credential read from its credentials directory to the
//!   standing collector alone (stand-in collectors).
//! - `after_promotion_the_backend_receives_exactly_the_candidates_series`: the
//!   real collector on two hosts, a real Prometheus, and a second collector as the
//!   user's backend (`phoenix_e2e::backend`): before promotion it receives the
//!   baseline from every selected host, never an experiment's series; after
//!   promotion exactly the candidate's series (counted against what the candidate
//!   wrote to the measurement Prometheus), and the baseline's stop arriving. The
//!   credential, given by file, arrives as a header; no API answer ever holds it.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use phoenix_e2e::backend::{OtlpBackend, TOKEN_HEADER};
use phoenix_e2e::bins::{self, binary};
use phoenix_e2e::harness::{
    ADMIN_TOKEN, AgentProcess, NamedProcesses, OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN,
    eventually,
};
use phoenix_e2e::measurement::MeasurementStack;
use phoenix_wire::destination::Destination;
use phoenix_wire::problem::Problem;
use phoenix_wire::view::{List, Phase};
use reqwest::Method;

const WAIT: Duration = Duration::from_secs(90);

/// Runs the CLI with `token`; returns (success, stdout, stderr).
fn phoenix(stack: &Stack, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("phoenix"))
        .args(args)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", token)
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

async fn send(stack: &Stack, method: Method, path: &str, token: &str, body: &str) -> (u16, String) {
    let mut request = stack.request(method, path, token);
    if !body.is_empty() {
        request = request
            .header("content-type", "application/yaml")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn destination_yaml(name: &str, endpoint: &str, credential_file: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Destination
metadata: {{name: {name}}}
spec:
  protocol: otlp_grpc
  endpoint: "{endpoint}"
  tls: {{insecure: true}}
  credentials:
    - {{header: {TOKEN_HEADER}, file: {credential_file}}}
"#
    )
}

fn deployment_yaml(name: &str, pipeline: &str, destinations: &str, vars: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: PipelineDeployment
metadata: {{name: {name}}}
spec:
  hosts: {{selector: {{role: web}}}}
  pipeline: {pipeline}
  vars: {{{vars}}}
  criticalProcesses: [phx-dest-crit]
  destinations: [{destinations}]
"#
    )
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
async fn destinations_are_admin_only_checked_and_hold_no_secret() {
    let stack = Stack::start().await;
    let web1 = AgentProcess::spawn(&stack.api_url, "web-1", &[("role", "web")]);
    let secret = "Bearer only-the-collector-sees-this-7f3a";
    std::fs::create_dir_all(web1.credentials_dir().join("backend")).unwrap();
    std::fs::write(
        web1.credentials_dir().join("backend/token"),
        format!("{secret}\n"),
    )
    .unwrap();
    wait_for_hosts(&stack, 1).await;
    let yaml = destination_yaml("backend", "127.0.0.1:4317", "backend/token");

    // Operators may not declare or even read destinations.
    let (status, body) = send(
        &stack,
        Method::POST,
        "/api/v1/destinations",
        OPERATOR_TOKEN,
        &yaml,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = send(
        &stack,
        Method::GET,
        "/api/v1/destinations",
        OPERATOR_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 403);

    // Bad input names the field and stores nothing.
    for (bad, field) in [
        (
            yaml.replace("file: backend/token", "file: /etc/shadow"),
            "spec.credentials[0].file",
        ),
        (
            yaml.replace("file: backend/token", "env: PHOENIX_AGENT_TOKEN"),
            "spec.credentials[0].env",
        ),
        (
            yaml.replace("file: backend/token", "value: s3cret"),
            "spec.credentials[0].value",
        ),
        (
            yaml.replace("protocol: otlp_grpc", "protocol: kafka"),
            "spec.protocol",
        ),
        (
            yaml.replace("\"127.0.0.1:4317\"", "\"http://x/${env:HOME}\""),
            "spec.endpoint",
        ),
    ] {
        let (status, body) = send(
            &stack,
            Method::POST,
            "/api/v1/destinations",
            ADMIN_TOKEN,
            &bad,
        )
        .await;
        assert_eq!(status, 422, "{body}");
        let problem: Problem = serde_json::from_str(&body).unwrap();
        assert_eq!(problem.field.as_deref(), Some(field), "{body}");
    }
    let (status, body) = send(&stack, Method::GET, "/api/v1/destinations", ADMIN_TOKEN, "").await;
    assert_eq!(status, 200);
    let list: List<Destination> = serde_json::from_str(&body).unwrap();
    assert!(list.items.is_empty(), "{body}");

    // The CLI declares one from flags; -o json is the API object.
    let (ok, out, err) = phoenix(
        &stack,
        ADMIN_TOKEN,
        &[
            "destination",
            "create",
            "--name",
            "backend",
            "--protocol",
            "otlp_grpc",
            "--endpoint",
            "127.0.0.1:4317",
            "--insecure",
            "--credential-file",
            &format!("{TOKEN_HEADER}=backend/token"),
            "-o",
            "json",
        ],
    );
    assert!(ok, "{err}");
    let created: Destination = serde_json::from_str(&out).unwrap();
    assert_eq!(
        created.spec.credentials[0].file.as_deref(),
        Some("backend/token")
    );
    let (ok, _, err) = phoenix(&stack, OPERATOR_TOKEN, &["destination", "list"]);
    assert!(
        !ok && (err.contains("403") || err.to_lowercase().contains("forbidden")),
        "{err}"
    );
    let (ok, help, _) = phoenix(&stack, ADMIN_TOKEN, &["destination", "create", "--help"]);
    assert!(
        ok && help.contains("never values") && help.contains("--credential-file"),
        "{help}"
    );

    // A deployment may name only declared destinations.
    let (status, body) = send(
        &stack,
        Method::POST,
        "/api/v1/deployments",
        OPERATOR_TOKEN,
        &deployment_yaml("web", "process-baseline", "backend, nope", ""),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("spec.destinations[1]") && body.contains("backend"),
        "{body}"
    );
    let (status, body) = send(
        &stack,
        Method::POST,
        "/api/v1/deployments",
        OPERATOR_TOKEN,
        &deployment_yaml("web", "process-baseline", "backend", ""),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // The agent reads the credential from its credentials directory and gives it
    // to the standing collector alone, as the variable its exporter header reads.
    let env = eventually(
        "the standing collector with its credential",
        WAIT,
        || async {
            let found = web1.collector_processes();
            let [only] = found.as_slice() else {
                return None;
            };
            only.env
                .contains_key("PHOENIX_CREDENTIAL_BACKEND_0")
                .then(|| (only.env.clone(), only.config()))
        },
    )
    .await;
    assert_eq!(env.0["PHOENIX_CREDENTIAL_BACKEND_0"], secret);
    assert!(env.1.contains("otlp_grpc/destination-backend"), "{}", env.1);
    assert!(
        env.1.contains("${env:PHOENIX_CREDENTIAL_BACKEND_0}"),
        "{}",
        env.1
    );
    assert!(
        !env.1.contains(secret),
        "the config on disk holds no secret"
    );

    // In use: deleting is refused, naming the deployment.
    let (status, body) = send(
        &stack,
        Method::DELETE,
        "/api/v1/destinations/backend",
        ADMIN_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("web"), "{body}");
    let (ok, out, err) = phoenix(&stack, ADMIN_TOKEN, &["destination", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("backend") && out.contains("web"), "{out}");

    assert_no_answer_holds(&stack, secret, &["web-1"]).await;

    // Once no deployment names it, it can go.
    let (status, body) = send(
        &stack,
        Method::DELETE,
        "/api/v1/deployments/web",
        OPERATOR_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (ok, _, err) = phoenix(&stack, ADMIN_TOKEN, &["destination", "delete", "backend"]);
    assert!(ok, "{err}");
    stack.shutdown().await;
}

/// No API answer (and no stored row) holds `secret`.
async fn assert_no_answer_holds(stack: &Stack, secret: &str, hosts: &[&str]) {
    let mut paths = vec![
        "/api/v1/destinations".to_string(),
        "/api/v1/destinations/backend".to_string(),
        "/api/v1/deployments".to_string(),
        "/api/v1/deployments/web".to_string(),
        "/api/v1/experiments".to_string(),
        "/api/v1/hosts".to_string(),
        "/api/v1/tasks?limit=1000".to_string(),
    ];
    for host in hosts {
        paths.push(format!("/api/v1/hosts/{host}"));
    }
    for path in &paths {
        let (status, body) = send(stack, Method::GET, path, ADMIN_TOKEN, "").await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(secret), "{path} returned the credential");
    }
    let mut conn = stack.pool.acquire().await.unwrap();
    let tables = [
        "destinations",
        "agent_tasks",
        "pipeline_deployments",
        "pipeline_deployment_revisions",
        "host_collectors",
        "hosts",
        "experiment_events",
    ];
    for table in tables {
        // `table` is one of the fixed names above.
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} t WHERE row_to_json(t)::text LIKE '%' || $1 || '%'"
        )))
        .bind(secret)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(n, 0, "table {table} holds the credential");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_promotion_the_backend_receives_exactly_the_candidates_series() {
    let collector = bins::collector();
    let measurement = MeasurementStack::start(Duration::from_secs(1))
        .await
        .expect("prometheus and pushgateway");
    let backend = OtlpBackend::start(&collector).expect("the backend collector");
    let stack = Stack::start_with(StackOptions {
        remote_write_url: Some(measurement.remote_write_url()),
        prometheus_url: Some(measurement.prometheus_url.clone()),
        collector_bin: Some(collector.clone()),
        deploy_timeout: Duration::from_secs(120),
        ..Default::default()
    })
    .await;
    let critical = NamedProcesses::start("phx-dest-crit", 3);
    let critical_pids: BTreeSet<String> = critical.pids().iter().map(u32::to_string).collect();
    let secret = "Bearer backend-credential-91c2";
    let hosts = ["dest-1", "dest-2"];
    let agents: Vec<AgentProcess> = hosts
        .iter()
        .map(|host| {
            let agent = AgentProcess::spawn_with(
                &stack.api_url,
                host,
                &[("role", "web")],
                &collector,
                Some(&measurement.pushgateway_url),
            );
            let dir = agent.credentials_dir().join("backend");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("token"), format!("{secret}\n")).unwrap();
            agent
        })
        .collect();
    wait_for_hosts(&stack, hosts.len()).await;

    let (status, body) = send(
        &stack,
        Method::POST,
        "/api/v1/destinations",
        ADMIN_TOKEN,
        &destination_yaml("backend", &backend.endpoint, "backend/token"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = send(
        &stack,
        Method::POST,
        "/api/v1/deployments",
        OPERATOR_TOKEN,
        &deployment_yaml(
            "web",
            "process-baseline",
            "backend",
            "collection_interval: 2s",
        ),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // The baseline (every process) arrives from every selected host, with the credential.
    let baseline_pids = eventually(
        "the baseline at the backend from every host",
        WAIT,
        || async {
            let received = backend.received();
            let per_host: Vec<usize> = hosts
                .iter()
                .map(|h| {
                    received
                        .with("phoenix.host", h)
                        .iter()
                        .filter_map(|s| s.resource.get("process.pid"))
                        .collect::<BTreeSet<_>>()
                        .len()
                })
                .collect();
            per_host
                .iter()
                .all(|n| *n > critical_pids.len())
                .then_some(per_host)
        },
    )
    .await;
    println!("baseline at the backend: distinct processes per host {baseline_pids:?}");
    let received = backend.received();
    assert_eq!(
        received.tokens.keys().collect::<Vec<_>>(),
        vec![secret],
        "every data point carried the credential"
    );

    // An experiment: baseline vs a candidate that keeps only the critical processes.
    let experiment = r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata: {name: prio-web}
spec:
  hosts: {selector: {role: web}}
  baseline: {pipeline: process-baseline, vars: {collection_interval: 2s}}
  candidate: {pipeline: process-priority-filter, vars: {collection_interval: 2s}}
  warmup: 0s
  duration: 20s
  criticalProcesses: [phx-dest-crit]
"#;
    stack.create_experiment(experiment).await;
    stack
        .wait_for_phase("prio-web", Phase::Completed, Duration::from_secs(240))
        .await;
    let verdict = stack.experiment("prio-web").await;
    println!("experiment prio-web: {:?}", verdict.reason);

    // Experiment collectors wrote to measurement only.
    let variants = backend.received().values("phoenix.variant");
    assert_eq!(
        variants,
        BTreeSet::from(["standing".to_string()]),
        "only standing collectors reach the backend"
    );

    // What the candidate wrote to the measurement Prometheus, per host.
    let mut candidate_count = BTreeMap::new();
    for host in hosts {
        let n = measurement
            .scalar(&format!(
                r#"count(last_over_time({{phoenix_experiment="prio-web",phoenix_variant="candidate",phoenix_host="{host}"}}[10m]))"#
            ))
            .await
            .expect("candidate series count");
        assert!(n > 0.0, "the candidate wrote nothing for {host}");
        candidate_count.insert(host.to_string(), n as usize);
    }

    let (status, body) = send(
        &stack,
        Method::POST,
        "/api/v1/experiments/prio-web/promote?deployment=web&force=true",
        OPERATOR_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Each host switches to the candidate as its one standing collector.
    for agent in &agents {
        eventually(
            &format!("the candidate standing on {}", agent.host_id),
            WAIT,
            || async {
                let found = agent.collector_processes();
                let [only] = found.as_slice() else {
                    return None;
                };
                (only.env.get("PHOENIX_VARIANT").map(String::as_str) == Some("standing")
                    && only.config().contains("filter/priority"))
                .then_some(())
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mark = backend.mark();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = backend.received_since(mark);

    assert_eq!(
        after.values("phoenix.host"),
        hosts.iter().map(|h| h.to_string()).collect(),
        "every selected host sends"
    );
    for host in hosts {
        let series = after.with("phoenix.host", host);
        let pids: BTreeSet<String> = series
            .iter()
            .filter_map(|s| s.resource.get("process.pid").cloned())
            .collect();
        let names: BTreeSet<String> = series
            .iter()
            .filter_map(|s| s.resource.get("process.executable.name").cloned())
            .collect();
        println!(
            "after promotion, {host}: {} series from {} processes (the candidate wrote {} to measurement)",
            series.len(),
            pids.len(),
            candidate_count[host]
        );
        assert_eq!(
            pids, critical_pids,
            "{host}: exactly the critical processes; the baseline's stopped"
        );
        assert_eq!(
            names,
            BTreeSet::from(["phx-dest-crit".to_string()]),
            "{host}"
        );
        assert_eq!(
            series.len(),
            candidate_count[host],
            "{host}: exactly the candidate's series"
        );
    }
    assert_eq!(after.tokens.keys().collect::<Vec<_>>(), vec![secret]);
    assert_eq!(
        after.values("phoenix.variant"),
        BTreeSet::from(["standing".to_string()])
    );

    assert_no_answer_holds(&stack, secret, &hosts).await;
    drop(agents);
    drop(critical);
    stack.shutdown().await;
    drop(backend);
}
