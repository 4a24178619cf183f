//! Runs the built `phoenix` binary against a canned HTTP server on loopback.
//!
//! The server is a stand-in for phoenix-api that answers from the contract with fixed
//! bodies: these tests check what the CLI sends and how it renders answers and
//! errors. The real API is tested in its own crate and end to end.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// One request as the server received it.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

fn json_response(status: u16, body: &Value) -> Response {
    Response {
        status,
        content_type: "application/json",
        body: body.to_string(),
    }
}

fn problem_response(status: u16, body: &Value) -> Response {
    Response {
        status,
        content_type: "application/problem+json",
        body: body.to_string(),
    }
}

/// A server on 127.0.0.1:0 that answers every request with `route(request)` and
/// records what it received. Its thread lives until the test process exits.
struct CannedApi {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl CannedApi {
    fn start(route: impl Fn(&Request) -> Response + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(request) = read_request(&mut stream) else {
                    continue;
                };
                let response = route(&request);
                recorded.lock().unwrap().push(request);
                let head = format!(
                    "HTTP/1.1 {} Canned\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    response.status,
                    response.content_type,
                    response.body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(response.body.as_bytes());
            }
        });
        Self { url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body (what reqwest sends).
fn read_request(stream: &mut TcpStream) -> Option<Request> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(data[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(Some(0), |(_, v)| v.parse().ok())?;
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// Runs `phoenix args...` against `api_url` with no token and no config file unless
/// `env` sets them.
fn phoenix(api_url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_phoenix"));
    command
        .args(args)
        .env("PHOENIX_API_URL", api_url)
        .env("HOME", home.path())
        .env_remove("PHOENIX_TOKEN")
        .env_remove("PHOENIX_CONFIG")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn experiment() -> Value {
    json!({
        "name": "topk-web",
        "uid": "3f2a9c1e",
        "labels": {"team": "sre"},
        "spec": {
            "hosts": {"selector": {"role": "web"}},
            "baseline": {"pipeline": "process-baseline"},
            "candidate": {"pipeline": "process-topk", "vars": {"cpu_threshold": "0.05"}},
            "warmup": "1m",
            "duration": "10m",
            "criteria": {
                "minSeriesReduction": 50.0,
                "minCriticalRetention": 100.0,
                "maxCpuOverheadCores": 0.05,
                "maxMemoryOverheadMib": 100.0
            },
            "promotion": "manual"
        },
        "generation": 1,
        "observedGeneration": 1,
        "phase": "running",
        "reason": "both collectors healthy on 2 hosts",
        "targetHosts": ["web-1", "web-2"],
        "managedBy": null,
        "createdAt": "2025-06-01T12:00:00Z",
        "updatedAt": "2025-06-01T12:01:00Z",
        "phaseChangedAt": "2025-06-01T12:01:00Z"
    })
}

const DOCUMENT: &str = "\
apiVersion: phoenix.dev/v1
kind: Experiment
metadata:
  name: topk-web
spec:
  hosts: {selector: {role: web}}
  baseline: {pipeline: process-baseline}
  candidate: {pipeline: process-topk}
  duration: 10m
";

#[test]
fn list_as_json_prints_the_list_object() {
    let list = json!({"items": [experiment()]});
    let canned = list.clone();
    let api = CannedApi::start(move |_| json_response(200, &canned));

    let output = phoenix(&api.url, &["experiment", "list", "-o", "json"], &[]);

    assert!(output.status.success(), "{}", stderr(&output));
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed, list);
    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].path, "/api/v1/experiments");
    assert_eq!(requests[0].header("authorization"), None);
}

#[test]
fn list_as_table_prints_a_header_and_a_row() {
    let api = CannedApi::start(|_| json_response(200, &json!({"items": [experiment()]})));

    let output = phoenix(&api.url, &["exp", "list"], &[]);

    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PHASE",
            "HOSTS",
            "BASELINE",
            "CANDIDATE",
            "AGE",
            "REASON"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..5],
        [
            "topk-web",
            "running",
            "2",
            "process-baseline",
            "process-topk"
        ]
    );
    assert!(
        lines[1].ends_with("both collectors healthy on 2 hosts"),
        "{text}"
    );
}

