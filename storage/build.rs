//! Rebuilds when `migrations/` changes (sqlx::migrate! embeds them), and embeds the
//! pipeline catalog (`pipelines/*.yaml`) into the binary, so every replica seeds the
//! same built-in templates without reading files at run time.

use std::path::PathBuf;

fn main() {
    // sqlx::migrate! embeds the migrations; a new file must rebuild this crate.
    let migrations =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../migrations");
    println!("cargo:rerun-if-changed={}", migrations.display());
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../pipelines");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    let mut out = String::from(
        "/// `(file name, contents)` of every `pipelines/*.yaml`.\npub const BUILTIN_FILES: &[(&str, &str)] = &[\n",
    );
    for file in files {
        println!("cargo:rerun-if-changed={}", file.display());
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let path = file.canonicalize().unwrap();
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let target = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_catalog.rs");
    std::fs::write(target, out).unwrap();
}
