//! The `phoenix` CLI's kubectl habits against the real api and Postgres: `-f -`
//! reads stdin, `get -o yaml` applies again as a no-op, `diff` exits 0/1, a body
//! over the api's limit is refused before sending, a misspelled field is named at
//! its line (the CLI) and with the same path (the api), `phoenix version` shows
//! both builds, messages escape what a hostile name carries, and lists select
//! with `-l` and follow changes with `--watch`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{OPERATOR_TOKEN, Stack, StackOptions, VIEWER_TOKEN};

fn phoenix(stack: &Stack, token: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(binary("phoenix"))
        .args(args)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", token)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run phoenix");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn stack() -> Stack {
    // No reconciler: experiments stay pending, so their spec may change.
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..StackOptions::default()
    })
    .await;
    stack.register_host("web-1", &[("role", "web")]).await;
    stack
}

const EXAMPLE: &str = include_str!("../../examples/topk-web.yaml");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_yaml_applies_again_as_a_no_op_and_diff_exits_like_kubectl() {
    let stack = stack().await;

    // `apply -f -` reads the document from stdin.
    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["apply", "-f", "-"],
        Some(EXAMPLE.as_bytes()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("topk-web   create"),
        "{}",
        text(&out.stdout)
    );
    let row: (String, i64) =
        sqlx::query_as("SELECT managed_by, generation FROM experiments WHERE name = 'topk-web'")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(row, ("stdin".to_string(), 1));

    // What `get -o yaml` prints is a document...
    let out = phoenix(
        &stack,
        VIEWER_TOKEN,
        &["experiment", "get", "topk-web", "-o", "yaml"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = out.stdout;
    let document: serde_json::Value = serde_saphyr::from_str(&text(&yaml)).unwrap();
    assert_eq!(document["apiVersion"], "phoenix.dev/v1");
    assert_eq!(document["kind"], "Experiment");
    assert_eq!(document["metadata"]["name"], "topk-web");
    assert_eq!(document["status"]["phase"], "pending");

    // ...that diff finds equal (exit 0) and apply leaves unchanged.
    let out = phoenix(&stack, OPERATOR_TOKEN, &["diff", "-f", "-"], Some(&yaml));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "no changes (1 unchanged)\n");
    let out = phoenix(&stack, OPERATOR_TOKEN, &["apply", "-f", "-"], Some(&yaml));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("topk-web   unchanged"),
        "{}",
        text(&out.stdout)
    );
    let generation: i64 =
        sqlx::query_scalar("SELECT generation FROM experiments WHERE name = 'topk-web'")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert_eq!(generation, 1);

    // An edit of the fetched document: diff names each field and exits 1.
    let edited = text(&yaml)
        .replace("duration: 1m", "duration: 2m")
        .replace("team: sre", "team: obs");
    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["diff", "-f", "-"],
        Some(edited.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "~ Experiment topk-web (spec changed (generation 2))\n    \
         metadata.labels.team: \"sre\" -> \"obs\"\n    \
         spec.duration: \"1m\" -> \"2m\"\n\
         (0 unchanged; nothing was changed)\n"
    );

    // An experiment created by hand (not by apply): its own document is
    // unchanged too, so the round trip is a no-op whoever made it.
    let by_hand = EXAMPLE.replace("name: topk-web", "name: by-hand");
    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["experiment", "create", "-f", "-"],
        Some(by_hand.as_bytes()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = phoenix(
        &stack,
        VIEWER_TOKEN,
        &["experiment", "get", "by-hand", "-o", "json"],
        None,
    );
    let fetched = out.stdout;
    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["apply", "-f", "-"],
        Some(&fetched),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("by-hand   unchanged   created by hand"),
        "{}",
        text(&out.stdout)
    );

    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_misspelled_documents_are_named_before_anything_is_sent() {
    let stack = stack().await;
    let dir = tempfile::tempdir().unwrap();

    // 200 000 critical processes: a valid document of over 2 MiB, over the api's
    // 1 MiB limit. Named with its size and the limit, instead of `Broken pipe`.
    let processes: Vec<String> = (0..200_000).map(|i| format!("proc{i}")).collect();
    let mut document: serde_json::Value = serde_saphyr::from_str(EXAMPLE).unwrap();
    document["spec"]["criticalProcesses"] = serde_json::json!(processes);
    let big = dir.path().join("big.json");
    std::fs::write(&big, serde_json::to_vec(&document).unwrap()).unwrap();
    let size = std::fs::metadata(&big).unwrap().len();
    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["experiment", "create", "-f", big.to_str().unwrap()],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is {:.1} MiB ({size} bytes), over the api's body limit of 1.0 MiB (1048576 bytes); nothing was sent",
            big.display(),
            size as f64 / 1_048_576.0
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Broken pipe") && !stderr.contains("budget"),
        "{stderr}"
    );

    // A JSON file with 874 000 list items is read as JSON, not as YAML over
    // its node budget (it is refused for its size, as above).
    let huge = dir.path().join("huge.yaml");
    document["spec"]["criticalProcesses"] =
        serde_json::json!((0..874_000).map(|_| "p").collect::<Vec<_>>());
    std::fs::write(&huge, serde_json::to_vec(&document).unwrap()).unwrap();
    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["apply", "-f", huge.to_str().unwrap()],
        None,
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        !stderr.contains("budget") && !stderr.contains("not valid YAML"),
        "{stderr}"
    );
    assert!(stderr.contains("over the api's body limit"), "{stderr}");

    // A misspelled field: the CLI names the file, the line and the field...
    let typo = EXAMPLE.replace("duration: 1m", "duraton: 1m");
    let line = typo.lines().position(|l| l.contains("duraton")).unwrap() + 1;
    let file = dir.path().join("typo.yaml");
    std::fs::write(&file, &typo).unwrap();
    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["experiment", "create", "-f", file.to_str().unwrap()],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: {}:{line}: spec.duraton: unknown field `duraton`",
            file.display()
        )),
        "{stderr}"
    );
    // ...and the api, sent the same document, names the same path.
    let answer = stack
        .request(reqwest::Method::POST, "/api/v1/experiments", OPERATOR_TOKEN)
        .header("content-type", "application/yaml")
        .body(typo)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 422);
    let problem: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(problem["field"], "spec.duraton", "{problem}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM experiments")
        .fetch_one(&stack.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);

    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_roles_and_hostile_names_read_well() {
    let stack = stack().await;

    let out = phoenix(&stack, VIEWER_TOKEN, &["version", "-o", "json"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let versions: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(versions["client"]["version"], version, "{versions}");
    assert_eq!(versions["server"]["version"], version, "{versions}");
    assert_eq!(versions["server"]["maxBodyBytes"], 1_048_576, "{versions}");
    // No token needed, like the probes.
    let answer = phoenix_e2e::harness::http_client()
        .get(stack.url("/version"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let out = phoenix(&stack, VIEWER_TOKEN, &["version"], None);
    let table = text(&out.stdout);
    assert!(
        table.starts_with(&format!("Client: {version} (commit ")),
        "{table}"
    );
    assert!(
        table.contains(&format!("Server: {version} (commit ")),
        "{table}"
    );

    // A viewer's refusal reads "a viewer token ... an operator token".
    let out = phoenix(
        &stack,
        VIEWER_TOKEN,
        &["experiment", "create", "-f", "-"],
        Some(EXAMPLE.as_bytes()),
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("a viewer token cannot do this; it needs an operator token or higher"),
        "{stderr}"
    );

    // A 300-character name is cut in the message; a terminal escape is shown
    // escaped, never sent to the terminal.
    let long = "a".repeat(300);
    let out = phoenix(&stack, VIEWER_TOKEN, &["experiment", "get", &long], None);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains(&long), "{stderr}");
    assert!(stderr.contains("…(+"), "{stderr}");
    let out = phoenix(
        &stack,
        VIEWER_TOKEN,
        &["experiment", "get", "red\u{1b}[31mname"],
        None,
    );
    let stderr = text(&out.stderr);
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    assert!(stderr.contains("red\\u{1b}[31mname"), "{stderr}");

    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_select_by_label_and_watch_changes() {
    let stack = stack().await;
    stack.register_host("db-1", &[("role", "db")]).await;
    let mut documents = String::new();
    for (name, team) in [("exp-sre", "sre"), ("exp-obs", "obs")] {
        documents.push_str(
            &EXAMPLE
                .replace("name: topk-web", &format!("name: {name}"))
                .replace("team: sre", &format!("team: {team}")),
        );
        documents.push_str("\n---\n");
    }
    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["apply", "-f", "-"],
        Some(documents.as_bytes()),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let names = |args: &[&str], key: &str| -> Vec<String> {
        let out = phoenix(&stack, VIEWER_TOKEN, args, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i[key].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(
            &["experiment", "list", "-l", "team=sre", "-o", "json"],
            "name"
        ),
        ["exp-sre"]
    );
    assert_eq!(
        names(
            &["experiment", "list", "-l", "team!=sre", "-o", "json"],
            "name"
        ),
        ["exp-obs"]
    );
    assert_eq!(
        names(&["host", "list", "-l", "role=web", "-o", "json"], "hostId"),
        ["web-1"]
    );
    let out = phoenix(
        &stack,
        VIEWER_TOKEN,
        &["host", "list", "-l", "bad key"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("`bad key` is not a requirement"),
        "{}",
        text(&out.stderr)
    );

    // --watch: the list, then a line for each change of a selected experiment.
    let mut watch = Command::new(binary("phoenix"))
        .args([
            "experiment",
            "list",
            "-l",
            "team=sre",
            "--watch",
            "-o",
            "json",
        ])
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", VIEWER_TOKEN)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The list comes first (pretty JSON, ending in `}` alone on a line).
    loop {
        let line = received
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the list");
        if line == "}" {
            break;
        }
    }
    for name in ["exp-obs", "exp-sre"] {
        let out = phoenix(&stack, OPERATOR_TOKEN, &["experiment", "stop", name], None);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let line = received
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("a watched change");
    let changed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(changed["name"], "exp-sre", "{line}");
    assert_eq!(changed["phase"], "stopped", "{line}");
    // exp-obs is not selected: nothing more arrives for it.
    assert!(
        received
            .recv_timeout(std::time::Duration::from_secs(2))
            .is_err()
    );
    watch.kill().unwrap();
    watch.wait().unwrap();

    stack.shutdown().await;
}

/// Starts `phoenix ARGS` (a `--watch`) and sends each line of its stdout to the receiver.
fn spawn_watch(
    stack: &Stack,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(binary("phoenix"))
        .args(args)
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", VIEWER_TOKEN)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (child, received)
}

/// The first line `wanted` accepts, waiting up to a minute; panics naming `what`
/// and the lines seen.
fn line_where(
    received: &std::sync::mpsc::Receiver<String>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match received.recv_timeout(left) {
            Ok(line) if wanted(&line) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line of {what}; saw:\n{}", seen.join("\n")),
        }
    }
}

/// Ctrl-C ends a watch with exit code 0 and nothing on stderr.
fn interrupt(mut child: std::process::Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
}

fn deployment_document(interval: &str) -> String {
    format!(
        "apiVersion: phoenix.dev/v1
kind: PipelineDeployment
metadata: {{name: web-standing}}
spec:
  hosts: {{selector: {{role: web}}}}
  pipeline: process-baseline
  vars: {{collection_interval: {interval}}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_and_task_lists_watch_by_reading_again() {
    let mut stack = stack().await;
    stack.spawn_reconciler();
    let apply = |document: String| {
        let out = phoenix(
            &stack,
            OPERATOR_TOKEN,
            &["apply", "-f", "-"],
            Some(document.as_bytes()),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    apply(deployment_document("10s"));
    // The reconciler gives web-1 its start task (no agent claims it).
    let first_task: serde_json::Value = phoenix_e2e::harness::eventually(
        "web-1's start task",
        std::time::Duration::from_secs(60),
        || async {
            let out = phoenix(
                &stack,
                VIEWER_TOKEN,
                &["task", "list", "--host", "web-1", "-o", "json"],
                None,
            );
            let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            list["items"].as_array()?.first().cloned()
        },
    )
    .await;

    let (deployments, deployment_lines) = spawn_watch(
        &stack,
        &["deployment", "list", "--watch", "--watch-interval", "1s"],
    );
    let (tasks, task_lines) = spawn_watch(
        &stack,
        &[
            "task",
            "list",
            "--host",
            "web-1",
            "-w",
            "-o",
            "json",
            "--watch-interval",
            "1s",
        ],
    );
    // The lists come first: the table's row, and the JSON list (ending in `}` alone).
    let row = line_where(&deployment_lines, "the deployment's row", |l| {
        l.starts_with("web-standing ")
    });
    // Cells are apart by three spaces or more; REVISION is the fifth.
    let revision = |row: &str| {
        row.split("   ")
            .map(str::trim)
            .filter(|cell| !cell.is_empty())
            .nth(4)
            .map(str::to_string)
    };
    assert_eq!(revision(&row).as_deref(), Some("1"), "{row}");
    line_where(&task_lines, "the task list", |l| l == "}");

    // A new revision: the deployment's row again, and web-1's new task as a JSON line.
    apply(deployment_document("20s"));
    // (Roll-out steps of revision 1 may print rows before it.)
    line_where(&deployment_lines, "the row of revision 2", |l| {
        l.starts_with("web-standing ") && revision(l).as_deref() == Some("2")
    });
    let line = line_where(&task_lines, "the new revision's task", |l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|t| {
            t["id"] != first_task["id"] && t["configHash"] != first_task["configHash"]
        })
    });
    let task: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(task["host"], "web-1", "{line}");
    assert_eq!(task["kind"], "collector", "{line}");

    // A deleted deployment is said so.
    let out = phoenix(
        &stack,
        OPERATOR_TOKEN,
        &["deployment", "delete", "web-standing"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    line_where(&deployment_lines, "the deletion", |l| {
        l == "web-standing   deleted"
    });

    interrupt(deployments);
    interrupt(tasks);
    stack.shutdown().await;
}
