//! A request's place in a distributed trace (W3C Trace Context): the caller's trace
//! continued, or a new one; the ids go into the access log, and every upstream attempt
//! (proxied or an aggregate call) sends `traceparent` with a span id of its own.

use bytes::{BufMut, Bytes, BytesMut};
use hopline_core::trace::{
    new_span_id, new_trace_id, traceparent, valid_tracestate, SpanId, TraceId, TraceParent,
};
use hopline_h1::head::Headers;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What decides whether a new request is recorded: a ratio of traces, and a cap per
/// worker (the span exporter, `[tracing]`).
pub trait Sampler {
    /// The share of new (or untrusted callers') traces sampled.
    fn sample_ratio(&self) -> f64;
    /// One more sampled request this second on this worker, if the cap allows it.
    fn admit_sampled(&self) -> bool;
}

/// The `sampled` bit of the trace flags.
const SAMPLED_FLAG: u8 = 0x01;

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
    /// With an `exporter` the request is sampled as a `trusted` caller says (the `sampled`
    /// flag); a new trace, or one from a caller outside `server.trusted_proxies` (whose
    /// flag is ignored, so an internet client cannot force recording), by the exporter's
    /// `sample_ratio`, the decision sent upstream in the flag. Every sampled request also
    /// passes the worker's `max_sampled_per_sec`. Without an exporter nothing is recorded,
    /// a trusted caller's flags pass unchanged and an untrusted caller's sampled flag is
    /// cleared.
    pub fn of<S: Sampler>(headers: &Headers, exporter: Option<&S>, trusted: bool) -> TraceCx {
        let mut parents = headers.get_all("traceparent");
        let parent = match (parents.next(), parents.next()) {
            (Some(v), None) => TraceParent::parse(hopline_h1::head::trim(v)),
            _ => None,
        };
        let capped = |sampled: bool| sampled && exporter.is_some_and(|e| e.admit_sampled());
        let Some(p) = parent else {
            let trace_id = new_trace_id();
            let sampled = capped(exporter.is_some_and(|e| by_ratio(&trace_id, e.sample_ratio())));
            return TraceCx {
                trace_id,
                span_id: new_span_id(),
                parent_id: None,
                flags: u8::from(sampled),
                state: None,
                attempts: sampled.then(Arc::default),
            };
        };
        let (sampled, flags) = if trusted {
            (capped(exporter.is_some() && p.sampled()), p.flags)
        } else {
            let ours = capped(exporter.is_some_and(|e| by_ratio(&p.trace_id, e.sample_ratio())));
            (ours, (p.flags & !SAMPLED_FLAG) | u8::from(ours))
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
            flags,
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

    /// The `traceparent` value an HTTP/2 attempt sends: this trace, the attempt's `span`.
    pub fn attempt_traceparent(&self, span: SpanId) -> String {
        let v = traceparent(self.trace_id, span, self.flags);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// One upstream attempt of a sampled request.
#[derive(Debug, Clone)]
pub struct AttemptSpan {
    /// The span id its `traceparent` carried.
    pub span_id: SpanId,
    /// When it started (before the connect, or the pooled connection's checkout).
    pub start: SystemTime,
    /// How long it took, to the response head or the failure.
    pub duration: Duration,
    /// The upstream.
    pub upstream: Arc<str>,
    /// The endpoint.
    pub endpoint: Option<SocketAddr>,
    /// The aggregate call it belongs to, if any.
    pub call: Option<Arc<str>>,
    /// The response status, when a head arrived.
    pub status: Option<u16>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// A sampled request's attempts, filled as they end.
#[derive(Debug, Default)]
pub struct AttemptLog(Mutex<Vec<AttemptSpan>>);

impl AttemptLog {
    /// Records one attempt.
    pub fn push(&self, a: AttemptSpan) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A request's retries are bounded; this bounds a pathological one too.
        if v.len() < 64 {
            v.push(a);
        }
    }

    /// The attempts recorded so far, taken out.
    pub(crate) fn take(&self) -> Vec<AttemptSpan> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::otlp::Exporter;
    use hopline_core::config::TracingConfig;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    fn exporter(ratio: f64, max: u32) -> Exporter {
        let off =
            crate::observe::access_log::AccessLog::open(&hopline_core::config::AccessLogSink::Off);
        Exporter::start(
            &TracingConfig {
                otlp_endpoint: "http://127.0.0.1:9/v1/traces".into(),
                tls: false,
                ca: None,
                host: "127.0.0.1".into(),
                port: 9,
                path: "/v1/traces".into(),
                sample_ratio: ratio,
                max_sampled_per_sec: max,
                service_name: "test".into(),
            },
            Arc::new(off.expect("an Off log opens")),
        )
        .expect("a plain-HTTP exporter starts")
    }

    fn with_parent(flags: &str) -> Headers {
        let mut h = Headers::new();
        let v = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
        h.push(b"traceparent".to_vec(), v.into_bytes());
        h
    }

    #[tokio::test(start_paused = true)]
    async fn an_untrusted_callers_sampled_flag_is_ignored_and_its_trace_id_kept() {
        let never = exporter(0.0, 100);
        let caller = with_parent("01");
        let t = TraceCx::of(&caller, Some(&never), false);
        assert!(!t.records());
        assert_eq!(t.flags, 0, "the decision, not the caller's, goes upstream");
        assert_eq!(t.trace_id.0[0], 0x4b, "the trace id is kept");
        // A trusted caller's flag is followed, whatever the ratio.
        let t = TraceCx::of(&caller, Some(&never), true);
        assert!(t.records());
        assert_eq!(t.flags, 1);
        // By the ratio, an untrusted caller's unsampled trace may be sampled.
        let always = exporter(1.0, 100);
        let t = TraceCx::of(&with_parent("00"), Some(&always), false);
        assert!(t.records());
        assert_eq!(t.flags, 1);
        // Without an exporter nothing is recorded and the untrusted flag is cleared.
        assert_eq!(TraceCx::of(&caller, None::<&Exporter>, false).flags, 0);
        assert_eq!(TraceCx::of(&caller, None::<&Exporter>, true).flags, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn sampled_requests_pass_the_workers_cap_per_second() {
        let e = exporter(1.0, 3);
        let trusted = with_parent("01");
        let sampled = |n| {
            (0..n)
                .filter(|i| TraceCx::of(&trusted, Some(&e), i % 2 == 0).records())
                .count()
        };
        // Trusted callers' and untrusted ones alike count against the cap; the paused
        // clock stands still, so these are all in one second.
        let start = tokio::time::Instant::now();
        assert_eq!(sampled(5), 3);
        assert_eq!(e.stats.unsampled.load(Ordering::Relaxed), 2);
        assert!(!TraceCx::of(&Headers::new(), Some(&e), true).records());
        // The next second has room again.
        tokio::time::sleep_until(start + Duration::from_secs(1)).await;
        assert_eq!(sampled(4), 3);
        assert_eq!(e.stats.unsampled.load(Ordering::Relaxed), 4);
    }
}
