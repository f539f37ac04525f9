#![allow(missing_docs)] // criterion_group! generates an undocumented public fn.

//! Criterion benchmarks of the hand-rolled primitives every proxied request goes through:
//! parsing its head, stripping hop-by-hop fields, reading a caller's deadline header,
//! rendering its access log line and counting it in the metrics.
//!
//! Run: `cargo bench -p hopline-gateway --bench hot_paths`

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion};
use hopline_core::deadline::{parse_envoy_timeout_ms, parse_grpc_timeout};
use hopline_gateway::{AccessRecord, Metrics};
use hopline_h1::head::{parse_request, parse_response, strip_hop_by_hop, HeadLimits};

const REQUEST: &[u8] = b"GET /api/benefits?uid=42 HTTP/1.1\r\nHost: gw.example\r\n\
User-Agent: bench/1.0\r\nAccept: application/json\r\nx-request-id: 7f3a9c\r\n\
x-envoy-expected-rq-timeout-ms: 4500\r\n\r\n";

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sat, 28 Nov 2026 08:00:00 GMT\r\n\
Content-Type: application/json\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\n";

fn record() -> AccessRecord {
    let peer: SocketAddr = "10.1.2.3:51234".parse().expect("addr");
    let endpoint: SocketAddr = "10.0.0.7:8080".parse().expect("addr");
    AccessRecord {
        ts: Some(SystemTime::now()),
        request_id: "e2c63ce0f26e7b6a00000001".into(),
        client: Some(peer),
        method: Bytes::from_static(b"GET"),
        path: Bytes::from_static(b"/api/benefits?uid=42"),
        route: Some(Arc::from("benefits")),
        status: 200,
        upstream_status: Some(200),
        upstream: Some(Arc::from("coupon")),
        endpoint: Some(endpoint),
        zone: Some("egress"),
        attempts: 1,
        duration: Duration::from_micros(1234),
        deadline: Some(Duration::from_millis(1000)),
        bytes_sent: 11,
        ..AccessRecord::default()
    }
}

fn heads(c: &mut Criterion) {
    c.bench_function("parse_request (6 fields)", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(REQUEST);
            black_box(parse_request(&mut buf, HeadLimits::new(64 * 1024)).expect("valid"))
        })
    });
    c.bench_function("parse_response + strip_hop_by_hop", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(RESPONSE);
            let mut head = parse_response(&mut buf, 64 * 1024)
                .expect("valid")
                .expect("complete");
            strip_hop_by_hop(&mut head.headers);
            black_box(head)
        })
    });
}

fn deadline_headers(c: &mut Criterion) {
    c.bench_function("parse x-envoy-expected-rq-timeout-ms", |b| {
        b.iter(|| parse_envoy_timeout_ms(black_box(b"4500")))
    });
    c.bench_function("parse grpc-timeout", |b| {
        b.iter(|| parse_grpc_timeout(black_box(b"250m")))
    });
}

fn log_and_metrics(c: &mut Criterion) {
    let rec = record();
    let mut line = Vec::with_capacity(1024);
    c.bench_function("access log line (write_json)", |b| {
        b.iter(|| {
            line.clear();
            black_box(&rec).write_json(&mut line);
            black_box(line.len())
        })
    });
    let metrics = Metrics::new();
    c.bench_function("metrics record (route + upstream series)", |b| {
        b.iter(|| metrics.record(black_box(&rec)))
    });
}

/// What choosing an endpoint costs per attempt: the pick and the in-flight guard that
/// least-request balancing counts (taken and dropped), over 8 endpoints.
fn balancing(c: &mut Criterion) {
    use hopline_core::config::{LoadBalancing, UpstreamConfig};
    for lb in [
        LoadBalancing::RoundRobin,
        LoadBalancing::Random,
        LoadBalancing::LeastRequest,
    ] {
        let endpoints = (0..8).map(|i| format!("127.0.0.1:{}", 9000 + i)).collect();
        let mut config = UpstreamConfig::with_defaults("u", endpoints);
        config.lb = lb;
        let cx = hopline_gateway::UpstreamContext {
            ratio: 0.2,
            min_per_sec: 10,
            dns: Default::default(),
            per_endpoint_metrics: false,
            metrics: std::sync::Arc::new(hopline_gateway::Metrics::new()),
            log: std::sync::Arc::new(
                hopline_gateway::AccessLog::open(&hopline_core::config::AccessLogSink::Off)
                    .expect("log off"),
            ),
        };
        let Ok(up) = hopline_gateway::Upstream::new(config, &cx) else {
            return;
        };
        c.bench_function(&format!("endpoint pick + guard ({})", lb.as_str()), |b| {
            b.iter(|| black_box(up.pick(black_box(None))))
        });
    }
}

/// What tracing costs a request: the trace context (read `traceparent`, new ids, one
/// attempt's `traceparent` rendered) with `[tracing]` off, on at 1 % and on at 100 %
/// (then also the attempt span recorded and the request's spans built and queued; the
/// protobuf encoding and the POST happen later, in the export task).
fn tracing(c: &mut Criterion) {
    use hopline_gateway::otlp::Exporter;
    use hopline_gateway::trace::{AttemptSpan, TraceCx};
    use hopline_h1::head::Headers;
    let mut headers = Headers::new();
    headers.push("host", "gw.example");
    headers.push(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _in_runtime = rt.enter();
    let exporter = |ratio: f64| {
        let config = hopline_core::config::TracingConfig {
            otlp_endpoint: "http://127.0.0.1:9/v1/traces".into(),
            tls: false,
            ca: None,
            host: "127.0.0.1".into(),
            port: 9,
            path: "/v1/traces".into(),
            sample_ratio: ratio,
            max_sampled_per_sec: u32::MAX,
            service_name: "bench".into(),
        };
        let off = hopline_gateway::AccessLog::open(&hopline_core::config::AccessLogSink::Off)
            .expect("an Off log opens");
        Exporter::start(&config, Arc::new(off)).expect("a plain-HTTP exporter starts")
    };
    let per_request = |b: &mut criterion::Bencher, e: Option<&Exporter>, caller: &Headers| {
        let mut rec = record();
        let mut wire = BytesMut::with_capacity(256);
        b.iter(|| {
            let t = TraceCx::of(black_box(caller), e, true);
            wire.clear();
            let span = hopline_core::trace::new_span_id();
            t.put_attempt_headers(&mut wire, span);
            t.record(|| AttemptSpan {
                span_id: span,
                start: SystemTime::now(),
                duration: Duration::from_micros(900),
                upstream: Arc::from("coupon"),
                endpoint: rec.endpoint,
                call: None,
                status: Some(200),
                error: None,
            });
            rec.trace = Some(t);
            if let Some(e) = e {
                e.record(&rec);
            }
            black_box(wire.len())
        })
    };
    let fresh = Headers::new();
    c.bench_function("trace context, [tracing] off", |b| {
        per_request(b, None, &headers)
    });
    let one = exporter(0.01);
    c.bench_function("trace context + spans, on at 1 % (new traces)", |b| {
        per_request(b, Some(&one), &fresh)
    });
    let all = exporter(1.0);
    c.bench_function("trace context + spans, on at 100 %", |b| {
        per_request(b, Some(&all), &fresh)
    });
}

criterion_group!(
    benches,
    heads,
    deadline_headers,
    log_and_metrics,
    balancing,
    tracing
);
criterion_main!(benches);
