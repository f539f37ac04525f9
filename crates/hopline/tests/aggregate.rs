//! Aggregate routes end to end: the incident's endpoint with a hanging coupon service,
//! in parallel and in sequence, fallbacks with their own causes, cancellation.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

struct Services {
    coupon: Proc,
    coin: Proc,
    sub_coin: Proc,
}

fn services(coupon_args: &[&str]) -> Services {
    let mut args = vec!["--body", r#"{"coupons":[1]}"#];
    args.extend_from_slice(coupon_args);
    Services {
        coupon: mock(&args),
        coin: mock(&["--body", r#"{"coins":120}"#]),
        sub_coin: mock(&["--body", r#"{"sub_coins":7}"#]),
    }
}

fn config(s: &Services, mode: &str, route_timeout: &str, coupon_extra: &str) -> String {
    format!(
        "[upstreams.coupon]\nendpoints = [\"{}\"]\nzone = \"egress\"\n\
         [upstreams.coin]\nendpoints = [\"{}\"]\n[upstreams.sub_coin]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"benefits\"\npath = \"/api/benefits\"\ntimeout = \"{route_timeout}\"\naggregate.mode = \"{mode}\"\n\
         [[routes.aggregate.calls]]\nname = \"coupons\"\nupstream = \"coupon\"\npath = \"/coupons/{{query.uid}}\"\nforward_headers = [\"x-user\"]\nfallback = {{ coupons = [] }}\n{coupon_extra}\n\
         [[routes.aggregate.calls]]\nname = \"coin\"\nupstream = \"coin\"\npath = \"/coin\"\nforward_query = true\nfallback = {{ coins = 0 }}\n\
         [[routes.aggregate.calls]]\nname = \"sub_coin\"\nupstream = \"sub_coin\"\npath = \"/sub-coin\"\nfallback = {{ sub_coins = 0 }}\n",
        s.coupon.addr, s.coin.addr, s.sub_coin.addr
    )
}

fn benefits(gw: &Proc) -> (Response, Duration, Value) {
    let t0 = Instant::now();
    let r = get(gw.addr, "/api/benefits?uid=42", "x-user: alice\r\n");
    let took = t0.elapsed();
    let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r, took, body)
}

#[test]
fn all_calls_answer_and_placeholders_and_headers_are_forwarded() {
    let s = services(&[]);
    let gw = gateway("", &config(&s, "parallel", "1s", ""));
    let (r, _, body) = benefits(&gw);
    assert_eq!(r.status, 200);
    assert_eq!(
        body,
        json!({"coupons":{"coupons":[1]},"coin":{"coins":120},"sub_coin":{"sub_coins":7}})
    );
    assert_eq!(r.header("x-hopline-degraded"), None);
    s.coupon
        .wait_json(WAIT, "coupon call", |v| v["path"] == "/coupons/42");
    s.coin.wait_json(WAIT, "coin call with the query", |v| {
        v["path"] == "/coin?uid=42"
    });
    let line = gw.wait_json(WAIT, "access line", |v| v["route"] == "benefits");
    assert_eq!(line["flags"], json!([]));
    assert_eq!(line["calls"].as_array().map(Vec::len), Some(3));
}

#[test]
fn parallel_hanging_coupon_falls_back_at_its_call_timeout_and_is_cancelled() {
    let s = services(&["--latency", "5s"]);
    let gw = gateway("", &config(&s, "parallel", "2s", "timeout = \"300ms\""));
    let (r, took, body) = benefits(&gw);
    assert_eq!(r.status, 200);
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(900),
        "took {took:?}"
    );
    assert_eq!(
        body,
        json!({"coupons":{"coupons":[]},"coin":{"coins":120},"sub_coin":{"sub_coins":7}})
    );
    assert_eq!(r.header("x-hopline-degraded"), Some("coupons"));
    let line = gw.wait_json(WAIT, "access line", |v| v["route"] == "benefits");
    assert_eq!(
        (line["status"].as_u64(), line["flags"].clone()),
        (Some(200), json!(["DG"]))
    );
    assert_eq!(line["degraded"], json!(["coupons"]));
    let coupon = &line["calls"][0];
    let cause = coupon["cause"].as_str().expect("cause");
    assert!(
        cause.contains("upstream coupon 127.0.0.1:") && cause.contains("(egress)"),
        "{cause}"
    );
    assert!(
        cause.contains("response headers timed out after 300ms (call timeout)"),
        "{cause}"
    );
    assert_eq!(coupon["fallback"], true);
    // The abandoned call does not keep running on the upstream.
    s.coupon
        .wait_json(WAIT, "coupon cancellation", |v| v["cancelled"] == true);
}

#[test]
fn sequential_runs_in_order_and_skips_calls_once_the_deadline_is_spent() {
    let s = services(&["--latency", "5s"]);
    let gw = gateway("", &config(&s, "sequential", "400ms", ""));
    let (r, took, body) = benefits(&gw);
    assert_eq!(r.status, 200);
    assert!(
        took >= Duration::from_millis(390) && took < Duration::from_millis(1000),
        "took {took:?}"
    );
    assert_eq!(
        body,
        json!({"coupons":{"coupons":[]},"coin":{"coins":0},"sub_coin":{"sub_coins":0}})
    );
    assert_eq!(
        r.header("x-hopline-degraded"),
        Some("coupons,coin,sub_coin")
    );
    let line = gw.wait_json(WAIT, "access line", |v| v["route"] == "benefits");
    assert_eq!(line["calls"][1]["cause"], "not started: deadline spent");
    assert_eq!(line["calls"][2]["cause"], "not started: deadline spent");
    assert!(s.coin.json_lines().is_empty(), "coin was never called");

    // With a call timeout, the later calls still run inside the deadline.
    let s2 = services(&["--latency", "5s"]);
    let gw2 = gateway("", &config(&s2, "sequential", "2s", "timeout = \"300ms\""));
    let (r, took, body) = benefits(&gw2);
    assert_eq!(
        (r.status, r.header("x-hopline-degraded")),
        (200, Some("coupons"))
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1000),
        "took {took:?}"
    );
    assert_eq!(body["coin"], json!({"coins":120}));
}

#[test]
fn non_2xx_and_non_json_fall_back_with_their_own_causes() {
    let coupon = mock(&["--status", "503", "--body", "busy"]);
    let coin = mock(&["--body", "<html>not json</html>"]);
    let sub_coin = mock(&["--body", r#"{"sub_coins":7}"#]);
    let s = Services {
        coupon,
        coin,
        sub_coin,
    };
    let gw = gateway("", &config(&s, "parallel", "1s", ""));
    let (r, _, body) = benefits(&gw);
    assert_eq!(
        (r.status, r.header("x-hopline-degraded")),
        (200, Some("coupons,coin"))
    );
    assert_eq!(body["sub_coin"], json!({"sub_coins":7}));
    let line = gw.wait_json(WAIT, "access line", |v| v["route"] == "benefits");
    assert_eq!(line["calls"][0]["cause"], "upstream coupon answered 503");
    assert_eq!(line["calls"][0]["status"], 503);
    assert!(line["calls"][1]["cause"]
        .as_str()
        .expect("cause")
        .contains("not JSON"));
}

#[test]
fn a_failing_required_call_fails_the_request_with_its_true_status() {
    let s = services(&["--latency", "5s"]);
    let gw = gateway(
        "",
        &config(&s, "parallel", "1s", "timeout = \"200ms\"\nrequired = true"),
    );
    let (r, _, _) = benefits(&gw);
    assert_eq!((r.status, r.header("x-hopline-flags")), (504, Some("UT")));
    let line = gw.wait_json(WAIT, "access line", |v| v["route"] == "benefits");
    assert!(line["cause"]
        .as_str()
        .expect("cause")
        .contains("upstream coupon"));
}

#[test]
fn client_leaving_cancels_the_running_call_and_starts_no_more() {
    use std::io::Read;
    use std::sync::{mpsc, Mutex};
    // A coupon service that reports the request it got, never answers, and reports when
    // the gateway closes the connection.
    let (got_tx, got_rx) = mpsc::channel::<()>();
    let (eof_tx, eof_rx) = mpsc::channel::<Instant>();
    let (got_tx, eof_tx) = (Mutex::new(got_tx), Mutex::new(eof_tx));
    let coupon = FakeUpstream::start(move |_, mut s| {
        if read_request(&mut s).is_none() {
            return;
        }
        let _ = got_tx.lock().expect("lock").send(());
        let mut b = [0u8; 64];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
        let _ = eof_tx.lock().expect("lock").send(Instant::now());
    });
    let s = services(&[]);
    let text = config(&s, "sequential", "3s", "")
        .replace(&s.coupon.addr.to_string(), &coupon.addr.to_string());
    let gw = gateway("", &text);
    let mut c = connect(gw.addr);
    c.write_all(b"GET /api/benefits?uid=1 HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    got_rx.recv_timeout(WAIT).expect("coupon call running");
    let closed = Instant::now();
    drop(c);
    let eof = eof_rx.recv_timeout(WAIT).expect("coupon connection closed");
    assert!(
        eof.duration_since(closed) < Duration::from_millis(500),
        "{:?}",
        eof.duration_since(closed)
    );
    let line = gw.wait_json(WAIT, "499 line", |v| v["route"] == "benefits");
    assert_eq!(
        (line["status"].as_u64(), line["flags"].clone()),
        (Some(499), json!(["DC"]))
    );
    assert!(
        line["cause"]
            .as_str()
            .expect("cause")
            .contains("calls coupons -> coupon (egress) response headers"),
        "{line}"
    );
    assert_eq!(line["calls"][0]["cause"], "aborted: client gone");
    // The coupon service had the request: the call was waiting on its answer.
    assert_eq!(line["calls"][0]["phase"], "response_headers", "{line}");
    // The aborted call logs what the upstream saw: one attempt, running until the abort.
    assert_eq!(line["calls"][0]["attempts"], 1, "{line}");
    assert!(
        line["calls"][0]["duration_ms"].as_f64().expect("duration") > 0.0,
        "{line}"
    );
    assert_eq!(line["calls"][1]["cause"], "not started: client gone");
    assert!(s.coin.json_lines().is_empty(), "no further call started");
}

#[test]
fn a_fallback_of_another_shape_than_the_answers_is_said_once() {
    use std::io::Write as _;
    // The coupon service answers an object once, then fails; the call's fallback is `[]`.
    let coupon = FakeUpstream::start(|i, mut s| {
        if read_request(&mut s).is_none() {
            return;
        }
        let body = r#"{"coupons":[1]}"#;
        let answer = if i == 0 {
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
        } else {
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                .to_string()
        };
        let _ = s.write_all(answer.as_bytes());
    });
    let s = services(&[]);
    let text = config(&s, "parallel", "1s", "")
        .replace(&s.coupon.addr.to_string(), &coupon.addr.to_string())
        .replace("fallback = { coupons = [] }", "fallback = []");
    let gw = gateway("", &text);
    for _ in 0..3 {
        assert_eq!(benefits(&gw).0.status, 200);
    }
    let said = gw.stderr.wait_for(WAIT, "the shape warning", |l| {
        l.contains("aggregate call coupons: its fallback is an array but coupon answered an object")
    });
    assert!(said.contains("give fallback the answer's shape"), "{said}");
    let event = gw.wait_json(WAIT, "the event line", |v| v["event"] == "call");
    assert_eq!(
        (&event["call"], &event["upstream"], &event["state"]),
        (
            &json!("coupons"),
            &json!("coupon"),
            &json!("fallback_shape")
        )
    );
    // Once, however often it falls back.
    let lines = gw.stderr.all();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("its fallback is"))
            .count(),
        1,
        "{lines:?}"
    );
}
