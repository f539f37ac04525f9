//! Edge strictness, over real sockets: the request vector table against the real binary
//! and a recording upstream, upstream responses with bad framing, panic-free header
//! parsing, 100-continue, lingering close and the write timeout.

mod common;
mod vectors;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use vectors::{check, closes_within, read_one, table, Recorder};

fn strict_gateway(up: std::net::SocketAddr, extra: &str) -> Proc {
    let routes = format!(
        r#"[upstreams.rec]
endpoints = ["{up}"]
[[routes]]
name = "getonly"
path = "/getonly"
upstream = "rec"
methods = ["GET", "HEAD"]
[[routes]]
name = "agg"
path = "/agg"
[[routes.aggregate.calls]]
name = "a"
upstream = "rec"
path = "/agg-call"
[[routes]]
name = "probe"
path = "/probe"
upstream = "rec"
[[routes]]
name = "ok"
path_prefix = "/ok"
upstream = "rec"
"#
    );
    gateway(
        &format!(
            "max_header_bytes = 16384\nmax_request_line_bytes = 4096\nmax_body_bytes = 4096\n{extra}"
        ),
        &routes,
    )
}

#[test]
fn every_request_vector_gets_its_status_connection_fate_and_upstream_bytes() {
    let rec = Recorder::start();
    let gw = strict_gateway(rec.addr, "");
    let vectors = table();
    assert!(vectors.len() >= 60, "{} vectors", vectors.len());
    let failures: Vec<String> = vectors
        .iter()
        .filter_map(|v| {
            check(gw.addr, &rec, v)
                .err()
                .map(|e| format!("{}: {e}", v.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
    // Every request has exactly one log line, rejected ones included (probes too).
    let probes = vectors.iter().filter(|v| !v.closed).count();
    let answered: usize = vectors.iter().map(|v| v.statuses.len()).sum();
    let end = Instant::now() + Duration::from_secs(5);
    while gw.json_lines().len() < answered + probes && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gw.json_lines().len(), answered + probes);
}

#[test]
fn rejected_framing_is_logged_with_its_request_line() {
    let rec = Recorder::start();
    let gw = strict_gateway(rec.addr, "");
    let mut s = connect(gw.addr);
    s.write_all(
        b"POST /ok/te HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    )
    .expect("write");
    let r = read_response(&mut s);
    assert_eq!((r.status, r.header("x-hopline-flags")), (501, Some("DPE")));
    let line = gw.wait_json(Duration::from_secs(5), "501 line", |v| v["status"] == 501);
    assert_eq!(
        (line["method"].as_str(), line["path"].as_str()),
        (Some("POST"), Some("/ok/te"))
    );
    assert!(
        line["cause"]
            .as_str()
            .expect("cause")
            .contains("transfer codings"),
        "{line}"
    );
}

/// (connection index, request path) of every request a scripted upstream saw.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(usize, String)>>>;

/// An upstream that answers every request on a connection with `responses[i]` for the
/// i-th request of the test (by path `/r/i`), recording (connection, path).
fn scripted(responses: Vec<&'static [u8]>) -> (FakeUpstream, Seen) {
    let seen: Seen = Default::default();
    let seen2 = seen.clone();
    let up = FakeUpstream::start(move |conn, mut s| {
        while let Some(head) = read_request(&mut s) {
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            seen2.lock().expect("lock").push((conn, path.clone()));
            let reply: &[u8] = match path
                .strip_prefix("/r/")
                .and_then(|i| i.parse::<usize>().ok())
            {
                Some(i) => responses[i],
                None => OK_RESPONSE,
            };
            if s.write_all(reply).is_err() {
                return;
            }
            if reply.starts_with(b"HTTP/1.0")
                || !reply
                    .windows(14)
                    .any(|w| w.eq_ignore_ascii_case(b"content-length"))
                    && !reply.windows(7).any(|w| w.eq_ignore_ascii_case(b"chunked"))
            {
                // Close-delimited answers end with the connection.
                return;
            }
        }
    });
    (up, seen)
}

#[test]
fn upstream_responses_with_bad_framing_are_502_before_any_byte_and_never_reused() {
    // (response, client status, the client connection stays usable, TE the client sees)
    let cases: Vec<(&'static [u8], u16, bool, Option<&str>)> = vec![
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 200, true, None),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200, true, Some("chunked")),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 502, true, None),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok", 502, true, None),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\nok", 502, true, None),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", 502, true, None),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n", 502, true, None),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 502, true, None),
        (b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 502, true, None),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200, true, Some("gzip, chunked")),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nrawgzipbytes", 200, false, Some("gzip")),
        (b"HTTP/1.1 200 OK\r\n\r\nclose-delimited", 200, true, Some("chunked")),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 200, true, None),
        (b"HTTP/1.1 2OO OK\r\ncontent-length: 2\r\n\r\nok", 502, true, None),
        // A reason phrase with obs-text (found by fuzzing: it used to panic the parser).
        (b"HTTP/1.1 200 OK\x95\x95\r\ncontent-length: 2\r\n\r\nok", 200, true, None),
    ];
    let (up, seen) = scripted(cases.iter().map(|c| c.0).collect());
    let gw = gateway("", &format!("[upstreams.s]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"s\"\n", up.addr));
    for (i, (raw, status, kept, te)) in cases.iter().enumerate() {
        let what = String::from_utf8_lossy(raw);
        let mut s = connect(gw.addr);
        write!(s, "GET /r/{i} HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
        let mut pending = Vec::new();
        let r = read_one(&mut s, &mut pending, false)
            .unwrap_or_else(|| panic!("no response to {what:?}"));
        assert_eq!(r.status, *status, "{what:?}: {}", r.head);
        let client_te = r.head.to_ascii_lowercase().split("\r\n").find_map(|l| {
            l.strip_prefix("transfer-encoding:")
                .map(|v| v.trim().to_string())
        });
        assert_eq!(client_te.as_deref(), *te, "{what:?}: {}", r.head);
        if *status == 502 {
            assert!(
                r.head.to_ascii_lowercase().contains("x-hopline-flags: upe"),
                "{what:?}: {}",
                r.head
            );
        }
        if *kept {
            write!(s, "GET /after/{i} HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
            let r2 = read_one(&mut s, &mut pending, false)
                .unwrap_or_else(|| panic!("connection closed after {what:?}"));
            assert_eq!(r2.status, 200, "{what:?}");
            // The follow-up never rides an upstream connection whose framing was bad.
            let seen = seen.lock().expect("lock").clone();
            let conn_of = |p: &str| seen.iter().find(|(_, q)| q == p).map(|(c, _)| *c);
            if *status == 502 || raw.starts_with(b"HTTP/1.1 200 OK\r\n\r\n") {
                assert_ne!(
                    conn_of(&format!("/r/{i}")),
                    conn_of(&format!("/after/{i}")),
                    "{what:?} reused"
                );
            }
        } else {
            assert!(
                closes_within(&mut s, Duration::from_secs(3)),
                "{what:?}: kept"
            );
        }
    }
}

#[test]
fn a_response_cut_after_bytes_went_out_aborts_the_client_connection() {
    let up = FakeUpstream::start(|_, mut s| {
        if read_request(&mut s).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly-part");
        }
    });
    let gw = gateway("", &format!("[upstreams.s]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"s\"\n", up.addr));
    let mut s = connect(gw.addr);
    s.write_all(b"GET /cut HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.len() < 100 + 40,
        "the client did not get a full body: {text}"
    );
    let line = gw.wait_json(Duration::from_secs(5), "cut line", |v| v["path"] == "/cut");
    assert_eq!(line["flags"], serde_json::json!(["UC"]), "{line}");
}

