//! The published JSON Schemas (`schemas/*.json`) and the field reference
//! (`docs/reference.md`) are what the wire types generate, and every example
//! document validates against its kind's schema, as an editor would check it.
//!
//! After changing a document type, regenerate them with `scripts/schemas.sh`
//! (this test with `PHOENIX_UPDATE_SCHEMAS=1`).

use std::path::{Path, PathBuf};

use phoenix_wire::schema::{Kind, reference_markdown};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Compares `path` with `generated`, or writes it when asked to.
fn check_published(path: &Path, generated: &str) {
    if std::env::var_os("PHOENIX_UPDATE_SCHEMAS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, generated).unwrap();
        return;
    }
    let published = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        published == generated,
        "{} is stale: regenerate it with scripts/schemas.sh",
        path.display()
    );
}

#[test]
fn the_published_schemas_and_reference_are_generated_from_the_types() {
    for kind in Kind::ALL {
        check_published(&repo().join(kind.file()), &kind.schema_text());
    }
    check_published(&repo().join("docs/reference.md"), &reference_markdown());
}

fn kind_of(document: &serde_json::Value) -> Kind {
    let kind = document["kind"].as_str().unwrap_or_default();
    Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .unwrap_or_else(|| panic!("an example of unknown kind `{kind}`"))
}

/// Every example validates against the schema its modeline names, which is its
/// kind's; the built-in templates validate against the template schema.
#[test]
fn every_example_validates_against_its_published_schema() {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["examples", "docs/examples", "pipelines"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 8, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let documents = phoenix_wire::resource::parse_yaml_documents(&text).unwrap();
        let document = &documents[0];
        let kind = kind_of(document);
        if !file.starts_with(repo().join("pipelines")) {
            let modeline = text.lines().next().unwrap_or_default();
            let target = modeline
                .strip_prefix("# yaml-language-server: $schema=")
                .unwrap_or_else(|| panic!("{} has no schema modeline", file.display()));
            let schema_file = file.parent().unwrap().join(target);
            assert_eq!(
                schema_file.canonicalize().unwrap(),
                repo().join(kind.file()).canonicalize().unwrap(),
                "{}",
                file.display()
            );
        }
        let published: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(repo().join(kind.file())).unwrap())
                .unwrap();
        let validator = jsonschema::validator_for(&published).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(document)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
    }
}

/// A misspelled field is an error of the schema at the object that holds it
/// (what an editor underlines), and the schema is strict where the api is:
/// a value out of range too.
#[test]
fn the_schema_refuses_what_the_api_refuses() {
    let text = std::fs::read_to_string(repo().join("examples/topk-web.yaml")).unwrap();
    let validator = jsonschema::validator_for(&Kind::Experiment.schema()).unwrap();
    let errors = |text: &str| -> Vec<(String, String)> {
        let document = &phoenix_wire::resource::parse_yaml_documents(text).unwrap()[0];
        validator
            .iter_errors(document)
            .map(|e| (e.instance_path().to_string(), e.to_string()))
            .collect()
    };
    let misspelled = errors(&text.replace("duration:", "duraton:"));
    assert!(
        misspelled
            .iter()
            .any(|(path, message)| path == "/spec" && message.contains("duraton")),
        "{misspelled:?}"
    );
    let out_of_range = errors(&text.replace("minSeriesReduction: 50", "minSeriesReduction: 150"));
    assert!(
        out_of_range
            .iter()
            .any(|(path, _)| path == "/spec/criteria/minSeriesReduction"),
        "{out_of_range:?}"
    );
    let bad_name = errors(&text.replace("name: topk-web", "name: Topk_Web"));
    assert!(
        bad_name.iter().any(|(path, _)| path == "/metadata/name"),
        "{bad_name:?}"
    );
}
