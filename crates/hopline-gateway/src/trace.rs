//! A request's place in a distributed trace (W3C Trace Context): the caller's trace
//! continued, or a new one; the ids go into the access log, and every upstream attempt
//! (proxied or an aggregate call) sends `traceparent` with a span id of its own.

use bytes::{BufMut, Bytes, BytesMut};
use hopline_core::trace::{
    new_span_id, new_trace_id, traceparent, valid_tracestate, SpanId, TraceId, TraceParent,
};
use hopline_h1::head::Headers;

/// The trace a request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl TraceCx {
    /// Continues the trace of the request's `traceparent` (exactly one, valid), or starts
    /// a new one; `tracestate` is kept only with a valid `traceparent` (several fields are
    /// joined with commas, as the recommendation says).
    pub fn of(headers: &Headers) -> TraceCx {
        let mut parents = headers.get_all("traceparent");
        let parent = match (parents.next(), parents.next()) {
            (Some(v), None) => TraceParent::parse(hopline_h1::head::trim(v)),
            _ => None,
        };
        let Some(p) = parent else {
            return TraceCx {
                trace_id: new_trace_id(),
                span_id: new_span_id(),
                parent_id: None,
                flags: 0,
                state: None,
            };
        };
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
        }
    }

    /// Appends `traceparent` (a new span id, for one upstream attempt) and `tracestate`
    /// header lines (HTTP/1.1); returns the attempt's span id.
    pub fn put_attempt_headers(&self, out: &mut BytesMut) -> SpanId {
        let span = new_span_id();
        out.put_slice(b"traceparent: ");
        out.put_slice(&traceparent(self.trace_id, span, self.flags));
        out.put_slice(b"\r\n");
        if let Some(state) = &self.state {
            out.put_slice(b"tracestate: ");
            out.put_slice(state);
            out.put_slice(b"\r\n");
        }
        span
    }

    /// The `traceparent` value for one upstream attempt (HTTP/2), with its new span id.
    pub fn attempt_traceparent(&self) -> (String, SpanId) {
        let span = new_span_id();
        let v = traceparent(self.trace_id, span, self.flags);
        (String::from_utf8_lossy(&v).into_owned(), span)
    }
}
