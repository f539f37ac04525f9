//! The caller's own budget (`grpc-timeout` from anyone, `x-envoy-expected-rq-timeout-ms`
//! from a trusted peer) is the caller's: one below `deadline.min_caller` is answered 504
//! at once and reaches no upstream; a timeout at it is logged as `caller budget` and
//! counts against the endpoint only when the upstream's endpoints usually answer in a
//! fraction of the time the attempt had. HTTP/1 upstreams (proxy.rs) and h2 ones
//! (proxy_h2.rs) each.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// Three mocks answering in 50 ms (`--grpc 0`: over HTTP/2).
fn slow_mocks(h2: bool) -> Vec<Proc> {
    let mut args = vec!["--quiet", "--latency", "50ms"];
    if h2 {
        args.extend(["--grpc", "0"]);
    }
    (0..3).map(|_| mock(&args)).collect()
}

fn upstream_of(mocks: &[Proc], extra: &str) -> String {
    let list: Vec<String> = mocks.iter().map(|m| format!("\"{}\"", m.addr)).collect();
    format!(
        "[upstreams.m]\nendpoints = [{}]\n{extra}\n[upstreams.m.outlier]\nconsecutive_failures = 2\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
        list.join(", ")
    )
}

#[test]
fn a_budget_below_min_caller_is_answered_at_once_and_reaches_no_upstream() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    let up = FakeUpstream::start(move |_, mut s| {
        while read_request(&mut s).is_some() {
            counted.fetch_add(1, Ordering::SeqCst);
            if std::io::Write::write_all(&mut s, OK_RESPONSE).is_err() {
                return;
            }
        }
    });
    let gw = gateway("", &route_all(up.addr));
    // From a trusted peer (loopback), Envoy's header; grpc-timeout from anyone.
    for (path, header) in [
        ("/envoy", "x-envoy-expected-rq-timeout-ms: 7\r\n"),
        ("/grpc", "grpc-timeout: 3m\r\n"),
    ] {
        let r = get(gw.addr, path, header);
        assert_eq!(r.status, 504, "{}", r.body);
        assert_eq!(r.header("x-hopline-flags"), Some("UT"), "{path}");
        let line = gw.wait_json(WAIT, "access line", |v| v["path"] == path);
        let cause = line["cause"].as_str().unwrap_or_default();
        assert!(
            cause.contains("is below deadline.min_caller 10ms; answered before any upstream call"),
            "{line}"
        );
        assert_eq!(line["attempts"], 0, "{line}");
        assert_eq!(line["endpoint"], serde_json::Value::Null, "{line}");
    }
    // The line is written once the request is done: had it reached the upstream, the
    // upstream would have counted it by now.
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    // 10 ms and more is served.
    assert_eq!(
        get(gw.addr, "/ok", "x-envoy-expected-rq-timeout-ms: 500\r\n").status,
        200
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

fn callers_timeouts_eject_nothing(h2: bool) {
    let mocks = slow_mocks(h2);
    let extra = if h2 { "protocol = \"h2\"" } else { "" };
    let gw = gateway("", &upstream_of(&mocks, extra));
    // The upstream's usual answer time is learnt: 50 ms.
    for _ in 0..6 {
        assert_eq!(get(gw.addr, "/warm", "").status, 200);
    }
    for i in 0..24 {
        let path = format!("/short{i}");
        let r = get(gw.addr, &path, "x-envoy-expected-rq-timeout-ms: 25\r\n");
        assert_eq!(r.status, 504, "{}", r.body);
        let line = gw.wait_json(WAIT, "access line", |v| v["path"] == path.as_str());
        let cause = line["cause"].as_str().unwrap_or_default();
        assert!(
            cause.contains("timed out after 20ms (caller budget)"),
            "{line}"
        );
    }
    let lines = gw.stderr.all();
    assert!(!lines.iter().any(|l| l.contains("ejected")), "{lines:?}");
    // Every endpoint still takes requests.
    assert_eq!(get(gw.addr, "/after", "").status, 200);
}

#[test]
fn timeouts_at_the_callers_budget_eject_no_endpoint() {
    callers_timeouts_eject_nothing(false);
}

#[test]
fn timeouts_at_the_callers_budget_eject_no_h2_endpoint() {
    callers_timeouts_eject_nothing(true);
}

#[test]
fn an_endpoint_that_never_answers_is_ejected_though_every_budget_is_the_callers() {
    let fast = mock(&["--quiet"]);
    // Reads every request and never answers.
    let hung = FakeUpstream::start(|_, mut s| while read_request(&mut s).is_some() {});
    let gw = gateway(
        "",
        &format!(
            "[upstreams.m]\nendpoints = [\"{}\", \"{}\"]\n[upstreams.m.outlier]\nconsecutive_failures = 3\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
            fast.addr, hung.addr
        ),
    );
    let ejected = format!("endpoint {} of m ejected", hung.addr);
    let mut timeouts = 0;
    for _ in 0..40 {
        // Every budget (200 ms) is far below the upstream's timeout (5 s).
        let r = get(gw.addr, "/", "x-envoy-expected-rq-timeout-ms: 200\r\n");
        if r.status == 504 {
            timeouts += 1;
        }
        if gw.stderr.all().iter().any(|l| l.contains(&ejected)) {
            break;
        }
    }
    gw.stderr
        .wait_for(WAIT, "the hung endpoint's ejection", |l| {
            l.contains(&ejected)
        });
    assert!(timeouts >= 3, "{timeouts} timeouts");
}
