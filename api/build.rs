//! Embeds the web console: every file under the directory that
//! `PHOENIX_CONSOLE_DIST` names (what `console/build.sh` prints; scripts/test,
//! scripts/demo and the Dockerfile set it) becomes a static byte slice in
//! `console_assets.rs`, served by `src/http/ui.rs` under `/ui`.
//!
//! Unset, the api builds without a console and says so: a cargo warning here, a
//! warning in its log at start, and a 503 explaining why on every `/ui` page.
//! Set to a directory without `index.html`, the build fails.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PHOENIX_CONSOLE_DIST");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("console_assets.rs");
    let code = match std::env::var_os("PHOENIX_CONSOLE_DIST").filter(|d| !d.is_empty()) {
        Some(dir) => embed(Path::new(&dir)),
        None => {
            println!(
                "cargo:warning=PHOENIX_CONSOLE_DIST is unset: this phoenix-api has no web console (/ui answers 503). \
                 Build with PHOENIX_CONSOLE_DIST=$(console/build.sh); scripts/test and scripts/demo do."
            );
            "pub const BUILT: bool = false;\npub static ASSETS: &[(&str, &[u8])] = &[];\n"
                .to_string()
        }
    };
    std::fs::write(&out, code).expect("write console_assets.rs");
}

fn embed(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|e| {
        panic!(
            "PHOENIX_CONSOLE_DIST={} cannot be read: {e}; run console/build.sh",
            dir.display()
        )
    });
    assert!(
        dir.join("index.html").is_file(),
        "PHOENIX_CONSOLE_DIST={} holds no index.html; it must name what console/build.sh prints",
        dir.display()
    );
    let mut files = Vec::new();
    walk(&dir, &mut files);
    files.sort();
    let mut code =
        String::from("pub const BUILT: bool = true;\npub static ASSETS: &[(&str, &[u8])] = &[\n");
    for file in files {
        println!("cargo:rerun-if-changed={}", file.display());
        let relative = file.strip_prefix(&dir).expect("inside the dist dir");
        let name = relative.to_str().expect("asset names are UTF-8");
        let path = file.to_str().expect("asset paths are UTF-8");
        code.push_str(&format!("    ({name:?}, include_bytes!({path:?})),\n"));
    }
    code.push_str("];\n");
    code
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    println!("cargo:rerun-if-changed={}", dir.display());
    for entry in std::fs::read_dir(dir).expect("read the console dist dir") {
        let path = entry.expect("dist dir entry").path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}
