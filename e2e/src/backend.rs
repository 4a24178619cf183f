//! A stand-in for the user's own telemetry backend: a second collector from the
//! Phoenix build (`collector/build.sh`) with an OTLP gRPC receiver on a free
//! loopback port and the `debug` exporter at `verbosity: detailed`, writing into a
//! log in its own temporary directory. An `attributes` processor copies the
//! request header [`TOKEN_HEADER`] onto every data point as
//! [`RECEIVED_TOKEN_ATTRIBUTE`], so a test sees which credential arrived.
//!
//! [`OtlpBackend::series`] reads what arrived back from that log: one [`Series`]
//! per data point identity (resource attributes, metric, data point attributes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::measurement::{MeasurementError, OwnedServer, free_port};

/// The header a destination's credential is sent as in the tests.
pub const TOKEN_HEADER: &str = "x-backend-token";
/// The data point attribute the backend records that header in.
pub const RECEIVED_TOKEN_ATTRIBUTE: &str = "backend.received_token";

/// A running backend collector.
pub struct OtlpBackend {
    /// `127.0.0.1:<port>`: the OTLP gRPC endpoint.
    pub endpoint: String,
    log: PathBuf,
    _server: OwnedServer,
    _dir: tempfile::TempDir,
}

/// One series as the backend received it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    pub resource: BTreeMap<String, String>,
    pub metric: String,
    pub attributes: BTreeMap<String, String>,
}

/// What arrived: every series, and every token value seen.
#[derive(Debug, Default)]
pub struct Received {
    pub series: BTreeSet<Series>,
    /// Each value of the token header, with how many data points carried it
    /// (`""` for data points without one).
    pub tokens: BTreeMap<String, usize>,
}

impl Received {
    /// The series whose resource attribute `key` is `value`.
    pub fn with(&self, key: &str, value: &str) -> Vec<&Series> {
        self.series
            .iter()
            .filter(|s| s.resource.get(key).map(String::as_str) == Some(value))
            .collect()
    }

    /// Every value of the resource attribute `key`.
    pub fn values(&self, key: &str) -> BTreeSet<String> {
        self.series
            .iter()
            .filter_map(|s| s.resource.get(key).cloned())
            .collect()
    }
}

impl OtlpBackend {
    pub fn start(collector: &Path) -> Result<Self, MeasurementError> {
        let dir = tempfile::Builder::new()
            .prefix("phoenix-backend-")
            .tempdir()
            .map_err(|e| MeasurementError::new(format!("backend dir: {e}")))?;
        let endpoint = format!("127.0.0.1:{}", free_port());
        let config = format!(
            r#"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {endpoint}
        include_metadata: true
processors:
  attributes/token:
    actions:
      - key: {RECEIVED_TOKEN_ATTRIBUTE}
        from_context: metadata.{TOKEN_HEADER}
        action: insert
exporters:
  debug:
    verbosity: detailed
service:
  telemetry:
    metrics: {{level: none}}
  pipelines:
    metrics: {{receivers: [otlp], processors: [attributes/token], exporters: [debug]}}
"#
        );
        let config_path = dir.path().join("backend.yaml");
        std::fs::write(&config_path, config)
            .map_err(|e| MeasurementError::new(format!("backend config: {e}")))?;
        let log = dir.path().join("received.log");
        let server = OwnedServer::spawn(
            collector,
            &[format!("--config={}", config_path.display())],
            &log,
        )?;
        Ok(Self {
            endpoint,
            log,
            _server: server,
            _dir: dir,
        })
    }

    /// How far the log is now: [`OtlpBackend::received_since`] reads from here on.
    pub fn mark(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// Everything received so far.
    pub fn received(&self) -> Received {
        self.received_since(0)
    }

    /// Everything received after `mark`.
    pub fn received_since(&self, mark: u64) -> Received {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = (mark as usize).min(bytes.len());
        parse(&String::from_utf8_lossy(&bytes[start..]))
    }

    /// The backend's own log (what it printed), for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Section {
    None,
    Resource,
    Descriptor,
    Point,
}

/// Reads the debug exporter's detailed output.
fn parse(text: &str) -> Received {
    let mut received = Received::default();
    let mut section = Section::None;
    let mut resource = BTreeMap::new();
    let mut metric = String::new();
    let mut point = BTreeMap::new();
    for line in text.lines() {
        let line_body = line.rsplit('\t').next().unwrap_or(line);
        if line_body.starts_with("ResourceMetrics #") {
            resource.clear();
            section = Section::None;
        } else if line == "Resource attributes:" {
            section = Section::Resource;
        } else if line.starts_with("ScopeMetrics #") {
            section = Section::None;
        } else if line == "Descriptor:" {
            section = Section::Descriptor;
        } else if line.ends_with("DataPoints #") || line.contains("DataPoints #") {
            point.clear();
            section = Section::Point;
        } else if line.starts_with("StartTimestamp:") && section == Section::Point {
            let token = point.remove(RECEIVED_TOKEN_ATTRIBUTE).unwrap_or_default();
            *received.tokens.entry(token).or_default() += 1;
            received.series.insert(Series {
                resource: resource.clone(),
                metric: metric.clone(),
                attributes: point.clone(),
            });
            section = Section::None;
        } else if let Some(pair) = line.strip_prefix("     -> ") {
            let Some((key, value)) = pair.split_once(": ") else {
                continue;
            };
            match section {
                Section::Resource => {
                    resource.insert(key.to_string(), unwrap_value(value));
                }
                Section::Descriptor if key == "Name" => metric = value.to_string(),
                Section::Point => {
                    point.insert(key.to_string(), unwrap_value(value));
                }
                _ => {}
            }
        }
    }
    received
}

/// `Str(nginx)` → `nginx`, `Int(42)` → `42`.
fn unwrap_value(value: &str) -> String {
    match value.split_once('(') {
        Some((_, rest)) if rest.ends_with(')') => rest[..rest.len() - 1].to_string(),
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detailed_debug_output_becomes_series() {
        let text = "2026-12-01T21:48:14.115Z\tinfo\tResourceMetrics #0
Resource SchemaURL: https://opentelemetry.io/schemas/1.9.0
Resource attributes:
     -> process.pid: Int(42)
     -> phoenix.host: Str(web-1)
ScopeMetrics #0
InstrumentationScope x 1
Metric #0
Descriptor:
     -> Name: process.cpu.time
     -> Unit: s
NumberDataPoints #0
Data point attributes:
     -> state: Str(user)
     -> backend.received_token: Str(Bearer abc)
StartTimestamp: 2026-12-01 17:55:17 +0000 UTC
Value: 1
NumberDataPoints #1
Data point attributes:
     -> state: Str(system)
StartTimestamp: 2026-12-01 17:55:17 +0000 UTC
Value: 2
";
        let r = parse(text);
        assert_eq!(r.series.len(), 2);
        assert_eq!(r.tokens["Bearer abc"], 1);
        assert_eq!(r.tokens[""], 1);
        let s = r.with("phoenix.host", "web-1");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].metric, "process.cpu.time");
        assert_eq!(s[0].resource["process.pid"], "42");
        assert!(s.iter().any(|s| s.attributes["state"] == "user"));
    }
}
