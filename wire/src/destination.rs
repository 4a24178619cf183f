//! Destinations: the user's own backends, declared by an admin, that standing
//! collectors export to (besides the measurement Prometheus).
//!
//! - [`DestinationDocument`] / [`DestinationSpec`]: `kind: Destination`, its
//!   protocol (OTLP gRPC, OTLP HTTP, Prometheus remote write), endpoint, plain
//!   headers, TLS settings and credentials, validated field by field.
//! - [`Credential`]: a *reference* to a secret header value, never the value: a
//!   file in the agent's credentials directory (a mounted Secret) or an environment
//!   variable of the agent. Postgres and the API hold and show only the reference;
//!   the agent reads the value when it starts a collector and hands it to that
//!   collector alone, as a `PHOENIX_CREDENTIAL_*` variable (see
//!   [`crate::policy`], which admits those lookups only as a destination
//!   exporter's header).
//! - [`Destination`]: what the API returns.
//! - [`exporter`]: the collector exporter a destination becomes in a standing
//!   collector's config (see [`crate::render::standing_collector`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::names::Labels;
use crate::problem::FieldError;
use crate::resource::{Metadata, check_envelope};

/// `kind: Destination`: where standing collectors may send telemetry.
///
/// ```yaml
/// apiVersion: phoenix.dev/v1
/// kind: Destination
/// metadata: {name: vendor}
/// spec:
///   protocol: otlp_http            # or otlp_grpc, prometheus_remote_write
///   endpoint: https://otlp.vendor.example:4318
///   headers: {x-team: platform}    # plain, not secret
///   tls: {insecureSkipVerify: false, serverName: otlp.vendor.example}
///   credentials:
///     - {header: authorization, file: vendor/token}   # <credentials dir>/vendor/token on the host
///     - {header: x-api-key, env: VENDOR_API_KEY}      # the agent's own environment
/// ```
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: DestinationSpec,
}

/// How a destination is reached.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// OTLP over gRPC; the endpoint is `host:port`.
    OtlpGrpc,
    /// OTLP over HTTP; the endpoint is the base URL (`/v1/metrics` is appended).
    OtlpHttp,
    /// Prometheus remote write; the endpoint is the full write URL.
    PrometheusRemoteWrite,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::OtlpGrpc => "otlp_grpc",
            Protocol::OtlpHttp => "otlp_http",
            Protocol::PrometheusRemoteWrite => "prometheus_remote_write",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationSpec {
    pub protocol: Protocol,
    pub endpoint: String,
    /// Headers sent with every export, in clear: nothing secret goes here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Tls::is_default")]
    pub tls: Tls,
    /// Secret headers, by reference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
}

/// TLS settings (certificates come from the system's trust store).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tls {
    /// Plaintext, no TLS at all (OTLP gRPC to a `host:port`; an `http://` URL is
    /// plaintext anyway).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// TLS without checking the server's certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// The name the certificate must carry, when not the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl Tls {
    fn is_default(&self) -> bool {
        *self == Tls::default()
    }
}

/// A secret header value, by reference: exactly one of `file` and `env`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Credential {
    /// The header it is sent as.
    pub header: String,
    /// A file under the agent's credentials directory (`--credentials-dir`, where
    /// the Helm chart mounts Secrets), as a relative path; its content, without a
    /// trailing newline, is the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An environment variable of the agent (not a `PHOENIX_*` one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// Where a collector's credential comes from, as a task carries it: the variable
/// the collector reads it as, and the reference the agent resolves.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRef {
    /// `PHOENIX_CREDENTIAL_<DESTINATION>_<N>`.
    pub variable: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// A destination as the API shows it: its spec, which holds references only.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    pub spec: DestinationSpec,
    /// The deployments that export to it.
    #[serde(default)]
    pub used_by: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The longest endpoint, header or reference accepted.
const MAX_TEXT: usize = 1024;

impl DestinationDocument {
    pub const KIND: &'static str = "Destination";

    /// Checks everything the types do not, naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_envelope(&self.api_version, &self.kind, Self::KIND, &self.metadata)?;
        self.spec.validate()
    }
}

