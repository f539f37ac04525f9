//! `[tracing]`: spans over OTLP/HTTP (protobuf) to a real receiver that decodes them with
//! the OpenTelemetry project's own Python protobuf bindings (`tests/otlp_receiver.py`,
//! PyPI `opentelemetry-proto`; `#[ignore]`d, run by `.ci/run`): a proxied request, an
//! aggregate with a failed call, a 504 and a 499, with their parent/child structure and
//! attributes; an HTTP/2 upstream attempt's span; sampling by the caller's flag and by ratio.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn receiver() -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg(format!(
        "{}/tests/otlp_receiver.py",
        env!("CARGO_MANIFEST_DIR")
    ));
    Proc::spawn_command(cmd)
}

/// Every span received so far for `trace`.
fn spans_of(recv: &Proc, trace: &str) -> Vec<Value> {
    recv.json_lines()
        .into_iter()
        .filter(|s| s["trace_id"] == trace)
        .collect()
}

/// Waits until `trace` has `n` spans.
fn wait_spans(recv: &Proc, trace: &str, n: usize) -> Vec<Value> {
    let end = Instant::now() + WAIT;
    loop {
        let s = spans_of(recv, trace);
        if s.len() >= n {
            return s;
        }
        assert!(
            Instant::now() < end,
            "{trace}: {} of {n} spans: {s:?}",
            s.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn traced(
    ratio: f64,
    up: std::net::SocketAddr,
    recv: &Proc,
    dead: std::net::SocketAddr,
    slow: std::net::SocketAddr,
) -> Proc {
    gateway(
        "",
        &format!(
            "[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\nsample_ratio = {ratio}\nservice_name = \"edge-gw\"\n\
             [upstreams.m]\nendpoints = [\"{up}\"]\n\
             [upstreams.dead]\nendpoints = [\"{dead}\"]\nmax_retries = 0\n\
             [upstreams.slow]\nendpoints = [\"{slow}\"]\n\
             [[routes]]\nname = \"agg\"\npath = \"/agg\"\naggregate.mode = \"parallel\"\n\
             [[routes.aggregate.calls]]\nname = \"good\"\nupstream = \"m\"\npath = \"/a\"\n\
             [[routes.aggregate.calls]]\nname = \"gone\"\nupstream = \"dead\"\npath = \"/b\"\nrequired = false\nfallback = {{}}\n\
             [[routes]]\nname = \"slow\"\npath_prefix = \"/slow\"\nupstream = \"slow\"\ntimeout = \"100ms\"\n\
             [[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
            recv.addr
        ),
    )
}

fn by_kind(spans: &[Value], kind: u64) -> Vec<Value> {
    spans
        .iter()
        .filter(|s| s["kind"] == kind)
        .cloned()
        .collect()
}

const SERVER: u64 = 2;
const CLIENT: u64 = 3;
const ERROR: u64 = 2;

/// The `trace_id` of the access-log line for `path`.
fn logged_trace_id(gw: &Proc, path: &str) -> String {
    gw.wait_json(WAIT, path, |v| v["path"] == path)["trace_id"]
        .as_str()
        .expect("trace id")
        .to_string()
}

#[test]
#[ignore = "needs python3 opentelemetry-proto (run by .ci/run)"]
fn spans_of_every_kind_of_request_reach_an_otlp_receiver() {
    let recv = receiver();
    let up = mock(&["--quiet", "--body", "{\"ok\":true}"]);
    let slow = mock(&["--quiet", "--latency", "2s"]);
    let dead = closed_port();
    let gw = traced(1.0, up.addr, &recv, dead, slow.addr);

    // A proxied request continuing the caller's trace.
    let caller =
        format!("traceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01\r\ntracestate: rojo=1\r\n");
    assert_eq!(get(gw.addr, "/ok", &caller).status, 200);
    let spans = wait_spans(&recv, CALLER_TRACE, 2);
    let server = by_kind(&spans, SERVER);
    let client = by_kind(&spans, CLIENT);
    assert_eq!((server.len(), client.len()), (1, 1), "{spans:?}");
    let (s, c) = (&server[0], &client[0]);
    assert_eq!(s["parent_span_id"], CALLER_SPAN, "{s}");
    assert_eq!(s["trace_state"], "rojo=1");
    assert_eq!(s["service"], "edge-gw");
    assert_eq!(s["content_type"], "application/x-protobuf");
    assert_eq!(s["path"], "/v1/traces");
    assert_eq!(s["name"], "GET all");
    assert_eq!(s["attributes"]["http.response.status_code"], 200);
    assert_eq!(s["attributes"]["http.route"], "all");
    assert_eq!(s["attributes"]["hopline.attempts"], 1);
    assert!(
        s["attributes"]["hopline.deadline_ms"].as_i64().is_some(),
        "{s}"
    );
    assert_eq!(c["parent_span_id"], s["span_id"], "{c}");
    assert_eq!(c["attributes"]["hopline.upstream"], "m");
    assert_eq!(c["attributes"]["http.response.status_code"], 200);
    assert!(
        c["start"].as_u64() >= s["start"].as_u64() && c["end"].as_u64() <= s["end"].as_u64(),
        "{c} within {s}"
    );
    let line = gw.wait_json(WAIT, "/ok", |v| v["path"] == "/ok");
    assert_eq!(
        line["span_id"], s["span_id"],
        "the log names the exported span"
    );

    // An aggregate with one failed call: two call spans, the failed one an error.
    let agg_trace = "11111111111111111111111111111111";
    let caller = format!("traceparent: 00-{agg_trace}-{CALLER_SPAN}-01\r\n");
    assert_eq!(get(gw.addr, "/agg", &caller).status, 200);
    let spans = wait_spans(&recv, agg_trace, 3);
    let calls = by_kind(&spans, CLIENT);
    assert_eq!(calls.len(), 2, "{spans:?}");
    let gone = calls
        .iter()
        .find(|c| c["attributes"]["hopline.call"] == "gone")
        .expect("the failed call's span");
    assert_eq!(gone["status_code"], ERROR, "{gone}");
    assert!(
        gone["status_message"]
            .as_str()
            .unwrap_or("")
            .contains("connect"),
        "{gone}"
    );
    let good = calls
        .iter()
        .find(|c| c["attributes"]["hopline.call"] == "good")
        .expect("the good call's span");
    assert_ne!(good["status_code"], ERROR, "{good}");
    let root = &by_kind(&spans, SERVER)[0];
    assert_eq!(root["attributes"]["hopline.degraded"], "gone", "{root}");

    // A 504: both spans errors, the cause on the request's.
    let t504 = "22222222222222222222222222222222";
    let caller = format!("traceparent: 00-{t504}-{CALLER_SPAN}-01\r\n");
    assert_eq!(get(gw.addr, "/slow/x", &caller).status, 504);
    let spans = wait_spans(&recv, t504, 2);
    let root = &by_kind(&spans, SERVER)[0];
    assert_eq!(root["status_code"], ERROR, "{root}");
    assert_eq!(root["attributes"]["hopline.flags"], "UT", "{root}");
    assert!(
        root["attributes"]["hopline.cause"]
            .as_str()
            .unwrap_or("")
            .contains("timed out"),
        "{root}"
    );
    assert_eq!(by_kind(&spans, CLIENT)[0]["status_code"], ERROR);

    // A 499: the client leaves while the upstream is slow.
    let t499 = "33333333333333333333333333333333";
    let mut s = connect(gw.addr);
    write!(
        s,
        "GET /slow/y HTTP/1.1\r\nhost: t\r\ntraceparent: 00-{t499}-{CALLER_SPAN}-01\r\n\r\n"
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(30));
    drop(s);
    let spans = wait_spans(&recv, t499, 1);
    let root = &by_kind(&spans, SERVER)[0];
    assert_eq!(root["attributes"]["hopline.cancelled"], true, "{root}");
    assert_eq!(root["status_message"], "cancelled by the client", "{root}");
    assert_eq!(root["attributes"]["http.response.status_code"], 499);
}

#[test]
#[ignore = "needs python3 opentelemetry-proto (run by .ci/run)"]
fn sampling_follows_the_caller_and_the_ratio() {
    let recv = receiver();
    let up = mock(&["--quiet"]);
    let never = traced(0.0, up.addr, &recv, closed_port(), up.addr);
    // Ratio 0: a new trace is not recorded, nor one whose caller decided against it.
    assert_eq!(get(never.addr, "/new", "").status, 200);
    let new_trace = logged_trace_id(&never, "/new");
    let unsampled = "55555555555555555555555555555555";
    let caller = format!("traceparent: 00-{unsampled}-{CALLER_SPAN}-00\r\n");
    assert_eq!(get(never.addr, "/declined", &caller).status, 200);
    // A caller that sampled is followed; its spans come after any queued before them.
    let sampled = "44444444444444444444444444444444";
    let caller = format!("traceparent: 00-{sampled}-{CALLER_SPAN}-01\r\n");
    assert_eq!(get(never.addr, "/followed", &caller).status, 200);
    wait_spans(&recv, sampled, 2);
    assert!(spans_of(&recv, &new_trace).is_empty());
    assert!(spans_of(&recv, unsampled).is_empty());
    // Ratio 1: a new trace is recorded, and goes upstream sampled.
    let always = traced(1.0, up.addr, &recv, closed_port(), up.addr);
    assert_eq!(get(always.addr, "/fresh", "").status, 200);
    let fresh = logged_trace_id(&always, "/fresh");
    wait_spans(&recv, &fresh, 2);
}

#[test]
#[ignore = "needs python3 opentelemetry-proto (run by .ci/run)"]
fn an_http2_upstream_attempt_is_a_client_span_of_its_own() {
    let recv = receiver();
    let h2 = mock(&["--quiet", "--grpc", "0"]);
    let gw = gateway(
        "",
        &format!(
            "[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\nsample_ratio = 1.0\n\
             [upstreams.h]\nendpoints = [\"{}\"]\nprotocol = \"h2\"\n\
             [[routes]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"h\"\n",
            recv.addr, h2.addr
        ),
    );
    let trace = "44444444444444444444444444444444";
    let caller = format!("traceparent: 00-{trace}-{CALLER_SPAN}-01\r\n");
    assert_eq!(get(gw.addr, "/svc.Echo/Say", &caller).status, 200);
    let spans = wait_spans(&recv, trace, 2);
    let (server, client) = (by_kind(&spans, SERVER), by_kind(&spans, CLIENT));
    assert_eq!((server.len(), client.len()), (1, 1), "{spans:?}");
    assert_eq!(client[0]["parent_span_id"], server[0]["span_id"]);
    assert_eq!(client[0]["attributes"]["hopline.upstream"], "h");
    assert_eq!(client[0]["attributes"]["http.response.status_code"], 200);
}

/// An `https://` collector: spans go over TLS, verified against `tracing.ca`.
#[test]
#[ignore = "needs python3 opentelemetry-proto (run by .ci/run)"]
fn spans_reach_an_https_collector_verified_against_its_ca() {
    let ca = common::pki::Ca::new("otel");
    let leaf = ca.leaf(
        "collector",
        "collector",
        &["localhost"],
        common::pki::Validity::Good,
    );
    let mut cmd = Command::new("python3");
    cmd.arg(format!(
        "{}/tests/otlp_receiver.py",
        env!("CARGO_MANIFEST_DIR")
    ))
    .arg("--tls")
    .arg(&leaf.cert)
    .arg(&leaf.key);
    let recv = Proc::spawn_command(cmd);
    let up = mock(&["--quiet"]);
    let gw = gateway(
        "",
        &format!(
            "[tracing]\notlp_endpoint = \"https://localhost:{}/v1/traces\"\nca = \"{}\"\n{}",
            recv.addr.port(),
            ca.cert.display(),
            route_all(up.addr)
        ),
    );
    let caller = format!("traceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01\r\n");
    assert_eq!(get(gw.addr, "/tls", &caller).status, 200);
    let spans = wait_spans(&recv, CALLER_TRACE, 2);
    assert!(spans.iter().all(|s| s["path"] == "/v1/traces"), "{spans:?}");
}
