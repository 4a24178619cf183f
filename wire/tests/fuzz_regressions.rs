//! Every input the fuzz targets once failed on (`fuzz/regressions/<target>/`), run
//! again on stable Rust with the same checks (`phoenix_wire::fuzzing`).

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "README.md") {
            continue;
        }
        check(&std::fs::read(&path).unwrap());
        count += 1;
    }
    count
}

#[test]
fn past_document_crashes_stay_fixed() {
    let replayed = replay("document", phoenix_wire::fuzzing::document);
    assert!(
        replayed > 0,
        "fuzz/regressions/document holds the seeds at least"
    );
}

#[test]
fn past_policy_crashes_stay_fixed() {
    let replayed = replay("policy", phoenix_wire::fuzzing::policy);
    assert!(
        replayed > 0,
        "fuzz/regressions/policy holds the seeds at least"
    );
}
