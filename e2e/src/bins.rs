//! Locating the project's binaries for tests, built fresh once per test process.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of a workspace binary (`phoenix-agent`, `stand-in-collector`, ...),
/// after `cargo build` of all workspace binaries (optimized when the caller is) has
/// run once in this process, so a test never runs a stale binary. Cheap when
/// everything is up to date.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // Test executables live in <target>/<profile>/deps, binaries (like the
        // demo) in <target>/<profile>; workspace binaries are in the latter.
        let exe = std::env::current_exe().expect("current executable");
        let dir = exe.parent().expect("executable directory");
        let dir = if dir.ends_with("deps") {
            dir.parent().expect("target profile dir").to_path_buf()
        } else {
            dir.to_path_buf()
        };
        // Benchmarks run optimized, and so must the binaries they measure.
        let mut args = vec!["build", "--workspace", "--bins", "--quiet"];
        if dir.ends_with("release") {
            args.push("--release");
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the test binaries");
        assert!(status.success(), "cargo {} failed", args.join(" "));
        dir
    });
    let path = dir.join(name);
    assert!(path.exists(), "binary {} was not built", path.display());
    path
}

/// The Phoenix collector (the real OpenTelemetry Collector distribution):
/// `PHOENIX_COLLECTOR_BIN` when set, else whatever `collector/build.sh` prints —
/// the cached build, or a fresh build (minutes, with progress on stderr) on a
/// machine that never built it.
pub fn collector() -> PathBuf {
    static COLLECTOR: OnceLock<PathBuf> = OnceLock::new();
    COLLECTOR
        .get_or_init(|| {
            if let Ok(path) = std::env::var("PHOENIX_COLLECTOR_BIN") {
                return PathBuf::from(path);
            }
            let script =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../collector/build.sh");
            let output = Command::new(&script)
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("run collector/build.sh");
            assert!(output.status.success(), "collector/build.sh failed");
            PathBuf::from(String::from_utf8(output.stdout).expect("a path").trim())
        })
        .clone()
}

/// A real `helm`: whatever `helm/install-helm.sh` prints (cached per machine, or
/// built now with progress on stderr).
pub fn helm() -> PathBuf {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/install-helm.sh");
        let output = Command::new(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
        assert!(output.status.success(), "helm/install-helm.sh failed");
        let path = PathBuf::from(String::from_utf8(output.stdout).expect("a path").trim());
        assert!(path.is_file(), "install-helm.sh printed {}", path.display());
        path
    })
    .clone()
}
