//! The template policy: what a collector config may contain before Phoenix runs it
//! on a host (where the agent runs as root). A pure function, applied by the api
//! wherever a config is accepted and again by the agent before it starts a collector.
//!
//! A config passes when:
//! - its top-level sections are the collector's own (`receivers`, `processors`,
//!   `exporters`, `extensions`, `service`; no `connectors`), and every component's
//!   type is on [`ALLOWED_COMPONENTS`];
//! - its only config lookups are `${env:NAME}` / `${env:NAME:-default}` of the
//!   documented Phoenix variables ([`PHOENIX_VARIABLES`] and `PHOENIX_VAR_*`): no
//!   `${file:…}`, `${yaml:…}`, `${NAME}`, no `$$`, nothing nested in a default;
//! - each lookup's value cannot be read back as config or code: a value placed in
//!   the middle of a text must be a number or a duration, a value inside an OTTL
//!   string literal has no `"`, `\` or control character, and a value that is a whole
//!   field is a plain YAML scalar (see [`Placement`]);
//! - it writes no files (no `*_file`/`*_dir`/`directory`/`storage` settings, no
//!   `service.telemetry.logs.output_paths` other than stderr/stdout, the `debug`
//!   exporter only at `verbosity: basic`, which prints counts, not data);
//! - receivers and extensions listen on loopback only;
//! - exporters send only to the measurement endpoint (`${env:PHOENIX_REMOTE_WRITE_URL}`)
//!   or to a destination an admin declared ([`Allowances::destinations`]: a
//!   standing collector's deployment names them, and rendering adds their
//!   exporters); the collector's own telemetry is pulled on loopback, never pushed;
//! - a destination's credential (`${env:PHOENIX_CREDENTIAL_…}`, set by the agent
//!   from a file or its own environment) is read only as the whole value of a
//!   header of an exporter that sends to a declared destination, never anywhere
//!   it could become data or reach the measurement Prometheus.
//!
//! Every refusal names the offending path in the config, e.g.
//! `exporters.otlp/x.endpoint`. [`CheckedConfig::canonical`] is the checked tree
//! written back as JSON (which every YAML parser reads the same way): the agent runs
//! exactly that text, so no difference between two YAML parsers can slip past.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::problem::FieldError;

/// The largest config the policy reads.
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// The `PHOENIX_*` environment variables Phoenix sets for collectors (besides the
/// template variables `PHOENIX_VAR_*`), and how a template may place them.
pub const PHOENIX_VARIABLES: &[(&str, Shape)] = &[
    ("PHOENIX_EXPERIMENT", Shape::Text),
    ("PHOENIX_VARIANT", Shape::Text),
    ("PHOENIX_HOST", Shape::Text),
    ("PHOENIX_DEPLOYMENT", Shape::Text),
    ("PHOENIX_CRITICAL_PROCESSES_REGEX", Shape::Text),
    ("PHOENIX_REMOTE_WRITE_URL", Shape::Text),
    ("PHOENIX_HOSTFS", Shape::Text),
    ("PHOENIX_HEALTH_PORT", Shape::Number),
    ("PHOENIX_TELEMETRY_PORT", Shape::Number),
];

/// Variables the agent sets itself, per collector; the api checks configs
/// without knowing their values.
pub const AGENT_VARIABLES: &[&str] = &[
    "PHOENIX_HOSTFS",
    "PHOENIX_HEALTH_PORT",
    "PHOENIX_TELEMETRY_PORT",
];

