//! The JSON log line: `tracing_subscriber`'s JSON format (one object per line: time,
//! level, target, the event's fields, the current span), plus the OpenTelemetry
//! `trace_id` and `span_id` of the span the event was emitted in, so a log search
//! and a trace search meet.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps a JSON event format, adding `trace_id` and `span_id` inside a traced span.
pub struct WithTraceIds<E> {
    inner: E,
}

impl<E> WithTraceIds<E> {
    pub fn new(inner: E) -> Self {
        Self { inner }
    }
}

impl<S, N, E> FormatEvent<S, N> for WithTraceIds<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let Some((trace_id, span_id)) = ctx.parent_span().and_then(|span| ids_of(&span.id()))
        else {
            return writer.write_str(&line);
        };
        // The inner format writes one JSON object and a newline.
        let Ok(mut object) = serde_json::from_str::<Map<String, Value>>(line.trim_end()) else {
            return writer.write_str(&line);
        };
        object.insert("trace_id".into(), Value::String(trace_id));
        object.insert("span_id".into(), Value::String(span_id));
        writeln!(writer, "{}", Value::Object(object))
    }
}

/// The OpenTelemetry trace and span id of the span `id`, when it has them.
fn ids_of(id: &tracing::span::Id) -> Option<(String, String)> {
    let context = tracing::dispatcher::get_default(|dispatch| {
        tracing_opentelemetry::get_otel_context(id, dispatch)
    })?;
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}
