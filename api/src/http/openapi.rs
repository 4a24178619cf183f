//! The api's OpenAPI 3.1 document, served at `GET /api/v1/openapi.json` (no token
//! needed, like `/version`) and published as `schemas/openapi.json`
//! (`scripts/schemas.sh`; `api/tests/openapi.rs` fails while it is stale).
//!
//! Where each part comes from, one place each:
//! - **operations**: the `#[utoipa::path]` attribute on each handler (method, path,
//!   parameters, request body, its own status codes, the role it needs as the
//!   `security` requirement), listed in [`ApiDoc`]; `api/tests/openapi.rs` checks
//!   that the router serves exactly these;
//! - **schemas**: the wire types' schemars derives ([`phoenix_wire::openapi`]),
//!   replacing the placeholders utoipa collects;
//! - **what every operation of a kind answers**, added here by [`complete`] so the
//!   handlers' attributes stay short: a user-token operation can answer 401 and 403;
//!   an agent operation 401, 403, 422 (a malformed `{host_id}`) and 426 (another
//!   agent protocol); an operation with a body 400, 413, 415 and 422; any operation
//!   with a token 500 and 503 (the database). Every error is an
//!   `application/problem+json` [`Problem`](phoenix_wire::problem::Problem).
//!
//! Roles: user operations carry the role they need as the role list of their
//! `userToken` requirement (OpenAPI 3.1 allows roles for non-OAuth schemes), in an
//! `x-phoenix-role` extension and in their description; a higher role may do what a
//! lower one may (viewer < operator < admin).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;
use utoipa::openapi::schema::Ref;
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};

use crate::http;

/// The operations, by handler.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Phoenix API",
        description = "Phoenix runs a baseline and a candidate OpenTelemetry Collector pipeline side by side on real hosts, judges the candidate and rolls the winner out. The user API (`/api/v1`) takes viewer, operator and admin tokens; the agent API (`/agent/v1`) takes host credentials. Errors are `application/problem+json` (RFC 9457)."
    ),
    paths(
        http::health::healthz,
        http::health::readyz,
        http::health::metrics,
        http::health::version,
        openapi_json,
        http::experiments::create,
        http::experiments::list,
        http::experiments::get,
        http::experiments::delete,
        http::experiments::stop,
        http::experiments::events,
        http::experiments::report,
        http::promotion::promote,
        http::promotion::rollback,
        http::apply::apply,
        http::deployments::deploy,
        http::deployments::list,
        http::deployments::get,
        http::deployments::delete,
        http::deployments::rollback,
        http::deployments::events,
        http::destinations::put,
        http::destinations::list,
        http::destinations::get,
        http::destinations::delete,
        http::events::stream,
        http::hosts::list,
        http::hosts::get,
        http::loadsims::start,
        http::loadsims::list,
        http::loadsims::profiles,
        http::loadsims::get,
        http::loadsims::stop,
        http::tasks::list,
        http::ui::whoami,
        http::ui::redirect,
        http::ui::index,
        http::ui::page,
        http::pipelines::list,
        http::pipelines::validate,
        http::pipelines::get,
        http::credentials::create_bootstrap,
        http::credentials::list_bootstrap,
        http::credentials::revoke_bootstrap,
        http::credentials::list_host_credentials,
        http::credentials::revoke_host_credential,
        http::agent::enroll,
        http::agent::claim_tasks,
        http::agent::complete_task,
        http::agent::report_status,
        http::agent::config_body,
        http::agent::heartbeat,
    )
)]
pub struct ApiDoc;

macro_rules! problems {
    ($($name:ident = $description:literal;)*) => {
        $(
            #[doc = $description]
            pub struct $name;
            impl<'r> utoipa::ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
                    (stringify!($name), problem($description))
                }
            }
        )*

        /// Every error answer, as a response component.
        fn problem_responses() -> Vec<(&'static str, RefOr<utoipa::openapi::Response>)> {
            vec![$((stringify!($name), problem($description))),*]
        }
    };
}

// The error answers: a handler's attribute names its own (`response = NotFound`);
// [`complete`] adds those of its kind of operation.
problems! {
    BadRequest = "Malformed request: a parameter or body that cannot be read.";
    Unauthorized = "No valid token (`WWW-Authenticate: Bearer`).";
    Forbidden = "The token is valid but may not do this (its role is too low, or it is of the wrong kind).";
    NotFound = "No such resource.";
    Conflict = "The resource's state does not allow this now, or it already exists.";
    PayloadTooLarge = "The body is larger than the api's limit (`GET /version` says it).";
    UnsupportedMediaType = "The body is neither `application/json` nor `application/yaml`.";
    Unprocessable = "A field or parameter is not valid; `field` names it.";
    UpgradeRequired = "The agent speaks an agent protocol this api does not serve (`phoenix-agent-protocol`).";
    NotAWebSocket = "The connection cannot be upgraded to a WebSocket.";
    TooManyRequests = "Too many at once; retry later.";
    Internal = "An internal error; the server log has the details.";
    ServiceUnavailable = "Not ready: the database is unavailable, or a part is missing (`Retry-After` for the database).";
}

fn problem(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            phoenix_wire::problem::PROBLEM_CONTENT_TYPE,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
        .into()
}

/// The complete document, as served.
pub fn document() -> Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    complete(&mut document);
    document
}

/// The served document's text: pretty JSON with a final newline, as published.
pub fn document_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        serde_json::to_string_pretty(&document()).expect("the document serializes") + "\n"
    })
}