#[test]
fn odd_deadline_headers_never_panic_and_the_connection_gauge_returns_to_zero() {
    let up = mock(&["--status", "200", "--quiet"]);
    let gw = gateway(
        "",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{}", route_all(up.addr)),
    );
    let admin = admin_addr(&gw);
    let values: Vec<Vec<u8>> = vec![
        "1é".into(),
        "é".into(),
        "1\u{10FFFF}".into(),
        b"\xff\xfe".to_vec(),
        b"99999999999999999999S".to_vec(),
        b"-1m".to_vec(),
        b"".to_vec(),
    ];
    for v in &values {
        for name in ["grpc-timeout", "x-envoy-expected-rq-timeout-ms"] {
            let mut s = connect(gw.addr);
            let mut req = b"GET /x HTTP/1.1\r\nHost: t\r\n".to_vec();
            req.extend_from_slice(name.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v);
            req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
            s.write_all(&req).expect("write");
            let r = read_response(&mut s);
            assert!(
                r.status == 200 || r.status == 400,
                "{name}: {v:?} got {}",
                r.status
            );
        }
    }
    // Every connection above was closed: the gauge must come back to 0.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = get(admin, "/metrics", "").body;
        let open = metrics
            .lines()
            .find(|l| l.starts_with("hopline_downstream_connections "))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("gauge");
        // The scrape's own connection is not counted: it is on the admin listener.
        if open == 0.0 {
            break;
        }
        assert!(
            Instant::now() < end,
            "hopline_downstream_connections stays at {open}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn expect_100_continue_gets_100_before_the_body_or_a_final_status_without_it() {
    let rec = Recorder::start();
    let gw = strict_gateway(rec.addr, "");
    let mut s = connect(gw.addr);
    s.write_all(
        b"POST /ok/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .expect("write");
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).expect("100");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").expect("body");
    assert_eq!(read_response(&mut s).status, 200);
    // A request refused on its head gets the final status without sending the body.
    let mut s = connect(gw.addr);
    s.write_all(
        b"POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .expect("write");
    let r = read_response(&mut s);
    assert_eq!((r.status, r.header("connection")), (404, Some("close")));
    assert!(rec.requests().iter().any(|r| r.contains("hello")));
}

#[test]
fn lingering_close_lets_a_client_still_sending_read_its_4xx() {
    let rec = Recorder::start();
    let gw = strict_gateway(rec.addr, "");
    let mut s = connect(gw.addr);
    // 413 at once on the head; the client goes on sending its 64 KiB body regardless.
    s.write_all(b"POST /ok HTTP/1.1\r\nHost: t\r\nContent-Length: 65536\r\n\r\n")
        .expect("write");
    let body = vec![b'x'; 65536];
    let _ = s.write_all(&body);
    let r = read_response(&mut s);
    assert_eq!(r.status, 413);
    assert!(r.body.contains("request body too large"), "{}", r.body);
}

#[test]
fn a_client_that_stops_reading_is_logged_wt_with_the_status_being_sent() {
    // The upstream sends a body far larger than the socket buffers; the client never reads.
    let up = FakeUpstream::start(|_, mut s| {
        if read_request(&mut s).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n");
            let chunk = vec![b'y'; 1 << 20];
            for _ in 0..64 {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
    });
    let gw = gateway(
        "write_timeout = \"300ms\"",
        &format!("[upstreams.s]\nendpoints = [\"{}\"]\ntimeout = \"20s\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"s\"\ntimeout = \"20s\"\n", up.addr),
    );
    let s = TcpStream::connect(gw.addr).expect("connect");
    s.set_nodelay(true).ok();
    (&s).write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    let line = gw.wait_json(Duration::from_secs(10), "WT line", |v| v["path"] == "/big");
    assert_eq!(line["flags"], serde_json::json!(["WT"]), "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(
        line["cause"]
            .as_str()
            .expect("cause")
            .contains("client did not read for 300ms (write_timeout)"),
        "{line}"
    );
    drop(s);
}

#[test]
fn an_upstream_that_answers_before_taking_the_whole_body_has_its_answer_passed_through() {
    // The upstream refuses the upload on its head: 413 at once, then it stops reading and
    // closes. The request body (8 MiB) is far more than the socket buffers hold.
    let up = FakeUpstream::start(|_, mut s| {
        if read_request(&mut s).is_some() {
            let _ = s.write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let gw = gateway(
        "",
        &format!("[upstreams.s]\nendpoints = [\"{}\"]\ntimeout = \"5s\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"s\"\n", up.addr),
    );
    let body = vec![b'u'; 8 << 20];
    let mut s = connect(gw.addr);
    write!(
        s,
        "PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .expect("head");
    // As curl does: the body goes while the answer is read. hopline streams the body, so
    // once the upstream answered it stops taking it: the rest of the write may fail.
    let mut writer = s.try_clone().expect("clone");
    let sending = std::thread::spawn(move || writer.write_all(&body));
    let r = read_response(&mut s);
    assert_eq!((r.status, r.body.as_str()), (413, "too big\n"));
    let _ = sending.join().expect("writer");
    let line = gw.wait_json(Duration::from_secs(5), "upload line", |v| {
        v["path"] == "/upload"
    });
    assert_eq!(
        (line["status"].as_u64(), line["flags"].clone()),
        (Some(413), serde_json::json!([])),
        "{line}"
    );
}