#[test]
fn a_validation_problem_prints_the_field_and_exits_1() {
    let api = CannedApi::start(|_| {
        problem_response(
            422,
            &json!({
                "type": "about:blank",
                "title": "invalid experiment",
                "status": 422,
                "detail": "must be longer than 0s",
                "field": "spec.duration"
            }),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    // Valid as far as the CLI can tell; the (canned) api refuses it.
    std::fs::write(&file, DOCUMENT).unwrap();

    let output = phoenix(
        &api.url,
        &["experiment", "create", "-f", file.to_str().unwrap()],
        &[],
    );

    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        "error: invalid experiment: must be longer than 0s\n  field: spec.duration\n"
    );

    // What the CLI can check (the api's own types and rules) is refused before
    // anything is sent, naming the file, the line and the field.
    std::fs::write(&file, DOCUMENT.replace("10m", "0s")).unwrap();
    let before = api.requests().len();
    let output = phoenix(
        &api.url,
        &["experiment", "create", "-f", file.to_str().unwrap()],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    let line = DOCUMENT.lines().position(|l| l.contains("10m")).unwrap() + 1;
    assert_eq!(
        stderr(&output),
        format!(
            "error: {}:{line}: spec.duration: must be longer than 0s (nothing was sent)\n",
            file.display()
        )
    );
    assert_eq!(api.requests().len(), before);
}

#[test]
fn a_refused_connection_hints_at_the_api_url_and_exits_1() {
    // Bind and release a port so that nothing listens on it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");

    let output = phoenix(
        "http://ignored.invalid:1",
        &["--api-url", &url, "host", "list"],
        &[],
    );

    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.starts_with(&format!("error: cannot connect to {url}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "hint: is phoenix-api running at {url}? set --api-url"
        )),
        "{text}"
    );
}

#[test]
fn create_sends_the_file_as_yaml_with_the_bearer_token() {
    let api = CannedApi::start(|_| {
        let mut created = experiment();
        created["phase"] = json!("pending");
        json_response(201, &created)
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topk-web.yaml");
    std::fs::write(&file, DOCUMENT).unwrap();

    let output = phoenix(
        &api.url,
        &["experiment", "create", "-f", file.to_str().unwrap()],
        &[("PHOENIX_TOKEN", "s3cret")],
    );

    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("experiment/topk-web created (phase: pending)"),
        "{}",
        stdout(&output)
    );
    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/api/v1/experiments");
    assert_eq!(request.header("content-type"), Some("application/yaml"));
    assert_eq!(request.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(request.body, DOCUMENT.as_bytes());
}

#[test]
fn a_missing_experiment_hints_at_the_list() {
    let api = CannedApi::start(|_| {
        problem_response(
            404,
            &json!({"title": "not found", "status": 404, "detail": "no experiment named nope"}),
        )
    });

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t\n").unwrap();
    let output = phoenix(
        &api.url,
        &[
            "experiment",
            "get",
            "nope",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    );

    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: not found: no experiment named nope\n  hint: list experiments with `phoenix experiment list`\n"
    );
    assert_eq!(api.requests()[0].header("authorization"), Some("Bearer t"));
}

#[test]
fn a_token_is_never_a_flag() {
    let output = phoenix(
        "http://127.0.0.1:1",
        &["experiment", "list", "--token", "secret"],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("unexpected argument '--token'"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let output = phoenix("http://127.0.0.1:1", &["experiment", "get"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("NAME"), "{}", stderr(&output));

    let output = phoenix(
        "http://127.0.0.1:1",
        &["experiment", "get", "Bad/Name"],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("error: invalid experiment name"),
        "{}",
        stderr(&output)
    );

    let output = phoenix("http://127.0.0.1:1", &["--help"], &[]);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        stdout(&output).contains("Typical flow:"),
        "{}",
        stdout(&output)
    );
}