/// Security schemes, the schemars component schemas, and what every operation of a
/// kind answers (see the module doc).
fn complete(document: &mut Value) {
    let components = document["components"]
        .as_object_mut()
        .expect("utoipa writes components");
    components.insert(
        "schemas".into(),
        Value::Object(phoenix_wire::openapi::components()),
    );
    let responses = components
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses is a map");
    for (name, response) in problem_responses() {
        responses.insert(
            name.into(),
            serde_json::to_value(response).expect("a response serializes"),
        );
    }
    components.insert(
        "securitySchemes".into(),
        json!({
            "userToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "A user token configured on the api (`--tokens role:token,...`), of role viewer, operator or admin. Each operation's requirement lists the lowest role it needs; a higher role may do what a lower one may."
            },
            "hostCredential": {
                "type": "http",
                "scheme": "bearer",
                "description": "An agent's host credential (from `POST /agent/v1/enroll`): it acts only for its own `{host_id}`."
            },
            "bootstrapToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "A bootstrap token (`PHOENIX_BOOTSTRAP_TOKEN`, or one an admin created): it only enrolls agents."
            }
        }),
    );
    let parameters = path_parameters(&document["components"]["schemas"]);
    let paths = document["paths"].as_object_mut().expect("paths is a map");
    for (path, item) in paths.iter_mut() {
        for (method, operation) in item.as_object_mut().expect("a path item is a map") {
            let operation = operation.as_object_mut().expect("an operation is a map");
            complete_operation(path, method, operation);
            for parameter in operation
                .get_mut("parameters")
                .and_then(|p| p.as_array_mut())
                .into_iter()
                .flatten()
            {
                let name = parameter["name"].as_str().unwrap_or_default();
                if parameter["in"] == "path"
                    && let Some(schema) = parameters.get(name)
                {
                    parameter["schema"] = schema.clone();
                }
            }
        }
    }
}

/// The rules of the path parameters, by name: what the api accepts there. A
/// resource's `{name}` follows `metadata.name` (from its schema); the others are
/// the rules of `phoenix_wire::names::check_host_id`, `is_body_sha256` and
/// `check_token_id`.
fn path_parameters(schemas: &Value) -> Map<String, Value> {
    let name = schemas["Metadata"]["properties"]["name"].clone();
    assert!(name.get("pattern").is_some(), "metadata.name has a pattern");
    let mut parameters = Map::new();
    parameters.insert("name".into(), name);
    parameters.insert(
        "host_id".into(),
        json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,253}$"}),
    );
    parameters.insert(
        "sha256".into(),
        json!({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
    );
    parameters.insert(
        "id".into(),
        json!({
            "type": "string",
            "pattern": format!("^[0-9a-f]{{{}}}$", phoenix_wire::credentials::ID_LEN)
        }),
    );
    parameters
}

fn complete_operation(path: &str, method: &str, operation: &mut Map<String, Value>) {
    let tag = operation["tags"][0].as_str().unwrap_or("api").to_string();
    let id = operation["operationId"]
        .as_str()
        .unwrap_or(method)
        .to_string();
    operation.insert("operationId".into(), format!("{tag}_{id}").into());
    let requirement = operation
        .get("security")
        .and_then(|s| s[0].as_object())
        .and_then(|r| r.iter().next())
        .map(|(scheme, roles)| (scheme.clone(), roles[0].as_str().map(str::to_owned)));
    let mut added: Vec<(&str, &str)> = Vec::new();
    let sentence = match &requirement {
        Some((scheme, Some(role))) if scheme == "userToken" => {
            operation.insert("x-phoenix-role".into(), role.clone().into());
            added.extend([("401", "Unauthorized"), ("403", "Forbidden")]);
            format!("Needs a user token of role {role} or higher.")
        }
        Some((scheme, _)) if scheme == "hostCredential" => {
            operation.insert("x-phoenix-role".into(), "agent".into());
            added.extend([
                ("401", "Unauthorized"),
                ("403", "Forbidden"),
                ("422", "Unprocessable"),
                ("426", "UpgradeRequired"),
            ]);
            "Needs the credential of the host in `{host_id}`.".into()
        }
        Some((scheme, _)) if scheme == "bootstrapToken" => {
            operation.insert("x-phoenix-role".into(), "bootstrap".into());
            added.extend([("401", "Unauthorized"), ("426", "UpgradeRequired")]);
            "Needs a bootstrap token.".into()
        }
        Some((scheme, _)) => panic!("{method} {path}: unknown security scheme {scheme}"),
        None => "Needs no token.".into(),
    };
    if requirement.is_some() {
        added.extend([("500", "Internal"), ("503", "ServiceUnavailable")]);
    }
    if operation.contains_key("requestBody") {
        added.extend([
            ("400", "BadRequest"),
            ("413", "PayloadTooLarge"),
            ("415", "UnsupportedMediaType"),
            ("422", "Unprocessable"),
        ]);
    }
    let description = match operation.get("description").and_then(|d| d.as_str()) {
        Some(text) if !text.is_empty() => format!("{text}\n\n{sentence}"),
        _ => sentence,
    };
    operation.insert("description".into(), description.into());
    let responses = operation
        .get_mut("responses")
        .and_then(|r| r.as_object_mut())
        .unwrap_or_else(|| panic!("{method} {path} has no responses"));
    for (status, name) in added {
        responses
            .entry(status)
            .or_insert_with(|| json!({"$ref": format!("#/components/responses/{name}")}));
    }
    // Status codes in order, as a reader looks for them.
    let mut sorted: Vec<(String, Value)> = std::mem::take(responses).into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    responses.extend(sorted);
}

/// The OpenAPI document of this api.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json"))
)]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_text(),
    )
        .into_response()
}
