//! The OTLP span exporter: HTTP/protobuf (`POST {endpoint}/v1/traces`), sent with the
//! workspace's reqwest client on the process's Tokio runtime.
//!
//! The SDK's batch processor exports from a thread of its own and waits there for
//! each send; [`RuntimeClient`] runs the request on the Tokio runtime that was
//! current at [`crate::init`], so the exporter needs neither a blocking HTTP client
//! nor a runtime of its own.

use std::fmt;
use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};

use crate::{OTLP_TRACES_ENDPOINT_ENV, TelemetryError};

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go: a base URL (`/v1/traces` is added), or the standard traces
/// variable's URL, used as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Base(String),
    Traces(String),
}

impl Endpoint {
    /// The configured endpoint: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` when set, else
    /// `--otlp-endpoint` (`OTEL_EXPORTER_OTLP_ENDPOINT`); none when neither is.
    pub fn configured(base: Option<&str>) -> Option<Endpoint> {
        let set = |value: &str| !value.trim().is_empty();
        if let Ok(traces) = std::env::var(OTLP_TRACES_ENDPOINT_ENV)
            && set(&traces)
        {
            return Some(Endpoint::Traces(traces.trim().to_string()));
        }
        base.filter(|b| set(b))
            .map(|b| Endpoint::Base(b.trim().to_string()))
    }

    /// The URL spans are posted to.
    pub fn traces_url(&self) -> String {
        match self {
            Endpoint::Base(base) => format!("{}/v1/traces", base.trim_end_matches('/')),
            Endpoint::Traces(url) => url.clone(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traces_url())
    }
}

/// The OTLP/HTTP protobuf exporter to `endpoint`, sending on the current runtime.
pub fn span_exporter(endpoint: &Endpoint) -> Result<SpanExporter, TelemetryError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
    // The workspace's one crypto provider (an https endpoint); every binary installs
    // the same one, whichever comes first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = RuntimeClient {
        http: reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(TelemetryError::HttpClient)?,
        runtime,
    };
    Ok(SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(client)
        .with_endpoint(endpoint.traces_url())
        .with_timeout(EXPORT_TIMEOUT)
        .build()?)
}

/// A reqwest client whose requests run on a Tokio runtime, whoever awaits them.
struct RuntimeClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RuntimeClient")
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = http.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut answer = Response::builder().status(status).body(body)?;
            *answer.headers_mut() = headers;
            Ok::<_, HttpError>(answer)
        });
        sent.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_endpoint_gets_the_traces_path() {
        let base = Endpoint::Base("http://collector:4318/".into());
        assert_eq!(base.traces_url(), "http://collector:4318/v1/traces");
        let traces = Endpoint::Traces("http://collector:4318/custom".into());
        assert_eq!(traces.traces_url(), "http://collector:4318/custom");
    }
}
