//! The OpenAPI document (`api/src/http/openapi.rs`): the published copy
//! (`schemas/openapi.json`) is what the code generates, it describes exactly the
//! routes the router serves, every reference resolves, every error is problem+json,
//! and every operation says which token it needs.
//!
//! After changing a route or a body type, regenerate it with `scripts/schemas.sh`
//! (this test with `PHOENIX_UPDATE_SCHEMAS=1`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use phoenix_api::http::openapi::{document, document_text};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_published_openapi_document_is_generated_from_the_code() {
    let path = repo().join("schemas/openapi.json");
    if std::env::var_os("PHOENIX_UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, document_text()).unwrap();
        return;
    }
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == document_text(),
        "{} is stale: regenerate it with scripts/schemas.sh",
        path.display()
    );
}

/// `(METHOD, /path/{param})` of every route in the router's source
/// (`api/src/http/mod.rs`), a wildcard `{*rest}` written as OpenAPI's `{rest}`.
fn routed() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(repo().join("api/src/http/mod.rs")).unwrap();
    let mut routes = BTreeSet::new();
    for chunk in source.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap().replace("{*", "{");
        // The route's handlers run up to the next builder call.
        let handlers = [
            ".route(",
            ".merge(",
            ".fallback(",
            ".route_layer(",
            ".layer(",
        ]
        .iter()
        .filter_map(|end| chunk.find(end))
        .min()
        .map_or(chunk, |end| &chunk[..end]);
        for method in ["get", "post", "put", "delete", "patch"] {
            for (i, _) in handlers.match_indices(&format!("{method}(")) {
                let before = handlers[..i].chars().last();
                if matches!(before, Some(' ' | '.' | '\n' | ',' | '(')) {
                    routes.insert((method.to_string(), path.clone()));
                }
            }
        }
    }
    assert!(routes.len() > 40, "{routes:?}");
    routes
}

#[test]
fn the_document_describes_exactly_the_routes_the_router_serves() {
    let document = document();
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let routed = routed();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes without an operation: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "operations without a route: {unserved:?}"
    );
}

fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                found.push(target.clone());
            }
            map.values().for_each(|v| references(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_no_placeholder_is_left() {
    let document = document();
    assert_eq!(document["openapi"], "3.1.0");
    let mut found = Vec::new();
    references(&document, &mut found);
    assert!(found.len() > 50, "{found:?}");
    for target in found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("an outside reference: {target}"));
        assert!(
            document.pointer(pointer).is_some(),
            "{target} does not resolve"
        );
    }
    for (name, schema) in document["components"]["schemas"].as_object().unwrap() {
        assert_ne!(schema, &serde_json::json!({"type": "object"}), "{name}");
        assert!(!schema.as_object().unwrap().is_empty(), "{name}");
    }
}

#[test]
fn every_operation_names_its_token_and_answers_errors_as_problems() {
    let document = document();
    let mut operations = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let what = format!("{method} {path}");
            let id = operation["operationId"].as_str().unwrap();
            assert!(!id.is_empty(), "{what}");
            let responses = operation["responses"].as_object().unwrap();
            for (status, response) in responses {
                if !status.starts_with(['4', '5']) {
                    continue;
                }
                let target = response["$ref"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{what} {status}: not a problem response"));
                let response = document.pointer(&target[1..]).unwrap();
                assert_eq!(
                    response["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{what} {status}"
                );
            }
            let open = [
                "/healthz",
                "/readyz",
                "/metrics",
                "/version",
                "/api/v1/openapi.json",
            ];
            if path.starts_with("/api/v1/") && !open.contains(&path.as_str()) {
                let role = operation["x-phoenix-role"].as_str().unwrap_or_default();
                assert!(
                    ["viewer", "operator", "admin"].contains(&role),
                    "{what}: role {role:?}"
                );
                assert_eq!(operation["security"][0]["userToken"][0], role, "{what}");
                assert!(
                    responses.contains_key("401") && responses.contains_key("403"),
                    "{what}"
                );
            }
            if path.starts_with("/agent/v1/hosts/") {
                assert_eq!(operation["x-phoenix-role"], "agent", "{what}");
                assert!(responses.contains_key("426"), "{what}");
            }
            if operation.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(responses.contains_key(status), "{what} {status}");
                }
            }
        }
    }
    assert!(operations > 40);
    // Spot checks of the roles, as docs/SECURITY.md has them.
    let role = |path: &str, method: &str| document["paths"][path][method]["x-phoenix-role"].clone();
    assert_eq!(role("/api/v1/experiments", "get"), "viewer");
    assert_eq!(role("/api/v1/experiments", "post"), "operator");
    assert_eq!(role("/api/v1/destinations", "post"), "admin");
    assert_eq!(role("/api/v1/bootstrap-tokens", "post"), "admin");
    assert_eq!(role("/agent/v1/enroll", "post"), "bootstrap");
}

/// A path parameter's pattern accepts exactly what the api's check accepts.
#[test]
fn path_parameter_patterns_are_the_checks_of_the_api() {
    let document = document();
    // Whether a parameter's schema (pattern and lengths) accepts a value.
    let pattern = |path: &str, method: &str, name: &str| {
        let parameters = document["paths"][path][method]["parameters"]
            .as_array()
            .unwrap();
        let schema = parameters.iter().find(|p| p["name"] == name).unwrap()["schema"].clone();
        let regex = regex::Regex::new(schema["pattern"].as_str().unwrap()).unwrap();
        move |value: &str| {
            let length = value.chars().count() as u64;
            regex.is_match(value)
                && schema["minLength"].as_u64().is_none_or(|min| length >= min)
                && schema["maxLength"].as_u64().is_none_or(|max| length <= max)
        }
    };
    let samples = [
        "",
        "a",
        "topk-web",
        "-web",
        "web-",
        "Web",
        "web_1",
        "web.1",
        "web 1",
        "wéb",
        "0123456789ab",
        "0123456789AB",
        "0123456789abc",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ];
    let long = "a".repeat(64);
    let longer = "a".repeat(254);
    let samples = samples
        .iter()
        .copied()
        .chain([long.as_str(), longer.as_str()]);
    let name = pattern("/api/v1/experiments/{name}", "get", "name");
    let host = pattern("/api/v1/hosts/{host_id}", "get", "host_id");
    let sha = pattern(
        "/agent/v1/hosts/{host_id}/configs/{sha256}",
        "get",
        "sha256",
    );
    let id = pattern("/api/v1/bootstrap-tokens/{id}", "delete", "id");
    for sample in samples {
        use phoenix_wire::{agent, credentials, names};
        assert_eq!(
            name(sample),
            names::check_resource_name(sample).is_ok(),
            "{sample:?}"
        );
        assert_eq!(
            host(sample),
            names::check_host_id(sample).is_ok(),
            "{sample:?}"
        );
        assert_eq!(sha(sample), agent::is_body_sha256(sample), "{sample:?}");
        assert_eq!(
            id(sample),
            credentials::check_token_id(sample).is_ok(),
            "{sample:?}"
        );
    }
}
