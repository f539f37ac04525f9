//! What an internet client may set: from a peer outside `server.trusted_proxies` hopline
//! ignores `x-envoy-expected-rq-timeout-ms`, rewrites `x-forwarded-for` to the peer and
//! drops the forwarding headers and its own `x-hopline-*`; from a trusted proxy it keeps
//! them, and the client address is the first untrusted `x-forwarded-for` entry from the
//! right. Every test client is on loopback, so the untrusted cases set
//! `trusted_proxies = []`.

mod common;

use std::io::Write;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(10);

const SPOOFED: &str = "x-envoy-expected-rq-timeout-ms: 12\r\nX-Forwarded-For: 203.0.113.9\r\n\
    Forwarded: for=203.0.113.9\r\nX-Real-IP: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
    X-Forwarded-Host: evil.example\r\nProxy-Status: hopline; error=x\r\nX-Hopline-Degraded: coupons\r\n";

/// An upstream that hands each request head it gets to the test, then answers 200.
fn recording() -> (FakeUpstream, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let up = FakeUpstream::start(move |_, mut s| {
        while let Some(head) = read_request(&mut s) {
            let _ = tx.lock().expect("lock").send(head.to_ascii_lowercase());
            if s.write_all(OK_RESPONSE).is_err() {
                return;
            }
        }
    });
    (up, rx)
}

/// The deadline hopline told the upstream, in ms.
fn told(head: &str) -> u64 {
    head.lines()
        .find_map(|l| l.strip_prefix("x-envoy-expected-rq-timeout-ms: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("deadline header")
}

#[test]
fn an_untrusted_client_cannot_spoof_where_it_came_from_or_shorten_the_budget() {
    let (up, heads) = recording();
    let gw = gateway(
        "trusted_proxies = []",
        &route_all(up.addr).replace("upstream = \"m\"\n", "upstream = \"m\"\ntimeout = \"2s\"\n"),
    );
    assert_eq!(get(gw.addr, "/x", SPOOFED).status, 200);
    let head = heads.recv_timeout(WAIT).expect("upstream request");
    assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
    for gone in [
        "203.0.113.9",
        "forwarded:",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
        "proxy-status",
        "x-hopline-",
    ] {
        assert!(!head.contains(gone), "{gone} reached the upstream:\n{head}");
    }
    // The route's 2 s, not the caller's 12 ms.
    assert!(told(&head) > 1900, "{head}");
    let line = gw.wait_json(WAIT, "access line", |v| v["path"] == "/x");
    assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
    assert_eq!(
        line["deadline_ms"].as_f64().map(|d| d > 1900.0),
        Some(true),
        "{line}"
    );
}

#[test]
fn a_trusted_proxy_is_believed_and_the_client_is_the_first_untrusted_hop() {
    let (up, heads) = recording();
    let gw = gateway(
        "trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]",
        &route_all(up.addr),
    );
    let extra = format!("{SPOOFED}X-Forwarded-For: 198.51.100.4, 10.1.2.3\r\n");
    assert_eq!(get(gw.addr, "/t", &extra).status, 200);
    let head = heads.recv_timeout(WAIT).expect("upstream request");
    assert!(
        head.contains("x-forwarded-for: 203.0.113.9, 198.51.100.4, 10.1.2.3, 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(
        head.contains("x-forwarded-proto: https") && head.contains("x-real-ip"),
        "{head}"
    );
    assert!(
        told(&head) <= 7,
        "the caller's 12 ms (less the margin) is honoured: {head}"
    );
    let line = gw.wait_json(WAIT, "access line", |v| v["path"] == "/t");
    // From the right: 10.1.2.3 is a trusted proxy, 198.51.100.4 is not.
    assert_eq!(line["client_ip"], "198.51.100.4", "{line}");
}

#[test]
fn an_untrusted_seven_ms_budget_ejects_no_healthy_endpoint() {
    let mocks: Vec<Proc> = (0..3)
        .map(|_| mock(&["--quiet", "--latency", "50ms"]))
        .collect();
    let list: Vec<String> = mocks.iter().map(|m| format!("\"{}\"", m.addr)).collect();
    let gw = gateway(
        "trusted_proxies = []",
        &format!(
            "[upstreams.m]\nendpoints = [{}]\n[upstreams.m.outlier]\nconsecutive_failures = 2\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
            list.join(", ")
        ),
    );
    for _ in 0..30 {
        let r = get(gw.addr, "/e", "x-envoy-expected-rq-timeout-ms: 7\r\n");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let lines = gw.stderr.all();
    assert!(!lines.iter().any(|l| l.contains("ejected")), "{lines:?}");
}

#[test]
fn a_bad_trusted_proxies_entry_is_named_with_the_fix() {
    let err = check_refuses("trusted_proxies = [\"10.1.0.0/8\", \"ten\"]");
    assert!(err.contains("server.trusted_proxies[0]`: 10.1.0.0/8 has bits set past its prefix; write the network address (e.g. 10.0.0.0/8)"), "{err}");
    assert!(
        err.contains("server.trusted_proxies[1]`: \"ten\" is not an IP address"),
        "{err}"
    );
}

#[test]
fn an_untrusted_caller_cannot_force_its_trace_to_be_recorded() {
    let (up, heads) = recording();
    let tracing = format!(
        "[tracing]\notlp_endpoint = \"http://{}/v1/traces\"\nsample_ratio = 0.0\n",
        closed_port()
    );
    let parent = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
    for (trusted, flags) in [("[]", "00"), ("[\"127.0.0.0/8\"]", "01")] {
        let gw = gateway(
            &format!("trusted_proxies = {trusted}"),
            &format!("{tracing}{}", route_all(up.addr)),
        );
        assert_eq!(get(gw.addr, "/traced", parent).status, 200);
        let head = heads.recv_timeout(WAIT).expect("upstream request");
        let sent = head
            .lines()
            .find_map(|l| l.strip_prefix("traceparent: "))
            .expect("traceparent sent");
        // The caller's trace id is kept; the sampled flag is the caller's only if trusted.
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(
            sent.trim_end().ends_with(&format!("-{flags}")),
            "{trusted}: {sent}"
        );
    }
}
