//! Phoenix traced by OpenTelemetry, end to end: the real `phoenix-api`,
//! `phoenix-reconciler` and `phoenix-agent` processes export their spans over
//! OTLP/HTTP to the real OpenTelemetry Collector (the Phoenix build, `otlp`
//! receiver, `debug` exporter at `verbosity: detailed` writing to a file this test
//! reads), and one experiment's trace holds the api's request, the reconciler's
//! step that made its tasks, and the agent's claim and the collector becoming
//! healthy. JSON log lines carry the same trace id; without an exporter, JSON logs
//! still number spans, continuing a caller's `traceparent`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use phoenix_e2e::bins::{binary, collector};
use phoenix_e2e::harness::{
    AgentProcess, OPERATOR_TOKEN, bootstrap_token_file, enroll, eventually, fresh_database,
    http_client,
};
use phoenix_e2e::measurement::free_port;

const WAIT: Duration = Duration::from_secs(90);
const TOKENS: &str =
    "admin:admin-token-for-tests,operator:operator-token-for-tests,viewer:viewer-token-for-tests";

fn experiment_yaml(name: &str) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1
kind: Experiment
metadata:
  name: {name}
spec:
  hosts: {{selector: {{role: traced}}}}
  baseline: {{pipeline: process-baseline}}
  candidate: {{pipeline: process-topk, vars: {{cpu_threshold: "0.2"}}}}
  warmup: 0s
  duration: 1h
  criticalProcesses: [nginx]
"#
    )
}

/// A child process killed when the test ends, its stdout and stderr in `log`.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .spawn()
            .expect("spawn");
        Process { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real collector: OTLP/HTTP in on `port`, every span printed in detail to
/// `spans` (the debug exporter's own output, not the collector's log).
fn start_collector(dir: &Path, port: u16) -> (Process, PathBuf) {
    let config = dir.join("otelcol.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{port}
exporters:
  debug:
    verbosity: detailed
    use_internal_logger: false
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
"#
        ),
    )
    .unwrap();
    let spans = dir.join("spans.txt");
    let mut command = Command::new(collector());
    command.arg("--config").arg(&config);
    (Process::spawn(command, spans.clone()), spans)
}

/// One span as the debug exporter prints it.
#[derive(Clone, Debug)]
struct Span {
    service: String,
    trace_id: String,
    id: String,
    parent_id: String,
    name: String,
}

/// Reads the debug exporter's detailed text: `service.name` from each resource's
/// attributes, then each `Span #n` block's ids and name.
fn parse_spans(text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut current: Option<Span> = None;
    let mut in_resource = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("ResourceSpans #") {
            spans.extend(current.take());
            in_resource = true;
            continue;
        }
        if trimmed.starts_with("ScopeSpans #") {
            in_resource = false;
            continue;
        }
        if in_resource
            && let Some(name) = trimmed
                .strip_prefix("-> service.name: Str(")
                .and_then(|v| v.strip_suffix(')'))
        {
            service = name.to_string();
            continue;
        }
        if trimmed.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(Span {
                service: service.clone(),
                trace_id: String::new(),
                id: String::new(),
                parent_id: String::new(),
                name: String::new(),
            });
            continue;
        }
        let Some(span) = current.as_mut() else {
            continue;
        };
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        let value = value.trim().to_string();
        match key.trim() {
            "Trace ID" if span.trace_id.is_empty() => span.trace_id = value,
            "Parent ID" if span.parent_id.is_empty() => span.parent_id = value,
            "ID" if span.id.is_empty() => span.id = value,
            "Name" if span.name.is_empty() => span.name = value,
            _ => {}
        }
    }
    spans.extend(current);
    spans
}

