//! Phoenix's own logs and traces, set up the same way in every binary (`phoenix-api`,
//! `phoenix-reconciler`, `phoenix-agent`, `phoenix sync`).
//!
//! - this file: the flags ([`TelemetryArgs`]: `--log-format`, `--otlp-endpoint`) and
//!   [`init`], which installs the process's one `tracing` subscriber: an
//!   [`EnvFilter`] (`RUST_LOG`, or the binary's default), log lines to stderr (text,
//!   or JSON with `trace_id` and `span_id`), and an OpenTelemetry layer that turns
//!   spans into OpenTelemetry spans when they go anywhere: exported over OTLP when
//!   an endpoint is configured, or only numbered, for the JSON logs' trace ids.
//! - [`context`]: the W3C `traceparent` of a span, and spans continued from one: how
//!   the trace of a request travels through the database with the desired state and
//!   the tasks made from it, and over HTTP between the agent and the api.
//! - [`export`]: the OTLP/HTTP span exporter, on the workspace's reqwest client.
//! - [`json`]: the JSON log line.
//!
//! Without `--otlp-endpoint` and with text logs, no OpenTelemetry layer is
//! installed: a span costs what a `tracing` span costs, and no trace context is
//! made or stored.

pub mod context;
pub mod export;
pub mod json;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use context::{context_of, current_traceparent, set_parent, traceparent};

/// The environment variable of the OTLP endpoint (the OpenTelemetry standard).
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The standard variable of the traces endpoint alone (used as it is, no path added).
pub const OTLP_TRACES_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The standard variable of the service name; without it each binary uses its own.
pub const SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (colours on a terminal only).
    #[default]
    Text,
    /// One JSON object per line, with `trace_id` and `span_id` inside a span.
    Json,
}

/// The logging and tracing flags every Phoenix binary takes.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TelemetryArgs {
    /// Log lines as `text` or `json` (one object per line, with `trace_id` and
    /// `span_id` when emitted inside a span). `RUST_LOG` chooses what is logged
    #[arg(
        long,
        env = "PHOENIX_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,

    /// Export this process's traces over OTLP/HTTP (protobuf) to this base URL, e.g.
    /// `http://otel-collector:4318` (spans go to `/v1/traces`). The service name is
    /// `OTEL_SERVICE_NAME`, or the binary's name. Without it (and without
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) nothing is exported
    #[arg(long, env = OTLP_ENDPOINT_ENV, value_name = "URL", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot build the OTLP exporter's HTTP client: {0}")]
    HttpClient(reqwest::Error),
    #[error(
        "exporting traces needs a Tokio runtime to send them from; init was called outside one"
    )]
    NoRuntime,
    #[error("a global tracing subscriber was already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// The installed telemetry; [`Telemetry::shutdown`] sends the spans still queued.
#[must_use = "keep it until the process ends, then call shutdown to send the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans become OpenTelemetry spans (exported, or numbered for JSON logs).
    pub fn traced(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still queued and stops the exporter (waits up to a few
    /// seconds for an unreachable endpoint).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The provider blocks while its exporter sends through the runtime: off the
        // runtime's threads, which keep serving the send.
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(err)) = done {
            eprintln!("telemetry: the last spans may be lost: {err}");
        }
    }
}

/// Installs the process's `tracing` subscriber for the binary `service`: the
/// `RUST_LOG` filter (else `default_filter`), log lines in `args.log_format` on
/// stderr, and OpenTelemetry spans when exported or logged as JSON. Call it once,
/// inside the Tokio runtime when an endpoint is configured.
pub fn init(
    service: &'static str,
    args: &TelemetryArgs,
    default_filter: &str,
) -> Result<Telemetry, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let endpoint = export::Endpoint::configured(args.otlp_endpoint.as_deref());
    let provider = if endpoint.is_some() || args.log_format == LogFormat::Json {
        let mut builder = SdkTracerProvider::builder().with_resource(resource(service));
        if let Some(endpoint) = &endpoint {
            builder = builder.with_batch_exporter(export::span_exporter(endpoint)?);
        }
        Some(builder.build())
    } else {
        None
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_tracked_inactivity(false)
    });
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match args.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .map_event_format(json::WithTraceIds::new)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    if let Some(endpoint) = &endpoint {
        tracing::info!(endpoint = %endpoint, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

/// `service.name` (from `OTEL_SERVICE_NAME`, else the binary's) and `service.version`,
/// with `OTEL_RESOURCE_ATTRIBUTES`.
fn resource(service: &'static str) -> Resource {
    let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    match std::env::var(SERVICE_NAME_ENV) {
        Ok(name) if !name.trim().is_empty() => builder.build(),
        _ => builder.with_service_name(service).build(),
    }
}
