//! `hopline serve` end to end: the real binary, real sockets on loopback, one test per
//! row of the status table (DESIGN.md §3) and per server-side guarantee.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const LOG_WAIT: Duration = Duration::from_secs(10);

fn route_to(endpoints: &[String], upstream_extra: &str, route_extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[upstreams.svc]\nendpoints = [{}]\n{upstream_extra}\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"svc\"\n{route_extra}\n",
        eps.join(", ")
    )
}

fn log_for(gw: &Proc, path: &str) -> serde_json::Value {
    let p = path.to_string();
    gw.wait_json(LOG_WAIT, &format!("access log line for {path}"), move |v| {
        v["path"] == p.as_str()
    })
}

#[test]
fn proxies_and_passes_upstream_status_through_untouched() {
    let up = mock(&["--status", "503", "--body", "busy", "--header", "x-up:1"]);
    let gw = gateway("", &route_to(&[up.addr.to_string()], "", ""));
    let r = get(gw.addr, "/pass?q=1", "");
    assert_eq!(
        (r.status, r.body.as_str(), r.header("x-up")),
        (503, "busy", Some("1"))
    );
    assert_eq!(
        r.header("x-hopline-flags"),
        None,
        "an upstream answer is not a local error"
    );
    let line = log_for(&gw, "/pass");
    assert_eq!(line["query"], "q=1");
    assert_eq!(line["status"], 503);
    assert_eq!(line["upstream_status"], 503);
    assert_eq!(line["flags"], serde_json::json!([]));
    assert_eq!(line["route"], "r");
    let upline = up.wait_json(LOG_WAIT, "mock line", |v| v["path"] == "/pass?q=1");
    assert_eq!(
        upline["request_id"], line["request_id"],
        "x-request-id generated and forwarded"
    );
}

#[test]
fn deadline_reached_waiting_on_upstream_is_504_ut_at_the_deadline() {
    let up = mock(&["--latency", "5s"]);
    let gw = gateway(
        "",
        &route_to(&[up.addr.to_string()], "", "timeout = \"300ms\""),
    );
    let t0 = Instant::now();
    let r = get(gw.addr, "/slow", "");
    let took = t0.elapsed();
    assert_eq!((r.status, r.header("x-hopline-flags")), (504, Some("UT")));
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    let line = log_for(&gw, "/slow");
    assert_eq!(line["flags"], serde_json::json!(["UT"]));
    let cause = line["cause"].as_str().expect("cause");
    assert!(
        cause.contains("upstream svc 127.0.0.1:") && cause.contains("response headers timed out"),
        "{cause}"
    );
    assert_eq!(line["deadline_ms"], 300);
    assert_eq!(line["phase"], "response_headers");
    // The abandoned call does not keep running: the upstream sees its client go.
    up.wait_json(LOG_WAIT, "mock cancellation", |v| {
        v["path"] == "/slow" && v["cancelled"] == true
    });
}

#[test]
fn connect_refused_is_502_uf_with_the_os_error() {
    let dead = closed_port();
    let gw = gateway("", &route_to(&[dead.to_string()], "max_retries = 0", ""));
    let r = get(gw.addr, "/refused", "");
    assert_eq!((r.status, r.header("x-hopline-flags")), (502, Some("UF")));
    let line = log_for(&gw, "/refused");
    let cause = line["cause"].as_str().expect("cause");
    assert!(
        cause.contains("connect error") && cause.contains("os error 111"),
        "{cause}"
    );
    assert_eq!(line["phase"], "connect");
}

#[test]
fn connect_timeout_is_504_uf_and_bounded_by_connect_timeout() {
    // A listener whose accept queue is full drops further SYNs: connect() hangs like
    // through a rate-limiting NAT.
    let full = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = full.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    let gw = gateway(
        "",
        &route_to(
            &[addr.to_string()],
            "connect_timeout = \"250ms\"\nmax_retries = 0",
            "",
        ),
    );
    let t0 = Instant::now();
    let r = get(gw.addr, "/hang", "");
    let took = t0.elapsed();
    assert_eq!((r.status, r.header("x-hopline-flags")), (504, Some("UF")));
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let cause = log_for(&gw, "/hang")["cause"]
        .as_str()
        .expect("cause")
        .to_string();
    assert!(
        cause.contains("connect timed out after 250ms (connect_timeout)"),
        "{cause}"
    );
    drop(full);
}

