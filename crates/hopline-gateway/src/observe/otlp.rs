//! OTLP/HTTP export of sampled requests' spans (`[tracing]`): one span per request
//! (SERVER) and one per upstream attempt (CLIENT, the span id its `traceparent` carried),
//! built when the request's record is written, queued without waiting, and POSTed in
//! protobuf batches by one task on the gateway's own runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use hopline_core::config::TracingConfig;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use tokio::sync::mpsc;

use crate::observe::access_log::{AccessLog, AccessRecord};
use crate::observe::trace::{AttemptSpan, Sampler};

/// Spans waiting for export at most; beyond, new ones are dropped (and counted).
const QUEUE: usize = 8192;
/// Spans per POST at most.
const BATCH: usize = 512;
/// A batch is sent at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// One POST's limit (connect, send, answer).
const POST_LIMIT: Duration = Duration::from_secs(5);

/// Counts of spans by what became of them.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Sent and accepted by the collector.
    pub exported: AtomicU64,
    /// Dropped: the queue was full.
    pub dropped: AtomicU64,
    /// Sent and refused, or not delivered.
    pub failed: AtomicU64,
    /// Requests recorded as unsampled: over `max_sampled_per_sec` in their worker.
    pub unsampled: AtomicU64,
}

/// The queue in front of the export task.
#[derive(Debug)]
pub struct Exporter {
    tx: mpsc::Sender<Span>,
    /// Counts, for `/metrics`.
    pub stats: Arc<ExportStats>,
    /// The share of new traces recorded.
    pub sample_ratio: f64,
    /// Sampled requests per second per worker thread, at most.
    max_sampled_per_sec: u32,
}

thread_local! {
    /// This worker's sampled requests: (the second of the process clock, how many).
    static SAMPLED: std::cell::Cell<(u64, u32)> = const { std::cell::Cell::new((0, 0)) };
}

/// The process clock's base (tokio's clock, so paused-time tests see it move).
static CLOCK_BASE: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();

/// The most of a collector's reply read: its head, and its body.
const REPLY_MAX: usize = 64 * 1024;

