//! W3C trace context (`traceparent`, <https://www.w3.org/TR/trace-context/>) in and
//! out of `tracing` spans.
//!
//! A trace crosses Phoenix's processes twice: through the database (the api stores
//! the `traceparent` of the request that wrote an experiment or a deployment, the
//! reconciler's pass continues it and stores one on each task it makes, the agent
//! continues the task's) and over HTTP (the agent sends a `traceparent` header on
//! its requests; the api continues it). Without an OpenTelemetry layer (see
//! [`crate::init`]) spans have no context: [`traceparent`] is `None` and
//! [`set_parent`] does nothing.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The HTTP header (and its only form here) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of `span`, when it belongs to a trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The `traceparent` of the current span, when it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    traceparent(&tracing::Span::current())
}

/// The remote span context a `traceparent` names; `None` when it is not a valid one.
pub fn context_of(traceparent: &str) -> Option<Context> {
    let carrier: HashMap<String, String> =
        HashMap::from([(TRACEPARENT.to_string(), traceparent.trim().to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// Makes `span` a child of the span `traceparent` names. Call it before the span is
/// first entered; an invalid `traceparent` (it arrives from the network, or from a
/// row) is ignored and the span stays where it was.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if let Some(context) = context_of(traceparent) {
        // Fails only when the span is disabled or already started: then it keeps
        // its own parent, which is the right fallback for a trace.
        let _ = span.set_parent(context);
    }
}

/// Adds a link from `span` to the span `traceparent` names (a cause that is not the
/// parent, e.g. the reconcile pass of a task created in a request's trace).
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    if let Some(context) = context_of(traceparent) {
        span.add_link(context.span().span_context().clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_read_and_garbage_is_not() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = context_of(valid).expect("valid");
        let span = context.span();
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(context_of("").is_none());
        assert!(context_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(context_of("not a traceparent").is_none());
    }

    #[test]
    fn without_a_layer_spans_have_no_traceparent() {
        let span = tracing::info_span!("untraced");
        assert_eq!(traceparent(&span), None);
        set_parent(
            &span,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert_eq!(traceparent(&span), None);
    }
}