#[test]
fn reset_by_upstream_is_502_uc_and_keeps_econnreset() {
    // Closing a socket with unread data makes the kernel send RST.
    let up = FakeUpstream::start(|_, s| {
        let mut b = [0u8; 1];
        let _ = s.peek(&mut b);
        drop(s);
    });
    let gw = gateway("", &route_to(&[up.addr.to_string()], "max_retries = 0", ""));
    let r = get(gw.addr, "/reset", "");
    assert_eq!((r.status, r.header("x-hopline-flags")), (502, Some("UC")));
    let cause = log_for(&gw, "/reset")["cause"]
        .as_str()
        .expect("cause")
        .to_string();
    assert!(
        cause.contains("connection reset") && cause.contains("os error 104"),
        "{cause}"
    );
}

#[test]
fn garbage_from_upstream_is_502_upe() {
    let up = FakeUpstream::start(|_, mut s| {
        if read_request(&mut s).is_some() {
            let _ = s.write_all(b"SMTP ready\r\n\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let gw = gateway("", &route_to(&[up.addr.to_string()], "", ""));
    let r = get(gw.addr, "/garbage", "");
    assert_eq!((r.status, r.header("x-hopline-flags")), (502, Some("UPE")));
    assert!(log_for(&gw, "/garbage")["cause"]
        .as_str()
        .expect("cause")
        .contains("protocol error during response headers"));
}

#[test]
fn no_route_is_404_nr_and_keeps_the_connection() {
    let gw = gateway("", "[upstreams.svc]\nendpoints = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"only\"\npath = \"/only\"\nupstream = \"svc\"\n");
    let mut s = connect(gw.addr);
    for _ in 0..2 {
        s.write_all(b"GET /elsewhere HTTP/1.1\r\nhost: t\r\n\r\n")
            .expect("write");
        let r = read_response(&mut s);
        assert_eq!((r.status, r.header("x-hopline-flags")), (404, Some("NR")));
    }
    assert_eq!(
        log_for(&gw, "/elsewhere")["flags"],
        serde_json::json!(["NR"])
    );
}

#[test]
fn content_length_with_transfer_encoding_is_400_dpe_and_closed() {
    let gw = gateway("", &route_to(&["127.0.0.1:9".to_string()], "", ""));
    let mut s = connect(gw.addr);
    s.write_all(b"POST /smuggle HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
        .expect("write");
    let r = read_response(&mut s);
    assert_eq!(
        (
            r.status,
            r.header("x-hopline-flags"),
            r.header("connection")
        ),
        (400, Some("DPE"), Some("close"))
    );
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).expect("eof"),
        0,
        "connection closed after 400"
    );
    assert!(log_for(&gw, "/smuggle")["cause"]
        .as_str()
        .expect("cause")
        .contains("both content-length and transfer-encoding"));
}

#[test]
fn oversized_head_is_431() {
    let gw = gateway(
        "max_header_bytes = 2048",
        &route_to(&["127.0.0.1:9".to_string()], "", ""),
    );
    let r = get(gw.addr, "/big", &format!("x-big: {}\r\n", "a".repeat(4000)));
    assert_eq!((r.status, r.header("x-hopline-flags")), (431, Some("DPE")));
}

/// An upstream that reports each request it receives, then answers after `hold`.
fn holding_upstream(hold: Duration) -> (FakeUpstream, mpsc::Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let up = FakeUpstream::start(move |_, mut s| {
        while let Some(req) = read_request(&mut s) {
            let _ = tx.lock().expect("lock").send(req);
            std::thread::sleep(hold);
            if s.write_all(OK_RESPONSE).is_err() {
                return;
            }
        }
    });
    (up, rx)
}

#[test]
fn a_full_upstream_queues_the_next_request_until_a_slot_is_free() {
    let (up, received) = holding_upstream(Duration::from_millis(500));
    let gw = gateway(
        "",
        &route_to(&[up.addr.to_string()], "max_in_flight = 1", ""),
    );
    let addr = gw.addr;
    let first = std::thread::spawn(move || get(addr, "/first", "").status);
    received
        .recv_timeout(LOG_WAIT)
        .expect("first request reached the upstream");
    let r = get(addr, "/second", "");
    assert_eq!(r.status, 200, "served after waiting for the slot");
    assert_eq!(first.join().expect("first"), 200);
    let line = log_for(&gw, "/second");
    assert!(
        line["queue_ms"].as_f64().expect("queue_ms") > 100.0,
        "{line}"
    );
}

#[test]
fn full_upstream_is_503_uo_at_once_with_max_pending_0() {
    let (up, received) = holding_upstream(Duration::from_millis(1500));
    let gw = gateway(
        "",
        &route_to(
            &[up.addr.to_string()],
            "max_in_flight = 1\nmax_pending = 0",
            "",
        ),
    );
    let addr = gw.addr;
    let first = std::thread::spawn(move || get(addr, "/first", "").status);
    received
        .recv_timeout(LOG_WAIT)
        .expect("first request reached the upstream");
    let t0 = Instant::now();
    let r = get(addr, "/second", "");
    assert_eq!((r.status, r.header("x-hopline-flags")), (503, Some("UO")));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "fail fast, took {:?}",
        t0.elapsed()
    );
    assert!(log_for(&gw, "/second")["cause"]
        .as_str()
        .expect("cause")
        .contains("max_in_flight 1 reached"));
    assert_eq!(first.join().expect("first"), 200);
}

#[test]
fn slow_headers_get_408_rt_and_slowloris_does_not_block_others() {
    let up = mock(&[]);
    let gw = gateway(
        "header_read_timeout = \"1s\"",
        &route_to(&[up.addr.to_string()], "", ""),
    );
    let mut loris = Vec::new();
    for _ in 0..150 {
        let mut s = connect(gw.addr);
        s.write_all(b"GET /loris HTTP/1.1\r\nhost: t\r\n")
            .expect("write");
        loris.push(s);
    }
    let t0 = Instant::now();
    let r = get(gw.addr, "/normal", "");
    assert_eq!(r.status, 200);
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "normal request took {:?}",
        t0.elapsed()
    );
    let t1 = Instant::now();
    let r = read_response(&mut loris[0]);
    assert_eq!((r.status, r.header("x-hopline-flags")), (408, Some("RT")));
    assert!(t1.elapsed() < Duration::from_secs(3));
    let mut timed_out = 1;
    for s in loris.iter_mut().skip(1) {
        if read_response(s).status == 408 {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 150);
    let line = gw.wait_json(LOG_WAIT, "408 line", |v| v["status"] == 408);
    assert!(line["cause"]
        .as_str()
        .expect("cause")
        .contains("header_read_timeout 1s"));
}

#[test]
fn client_disconnect_closes_the_upstream_connection_and_logs_499_dc() {
    let (seen_tx, seen_rx) = mpsc::channel::<Instant>();
    let (got_tx, got_rx) = mpsc::channel::<()>();
    let seen_tx = std::sync::Mutex::new(seen_tx);
    let got_tx = std::sync::Mutex::new(got_tx);
    let up = FakeUpstream::start(move |_, mut s| {
        if read_request(&mut s).is_none() {
            return;
        }
        let _ = got_tx.lock().expect("lock").send(());
        let mut b = [0u8; 64];
        // Blocks until the gateway closes its side: that instant is what we measure.
        while let Ok(n) = s.read(&mut b) {
            if n == 0 {
                break;
            }
        }
        let _ = seen_tx.lock().expect("lock").send(Instant::now());
    });
    let gw = gateway(
        "",
        &route_to(
            &[up.addr.to_string()],
            "timeout = \"20s\"",
            "timeout = \"20s\"",
        ),
    );
    let mut c = connect(gw.addr);
    c.write_all(b"GET /leave HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    got_rx
        .recv_timeout(LOG_WAIT)
        .expect("upstream got the request");
    let closed_at = Instant::now();
    drop(c);
    let seen = seen_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("upstream saw its connection closed");
    let lag = seen.duration_since(closed_at);
    assert!(
        lag < Duration::from_millis(500),
        "upstream closed {lag:?} after the client"
    );
    let line = log_for(&gw, "/leave");
    assert_eq!(
        (line["status"].as_u64(), line["flags"].clone()),
        (Some(499), serde_json::json!(["DC"]))
    );
    let cause = line["cause"].as_str().expect("cause");
    assert!(
        cause.contains("client closed the connection")
            && cause.contains("while waiting on upstream svc"),
        "{cause}"
    );
    // What it was waiting in: the upstream had the request, so its answer.
    assert_eq!(line["phase"], "response_headers", "{line}");
    assert!(cause.contains("(internal) response headers"), "{cause}");
}

#[test]
fn deadline_header_in_and_out() {
    let up = mock(&[]);
    let gw = gateway(
        "",
        &route_to(
            &[up.addr.to_string()],
            "timeout = \"10s\"",
            "timeout = \"5s\"",
        ),
    );
    assert_eq!(
        get(
            gw.addr,
            "/budget",
            "x-envoy-expected-rq-timeout-ms: 800\r\n"
        )
        .status,
        200
    );
    let sent = up.wait_json(LOG_WAIT, "mock line", |v| v["path"] == "/budget");
    let ms: u64 = sent["expected_rq_timeout_ms"]
        .as_str()
        .expect("header forwarded")
        .parse()
        .expect("ms");
    assert!((700..=795).contains(&ms), "forwarded budget {ms} ms");
    assert_eq!(log_for(&gw, "/budget")["deadline_ms"], 795);

    assert_eq!(get(gw.addr, "/grpc", "grpc-timeout: 2S\r\n").status, 200);
    assert_eq!(log_for(&gw, "/grpc")["deadline_ms"], 1995);

    // The caller's budget also bounds the wait: a slow upstream is cut at the caller's time.
    let slow = mock(&["--latency", "3s"]);
    let gw2 = gateway(
        "",
        &route_to(
            &[slow.addr.to_string()],
            "timeout = \"10s\"",
            "timeout = \"5s\"",
        ),
    );
    let t0 = Instant::now();
    let r = get(
        gw2.addr,
        "/caller",
        "x-envoy-expected-rq-timeout-ms: 400\r\n",
    );
    assert_eq!(r.status, 504);
    assert!(
        t0.elapsed() < Duration::from_millis(1200),
        "took {:?}",
        t0.elapsed()
    );
}

#[test]
fn keep_alive_connections_to_the_upstream_are_reused() {
    let up = mock(&[]);
    let gw = gateway("", &route_to(&[up.addr.to_string()], "", ""));
    let mut c = connect(gw.addr);
    for i in 0..5 {
        write!(c, "GET /ka{i} HTTP/1.1\r\nhost: t\r\n\r\n").expect("write");
        assert_eq!(read_response(&mut c).status, 200);
    }
    // The mock logs after answering: wait for the last line before counting.
    up.wait_json(LOG_WAIT, "last mock line", |v| v["path"] == "/ka4");
    let lines = up.json_lines();
    let ports: std::collections::HashSet<_> = lines
        .iter()
        .map(|v| v["client"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        (lines.len(), ports.len()),
        (5, 1),
        "one upstream connection for five requests"
    );
}

#[test]
fn stale_pooled_connection_is_retried_not_reported() {
    // Connection 0 answers one request, then closes when the next one arrives, without a
    // byte of response: the keep-alive race of the incident's "connection reset by peer".
    let up = FakeUpstream::start(|i, mut s| {
        let mut served = 0;
        while read_request(&mut s).is_some() {
            if i == 0 && served == 1 {
                return;
            }
            served += 1;
            if s.write_all(OK_RESPONSE).is_err() {
                return;
            }
        }
    });
    let gw = gateway("", &route_to(&[up.addr.to_string()], "max_retries = 0", ""));
    let mut c = connect(gw.addr);
    c.write_all(b"GET /one HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    assert_eq!(read_response(&mut c).status, 200);
    c.write_all(b"GET /two HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    let r = read_response(&mut c);
    assert_eq!(r.status, 200, "{}", r.body);
    let line = log_for(&gw, "/two");
    assert_eq!(
        (line["status"].as_u64(), line["attempts"].as_u64()),
        (Some(200), Some(2))
    );
}

#[test]
fn the_stale_retry_goes_to_a_new_connection_and_a_1xx_then_close_is_not_retried() {
    // Connection 0 serves one request; on the next it sends an interim 100 and closes.
    // That is not the stale keep-alive race (a response byte arrived): no retry.
    let conns = Arc::new(AtomicUsize::new(0));
    let c2 = conns.clone();
    let up = FakeUpstream::start(move |i, mut s| {
        c2.fetch_add(1, Ordering::SeqCst);
        let mut served = 0;
        while read_request(&mut s).is_some() {
            if i == 0 && served == 1 {
                let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                return;
            }
            served += 1;
            if s.write_all(OK_RESPONSE).is_err() {
                return;
            }
        }
    });
    let gw = gateway("", &route_to(&[up.addr.to_string()], "max_retries = 0", ""));
    let mut c = connect(gw.addr);
    c.write_all(b"GET /one HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    assert_eq!(read_response(&mut c).status, 200);
    c.write_all(b"GET /interim HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    let r = read_response(&mut c);
    assert_eq!((r.status, r.header("x-hopline-flags")), (502, Some("UC")));
    let line = log_for(&gw, "/interim");
    assert_eq!(line["attempts"].as_u64(), Some(1), "{line}");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "no second connection was opened"
    );
}

#[test]
fn connect_failure_is_retried_on_the_next_endpoint() {
    let up = mock(&[]);
    let dead = closed_port();
    // Round robin on purpose: every other request starts on the dead endpoint.
    let gw = gateway(
        "",
        &route_to(
            &[dead.to_string(), up.addr.to_string()],
            "lb = \"round_robin\"",
            "",
        ),
    );
    for i in 0..4 {
        assert_eq!(get(gw.addr, &format!("/rr{i}"), "").status, 200);
    }
    log_for(&gw, "/rr3");
    let retried = gw
        .json_lines()
        .iter()
        .filter(|v| v["attempts"] == 2)
        .count();
    assert!(
        retried >= 1,
        "round robin hit the dead endpoint and retried"
    );
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let (up, received) = holding_upstream(Duration::from_millis(600));
    let mut gw = gateway(
        "drain_timeout = \"5s\"",
        &route_to(&[up.addr.to_string()], "", ""),
    );
    let mut idle = connect(gw.addr);
    let mut c = connect(gw.addr);
    c.write_all(b"GET /inflight HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    received.recv_timeout(LOG_WAIT).expect("request in flight");
    gw.terminate();
    let r = read_response(&mut c);
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).expect("idle closed"),
        0,
        "idle keep-alive connection closed"
    );
    let status = gw.wait_exit(Duration::from_secs(5)).expect("exited");
    assert!(status.success(), "{status:?}");
    assert_eq!(log_for(&gw, "/inflight")["status"], 200);
}

#[test]
fn bad_config_names_file_line_key_and_does_not_listen() {
    let path = temp_file("bad.toml", "[server]\nlisten = \"127.0.0.1:0\"\ncolour = \"blue\"\nidle_timeout = \"75\"\n\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"ghost\"\n");
    let out = std::process::Command::new(bin())
        .args(["serve", "-c", path.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(
        err.contains(&format!("{file}:3:1: key `server.colour`: unknown key")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{file}:4:16: key `server.idle_timeout`: missing unit"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{file}:9:12: key `routes[0].upstream`: unknown upstream \"ghost\""
        )),
        "{err}"
    );
    assert!(!err.contains("listening"), "{err}");
}

/// With the default `least_request`, a retry after a connect failure goes to another
/// endpoint: one retry is enough for every request when one of two endpoints is dead.
#[test]
fn a_retry_after_a_connect_failure_goes_to_another_endpoint() {
    let up = mock(&["--quiet"]);
    let dead = closed_port();
    let gw = gateway(
        "",
        &route_to(
            &[dead.to_string(), up.addr.to_string()],
            "max_retries = 1",
            "",
        ),
    );
    for i in 0..20 {
        assert_eq!(
            get(gw.addr, &format!("/a{i}"), "").status,
            200,
            "request {i}"
        );
    }
    log_for(&gw, "/a19");
    let lines = gw.json_lines();
    assert!(
        lines.iter().any(|v| v["attempts"] == 2),
        "the dead one was drawn"
    );
}

/// `least_request`: while one endpoint holds a slow request, the next requests go to the
/// idle one (round robin would send every other one to the busy endpoint).
#[test]
fn least_request_sends_new_requests_past_a_busy_endpoint() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let tx = std::sync::Mutex::new(tx);
    // The slow endpoint holds each request until the test lets go (at most 30 s), so it is
    // busy for the whole of the next ten however slow the machine is.
    let release = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let hold = release.clone();
    let slow = FakeUpstream::start(move |_, mut s| {
        while read_request(&mut s).is_some() {
            let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(());
            let (lock, cv) = &*hold;
            let released = lock.lock().unwrap_or_else(|p| p.into_inner());
            let _ = cv.wait_timeout_while(released, Duration::from_secs(30), |r| !*r);
            if s.write_all(OK_RESPONSE).is_err() {
                return;
            }
        }
    });
    let fast = mock(&[]);
    let gw = gateway(
        "",
        &route_to(&[slow.addr.to_string(), fast.addr.to_string()], "", ""),
    );
    // Send requests until one is held by the slow endpoint.
    let addr = gw.addr;
    let mut held = Vec::new();
    for i in 0..20 {
        held.push(std::thread::spawn(move || {
            get(addr, &format!("/hold{i}"), "")
        }));
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
    }
    for i in 0..10 {
        assert_eq!(get(gw.addr, &format!("/next{i}"), "").status, 200);
    }
    // The fast mock logs each request as it answers it (a /hold request still on its way
    // when the loop above stopped may land there too: only /next ones are counted).
    let to_fast = || {
        fast.stdout
            .all()
            .iter()
            .filter(|l| l.contains("\"path\":\"/next"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while to_fast() < 10 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(to_fast(), 10, "all 10 went to the idle endpoint");
    *release.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
    release.1.notify_all();
    for h in held {
        let _ = h.join();
    }
}

#[test]
fn the_log_says_which_connections_were_reused_and_how_long_they_had_idled() {
    let up = mock(&["--quiet"]);
    let gw = gateway("", &route_to(&[up.addr.to_string()], "", ""));
    let mut s = connect(gw.addr);
    write!(s, "GET /first HTTP/1.1\r\nhost: t\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut s).status, 200);
    let first = log_for(&gw, "/first");
    // A new client connection, and a new upstream connection.
    assert!(first["client_idle_ms"].is_null(), "{first}");
    assert_eq!(first["upstream_reused"], false, "{first}");
    assert!(first["upstream_idle_ms"].is_null(), "{first}");
    write!(s, "GET /second HTTP/1.1\r\nhost: t\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut s).status, 200);
    let second = log_for(&gw, "/second");
    // Both kept alive: the pooled upstream connection and the client's, with idle times.
    assert!(second["client_idle_ms"].as_f64().is_some(), "{second}");
    assert_eq!(second["upstream_reused"], true, "{second}");
    assert!(second["upstream_idle_ms"].as_f64().is_some(), "{second}");
}
