//! W3C Trace Context: hopline continues a caller's trace (or starts one), logs its trace
//! and span ids, and sends every upstream attempt and aggregate call `traceparent` with a
//! span id of its own (and the caller's `tracestate`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(10);
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An upstream that answers `{}` and keeps every request head it received.
fn recording_upstream() -> (FakeUpstream, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    let up = FakeUpstream::start(move |_, mut s| {
        while let Some(head) = read_request(&mut s) {
            h.lock().expect("lock").push(head);
            let ok =
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
            if std::io::Write::write_all(&mut s, ok).is_err() {
                return;
            }
        }
    });
    (up, heads)
}

/// The value of header `name` in a raw request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `traceparent` split into (version, trace id, span id, flags).
fn parts(tp: &str) -> (String, String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    (p[0].into(), p[1].into(), p[2].into(), p[3].into())
}

#[test]
fn a_callers_trace_is_continued_with_a_span_of_hoplines_own() {
    let (up, heads) = recording_upstream();
    let gw = gateway("", &route_all(up.addr));
    let extra = format!(
        "traceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01\r\ntracestate: rojo=00f067aa0ba902b7\r\ntracestate: congo=t61rcWkgMzE\r\n"
    );
    assert_eq!(get(gw.addr, "/a", &extra).status, 200);
    let head = heads.lock().expect("lock")[0].clone();
    let (version, trace, span, flags) = parts(header(&head, "traceparent").expect("traceparent"));
    assert_eq!(
        (version.as_str(), trace.as_str(), flags.as_str()),
        ("00", CALLER_TRACE, "01")
    );
    assert_ne!(
        span, CALLER_SPAN,
        "the upstream's parent is hopline's attempt span"
    );
    assert_eq!(span.len(), 16);
    assert_eq!(
        header(&head, "tracestate"),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    );
    // Sent once: the caller's own header does not pass through as well.
    assert_eq!(head.matches("traceparent").count(), 1, "{head}");
    let line = gw.wait_json(WAIT, "/a", |v| v["path"] == "/a");
    assert_eq!(line["trace_id"], CALLER_TRACE, "{line}");
    let own = line["span_id"].as_str().expect("span_id");
    assert!(
        own.len() == 16 && own != CALLER_SPAN && own != span,
        "{line}"
    );
}

#[test]
fn without_a_valid_traceparent_a_new_trace_starts_unsampled() {
    let (up, heads) = recording_upstream();
    let gw = gateway("", &route_all(up.addr));
    for (path, extra) in [
        ("/none", String::new()),
        // Upper-case hex is not a traceparent: a new trace, and its tracestate is dropped.
        (
            "/bad",
            format!("traceparent: 00-{}-{CALLER_SPAN}-01\r\ntracestate: a=b\r\n", CALLER_TRACE.to_uppercase()),
        ),
        // Two traceparent fields: neither is believed.
        (
            "/two",
            format!("traceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01\r\ntraceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01\r\n"),
        ),
    ] {
        assert_eq!(get(gw.addr, path, &extra).status, 200);
        let line = gw.wait_json(WAIT, path, |v| v["path"] == path);
        let logged = line["trace_id"].as_str().expect("trace_id").to_string();
        assert_eq!(logged.len(), 32, "{line}");
        assert_ne!(logged, CALLER_TRACE, "{path}");
        let heads = heads.lock().expect("lock");
        let head = heads
            .iter()
            .find(|h| h.starts_with(&format!("GET {path} ")))
            .expect("request");
        let (_, trace, _, flags) = parts(header(head, "traceparent").expect("traceparent"));
        assert_eq!((trace.as_str(), flags.as_str()), (logged.as_str(), "00"), "{path}");
        assert_eq!(header(head, "tracestate"), None, "{path}: {head}");
    }
}

#[test]
fn each_aggregate_call_gets_its_own_span_in_the_callers_trace() {
    let (up, heads) = recording_upstream();
    let gw = gateway(
        "",
        &format!(
            "[upstreams.m]\nendpoints = [\"{}\"]\n\
             [[routes]]\nname = \"agg\"\npath = \"/agg\"\naggregate.mode = \"parallel\"\n\
             [[routes.aggregate.calls]]\nname = \"a\"\nupstream = \"m\"\npath = \"/a\"\nforward_headers = [\"traceparent\"]\n\
             [[routes.aggregate.calls]]\nname = \"b\"\nupstream = \"m\"\npath = \"/b\"\n",
            up.addr
        ),
    );
    let extra = format!("traceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01\r\n");
    assert_eq!(get(gw.addr, "/agg", &extra).status, 200);
    let heads = heads.lock().expect("lock").clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let spans: Vec<String> = heads
        .iter()
        .map(|h| {
            assert_eq!(h.matches("traceparent").count(), 1, "{h}");
            let (_, trace, span, flags) = parts(header(h, "traceparent").expect("traceparent"));
            assert_eq!((trace.as_str(), flags.as_str()), (CALLER_TRACE, "01"));
            span
        })
        .collect();
    assert_ne!(spans[0], spans[1]);
    assert!(!spans.contains(&CALLER_SPAN.to_string()));
    let line = gw.wait_json(WAIT, "/agg", |v| v["path"] == "/agg");
    assert_eq!(line["trace_id"], CALLER_TRACE, "{line}");
}
