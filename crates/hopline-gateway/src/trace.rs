//! A request's place in a distributed trace (W3C Trace Context): the caller's trace
//! continued, or a new one; the ids go into the access log, and every upstream attempt
//! (proxied or an aggregate call) sends `traceparent` with a span id of its own.

use bytes::{BufMut, Bytes, BytesMut};
use hopline_core::trace::{
    new_span_id, new_trace_id, traceparent, valid_tracestate, SpanId, TraceId, TraceParent,
};
use hopline_h1::head::Headers;
use std::sync::Arc;

use crate::otlp::{AttemptLog, AttemptSpan, Exporter};

/// True for `ratio` of trace ids (by their low 64 bits, so every hop with the same ratio
/// decides alike).
fn by_ratio(id: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&id.0[8..]);
    (u64::from_be_bytes(low) as f64) < ratio * (u64::MAX as f64)
}

/// The trace a request belongs to.
#[derive(Debug, Clone)]
pub struct TraceCx {
    /// The trace: the caller's, or new.
    pub trace_id: TraceId,
    /// hopline's span for this request.
    pub span_id: SpanId,
    /// The caller's span, when the trace was continued.
    pub parent_id: Option<SpanId>,
    /// Trace flags passed on (the caller's; `00` for a trace hopline started).
    pub flags: u8,
    /// The caller's `tracestate`, passed on unchanged.
    pub state: Option<Bytes>,
    /// Where its attempts are recorded when it is sampled and spans are exported.
    pub attempts: Option<Arc<AttemptLog>>,
}

impl TraceCx {
    /// Continues the trace of the request's `traceparent` (exactly one, valid), or starts
    /// a new one; `tracestate` is kept only with a valid `traceparent` (several fields are
    /// joined with commas, as the recommendation says).
    ///
    /// With an `exporter` the request is sampled as its caller says (the `sampled` flag),
    /// or, for a new trace, with the exporter's `sample_ratio` (then sent upstream with the
    /// flag set); without one nothing is recorded and the caller's flags pass unchanged.
    pub fn of(headers: &Headers, exporter: Option<&Exporter>) -> TraceCx {
        let mut parents = headers.get_all("traceparent");
        let parent = match (parents.next(), parents.next()) {
            (Some(v), None) => TraceParent::parse(hopline_h1::head::trim(v)),
            _ => None,
        };
        let Some(p) = parent else {
            let trace_id = new_trace_id();
            let sampled = exporter.is_some_and(|e| by_ratio(&trace_id, e.sample_ratio));
            return TraceCx {
                trace_id,
                span_id: new_span_id(),
                parent_id: None,
                flags: u8::from(sampled),
                state: None,
                attempts: sampled.then(Arc::default),
            };
        };
        let sampled = exporter.is_some() && p.sampled();
        let mut state = Vec::new();
        for v in headers.get_all("tracestate") {
            let v = hopline_h1::head::trim(v);
            if v.is_empty() {
                continue;
            }
            if !state.is_empty() {
                state.push(b',');
            }
            state.extend_from_slice(v);
        }
        TraceCx {
            trace_id: p.trace_id,
            span_id: new_span_id(),
            parent_id: Some(p.parent_id),
            flags: p.flags,
            state: valid_tracestate(&state).then(|| Bytes::from(state)),
            attempts: sampled.then(Arc::default),
        }
    }

    /// Appends `traceparent` (with `span`, the attempt's) and `tracestate` header lines
    /// (HTTP/1.1).
    pub fn put_attempt_headers(&self, out: &mut BytesMut, span: SpanId) {
        out.put_slice(b"traceparent: ");
        out.put_slice(&traceparent(self.trace_id, span, self.flags));
        out.put_slice(b"\r\n");
        if let Some(state) = &self.state {
            out.put_slice(b"tracestate: ");
            out.put_slice(state);
            out.put_slice(b"\r\n");
        }
    }

    /// Whether attempts are recorded (the trace is sampled and exported).
    pub fn records(&self) -> bool {
        self.attempts.is_some()
    }

    /// Records a finished attempt, when this trace is sampled.
    pub fn record(&self, a: impl FnOnce() -> AttemptSpan) {
        if let Some(log) = &self.attempts {
            log.push(a());
        }
    }

    /// The `traceparent` value for one upstream attempt (HTTP/2), with its new span id
    /// (HTTP/2 attempts are not recorded as spans of their own).
    pub fn attempt_traceparent(&self) -> (String, SpanId) {
        let span = new_span_id();
        let v = traceparent(self.trace_id, span, self.flags);
        (String::from_utf8_lossy(&v).into_owned(), span)
    }
}