/// Stand-ins for what only an experiment and a host know, for checking a template
/// on its own (the agent's variables are left out: it checks again with them).
pub fn placeholder_environment() -> BTreeMap<String, String> {
    [
        ("PHOENIX_EXPERIMENT", "validation"),
        ("PHOENIX_VARIANT", "candidate"),
        ("PHOENIX_HOST", "validation-host"),
        ("PHOENIX_DEPLOYMENT", "validation"),
        (
            "PHOENIX_REMOTE_WRITE_URL",
            "http://127.0.0.1:9090/api/v1/write",
        ),
        (
            "PHOENIX_CRITICAL_PROCESSES_REGEX",
            crate::render::MATCH_NOTHING,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The measurement endpoint: the one lookup an exporter may send to without an
/// admin-declared destination.
pub const MEASUREMENT_ENDPOINT: &str = "${env:PHOENIX_REMOTE_WRITE_URL}";

/// The family of variables the agent sets from a destination's credentials
/// (`PHOENIX_CREDENTIAL_<DESTINATION>_<N>`); never in a task's environment.
pub const CREDENTIAL_PREFIX: &str = "PHOENIX_CREDENTIAL_";

/// What a Phoenix variable's value looks like, as far as placement is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Digits (ports).
    Number,
    /// Anything else; its value is checked where it is placed.
    Text,
    /// A destination's credential: only the whole value of a destination
    /// exporter's header.
    Secret,
}

/// Components a template may use, by kind, with the collector's deprecated aliases.
/// Everything in `collector/manifest.yaml` is here except `connectors` (none built).
pub const ALLOWED_COMPONENTS: &[(&str, &[&str])] = &[
    ("receivers", &["host_metrics", "hostmetrics", "otlp"]),
    (
        "processors",
        &[
            "memory_limiter",
            "batch",
            "attributes",
            "filter",
            "transform",
            "groupbyattrs",
            "metrics_transform",
            "metricstransform",
            "cumulative_to_delta",
            "cumulativetodelta",
            "resource",
            "resource_detection",
            "resourcedetection",
        ],
    ),
    (
        "exporters",
        &[
            "prometheus_remote_write",
            "prometheusremotewrite",
            "otlp",
            "otlp_grpc",
            "otlp_http",
            "otlphttp",
            "debug",
        ],
    ),
    ("extensions", &["health_check"]),
];

/// `resource_detection` detectors that read only this host's environment and name;
/// the others talk to cloud metadata services or the Docker socket.
const ALLOWED_DETECTORS: &[&str] = &["env", "system"];

/// A place telemetry may be sent to, declared by an admin (a task carries the
/// destinations of its collector, so the agent checks against the same list).
#[derive(
    Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[schemars(rename = "AllowedDestination")]
pub struct Destination {
    pub name: String,
    /// The exact endpoint text an exporter must use (URL or host:port).
    pub endpoint: String,
}

/// What the policy allows beyond its fixed rules.
#[derive(Clone, Debug, Default)]
pub struct Allowances {
    /// Admin-declared destinations exporters may send to.
    pub destinations: Vec<Destination>,
}

/// Why a config was refused: the path of the offending value and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Where in the config, e.g. `exporters.otlp/x.endpoint`; empty for the whole.
    pub path: String,
    pub reason: String,
}

impl Refusal {
    fn new(path: &str, reason: impl Into<String>) -> Self {
        Self {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    /// As a validation error of the document field holding the config.
    pub fn into_field_error(self, field: &str) -> FieldError {
        FieldError::new(field, format!("refused by the template policy: {self}"))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "`{}`: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for Refusal {}

/// A config that passed the policy.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedConfig {
    tree: Value,
}

impl CheckedConfig {
    /// The checked tree as JSON text: what the collector should be given.
    pub fn canonical(&self) -> String {
        serde_json::to_string_pretty(&self.tree).expect("a JSON tree always serializes")
    }

    /// The canonical text of `config` without checking it (what the agent writes
    /// for a config that passes), or why it is not YAML.
    pub fn canonical_text(config: &str) -> Result<String, Refusal> {
        let tree: Value = serde_saphyr::from_str(config)
            .map_err(|e| Refusal::new("", format!("not valid YAML: {e}")))?;
        Ok(CheckedConfig { tree }.canonical())
    }

    pub fn tree(&self) -> &Value {
        &self.tree
    }
}

/// Checks `config` with the environment the collector will get (`env`: every
/// variable Phoenix sets; a lookup of a variable not in `env` takes its `:-default`,
/// and the agent's own variables may be missing when the api checks).
pub fn check(
    config: &str,
    env: &BTreeMap<String, String>,
    allow: &Allowances,
) -> Result<CheckedConfig, Refusal> {
    if config.len() > MAX_CONFIG_BYTES {
        return Err(Refusal::new(
            "",
            format!(
                "the config is {} bytes; at most {MAX_CONFIG_BYTES} are accepted",
                config.len()
            ),
        ));
    }
    if config.contains('\0') {
        return Err(Refusal::new("", "the config contains a NUL character"));
    }
    let tree: Value = serde_saphyr::from_str(config)
        .map_err(|e| Refusal::new("", format!("not valid YAML: {e}")))?;
    let checker = Checker { env, allow };
    checker.lookups(&tree, "")?;
    checker.structure(&tree)?;
    Ok(CheckedConfig { tree })
}

/// Checks the environment a task gives a collector: only Phoenix's own variables
/// (no `LD_PRELOAD`, no `PATH`), and no value holding a control character.
pub fn check_environment(env: &BTreeMap<String, String>) -> Result<(), Refusal> {
    for (name, value) in env {
        let path = format!("env.{name}");
        if is_phoenix_variable(name).is_none_or(|shape| shape == Shape::Secret)
            || AGENT_VARIABLES.contains(&name.as_str())
        {
            return Err(Refusal::new(
                &path,
                "a collector's environment holds only the Phoenix variables a task may set",
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(Refusal::new(&path, "holds a control character"));
        }
    }
    Ok(())
}

struct Checker<'a> {
    env: &'a BTreeMap<String, String>,
    allow: &'a Allowances,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Where a lookup sits in its text, which decides what its value may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The lookup is the whole field: the collector reads its value as YAML, so it
    /// must be a plain scalar (no flow collection, quote, anchor, comment, lookup).
    Whole,
    /// Inside an OTTL string literal (`"…${env:X}…"`): no `"`, `\` or control character.
    Quoted,
    /// Anywhere else in a text (code, `host:port`): a number or duration only.
    Bare,
}

/// One `${env:NAME[:-default]}` in a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub name: String,
    pub default: Option<String>,
    pub placement: Placement,
}

/// Every lookup in `text`, or why `text` holds something else than documented lookups.
pub fn lookups_in(text: &str) -> Result<Vec<Lookup>, String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut in_literal = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_literal => i += 1,
            b'"' => in_literal = !in_literal,
            b'$' => match bytes.get(i + 1) {
                Some(b'$') => {
                    return Err(
                        "`$$` is an escape the collector rewrites; write no `$$` in a template"
                            .into(),
                    );
                }
                Some(b'{') => {
                    let end = text[i..]
                        .find('}')
                        .map(|e| i + e)
                        .ok_or("an unterminated `${`")?;
                    let inner = &text[i + 2..end];
                    let Some(reference) = inner.strip_prefix("env:") else {
                        return Err(format!(
                            "`${{{inner}}}` is a config lookup; only `${{env:PHOENIX_…}}` lookups of Phoenix's own variables are allowed"
                        ));
                    };
                    let (name, default) = match reference.split_once(":-") {
                        Some((name, default)) => (name, Some(default)),
                        None => (reference, None),
                    };
                    if let Some(default) = default
                        && (default.contains('$') || default.contains('{'))
                    {
                        return Err(format!(
                            "the default of `{name}` holds `$` or `{{`; a default is plain text"
                        ));
                    }
                    let whole = i == 0 && end + 1 == bytes.len();
                    let placement = if whole {
                        Placement::Whole
                    } else if in_literal {
                        Placement::Quoted
                    } else {
                        Placement::Bare
                    };
                    found.push(Lookup {
                        name: name.to_string(),
                        default: default.map(str::to_string),
                        placement,
                    });
                    i = end;
                }
                _ => {} // a lone `$` (a regex anchor) is text
            },
            _ => {}
        }
        i += 1;
    }
    Ok(found)
}

/// Why `value` cannot stand at `placement`, if it cannot.
pub fn check_value_placement(value: &str, placement: Placement) -> Result<(), String> {
    if value.contains("${") || value.contains("$$") {
        return Err("holds `${` or `$$`, which the collector would expand again".into());
    }
    if value.chars().any(char::is_control) {
        return Err("holds a control character (newline, NUL, …)".into());
    }
    match placement {
        Placement::Bare => {
            if is_number_or_duration(value) {
                Ok(())
            } else {
                Err(format!(
                    "`{value}` stands in the middle of a text, where only a number or a duration may go"
                ))
            }
        }
        Placement::Quoted => {
            if value.contains('"') || value.contains('\\') {
                Err("holds `\"` or `\\`, which would end or change the OTTL string it stands in (write `[.]` for a literal dot)".into())
            } else {
                Ok(())
            }
        }
        Placement::Whole => {
            let plain = value.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(
                        c,
                        '.' | '_' | '-' | '/' | ':' | '@' | '+' | '%' | '=' | '~' | '?' | '&' | ','
                    )
            }) && !value.contains(": ")
                && !value.starts_with(['-', '?', ':', ',', '&', '%', '@', '~', '=']);
            if plain {
                Ok(())
            } else {
                Err(format!(
                    "`{value}` is the whole field, so the collector reads it as YAML; only plain text (letters, digits, . _ - / : @ + % = ? & ,) may go there"
                ))
            }
        }
    }
}

