//! `phoenix sync` against the real api: a directory edited while sync runs becomes the
//! state (created, updated, pruned); an invalid document is logged by file and field
//! and changes nothing while sync keeps running; SIGTERM ends it with exit code 0;
//! a mounted ConfigMap's `..data` layout applies each document once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use phoenix_e2e::bins::binary;
use phoenix_e2e::harness::{ADMIN_TOKEN, Stack, StackOptions, VIEWER_TOKEN, eventually};
use phoenix_wire::view::Experiment;

/// No reconciler: experiments stay `pending`, so their specs may change.
async fn stack() -> Stack {
    let stack = Stack::start_with(StackOptions {
        reconciler: false,
        ..StackOptions::default()
    })
    .await;
    stack.register_host("web-1", &[("role", "web")]).await;
    stack
}

/// `examples/topk-web.yaml` named `name`, with `duration` instead of its `1m`.
fn experiment(name: &str, duration: &str) -> String {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/topk-web.yaml"
    ))
    .unwrap();
    assert!(example.contains("name: topk-web") && example.contains("duration: 1m"));
    example
        .replace("name: topk-web", &format!("name: {name}"))
        .replace("duration: 1m", &format!("duration: {duration}"))
}

const TEMPLATE: &str = "apiVersion: phoenix.dev/v1
kind: PipelineTemplate
metadata:
  name: sync-debug
spec:
  description: keeps the directory from being empty
  config: |
    receivers: {hostmetrics: {scrapers: {process: {}}}}
    exporters: {debug: {}}
    service: {pipelines: {metrics: {receivers: [hostmetrics], exporters: [debug]}}}
";

fn phoenix(stack: &Stack) -> Command {
    let mut command = Command::new(binary("phoenix"));
    command
        .env("PHOENIX_API_URL", &stack.api_url)
        .env("PHOENIX_TOKEN", ADMIN_TOKEN)
        .env_remove("PHOENIX_CONFIG")
        .env("HOME", "/nonexistent");
    command
}

/// A running `phoenix sync` whose stderr goes to a file; killed if a test fails.
struct Sync {
    child: Child,
    log: PathBuf,
}