impl DestinationSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_endpoint(self.protocol, &self.endpoint)
            .map_err(|m| FieldError::new("spec.endpoint", m))?;
        for (name, value) in &self.headers {
            let field = format!("spec.headers.{name}");
            check_header_name(name).map_err(|m| FieldError::new(&field, m))?;
            check_plain(value).map_err(|m| FieldError::new(&field, m))?;
        }
        if let Some(name) = &self.tls.server_name {
            check_plain(name)
                .and_then(|()| {
                    if name.is_empty() || name.contains([' ', '/', ':']) {
                        Err("must be a host name".to_string())
                    } else {
                        Ok(())
                    }
                })
                .map_err(|m| FieldError::new("spec.tls.serverName", m))?;
        }
        if self.tls.insecure && self.endpoint.starts_with("https://") {
            return Err(FieldError::new(
                "spec.tls.insecure",
                "an https:// endpoint uses TLS; drop `insecure` or use http://",
            ));
        }
        let mut seen: Vec<String> = self.headers.keys().map(|h| h.to_lowercase()).collect();
        for (i, credential) in self.credentials.iter().enumerate() {
            let field = format!("spec.credentials[{i}]");
            check_header_name(&credential.header)
                .map_err(|m| FieldError::new(format!("{field}.header"), m))?;
            let header = credential.header.to_lowercase();
            if seen.contains(&header) {
                return Err(FieldError::new(
                    format!("{field}.header"),
                    format!("header `{}` is set twice", credential.header),
                ));
            }
            seen.push(header);
            match (&credential.file, &credential.env) {
                (Some(file), None) => check_credential_file(file)
                    .map_err(|m| FieldError::new(format!("{field}.file"), m))?,
                (None, Some(env)) => check_credential_env(env)
                    .map_err(|m| FieldError::new(format!("{field}.env"), m))?,
                _ => {
                    return Err(FieldError::new(
                        field,
                        "give exactly one of `file` (in the agent's credentials directory) and `env` (an environment variable of the agent); the secret itself is never stored",
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_plain(text: &str) -> Result<(), String> {
    if text.len() > MAX_TEXT {
        return Err(format!("is longer than {MAX_TEXT} bytes"));
    }
    if text.chars().any(char::is_control) {
        return Err("holds a control character".into());
    }
    if text.contains('$') {
        return Err("holds `$`, which the collector would read as a lookup".into());
    }
    Ok(())
}

fn check_endpoint(protocol: Protocol, endpoint: &str) -> Result<(), String> {
    check_plain(endpoint)?;
    if endpoint.is_empty() || endpoint.contains([' ', '"', '\'', '\\', '{', '}', '#']) {
        return Err(format!("`{endpoint}` is not a URL or host:port"));
    }
    let url_like = endpoint.starts_with("http://") || endpoint.starts_with("https://");
    match protocol {
        Protocol::OtlpGrpc if url_like || endpoint.contains(':') => Ok(()),
        Protocol::OtlpGrpc => Err(format!(
            "`{endpoint}`: OTLP gRPC needs host:port (e.g. otlp.example.com:4317) or a URL"
        )),
        _ if url_like => Ok(()),
        _ => Err(format!(
            "`{endpoint}`: {} needs an http:// or https:// URL",
            protocol.as_str()
        )),
    }
}

fn check_header_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a header name (letters, digits, `-` and `_`)"
        ))
    }
}

fn check_credential_file(file: &str) -> Result<(), String> {
    let ok = !file.is_empty()
        && file.len() <= 255
        && !file.starts_with('/')
        && file.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{file}` must be a relative path inside the agent's credentials directory (letters, digits, `.`, `_`, `-`, no `..`)"
        ))
    }
}

fn check_credential_env(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(format!(
            "`{name}` is not an environment variable name (A-Z, 0-9, _)"
        ));
    }
    if name.starts_with("PHOENIX_") {
        return Err(format!(
            "`{name}`: the agent's own PHOENIX_* variables (its token above all) are never handed to a collector"
        ));
    }
    Ok(())
}

/// The collector component id a destination's exporter gets.
pub fn exporter_id(protocol: Protocol, destination: &str) -> String {
    format!("{}/destination-{destination}", protocol.as_str())
}

/// The variable a destination's `index`th credential reaches its collector as.
pub fn credential_variable(destination: &str, index: usize) -> String {
    format!(
        "PHOENIX_CREDENTIAL_{}_{index}",
        destination.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

/// The exporter settings for `spec`, and the credential references its headers
/// read (as `${env:PHOENIX_CREDENTIAL_…}`, resolved by the agent).
pub fn exporter(name: &str, spec: &DestinationSpec) -> (Value, Vec<CredentialRef>) {
    let mut headers: serde_json::Map<String, Value> = spec
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut refs = Vec::new();
    for (i, credential) in spec.credentials.iter().enumerate() {
        let variable = credential_variable(name, i);
        headers.insert(
            credential.header.clone(),
            Value::String(format!("${{env:{variable}}}")),
        );
        refs.push(CredentialRef {
            variable,
            file: credential.file.clone(),
            env: credential.env.clone(),
        });
    }
    let mut settings = json!({ "endpoint": spec.endpoint });
    if !headers.is_empty() {
        settings["headers"] = Value::Object(headers);
    }
    let mut tls = serde_json::Map::new();
    if spec.tls.insecure {
        tls.insert("insecure".into(), Value::Bool(true));
    }
    if spec.tls.insecure_skip_verify {
        tls.insert("insecure_skip_verify".into(), Value::Bool(true));
    }
    if let Some(server) = &spec.tls.server_name {
        tls.insert("server_name_override".into(), Value::String(server.clone()));
    }
    if !tls.is_empty() {
        settings["tls"] = Value::Object(tls);
    }
    if spec.protocol == Protocol::PrometheusRemoteWrite {
        // Like the measurement exporter: resource attributes become labels.
        settings["resource_constant_labels"] = json!({"included": ["*"]});
        settings["target_info"] = json!({"enabled": false});
    }
    (settings, refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{DocumentFormat, parse_document};

    const YAML: &str = r#"
apiVersion: phoenix.dev/v1
kind: Destination
metadata: {name: vendor}
spec:
  protocol: otlp_http
  endpoint: https://otlp.vendor.example:4318
  headers: {x-team: platform}
  tls: {serverName: otlp.vendor.example}
  credentials:
    - {header: authorization, file: vendor/token}
    - {header: x-api-key, env: VENDOR_API_KEY}
"#;

    fn parse(yaml: &str) -> Result<DestinationDocument, FieldError> {
        let doc: DestinationDocument = parse_document(yaml.as_bytes(), DocumentFormat::Yaml)?;
        doc.validate()?;
        Ok(doc)
    }

    #[test]
    fn a_document_parses_and_becomes_an_exporter_reading_credentials_by_reference() {
        let doc = parse(YAML).unwrap();
        let (settings, refs) = exporter("vendor", &doc.spec);
        assert_eq!(settings["endpoint"], "https://otlp.vendor.example:4318");
        assert_eq!(settings["headers"]["x-team"], "platform");
        assert_eq!(
            settings["headers"]["authorization"],
            "${env:PHOENIX_CREDENTIAL_VENDOR_0}"
        );
        assert_eq!(
            settings["tls"]["server_name_override"],
            "otlp.vendor.example"
        );
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].file.as_deref(), Some("vendor/token"));
        assert_eq!(refs[1].variable, "PHOENIX_CREDENTIAL_VENDOR_1");
        assert_eq!(refs[1].env.as_deref(), Some("VENDOR_API_KEY"));
        assert_eq!(
            exporter_id(doc.spec.protocol, "vendor"),
            "otlp_http/destination-vendor"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (YAML.replace("otlp_http", "kafka"), "spec.protocol"),
            (
                YAML.replace("https://otlp.vendor.example:4318", "otlp.vendor.example"),
                "spec.endpoint",
            ),
            (
                YAML.replace("https://otlp.vendor.example:4318", "http://x/${env:HOME}"),
                "spec.endpoint",
            ),
            (
                YAML.replace("x-team: platform", "'x team': platform"),
                "spec.headers.x team",
            ),
            (
                YAML.replace("file: vendor/token", "file: /etc/shadow"),
                "spec.credentials[0].file",
            ),
            (
                YAML.replace("file: vendor/token", "file: ../agent-token"),
                "spec.credentials[0].file",
            ),
            (
                YAML.replace("env: VENDOR_API_KEY", "env: PHOENIX_AGENT_TOKEN"),
                "spec.credentials[1].env",
            ),
            (
                YAML.replace("file: vendor/token", "file: a, env: B"),
                "spec.credentials[0]",
            ),
            (
                YAML.replace("header: x-api-key", "header: X-Team"),
                "spec.credentials[1].header",
            ),
            (
                YAML.replace("credentials:", "secret: x\n  credentials:"),
                "spec.secret",
            ),
        ];
        for (yaml, field) in cases {
            let err = parse(&yaml).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let grpc = YAML.replace("otlp_http", "otlp_grpc").replace(
            "https://otlp.vendor.example:4318",
            "otlp.vendor.example:4317",
        );
        parse(&grpc).unwrap();
    }
}