impl Exporter {
    /// Spawns the export task on the current runtime. An `https://` collector gets a TLS
    /// client verified against `tracing.ca` or the system roots (its files read now).
    pub fn start(
        config: &TracingConfig,
        log: Arc<AccessLog>,
    ) -> Result<Exporter, hopline_tls::TlsFileError> {
        let tls = match config.tls {
            false => None,
            true => Some(hopline_tls::client::client_config(
                &hopline_core::config::UpstreamTlsConfig {
                    sni: None,
                    ca: config.ca.clone(),
                    client_cert: None,
                    client_key: None,
                    insecure_skip_verify: false,
                    alpn: vec!["http/1.1".into()],
                },
            )?),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(ExportStats::default());
        let task = Task {
            rx,
            config: config.clone(),
            tls,
            stats: stats.clone(),
            log,
            warned: false,
        };
        tokio::spawn(task.run());
        Ok(Exporter {
            tx,
            stats,
            sample_ratio: config.sample_ratio,
            max_sampled_per_sec: config.max_sampled_per_sec,
        })
    }

    /// Queues the spans of a finished, sampled request: its own and its attempts'.
    pub fn record(&self, rec: &AccessRecord) {
        let Some(t) = &rec.trace else { return };
        let Some(log) = &t.attempts else { return };
        let start = rec.ts.unwrap_or_else(SystemTime::now);
        let mut spans = vec![request_span(rec, start)];
        for a in log.take() {
            spans.push(attempt_span(rec, &a));
        }
        for s in spans {
            if self.tx.try_send(s).is_err() {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Sampler for Exporter {
    fn sample_ratio(&self) -> f64 {
        self.sample_ratio
    }

    /// Whether a request that would be sampled may be, within this worker's
    /// `max_sampled_per_sec`; a refused one is counted (`hopline_tracing_unsampled_total`).
    fn admit_sampled(&self) -> bool {
        let now = tokio::time::Instant::now();
        let second = now
            .saturating_duration_since(*CLOCK_BASE.get_or_init(|| now))
            .as_secs();
        let admitted = SAMPLED.with(|c| {
            let (at, n) = c.get();
            let n = if at == second { n } else { 0 };
            let ok = n < self.max_sampled_per_sec;
            c.set((second, n + u32::from(ok)));
            ok
        });
        if !admitted {
            self.stats.unsampled.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

fn int(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

/// The request's span: route, method, path, status, flags, cause, upstream, zone,
/// phase, attempts, deadline; an error when hopline answered 5xx or the client left.
fn request_span(rec: &AccessRecord, start: SystemTime) -> Span {
    let Some(t) = &rec.trace else {
        return Span::default();
    };
    let route = rec.route.as_deref().unwrap_or("(none)");
    let mut attributes = vec![
        text("http.request.method", String::from_utf8_lossy(&rec.method)),
        text("url.path", String::from_utf8_lossy(&rec.path)),
        text("http.route", route),
        int("http.response.status_code", i64::from(rec.status)),
        text("hopline.request_id", rec.request_id.clone()),
        int("hopline.attempts", i64::from(rec.attempts)),
    ];
    if let Some(p) = rec.protocol {
        attributes.push(text("network.protocol.name", p));
    }
    if !rec.flags.is_empty() {
        attributes.push(text("hopline.flags", rec.flags.join(",")));
    }
    if let Some(c) = &rec.cause {
        attributes.push(text("hopline.cause", c.clone()));
    }
    if let Some(u) = &rec.upstream {
        attributes.push(text("hopline.upstream", u.to_string()));
    }
    if let Some(z) = rec.zone {
        attributes.push(text("hopline.zone", z));
    }
    if let Some(p) = rec.phase {
        attributes.push(text("hopline.phase", p));
    }
    if let Some(d) = rec.deadline {
        attributes.push(int("hopline.deadline_ms", d.as_millis() as i64));
    }
    if let Some(c) = rec.client {
        attributes.push(text("client.address", c.ip().to_string()));
    }
    if !rec.degraded.is_empty() {
        let calls: Vec<&str> = rec.degraded.iter().map(|c| &**c).collect();
        attributes.push(text("hopline.degraded", calls.join(",")));
    }
    let cancelled = rec.status == 499;
    if cancelled {
        attributes.push(kv("hopline.cancelled", any_value::Value::BoolValue(true)));
    }
    let status = match (rec.status, cancelled) {
        (_, true) => error_status("cancelled by the client"),
        (500.., _) => error_status(rec.cause.as_deref().unwrap_or("")),
        _ => Status::default(),
    };
    Span {
        trace_id: t.trace_id.0.to_vec(),
        span_id: t.span_id.0.to_vec(),
        parent_span_id: t.parent_id.map(|p| p.0.to_vec()).unwrap_or_default(),
        trace_state: t
            .state
            .as_ref()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default(),
        flags: u32::from(t.flags),
        name: format!("{} {route}", String::from_utf8_lossy(&rec.method)),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: nanos(start),
        end_time_unix_nano: nanos(start + rec.duration),
        attributes,
        status: Some(status),
        ..Default::default()
    }
}

fn error_status(message: &str) -> Status {
    Status {
        message: message.into(),
        code: status::StatusCode::Error as i32,
    }
}

/// One attempt's span, a child of the request's.
fn attempt_span(rec: &AccessRecord, a: &AttemptSpan) -> Span {
    let Some(t) = &rec.trace else {
        return Span::default();
    };
    let mut attributes = vec![text("hopline.upstream", a.upstream.to_string())];
    if let Some(e) = a.endpoint {
        attributes.push(text("server.address", e.ip().to_string()));
        attributes.push(int("server.port", i64::from(e.port())));
    }
    if let Some(c) = &a.call {
        attributes.push(text("hopline.call", c.to_string()));
    }
    if let Some(s) = a.status {
        attributes.push(int("http.response.status_code", i64::from(s)));
    }
    let status = match (&a.error, a.status) {
        (Some(e), _) => error_status(e),
        (None, Some(500..)) => error_status(""),
        _ => Status::default(),
    };
    if let Some(e) = &a.error {
        attributes.push(text("hopline.cause", e.clone()));
    }
    Span {
        trace_id: t.trace_id.0.to_vec(),
        span_id: a.span_id.0.to_vec(),
        parent_span_id: t.span_id.0.to_vec(),
        flags: u32::from(t.flags),
        name: match &a.call {
            Some(c) => format!("call {c} → {}", a.upstream),
            None => format!("upstream {}", a.upstream),
        },
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: nanos(a.start),
        end_time_unix_nano: nanos(a.start + a.duration),
        attributes,
        status: Some(status),
        ..Default::default()
    }
}

/// The export task: batches of at most [`BATCH`] spans, at least every [`FLUSH_EVERY`].
struct Task {
    rx: mpsc::Receiver<Span>,
    config: TracingConfig,
    /// The TLS client of an `https://` collector.
    tls: Option<Arc<rustls::ClientConfig>>,
    stats: Arc<ExportStats>,
    log: Arc<AccessLog>,
    warned: bool,
}

impl Task {
    async fn run(mut self) {
        let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
        loop {
            let flush = tokio::time::sleep(FLUSH_EVERY);
            tokio::pin!(flush);
            loop {
                tokio::select! {
                    s = self.rx.recv() => match s {
                        Some(s) => {
                            batch.push(s);
                            if batch.len() >= BATCH {
                                break;
                            }
                        }
                        // Every sender is gone: the gateway was dropped.
                        None => {
                            self.send(std::mem::take(&mut batch)).await;
                            return;
                        }
                    },
                    () = &mut flush => break,
                }
            }
            if !batch.is_empty() {
                self.send(std::mem::take(&mut batch)).await;
            }
        }
    }

    async fn send(&mut self, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        let n = spans.len() as u64;
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![text("service.name", self.config.service_name.clone())],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "hopline".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        match tokio::time::timeout(POST_LIMIT, self.post(&body)).await {
            Ok(Ok(200..=299)) => {
                self.stats.exported.fetch_add(n, Ordering::Relaxed);
            }
            outcome => {
                self.stats.failed.fetch_add(n, Ordering::Relaxed);
                if !self.warned {
                    // Once: a collector that is down would otherwise fill stderr.
                    self.warned = true;
                    let why = match outcome {
                        Ok(Ok(status)) => format!("answered {status}"),
                        Ok(Err(e)) => e,
                        Err(_) => format!("no answer within {POST_LIMIT:?}"),
                    };
                    let detail =
                        format!("{why} (spans dropped; counted in hopline_tracing_spans_total)");
                    self.log.announce(
                        "tracing",
                        &[("collector", &self.config.otlp_endpoint)],
                        "export_failed",
                        &detail,
                        format_args!(
                            "tracing: export to {} failed: {detail}",
                            self.config.otlp_endpoint
                        ),
                    );
                }
            }
        }
    }

    async fn post(&self, body: &[u8]) -> Result<u16, String> {
        let addr = (self.config.host.as_str(), self.config.port);
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut req = BytesMut::new();
        let host = match self.config.host.contains(':') {
            true => format!("[{}]:{}", self.config.host, self.config.port),
            false => format!("{}:{}", self.config.host, self.config.port),
        };
        let fields = [
            ("host", host.as_str()),
            ("content-type", "application/x-protobuf"),
            ("connection", "close"),
        ];
        hopline_h1::write::put_request(
            &mut req,
            b"POST",
            self.config.path.as_bytes(),
            fields,
            body,
        );
        let mut buf = BytesMut::new();
        // The collector's answer is read to at most 64 KiB of head and of body.
        let r = match &self.tls {
            None => {
                let mut s = tcp;
                hopline_h1::client::exchange(&mut s, &mut buf, &req, REPLY_MAX, REPLY_MAX).await
            }
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(self.config.host.clone())
                    .map_err(|e| format!("{}: {e}", self.config.host))?;
                let mut s = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                hopline_h1::client::exchange(&mut s, &mut buf, &req, REPLY_MAX, REPLY_MAX).await
            }
        };
        let r = r.map_err(|e| hopline_core::error::cause_chain(&e))?;
        Ok(r.head.status)
    }
}