fn api_command(database_url: &str, port: u16) -> Command {
    let mut command = Command::new(binary("phoenix-api"));
    command
        .args(["--dev", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--bootstrap-token-file")
        .arg(bootstrap_token_file())
        .env("DATABASE_URL", database_url)
        .env("PHOENIX_API_TOKENS", TOKENS)
        .env("RUST_LOG", "info");
    command
}

async fn wait_ready(url: &str) {
    let http = http_client();
    eventually(&format!("{url} ready"), WAIT, || async {
        let r = http.get(format!("{url}/readyz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
}

async fn create_experiment(api_url: &str, yaml: &str, traceparent: Option<&str>) {
    let mut request = http_client()
        .post(format!("{api_url}/api/v1/experiments"))
        .bearer_auth(OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(yaml.to_string());
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    assert_eq!(status, 201, "{}", response.text().await.unwrap());
}

/// The JSON objects of a log (every line must be one).
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect()
}

fn lines_with_message<'a>(
    lines: &'a [serde_json::Value],
    message: &str,
) -> Vec<&'a serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["message"].as_str() == Some(message))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_an_experiment_from_the_api_through_the_reconciler_to_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let otlp_port = free_port();
    let (collector, spans_file) = start_collector(dir.path(), otlp_port);
    let otlp = format!("http://127.0.0.1:{otlp_port}");
    eventually("the collector's OTLP receiver", WAIT, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", otlp_port))
            .await
            .ok()
            .map(drop)
    })
    .await;

    let database_url = fresh_database().await;
    let api_port = free_port();
    let api_url = format!("http://127.0.0.1:{api_port}");
    let mut command = api_command(&database_url, api_port);
    // JSON logs and the endpoint by flag, the service name by the standard variable.
    command
        .args(["--log-format", "json", "--otlp-endpoint", &otlp])
        .env("OTEL_SERVICE_NAME", "phoenix-api-under-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
    let api = Process::spawn(command, dir.path().join("api.log"));
    wait_ready(&api_url).await;

    let mut command = Command::new(binary("phoenix-reconciler"));
    command
        .args([
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--resync-interval",
            "1s",
        ])
        .env("DATABASE_URL", &database_url)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("RUST_LOG", "info");
    let reconciler = Process::spawn(command, dir.path().join("reconciler.log"));

    let mut agent = AgentProcess::unstarted(&api_url, "traced-1", &[("role", "traced")]);
    agent.env.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), otlp.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()),
        ("PHOENIX_LOG_FORMAT".to_string(), "json".to_string()),
    ]);
    agent.start();
    eventually("the agent registered", WAIT, || async {
        let r = http_client()
            .get(format!("{api_url}/api/v1/hosts/traced-1"))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    create_experiment(&api_url, &experiment_yaml("traced"), None).await;

    // One trace: the create request, the step of the pass that made its tasks, and
    // for each task the agent's claim and the collector becoming healthy.
    let outcome_request = "POST /agent/v1/hosts/{host_id}/tasks/{task_id}";
    let (create, spans) = eventually("one trace from the api to the agent", WAIT, || async {
        let spans = parse_spans(&std::fs::read_to_string(&spans_file).unwrap_or_default());
        let create = spans.iter().find(|s| {
            s.service == "phoenix-api-under-test" && s.name == "POST /api/v1/experiments"
        })?;
        let trace: Vec<Span> = spans
            .iter()
            .filter(|s| s.trace_id == create.trace_id)
            .cloned()
            .collect();
        let count = |service: &str, name: &str| {
            trace
                .iter()
                .filter(|s| s.service == service && s.name == name)
                .count()
        };
        // Two tasks (baseline and candidate), each ended once its outcome was
        // reported and the api answered.
        let done = count("phoenix-agent", "task") == 2
            && count("phoenix-api-under-test", outcome_request) >= 2;
        done.then(|| (create.clone(), trace))
    })
    .await;
    let names: BTreeMap<(String, String), usize> =
        spans.iter().fold(BTreeMap::new(), |mut names, s| {
            *names
                .entry((s.service.clone(), s.name.clone()))
                .or_default() += 1;
            names
        });
    let by_id = |id: &str| spans.iter().find(|s| s.id == id);
    let create_tasks: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == "phoenix-reconciler" && s.name == "create tasks")
        .collect();
    assert_eq!(create_tasks.len(), 1, "{names:?}");
    assert_eq!(
        create_tasks[0].parent_id, create.id,
        "the pass continues the request's trace: {names:?}"
    );
    let tasks: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == "phoenix-agent" && s.name == "task")
        .collect();
    assert_eq!(tasks.len(), 2, "{names:?}");
    for task in &tasks {
        assert_eq!(task.parent_id, create_tasks[0].id, "{names:?}");
    }
    for name in ["claim", "converge", "collector healthy", "report outcome"] {
        let found: Vec<&Span> = spans
            .iter()
            .filter(|s| s.service == "phoenix-agent" && s.name == name)
            .collect();
        assert_eq!(found.len(), 2, "{name}: {names:?}");
        for span in found.iter().filter(|s| s.name != "collector healthy") {
            assert!(
                tasks.iter().any(|t| t.id == span.parent_id),
                "{name} is not under a task: {names:?}"
            );
        }
    }
    for healthy in spans.iter().filter(|s| s.name == "collector healthy") {
        let converge = by_id(&healthy.parent_id).expect("parent of collector healthy");
        assert_eq!(converge.name, "converge", "{names:?}");
    }
    // The agent's outcome reports carry the trace to the api.
    let reports: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "report outcome")
        .collect();
    for request in spans.iter().filter(|s| s.name == outcome_request) {
        assert!(
            reports.iter().any(|r| r.id == request.parent_id),
            "the api's outcome request is not under the agent's report: {names:?}"
        );
    }

    // JSON logs: the api's line for the create and the agent's for each start carry
    // the trace id; every line of both logs is JSON.
    let api_lines = json_lines(&api.log());
    let created = lines_with_message(&api_lines, "experiment created");
    assert_eq!(created.len(), 1, "{}", api.log());
    assert_eq!(created[0]["trace_id"], create.trace_id.as_str());
    let agent_lines = json_lines(&agent.log());
    let started = lines_with_message(&agent_lines, "started collector");
    assert_eq!(started.len(), 2, "{}", agent.log());
    for line in started {
        assert_eq!(line["trace_id"], create.trace_id.as_str(), "{line}");
        assert!(line["span_id"].as_str().is_some_and(|id| id.len() == 16));
    }
    // Lines outside any span have no trace id.
    assert!(
        agent_lines
            .iter()
            .any(|l| l.get("trace_id").is_none() && l.get("span").is_none()),
        "{}",
        agent.log()
    );
    drop(agent);
    drop(reconciler);
    drop(api);
    drop(collector);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_number_spans_without_an_exporter_and_continue_a_callers_trace() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database().await;
    let port = free_port();
    let api_url = format!("http://127.0.0.1:{port}");
    let mut command = api_command(&database_url, port);
    command
        .env("PHOENIX_LOG_FORMAT", "json")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let api = Process::spawn(command, dir.path().join("api.log"));
    wait_ready(&api_url).await;

    // A host for the experiments to select, registered as its agent would.
    let http = http_client();
    let credential = enroll(&http, &api_url, "traced-1").await;
    let response = http
        .put(format!("{api_url}/agent/v1/hosts/traced-1/status"))
        .bearer_auth(&credential)
        .json(&serde_json::json!({
            "labels": {"role": "traced"}, "agentVersion": "0.1.0", "collectors": []
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "{}", response.text().await.unwrap());

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{caller_trace}-00f067aa0ba902b7-01");
    create_experiment(&api_url, &experiment_yaml("continued"), Some(&traceparent)).await;
    // Without a header, a trace of its own.
    create_experiment(&api_url, &experiment_yaml("fresh"), None).await;

    let lines = eventually("two creations logged", WAIT, || async {
        let lines = json_lines(&api.log());
        (lines_with_message(&lines, "experiment created").len() == 2).then_some(lines)
    })
    .await;
    let created = lines_with_message(&lines, "experiment created");
    let continued = created
        .iter()
        .find(|l| l["experiment"] == "continued")
        .expect("continued");
    assert_eq!(continued["trace_id"], caller_trace);
    assert_ne!(
        continued["span_id"], "00f067aa0ba902b7",
        "a span of its own"
    );
    let fresh = created
        .iter()
        .find(|l| l["experiment"] == "fresh")
        .expect("fresh");
    let fresh_trace = fresh["trace_id"].as_str().expect("a trace id");
    assert_eq!(fresh_trace.len(), 32);
    assert_ne!(fresh_trace, caller_trace);

    // The experiment row holds the request's trace context, for the reconciler.
    let pool = phoenix_storage::connect(&database_url, 1).await.unwrap();
    let stored: Option<String> =
        sqlx::query_scalar("SELECT traceparent FROM experiments WHERE name = 'continued'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let stored = stored.expect("a stored traceparent");
    assert!(
        stored.starts_with(&format!("00-{caller_trace}-")),
        "{stored}"
    );
    pool.close().await;
    drop(api);
}