/// `0.05`, `-3`, `256`, `10s`, `1h30m`, `500ms`: what may stand in code or `host:port`.
pub fn is_number_or_duration(value: &str) -> bool {
    let body = value.strip_prefix('-').unwrap_or(value);
    if body.is_empty() {
        return false;
    }
    let mut rest = body;
    while !rest.is_empty() {
        let digits = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let number = &rest[..digits];
        if number.is_empty()
            || number.starts_with('.')
            || number.ends_with('.')
            || number.matches('.').count() > 1
        {
            return false;
        }
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if !matches!(&rest[..unit], "" | "ns" | "us" | "ms" | "s" | "m" | "h") {
            return false;
        }
        if unit == 0 && !rest.is_empty() {
            return false;
        }
        rest = &rest[unit..];
    }
    true
}

fn is_phoenix_variable(name: &str) -> Option<Shape> {
    if let Some((_, shape)) = PHOENIX_VARIABLES.iter().find(|(n, _)| *n == name) {
        return Some(*shape);
    }
    if let Some(rest) = name.strip_prefix(CREDENTIAL_PREFIX) {
        let ok = !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        return ok.then_some(Shape::Secret);
    }
    let var = name.strip_prefix("PHOENIX_VAR_")?;
    let ok = !var.is_empty()
        && var
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    ok.then_some(Shape::Text)
}