impl Sync {
    fn start(stack: &Stack, args: &[&str], log: PathBuf) -> Sync {
        let file = std::fs::File::create(&log).unwrap();
        let child = phoenix(stack)
            .arg("sync")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn phoenix sync");
        Sync { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Polls until the log holds `needle`; panics with the log after 20 s.
    async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no `{needle}` in the sync log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Sync {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The experiment, or `None` on 404.
async fn get_experiment(stack: &Stack, name: &str) -> Option<Experiment> {
    let response = stack
        .request(
            reqwest::Method::GET,
            &format!("/api/v1/experiments/{name}"),
            VIEWER_TOKEN,
        )
        .send()
        .await
        .unwrap();
    match response.status().as_u16() {
        200 => Some(response.json().await.unwrap()),
        404 => None,
        other => panic!("GET {name}: {other}"),
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    // Write then rename, as git and the kubelet do: sync never reads half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_follows_the_directory_survives_bad_documents_and_stops_on_sigterm() {
    let stack = stack().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_string();
    let mut sync = Sync::start(
        &stack,
        &["--dir", &path, "--interval", "1s", "--prune"],
        logs.path().join("sync.log"),
    );

    // An empty directory is an error (never "prune everything"), and sync stays up.
    sync.wait_for_log("holds no *.yaml or *.yml files").await;
    assert!(sync.is_running(), "{}", sync.log());

    // A new file: the experiment appears, owned by the directory.
    write(dir.path(), "template.yaml", TEMPLATE);
    write(dir.path(), "sync-web.yaml", &experiment("sync-web", "1m"));
    let created = eventually("sync-web created", Duration::from_secs(20), || {
        get_experiment(&stack, "sync-web")
    })
    .await;
    assert_eq!(created.generation, 1);
    assert_eq!(created.managed_by.as_deref(), Some(path.as_str()));
    sync.wait_for_log("created Experiment sync-web\n").await;
    sync.wait_for_log("created PipelineTemplate sync-debug\n")
        .await;
    sync.wait_for_log(&format!(
        "applied {path}: 0 created, 0 updated, 2 unchanged, 0 deleted\n"
    ))
    .await;

    // An edit: the generation bumps.
    write(dir.path(), "sync-web.yaml", &experiment("sync-web", "2m"));
    let updated = eventually("sync-web updated", Duration::from_secs(20), || async {
        get_experiment(&stack, "sync-web")
            .await
            .filter(|e| e.generation == 2)
    })
    .await;
    assert_eq!(updated.spec.duration.to_string(), "2m");
    sync.wait_for_log("updated Experiment sync-web (spec changed")
        .await;

    // An invalid document beside a valid edit: the log names the file and the field,
    // nothing changes, sync keeps running and keeps trying.
    let failures_before = sync.log().matches("zz-bad.yaml").count();
    write(
        dir.path(),
        "zz-bad.yaml",
        &experiment("sync-bad", "1m").replace("warmup: 15s", "warmup: soon"),
    );
    write(dir.path(), "sync-web.yaml", &experiment("sync-web", "3m"));
    eventually("two failed rounds", Duration::from_secs(20), || async {
        (sync.log().matches("zz-bad.yaml").count() >= failures_before + 2).then_some(())
    })
    .await;
    let log = sync.log();
    let failure = log
        .lines()
        .rfind(|l| l.contains("zz-bad.yaml"))
        .unwrap()
        .to_string();
    assert!(
        failure.contains("failed, nothing changed") && failure.contains("spec.warmup"),
        "{failure}"
    );
    assert!(sync.is_running(), "{log}");
    let unchanged = get_experiment(&stack, "sync-web").await.unwrap();
    assert_eq!(unchanged.generation, 2);
    assert_eq!(unchanged.spec.duration.to_string(), "2m");
    assert!(get_experiment(&stack, "sync-bad").await.is_none());

    // Both files gone: the experiment is pruned; the template stays.
    std::fs::remove_file(dir.path().join("zz-bad.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("sync-web.yaml")).unwrap();
    eventually("sync-web pruned", Duration::from_secs(20), || async {
        get_experiment(&stack, "sync-web")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    sync.wait_for_log("deleted Experiment sync-web").await;

    // SIGTERM: exit code 0, promptly.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(sync.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = sync.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "sync ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", sync.log());
    assert!(
        sync.log().ends_with("SIGTERM: sync stopped\n"),
        "{}",
        sync.log()
    );

    stack.shutdown().await;
}

fn once(stack: &Stack, dir: &Path) -> Output {
    phoenix(stack)
        .args(["sync", "--once", "--prune", "--dir"])
        .arg(dir)
        .output()
        .expect("run phoenix sync --once")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_volume_applies_each_document_once() {
    let stack = stack().await;
    // What the kubelet mounts: the files in a timestamped directory, `..data` a
    // symlink to it, and each key a symlink into `..data`.
    let dir = tempfile::tempdir().unwrap();
    let stamp = "..2026_11_27_12_00_00.1234567890";
    std::fs::create_dir(dir.path().join(stamp)).unwrap();
    for name in ["cm-a", "cm-b"] {
        std::fs::write(
            dir.path().join(stamp).join(format!("{name}.yaml")),
            experiment(name, "1m"),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink(stamp, dir.path().join("..data")).unwrap();
    for name in ["cm-a", "cm-b"] {
        std::os::unix::fs::symlink(
            format!("..data/{name}.yaml"),
            dir.path().join(format!("{name}.yaml")),
        )
        .unwrap();
    }

    let out = once(&stack, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 created, 0 updated, 0 unchanged, 0 deleted"),
        "{stderr}"
    );
    for name in ["cm-a", "cm-b"] {
        let experiment = get_experiment(&stack, name).await.expect(name);
        assert_eq!(experiment.generation, 1);
    }

    // Again: unchanged, and one line only.
    let out = once(&stack, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("0 created, 0 updated, 2 unchanged, 0 deleted"),
        "{stderr}"
    );

    // The kubelet swaps `..data` to a new timestamped directory without cm-b.
    let next = "..2026_11_27_12_05_00.1234567891";
    std::fs::create_dir(dir.path().join(next)).unwrap();
    std::fs::write(
        dir.path().join(next).join("cm-a.yaml"),
        experiment("cm-a", "1m"),
    )
    .unwrap();
    std::os::unix::fs::symlink(next, dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_file(dir.path().join("cm-b.yaml")).unwrap();
    std::fs::remove_dir_all(dir.path().join(stamp)).unwrap();
    let out = once(&stack, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("deleted Experiment cm-b"), "{stderr}");
    assert!(get_experiment(&stack, "cm-b").await.is_none());

    // With --once, a round that fails is the command's failure.
    std::fs::write(
        dir.path().join(next).join("cm-a.yaml"),
        experiment("cm-a", "1m").replace("warmup: 15s", "warmup: soon"),
    )
    .unwrap();
    let out = once(&stack, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cm-a.yaml") && stderr.contains("spec.warmup"),
        "{stderr}"
    );

    stack.shutdown().await;
}