impl Checker<'_> {
    /// Checks every key and text of the tree for lookups, and each lookup's value.
    fn lookups(&self, node: &Value, path: &str) -> Result<(), Refusal> {
        match node {
            Value::Object(map) => {
                for (key, value) in map {
                    let here = join(path, key);
                    if key.contains('$') {
                        return Err(Refusal::new(&here, "a key may not hold `$`"));
                    }
                    self.lookups(value, &here)?;
                }
                Ok(())
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.lookups(item, &format!("{path}[{i}]"))?;
                }
                Ok(())
            }
            Value::String(text) => {
                for lookup in lookups_in(text).map_err(|m| Refusal::new(path, m))? {
                    self.lookup(&lookup, path)?;
                }
                Ok(())
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
        }
    }

    fn lookup(&self, lookup: &Lookup, path: &str) -> Result<(), Refusal> {
        let name = &lookup.name;
        let Some(shape) = is_phoenix_variable(name) else {
            return Err(Refusal::new(
                path,
                format!(
                    "`${{env:{name}}}` is not a Phoenix variable; a template may read only {} and PHOENIX_VAR_<NAME>",
                    PHOENIX_VARIABLES
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if shape == Shape::Secret {
            return self.credential_lookup(lookup, path);
        }
        let value = self
            .env
            .get(name)
            .map(String::as_str)
            .or(lookup.default.as_deref());
        let Some(value) = value else {
            if AGENT_VARIABLES.contains(&name.as_str()) {
                // Set by the agent, which checks again with the value.
                return match (shape, lookup.placement) {
                    (Shape::Text, Placement::Bare) => Err(Refusal::new(
                        path,
                        format!("`{name}` may only be a whole field or inside a quoted string"),
                    )),
                    _ => Ok(()),
                };
            }
            return Err(Refusal::new(
                path,
                format!("`{name}` has no value here and no default"),
            ));
        };
        check_value_placement(value, lookup.placement)
            .map_err(|m| Refusal::new(path, format!("the value of `{name}` {m}")))
    }

    /// A credential is the whole value of `exporters.<id>.headers.<name>`, with no
    /// default; its value (known to the agent only) is one line of plain text.
    fn credential_lookup(&self, lookup: &Lookup, path: &str) -> Result<(), Refusal> {
        let name = &lookup.name;
        let parts: Vec<&str> = path.split('.').collect();
        let in_header = matches!(parts.as_slice(), ["exporters", _, "headers", _]);
        if !in_header || lookup.placement != Placement::Whole || lookup.default.is_some() {
            return Err(Refusal::new(
                path,
                format!(
                    "`{name}` is a destination's credential: it may only be the whole value of a header of a destination's exporter (exporters.<id>.headers.<name>), with no default"
                ),
            ));
        }
        let Some(value) = self.env.get(name) else {
            return Ok(()); // set by the agent, which checks again with the value
        };
        let bad_start = value.starts_with([
            '[', '{', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`', '#', '?', ':', ',',
        ]) || value.starts_with("- ");
        let problem = if value.contains("${") || value.contains("$$") {
            Some("holds `${` or `$$`, which the collector would expand again")
        } else if value.chars().any(char::is_control) {
            Some("holds a control character (newline, NUL, …)")
        } else if value.is_empty() {
            Some("is empty")
        } else if bad_start || value.contains(": ") || value.contains(" #") {
            Some("would be read as YAML structure; a credential is one line of plain text")
        } else {
            None
        };
        match problem {
            // The value itself is never quoted: it is a secret.
            Some(m) => Err(Refusal::new(path, format!("the value of `{name}` {m}"))),
            None => Ok(()),
        }
    }

    fn structure(&self, tree: &Value) -> Result<(), Refusal> {
        let Value::Object(top) = tree else {
            return Err(Refusal::new("", "a collector config is a mapping"));
        };
        for (section, body) in top {
            match section.as_str() {
                "receivers" | "processors" | "exporters" | "extensions" => {
                    self.section(section, body)?
                }
                "service" => self.service(body)?,
                "connectors" if is_empty(body) => {}
                "connectors" => {
                    return Err(Refusal::new("connectors", "no connector is allowed"));
                }
                other => {
                    return Err(Refusal::new(
                        other,
                        "not a collector config section (receivers, processors, exporters, extensions, service)",
                    ));
                }
            }
        }
        deny_file_settings(tree, "")
    }

    fn section(&self, section: &str, body: &Value) -> Result<(), Refusal> {
        let allowed = ALLOWED_COMPONENTS
            .iter()
            .find(|(kind, _)| *kind == section)
            .map(|(_, types)| *types)
            .unwrap_or_default();
        let components = match body {
            Value::Null => return Ok(()),
            Value::Object(map) => map,
            _ => return Err(Refusal::new(section, "must map component ids to settings")),
        };
        for (id, settings) in components {
            let path = join(section, id);
            let kind = id.split('/').next().unwrap_or_default();
            if !allowed.contains(&kind) {
                return Err(Refusal::new(
                    &path,
                    format!(
                        "component type `{kind}` is not allowed in {section}; allowed: {}",
                        allowed.join(", ")
                    ),
                ));
            }
            if !matches!(settings, Value::Null | Value::Object(_)) {
                return Err(Refusal::new(&path, "component settings must be a mapping"));
            }
            match section {
                "receivers" => self.receiver(kind, settings, &path)?,
                "extensions" => loopback_endpoints(settings, &path, true)?,
                "exporters" => self.exporter(kind, settings, &path)?,
                "processors" => processor(kind, settings, &path)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn receiver(&self, kind: &str, settings: &Value, path: &str) -> Result<(), Refusal> {
        match kind {
            "host_metrics" | "hostmetrics" => {
                if let Some(root) = settings.get("root_path")
                    && root.as_str() != Some("${env:PHOENIX_HOSTFS}")
                {
                    return Err(Refusal::new(
                        &join(path, "root_path"),
                        "must be `${env:PHOENIX_HOSTFS}` (where the agent mounts the host's /)",
                    ));
                }
                Ok(())
            }
            _ => {
                // otlp: every protocol listens on an explicit loopback address, over TCP.
                if let Some(Value::Object(protocols)) = settings.get("protocols") {
                    for (name, protocol) in protocols {
                        let here = join(&join(path, "protocols"), name);
                        if protocol.get("endpoint").is_none() {
                            return Err(Refusal::new(
                                &join(&here, "endpoint"),
                                "a receiver must name its loopback endpoint, e.g. 127.0.0.1:4317",
                            ));
                        }
                        if let Some(transport) = protocol.get("transport")
                            && transport.as_str() != Some("tcp")
                        {
                            return Err(Refusal::new(
                                &join(&here, "transport"),
                                "only tcp (a unix socket is a file)",
                            ));
                        }
                    }
                }
                loopback_endpoints(settings, path, true)
            }
        }
    }

    fn exporter(&self, kind: &str, settings: &Value, path: &str) -> Result<(), Refusal> {
        if kind == "debug" {
            if let Some(verbosity) = settings.get("verbosity")
                && verbosity.as_str() != Some("basic")
            {
                return Err(Refusal::new(
                    &join(path, "verbosity"),
                    "the debug exporter may only print counts (`basic`): its output reaches the collector log, which users read",
                ));
            }
            return Ok(());
        }
        let mut endpoints = Vec::new();
        collect_endpoints(settings, path, &mut endpoints);
        if endpoints.is_empty() {
            return Err(Refusal::new(
                &join(path, "endpoint"),
                format!(
                    "an exporter must name its endpoint: `{MEASUREMENT_ENDPOINT}` or a declared destination"
                ),
            ));
        }
        let reads_credential = settings.get("headers").is_some_and(|headers| {
            headers.as_object().is_some_and(|h| {
                h.values()
                    .any(|v| v.as_str().is_some_and(|v| v.contains(CREDENTIAL_PREFIX)))
            })
        });
        for (here, value) in endpoints {
            if reads_credential && value.as_str() == Some(MEASUREMENT_ENDPOINT) {
                return Err(Refusal::new(
                    &here,
                    "an exporter that sends a destination's credential may send only to that destination",
                ));
            }
            let allowed = value.as_str().is_some_and(|v| {
                v == MEASUREMENT_ENDPOINT || self.allow.destinations.iter().any(|d| d.endpoint == v)
            });
            if !allowed {
                let declared: Vec<&str> = self
                    .allow
                    .destinations
                    .iter()
                    .map(|d| d.endpoint.as_str())
                    .collect();
                return Err(Refusal::new(
                    &here,
                    format!(
                        "exporters may send only to `{MEASUREMENT_ENDPOINT}`{}",
                        if declared.is_empty() {
                            " (no destination is declared)".to_string()
                        } else {
                            format!(" or a declared destination: {}", declared.join(", "))
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    fn service(&self, body: &Value) -> Result<(), Refusal> {
        let Value::Object(service) = body else {
            return Err(Refusal::new("service", "must be a mapping"));
        };
        for (key, value) in service {
            let path = join("service", key);
            match key.as_str() {
                "extensions" | "pipelines" => {}
                "telemetry" => telemetry(value, &path)?,
                _ => return Err(Refusal::new(&path, "not a service setting")),
            }
        }
        Ok(())
    }
}

fn processor(kind: &str, settings: &Value, path: &str) -> Result<(), Refusal> {
    if matches!(kind, "resource_detection" | "resourcedetection")
        && let Some(detectors) = settings.get("detectors")
    {
        let here = join(path, "detectors");
        let Value::Array(list) = detectors else {
            return Err(Refusal::new(&here, "must be a list"));
        };
        for (i, detector) in list.iter().enumerate() {
            if !detector
                .as_str()
                .is_some_and(|d| ALLOWED_DETECTORS.contains(&d))
            {
                return Err(Refusal::new(
                    &format!("{here}[{i}]"),
                    format!(
                        "only the {} detectors (the others reach cloud metadata services or the Docker socket)",
                        ALLOWED_DETECTORS.join(" and ")
                    ),
                ));
            }
        }
    }
    let mut endpoints = Vec::new();
    collect_endpoints(settings, path, &mut endpoints);
    if let Some((here, _)) = endpoints.first() {
        return Err(Refusal::new(
            here,
            "a processor may not reach out to an endpoint",
        ));
    }
    Ok(())
}

/// `service.telemetry`: logs to stderr/stdout, metrics pulled on loopback, no traces
/// or log exporters (they would send to any address).
fn telemetry(body: &Value, path: &str) -> Result<(), Refusal> {
    let Value::Object(telemetry) = body else {
        return Err(Refusal::new(path, "must be a mapping"));
    };
    for (key, value) in telemetry {
        let here = join(path, key);
        match key.as_str() {
            "resource" => {}
            "logs" => {
                let Value::Object(logs) = value else {
                    return Err(Refusal::new(&here, "must be a mapping"));
                };
                for (setting, v) in logs {
                    let at = join(&here, setting);
                    match setting.as_str() {
                        "level" | "development" | "encoding" | "disable_caller"
                        | "disable_stacktrace" | "sampling" | "initial_fields" => {}
                        "output_paths" | "error_output_paths" => {
                            let ok = v.as_array().is_some_and(|paths| {
                                paths
                                    .iter()
                                    .all(|p| matches!(p.as_str(), Some("stderr") | Some("stdout")))
                            });
                            if !ok {
                                return Err(Refusal::new(
                                    &at,
                                    "the collector may log to stderr or stdout only (never to a file)",
                                ));
                            }
                        }
                        _ => {
                            return Err(Refusal::new(
                                &at,
                                "not an allowed log setting (log exporters would send anywhere)",
                            ));
                        }
                    }
                }
            }
            "metrics" => {
                let Value::Object(metrics) = value else {
                    return Err(Refusal::new(&here, "must be a mapping"));
                };
                for (setting, v) in metrics {
                    let at = join(&here, setting);
                    match setting.as_str() {
                        "level" => {}
                        "readers" => {
                            let Value::Array(readers) = v else {
                                return Err(Refusal::new(&at, "must be a list"));
                            };
                            for (i, reader) in readers.iter().enumerate() {
                                let r = format!("{at}[{i}]");
                                let Some(Value::Object(pull)) = reader.get("pull") else {
                                    return Err(Refusal::new(
                                        &r,
                                        "only `pull` readers (a Prometheus endpoint on loopback); a periodic reader pushes anywhere",
                                    ));
                                };
                                if reader.as_object().is_some_and(|o| o.len() != 1) {
                                    return Err(Refusal::new(&r, "a reader is `pull` only"));
                                }
                                let prometheus =
                                    pull.get("exporter").and_then(|e| e.get("prometheus"));
                                let host = prometheus.and_then(|p| p.get("host"));
                                if !host.and_then(Value::as_str).is_some_and(is_loopback_host) {
                                    return Err(Refusal::new(
                                        &format!("{r}.pull.exporter.prometheus.host"),
                                        "the collector's metrics are served on loopback only (127.0.0.1)",
                                    ));
                                }
                            }
                        }
                        _ => return Err(Refusal::new(&at, "not an allowed metrics setting")),
                    }
                }
            }
            "traces" => {
                let quiet = value.as_object().is_some_and(|t| {
                    t.iter()
                        .all(|(k, v)| k == "level" && v.as_str() == Some("none"))
                });
                if !quiet {
                    return Err(Refusal::new(
                        &here,
                        "the collector's own traces may only be `level: none` (their exporters would send anywhere)",
                    ));
                }
            }
            _ => return Err(Refusal::new(&here, "not an allowed telemetry setting")),
        }
    }
    Ok(())
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

/// Every `endpoint` / `*_endpoint` / `proxy_url` setting under `node`.
fn collect_endpoints<'v>(node: &'v Value, path: &str, out: &mut Vec<(String, &'v Value)>) {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                let here = join(path, key);
                if key == "endpoint" || key.ends_with("_endpoint") || key == "proxy_url" {
                    out.push((here, value));
                } else {
                    collect_endpoints(value, &here, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_endpoints(item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Every endpoint under `settings` is on loopback (receivers, extensions).
fn loopback_endpoints(settings: &Value, path: &str, _listening: bool) -> Result<(), Refusal> {
    let mut endpoints = Vec::new();
    collect_endpoints(settings, path, &mut endpoints);
    for (here, value) in endpoints {
        let ok = value.as_str().is_some_and(|v| {
            let v = v
                .strip_prefix("http://")
                .or_else(|| v.strip_prefix("https://"))
                .unwrap_or(v);
            // The port may be a lookup (`127.0.0.1:${env:PHOENIX_HEALTH_PORT}`),
            // which holds colons itself: the host ends at the first one.
            let host = match v.strip_prefix('[') {
                Some(rest) => rest.split(']').next().unwrap_or_default(),
                None => v.split(':').next().unwrap_or_default(),
            };
            is_loopback_host(host)
        });
        if !ok {
            return Err(Refusal::new(
                &here,
                "listeners are on loopback only: 127.0.0.1:<port>, localhost:<port> or [::1]:<port>",
            ));
        }
    }
    Ok(())
}

fn is_loopback_host(host: &str) -> bool {
    if host == "localhost" || host == "::1" {
        return true;
    }
    host.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// No setting anywhere that names a file or directory: the collector writes and
/// reads nothing but its config and the host's /proc (host_metrics' `root_path`).
fn deny_file_settings(node: &Value, path: &str) -> Result<(), Refusal> {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                let here = join(path, key);
                let names_a_file = key.ends_with("_file")
                    || key.ends_with("_files")
                    || key.ends_with("_dir")
                    || key == "file"
                    || key == "directory"
                    || key == "storage"
                    || key == "socket";
                if names_a_file {
                    return Err(Refusal::new(
                        &here,
                        "a template may not name files or directories (the collector reads and writes none)",
                    ));
                }
                deny_file_settings(value, &here)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                deny_file_settings(item, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [
            ("PHOENIX_EXPERIMENT", "exp"),
            ("PHOENIX_VARIANT", "candidate"),
            ("PHOENIX_HOST", "web-1"),
            (
                "PHOENIX_REMOTE_WRITE_URL",
                "http://127.0.0.1:9090/api/v1/write",
            ),
            ("PHOENIX_CRITICAL_PROCESSES_REGEX", "^(nginx)$"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    const BASE: &str = r#"
receivers:
  host_metrics:
    collection_interval: ${env:PHOENIX_VAR_COLLECTION_INTERVAL:-10s}
    root_path: ${env:PHOENIX_HOSTFS}
    scrapers: {process: {}}
processors:
  transform/phoenix:
    metric_statements:
      - context: resource
        statements:
          - set(resource.attributes["phoenix.host"], "${env:PHOENIX_HOST}")
          - set(resource.attributes["k"], true) where resource.attributes["cpu"] > ${env:PHOENIX_VAR_CPU_THRESHOLD:-0.05}
          - set(resource.attributes["k"], true) where IsMatch(resource.attributes["process.executable.name"], "${env:PHOENIX_CRITICAL_PROCESSES_REGEX}")
exporters:
  prometheus_remote_write:
    endpoint: ${env:PHOENIX_REMOTE_WRITE_URL}
extensions:
  health_check:
    endpoint: 127.0.0.1:${env:PHOENIX_HEALTH_PORT}
service:
  extensions: [health_check]
  telemetry:
    metrics:
      readers:
        - pull: {exporter: {prometheus: {host: 127.0.0.1, port: "${env:PHOENIX_TELEMETRY_PORT}"}}}
  pipelines:
    metrics: {receivers: [host_metrics], processors: [transform/phoenix], exporters: [prometheus_remote_write]}
"#;

    fn refused(config: &str) -> Refusal {
        check(config, &env(), &Allowances::default()).expect_err("must be refused")
    }

    fn refused_with(config: &str, env: BTreeMap<String, String>) -> Refusal {
        check(config, &env, &Allowances::default()).expect_err("must be refused")
    }

    #[test]
    fn the_base_config_passes_and_is_canonical_json() {
        let checked = check(BASE, &env(), &Allowances::default()).unwrap();
        let again: Value = serde_json::from_str(&checked.canonical()).unwrap();
        assert_eq!(&again, checked.tree());
        // Canonical text passes too (the agent checks what it writes).
        check(&checked.canonical(), &env(), &Allowances::default()).unwrap();
    }

    #[test]
    fn shipped_templates_pass() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../pipelines");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let file = entry.unwrap().path();
            if file.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            seen += 1;
            let text = std::fs::read_to_string(&file).unwrap();
            let doc: crate::resource::PipelineTemplateDocument = crate::resource::parse_document(
                text.as_bytes(),
                crate::resource::DocumentFormat::Yaml,
            )
            .unwrap();
            check(&doc.spec.config, &env(), &Allowances::default())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
        assert_eq!(seen, 5, "every shipped template is checked");
    }

    #[test]
    fn file_lookup_is_refused() {
        let r = refused(&BASE.replace("\"${env:PHOENIX_HOST}\"", "\"${file:/etc/shadow}\""));
        assert_eq!(
            r.path,
            "processors.transform/phoenix.metric_statements[0].statements[0]"
        );
        assert!(r.reason.contains("config lookup"), "{r}");
    }

    #[test]
    fn foreign_env_lookup_is_refused() {
        let r = refused(&BASE.replace("${env:PHOENIX_HOST}", "${env:PHOENIX_AGENT_TOKEN}"));
        assert!(r.reason.contains("not a Phoenix variable"), "{r}");
        let r = refused(&BASE.replace("${env:PHOENIX_HOST}", "${HOME}"));
        assert!(r.reason.contains("config lookup"), "{r}");
    }

    #[test]
    fn nested_lookup_in_a_default_is_refused() {
        let r = refused(&BASE.replace(
            "${env:PHOENIX_VAR_CPU_THRESHOLD:-0.05}",
            "${env:PHOENIX_VAR_CPU_THRESHOLD:-${file:/etc/passwd}}",
        ));
        assert!(r.reason.contains("default"), "{r}");
    }

    #[test]
    fn dollar_escape_is_refused() {
        let r = refused(&BASE.replace("\"${env:PHOENIX_HOST}\"", "\"$${file:/x}\""));
        assert!(r.reason.contains("$$"), "{r}");
    }

    #[test]
    fn a_value_breaking_out_of_ottl_is_refused() {
        let mut e = env();
        e.insert("PHOENIX_VAR_CPU_THRESHOLD".into(), "0.05 or true".into());
        let r = refused_with(BASE, e);
        assert_eq!(
            r.path,
            "processors.transform/phoenix.metric_statements[0].statements[1]"
        );
        assert!(r.reason.contains("PHOENIX_VAR_CPU_THRESHOLD"), "{r}");
        let mut e = env();
        e.insert(
            "PHOENIX_CRITICAL_PROCESSES_REGEX".into(),
            "x\") or true or IsMatch(\"".into(),
        );
        assert!(refused_with(BASE, e).reason.contains("OTTL string"));
    }

    #[test]
    fn a_value_carrying_a_lookup_is_refused() {
        let mut e = env();
        e.insert("PHOENIX_HOST".into(), "${file:/etc/shadow}".into());
        assert!(refused_with(BASE, e).reason.contains("expand again"));
    }

    #[test]
    fn a_whole_field_value_cannot_become_structure() {
        let mut e = env();
        e.insert(
            "PHOENIX_VAR_COLLECTION_INTERVAL".into(),
            "{endpoint: x}".into(),
        );
        let r = refused_with(BASE, e);
        assert_eq!(r.path, "receivers.host_metrics.collection_interval");
    }

    #[test]
    fn a_text_value_outside_quotes_is_refused() {
        // `"a"${env:PHOENIX_HOST}"b"`: between two literals, not inside one.
        let r = refused(&BASE.replace("\"${env:PHOENIX_HOST}\"", "\"a\"${env:PHOENIX_HOST}\"b\""));
        assert!(r.reason.contains("middle of a text"), "{r}");
    }

    #[test]
    fn unknown_components_and_connectors_are_refused() {
        let r =
            refused(&BASE.replace("  health_check:\n", "  file_storage: {}\n  health_check:\n"));
        assert_eq!(r.path, "extensions.file_storage");
        let r = refused(&format!("{BASE}connectors:\n  forward: {{}}\n"));
        assert_eq!(r.path, "connectors");
        let r = refused(&BASE.replace("exporters:\n", "exporters:\n  file: {path: /tmp/x}\n"));
        assert_eq!(r.path, "exporters.file");
    }

    #[test]
    fn log_files_are_refused() {
        let r = refused(&BASE.replace(
            "  telemetry:\n",
            "  telemetry:\n    logs: {output_paths: [/etc/cron.d/x]}\n",
        ));
        assert_eq!(r.path, "service.telemetry.logs.output_paths");
        let r = refused(&BASE.replace(
            "  telemetry:\n",
            "  telemetry:\n    logs: {processors: [{batch: {exporter: {otlp: {endpoint: 'http://evil:4318'}}}}]}\n",
        ));
        assert_eq!(r.path, "service.telemetry.logs.processors");
    }

    #[test]
    fn debug_exporter_showing_data_is_refused() {
        let r = refused(&BASE.replace(
            "exporters:\n",
            "exporters:\n  debug: {verbosity: detailed}\n",
        ));
        assert_eq!(r.path, "exporters.debug.verbosity");
        check(
            &BASE.replace("exporters:\n", "exporters:\n  debug: {}\n"),
            &env(),
            &Allowances::default(),
        )
        .unwrap();
    }

    #[test]
    fn file_settings_are_refused() {
        let r = refused(&BASE.replace(
            "    endpoint: ${env:PHOENIX_REMOTE_WRITE_URL}\n",
            "    endpoint: ${env:PHOENIX_REMOTE_WRITE_URL}\n    wal: {directory: /etc}\n",
        ));
        assert_eq!(r.path, "exporters.prometheus_remote_write.wal.directory");
        let r = refused(&BASE.replace(
            "    endpoint: ${env:PHOENIX_REMOTE_WRITE_URL}\n",
            "    endpoint: ${env:PHOENIX_REMOTE_WRITE_URL}\n    tls: {ca_file: /etc/shadow}\n",
        ));
        assert_eq!(r.path, "exporters.prometheus_remote_write.tls.ca_file");
    }

    #[test]
    fn receivers_listen_on_loopback_only() {
        let config = BASE.replace(
            "receivers:\n",
            "receivers:\n  otlp: {protocols: {grpc: {endpoint: '0.0.0.0:4317'}}}\n",
        );
        assert_eq!(
            refused(&config).path,
            "receivers.otlp.protocols.grpc.endpoint"
        );
        let config = BASE.replace("127.0.0.1:${env:PHOENIX_HEALTH_PORT}", "0.0.0.0:13133");
        assert_eq!(refused(&config).path, "extensions.health_check.endpoint");
        let config = BASE.replace(
            "receivers:\n",
            "receivers:\n  otlp: {protocols: {grpc: {endpoint: /tmp/s, transport: unix}}}\n",
        );
        assert_eq!(
            refused(&config).path,
            "receivers.otlp.protocols.grpc.transport"
        );
        let ok = BASE.replace(
            "receivers:\n",
            "receivers:\n  otlp: {protocols: {grpc: {endpoint: '127.0.0.1:4317'}, http: {endpoint: 'localhost:4318'}}}\n",
        );
        check(&ok, &env(), &Allowances::default()).unwrap();
    }

    #[test]
    fn exporters_send_only_to_measurements_or_declared_destinations() {
        let config = BASE.replace(
            "exporters:\n",
            "exporters:\n  otlp_http/x: {endpoint: 'http://evil.example:4318'}\n",
        );
        assert_eq!(refused(&config).path, "exporters.otlp_http/x.endpoint");
        let allow = Allowances {
            destinations: vec![Destination {
                name: "backend".into(),
                endpoint: "http://evil.example:4318".into(),
            }],
        };
        check(&config, &env(), &allow).unwrap();
        let config = BASE.replace(
            "    endpoint: ${env:PHOENIX_REMOTE_WRITE_URL}\n",
            "    endpoint: ${env:PHOENIX_REMOTE_WRITE_URL}\n    proxy_url: http://evil:3128\n",
        );
        assert_eq!(
            refused(&config).path,
            "exporters.prometheus_remote_write.proxy_url"
        );
        let config = BASE.replace("exporters:\n", "exporters:\n  otlp: {}\n");
        assert_eq!(refused(&config).path, "exporters.otlp.endpoint");
    }

    #[test]
    fn credentials_are_only_whole_header_values_of_destination_exporters() {
        let allow = Allowances {
            destinations: vec![Destination {
                name: "vendor".into(),
                endpoint: "https://vendor.example".into(),
            }],
        };
        let header = BASE.replace(
            "exporters:\n",
            "exporters:\n  otlp_http/v: {endpoint: 'https://vendor.example', headers: {authorization: '${env:PHOENIX_CREDENTIAL_VENDOR_0}'}}\n",
        );
        check(&header, &env(), &allow).unwrap();
        // Into data (an attribute that would reach the measurement Prometheus).
        let r = check(
            &BASE.replace(
                "\"${env:PHOENIX_HOST}\"",
                "\"${env:PHOENIX_CREDENTIAL_VENDOR_0}\"",
            ),
            &env(),
            &allow,
        )
        .unwrap_err();
        assert!(r.reason.contains("credential"), "{r}");
        // As a header towards the measurement Prometheus.
        let r = check(
            &BASE.replace(
                "    endpoint: ${env:PHOENIX_REMOTE_WRITE_URL}\n",
                "    endpoint: ${env:PHOENIX_REMOTE_WRITE_URL}\n    headers: {x: '${env:PHOENIX_CREDENTIAL_VENDOR_0}'}\n",
            ),
            &env(),
            &allow,
        )
        .unwrap_err();
        assert_eq!(r.path, "exporters.prometheus_remote_write.endpoint");
        // A task may not set a credential itself: only the agent does.
        let mut e = env();
        e.insert("PHOENIX_CREDENTIAL_VENDOR_0".into(), "x".into());
        assert!(check_environment(&e).is_err());
    }

    #[test]
    fn self_telemetry_is_pulled_on_loopback_only() {
        let config = BASE.replace("host: 127.0.0.1", "host: 0.0.0.0");
        assert_eq!(
            refused(&config).path,
            "service.telemetry.metrics.readers[0].pull.exporter.prometheus.host"
        );
        let config = BASE.replace(
            "        - pull:",
            "        - periodic: {exporter: {otlp: {endpoint: 'http://evil:4318'}}}\n        - pull:",
        );
        assert_eq!(
            refused(&config).path,
            "service.telemetry.metrics.readers[0]"
        );
        let config = BASE.replace(
            "  telemetry:\n",
            "  telemetry:\n    traces: {processors: []}\n",
        );
        assert_eq!(refused(&config).path, "service.telemetry.traces");
    }

    #[test]
    fn host_metrics_reads_only_the_hosts_root() {
        let config = BASE.replace("root_path: ${env:PHOENIX_HOSTFS}", "root_path: /etc");
        assert_eq!(refused(&config).path, "receivers.host_metrics.root_path");
    }

    #[test]
    fn cloud_and_docker_detectors_are_refused() {
        let config = BASE.replace(
            "processors:\n",
            "processors:\n  resource_detection: {detectors: [system, ec2]}\n",
        );
        assert_eq!(
            refused(&config).path,
            "processors.resource_detection.detectors[1]"
        );
    }

    #[test]
    fn unknown_sections_and_oversized_configs_are_refused() {
        assert_eq!(refused(&format!("{BASE}extra: 1\n")).path, "extra");
        let big = format!("{BASE}#{}\n", "x".repeat(MAX_CONFIG_BYTES));
        assert!(refused(&big).reason.contains("bytes"));
    }

    #[test]
    fn a_task_cannot_set_other_environment_variables() {
        let mut e = env();
        check_environment(&e).unwrap();
        e.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
        assert_eq!(check_environment(&e).unwrap_err().path, "env.LD_PRELOAD");
        let mut e = env();
        e.insert("PHOENIX_HEALTH_PORT".into(), "22".into());
        assert!(
            check_environment(&e).is_err(),
            "ports are the agent's to choose"
        );
    }

    #[test]
    fn placement_rules() {
        assert!(is_number_or_duration("0.05"));
        assert!(is_number_or_duration("-3"));
        assert!(is_number_or_duration("1h30m"));
        assert!(!is_number_or_duration("0.05 or true"));
        assert!(!is_number_or_duration("1e3"));
        assert!(!is_number_or_duration(""));
        assert!(check_value_placement("^(a|b)$", Placement::Quoted).is_ok());
        assert!(check_value_placement("a\nb", Placement::Quoted).is_err());
        assert!(check_value_placement("", Placement::Whole).is_ok());
        assert!(check_value_placement("[a]", Placement::Whole).is_err());
    }
}
