//! HTTP/2 to clients, driven by a real HTTP/2 client (the `h2` crate) over loopback: h2c
//! with prior knowledge beside HTTP/1.1 on one listener, streams multiplexed on one
//! connection, each with its own access-log line, and a client's RST_STREAM cancelling
//! that stream alone.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use serde_json::Value;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// An HTTP/2 client connection with prior knowledge; the connection is driven by a task.
async fn h2c(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Sends a request (with `body` as its DATA) and reads the whole response.
async fn send(
    client: &mut SendRequest<Bytes>,
    method: Method,
    path: &str,
    body: &[u8],
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://gw.test{path}"));
    if !body.is_empty() {
        // As curl and browsers do for a body they hold.
        req = req.header("content-length", body.len());
    }
    let req = req.body(()).expect("request");
    let ready = client.clone().ready().await.expect("ready");
    *client = ready;
    let (resp, mut stream) = client.send_request(req, body.is_empty()).expect("send");
    if !body.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(body), true)
            .expect("data");
    }
    let resp = resp.await.expect("response");
    let (parts, mut recv) = resp.into_parts();
    let mut got = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("data");
        let _ = recv.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&got).into_owned(),
    )
}

fn h2c_gateway(up: SocketAddr) -> Proc {
    gateway("h2c = true", &route_all(up))
}

#[test]
fn h2c_streams_share_one_connection_and_each_gets_its_log_line() {
    let up = mock(&["--quiet", "--latency", "200ms"]);
    let gw = h2c_gateway(up.addr);
    let rt = runtime();
    let started = Instant::now();
    let results = rt.block_on(async {
        let client = h2c(gw.addr).await;
        let (mut a, mut b) = (client.clone(), client);
        tokio::join!(
            send(&mut a, Method::GET, "/one?x=1", b""),
            send(&mut b, Method::POST, "/two", b"payload")
        )
    });
    // Both answered over one connection, concurrently (one upstream latency, not two).
    assert!(
        started.elapsed() < Duration::from_millis(390),
        "{:?}",
        started.elapsed()
    );
    for (status, headers, body) in [&results.0, &results.1] {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(body, "{\"ok\":true}");
        assert_eq!(
            headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"11"[..])
        );
    }
    for (path, query) in [("/one", Value::from("x=1")), ("/two", Value::Null)] {
        let line = gw.wait_json(WAIT, path, |v| v["path"] == path);
        assert_eq!(line["query"], query, "{line}");
        assert_eq!(line["protocol"], "HTTP/2", "{line}");
        assert_eq!(line["status"], 200, "{line}");
    }
    // HTTP/1.1 still works on the same listener.
    let r = get(gw.addr, "/three", "");
    assert_eq!(r.status, 200);
    let line = gw.wait_json(WAIT, "/three", |v| v["path"] == "/three");
    assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
}

#[test]
fn a_reset_stream_is_cancelled_alone_and_its_upstream_connection_closed() {
    // `/kept` is answered after 300 ms; `/cancelled` never is, and the upstream reports
    // when hopline closes that connection.
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<Instant>();
    let closed_tx = std::sync::Mutex::new(closed_tx);
    let up = FakeUpstream::start(move |_, mut s| {
        let Some(head) = read_request(&mut s) else {
            return;
        };
        if head.starts_with("GET /kept ") {
            std::thread::sleep(Duration::from_millis(300));
            let _ = std::io::Write::write_all(&mut s, OK_RESPONSE);
            return;
        }
        let mut rest = [0u8; 64];
        while matches!(std::io::Read::read(&mut s, &mut rest), Ok(n) if n > 0) {}
        let tx = closed_tx.lock().unwrap_or_else(|p| p.into_inner());
        let _ = tx.send(Instant::now());
    });
    let gw = h2c_gateway(up.addr);
    let rt = runtime();
    let (kept, reset_at) = rt.block_on(async {
        let mut client = h2c(gw.addr).await;
        let req = Request::builder()
            .uri("http://gw.test/cancelled")
            .body(())
            .expect("request");
        let (_resp, mut stream) = client.send_request(req, true).expect("send");
        let mut other = client.clone();
        let keep = tokio::spawn(async move { send(&mut other, Method::GET, "/kept", b"").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.send_reset(h2::Reason::CANCEL);
        let reset_at = Instant::now();
        (keep.await.expect("kept stream"), reset_at)
    });
    let closed = closed_rx
        .recv_timeout(WAIT)
        .expect("upstream connection closed");
    assert!(
        closed.duration_since(reset_at) < Duration::from_millis(500),
        "upstream closed {:?} after the reset",
        closed.duration_since(reset_at)
    );
    let line = gw.wait_json(WAIT, "/cancelled", |v| v["path"] == "/cancelled");
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["flags"], serde_json::json!(["DC"]), "{line}");
    let cause = line["cause"].as_str().unwrap_or_default();
    assert!(
        cause.contains("client reset the stream (CANCEL)"),
        "{cause}"
    );
    // The other stream on the connection went on to its answer.
    assert_eq!(kept.0, StatusCode::OK);
    assert_eq!(kept.2, "ok");
    let other = gw.wait_json(WAIT, "/kept", |v| v["path"] == "/kept");
    assert_eq!(other["status"], 200, "{other}");
}

#[test]
fn errors_are_answered_on_the_stream_with_flag_and_request_id() {
    let up = mock(&["--quiet"]);
    let gw = gateway(
        "h2c = true",
        &format!("[upstreams.m]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/api\"\nupstream = \"m\"\nmethods = [\"GET\"]\n", up.addr),
    );
    let rt = runtime();
    let (nr, na, head) = rt.block_on(async {
        let mut c = h2c(gw.addr).await;
        let nr = send(&mut c, Method::GET, "/nowhere", b"").await;
        let na = send(&mut c, Method::DELETE, "/api/x", b"").await;
        let head = send(&mut c, Method::HEAD, "/nowhere", b"").await;
        (nr, na, head)
    });
    assert_eq!(nr.0, StatusCode::NOT_FOUND);
    assert_eq!(
        nr.1.get("x-hopline-flags").map(|v| v.as_bytes()),
        Some(&b"NR"[..])
    );
    assert!(
        nr.2.starts_with("404 Not Found: no route (flag NR, request id "),
        "{}",
        nr.2
    );
    assert_eq!(na.0, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(na.1.get("allow").map(|v| v.as_bytes()), Some(&b"GET"[..]));
    // HEAD: the length of the body it would have, and no body.
    assert_eq!(head.0, StatusCode::NOT_FOUND);
    assert_eq!(head.2, "");
    let line: Value = gw.wait_json(WAIT, "HEAD log", |v| v["method"] == "HEAD");
    assert_eq!(line["protocol"], "HTTP/2", "{line}");
}

#[test]
fn without_h2c_the_preface_is_an_http1_error() {
    let up = mock(&["--quiet"]);
    let gw = gateway("", &route_all(up.addr));
    let mut s = connect(gw.addr);
    use std::io::Write;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("write");
    let r = read_response(&mut s);
    assert!(r.status == 400 || r.status == 505, "{r:?}");
}

#[test]
fn sigterm_sends_goaway_and_the_stream_in_flight_is_answered() {
    let up = mock(&["--quiet", "--latency", "500ms"]);
    let mut gw = h2c_gateway(up.addr);
    let rt = runtime();
    let (answered, refused) = rt.block_on(async {
        let client = h2c(gw.addr).await;
        let mut first = client.clone();
        let in_flight =
            tokio::spawn(async move { send(&mut first, Method::GET, "/in-flight", b"").await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        gw.terminate();
        let answered = in_flight.await.expect("in-flight stream");
        // After GOAWAY, the connection takes no new stream.
        let req = Request::builder()
            .uri("http://gw.test/late")
            .body(())
            .expect("request");
        let refused = match client.ready().await {
            Ok(mut c) => match c.send_request(req, true) {
                Ok((resp, _)) => resp.await.is_err(),
                Err(_) => true,
            },
            Err(_) => true,
        };
        (answered, refused)
    });
    assert_eq!(answered.0, StatusCode::OK);
    assert!(refused, "a stream opened after GOAWAY was served");
    let status = gw.wait_exit(WAIT).expect("gateway exits after the drain");
    assert!(status.success(), "{status:?}");
    let lines = gw.json_lines();
    assert!(
        lines
            .iter()
            .any(|v| v["path"] == "/in-flight" && v["status"] == 200),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|v| v["path"] == "/late"), "{lines:?}");
}

#[test]
fn a_stalled_header_block_is_closed_after_idle_and_header_timeouts() {
    let up = mock(&["--quiet"]);
    let gw = gateway(
        "h2c = true\nidle_timeout = \"500ms\"\nheader_read_timeout = \"500ms\"",
        &route_all(up.addr),
    );
    let mut s = connect(gw.addr);
    use std::io::{Read, Write};
    // Preface, empty SETTINGS, then HEADERS for stream 1 without END_HEADERS, and silence.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0, 0, 1, 0x1, 0, 0, 0, 0, 1, 0x82]);
    s.write_all(&out).expect("write");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let took = started.elapsed();
    // GOAWAY after 500 ms idle, closed 500 ms later: well before the test's 15 s read limit.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// HTTP/2 to an upstream over TLS, chosen by ALPN: the upstream here is a second hopline
/// whose TLS listener offers h2. Concurrent requests share one TLS connection.
#[test]
fn an_h2_upstream_over_tls_multiplexes_requests_on_one_connection() {
    use common::pki::{tls_gateway, Ca, Validity};
    let ca = Ca::new("h2-up");
    let leaf = ca.leaf("leaf", "localhost", &["localhost"], Validity::Good);
    let up = mock(&["--quiet", "--latency", "200ms", "--body", "via h2 over tls"]);
    let inner = tls_gateway(&leaf, "", "", up.addr);
    let port = tls_addr(&inner).port();
    let gw = gateway(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!(
            "[upstreams.inner]\nendpoints = [\"https://localhost:{port}\"]\nca = \"{}\"\nprotocol = \"h2\"\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"inner\"\n",
            path(&ca.cert)
        ),
    );
    let started = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let addr = gw.addr;
            std::thread::spawn(move || get(addr, &format!("/t{i}"), ""))
        })
        .collect();
    for h in handles {
        let r = h.join().expect("request");
        assert_eq!((r.status, r.body.as_str()), (200, "via h2 over tls"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    for i in 0..4 {
        let p = format!("/t{i}");
        let line = inner.wait_json(WAIT, &p, |v| v["path"] == p.as_str());
        assert_eq!(line["protocol"], "HTTP/2", "{line}");
        assert_eq!(line["tls_version"], "1.3", "{line}");
    }
    // One TLS handshake to the upstream for all four.
    let metrics = get(admin_addr(&gw), "/metrics", "").body;
    let handshakes = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "hopline_upstream_tls_handshake_duration_seconds_count{upstream=\"inner\"",
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(handshakes, Some(1.0), "{metrics}");
}

/// Bodies larger than every flow-control window, both ways: a 3 MB upload is read as the
/// window is released, a 3 MB download waits for the client's window as it reads.
#[test]
fn large_bodies_flow_both_ways_within_the_windows() {
    const SIZE: usize = 3 << 20;
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let tx = std::sync::Mutex::new(tx);
    let up = FakeUpstream::start(move |_, mut s| {
        use std::io::{Read, Write};
        let Some(head) = read_request(&mut s) else {
            return;
        };
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let _ = tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(body.len());
        let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n");
        let _ = s.write_all(&vec![b'z'; SIZE]);
    });
    let gw = h2c_gateway(up.addr);
    let rt = runtime();
    let (status, headers, body) = rt.block_on(async {
        let mut c = h2c(gw.addr).await;
        send(&mut c, Method::POST, "/big", &vec![b'a'; SIZE]).await
    });
    assert_eq!(rx.recv_timeout(WAIT).expect("upstream got the body"), SIZE);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("content-length").map(|v| v.as_bytes()),
        Some(format!("{SIZE}").as_bytes())
    );
    assert_eq!(body.len(), SIZE);
    assert!(body.bytes().all(|b| b == b'z'));
    let line = gw.wait_json(WAIT, "/big", |v| v["path"] == "/big");
    assert_eq!(num(&line, "bytes_sent"), SIZE as f64, "{line}");
}

/// gRPC over h2c to hopline, HTTP/2 to `hopline mock --grpc 14`: the upstream's trailers
/// (its grpc-status) reach the client, the deadline reaches the upstream as grpc-timeout,
/// and both statuses are logged.
#[test]
fn grpc_trailers_pass_through_and_the_deadline_goes_out_as_grpc_timeout() {
    let up = mock(&["--grpc", "14", "--body", "msg"]);
    let gw = gateway(
        "h2c = true",
        &format!(
            "[upstreams.g]\nendpoints = [\"{}\"]\nprotocol = \"h2\"\n\
             [[routes]]\nname = \"g\"\npath_prefix = \"/\"\nupstream = \"g\"\ntimeout = \"1500ms\"\n",
            up.addr
        ),
    );
    let rt = runtime();
    let (status, trailers, body) = rt.block_on(async {
        let mut client = h2c(gw.addr).await;
        let req = Request::builder()
            .method(Method::POST)
            .uri("http://gw.test/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (resp, mut stream) = client.send_request(req, false).expect("send");
        stream
            .send_data(Bytes::from_static(b"\0\0\0\0\0"), true)
            .expect("data");
        let (parts, mut recv) = resp.await.expect("response").into_parts();
        let mut body = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.expect("data");
            let _ = recv.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.expect("trailers").unwrap_or_default();
        (parts.status, trailers, body)
    });
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"\0\0\0\0\x03msg");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"14"[..])
    );
    let seen = up.wait_json(WAIT, "mock line", |v| v["path"] == "/pkg.Svc/Call");
    let timeout = seen["grpc_timeout"].as_str().unwrap_or_default();
    let ms: u64 = timeout
        .trim_end_matches('m')
        .parse()
        .expect("grpc-timeout in ms");
    assert!((1_000..1_500).contains(&ms), "{seen}");
    let line = gw.wait_json(WAIT, "gw line", |v| v["path"] == "/pkg.Svc/Call");
    assert_eq!(line["grpc_status"], 14, "{line}");
    assert_eq!(line["upstream_grpc_status"], 14, "{line}");
}

/// An upstream that takes 2 streams per connection: 6 concurrent requests open 3
/// connections instead of queueing behind one.
#[test]
fn more_h2_connections_open_when_the_upstream_stream_limit_is_reached() {
    let up = mock(&["--quiet", "--latency", "400ms"]);
    let inner = gateway(
        "h2c = true\n[server.h2]\nmax_concurrent_streams = 2",
        &route_all(up.addr),
    );
    let gw = gateway(
        "",
        &format!(
            "[upstreams.inner]\nendpoints = [\"{}\"]\nprotocol = \"h2\"\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"inner\"\n",
            inner.addr
        ),
    );
    // One request first, so the upstream's limit is known when the rest arrive.
    assert_eq!(get(gw.addr, "/warm", "").status, 200);
    let started = Instant::now();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let addr = gw.addr;
            std::thread::spawn(move || get(addr, &format!("/c{i}"), "").status)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("request"), 200);
    }
    // Queued two by two on one connection they would take 3 × 400 ms.
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1_000), "{took:?}");
    let clients: std::collections::HashSet<String> = (0..6)
        .map(|i| {
            let p = format!("/c{i}");
            let line = inner.wait_json(WAIT, &p, |v| v["path"] == p.as_str());
            line["client"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert!(clients.len() >= 3, "{clients:?}");
}

/// RFC 9113 drops the HTTP/1.1 `Upgrade: h2c` dance: such a request is served as plain
/// HTTP/1.1, on a listener with h2c or without.
#[test]
fn an_http1_upgrade_to_h2c_is_served_as_http1() {
    let up = mock(&["--quiet"]);
    for server in ["h2c = true", ""] {
        let gw = gateway(server, &route_all(up.addr));
        let r = get(
            gw.addr,
            "/up",
            "connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n",
        );
        assert_eq!(r.status, 200, "{server}: {r:?}");
        assert!(r.header("upgrade").is_none(), "{server}: {r:?}");
        let line = gw.wait_json(WAIT, "/up", |v| v["path"] == "/up");
        assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
    }
}

/// Sends a GET to `http://gw.test/hosts` with these `host` fields; the status, or the
/// stream's reset.
async fn with_hosts(
    client: &mut SendRequest<Bytes>,
    hosts: &[&str],
) -> Result<StatusCode, h2::Error> {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri("http://gw.test/hosts");
    for h in hosts {
        req = req.header("host", *h);
    }
    let ready = client.clone().ready().await.expect("ready");
    *client = ready;
    let (resp, _) = client
        .send_request(req.body(()).expect("request"), true)
        .expect("send");
    resp.await.map(|r| r.status())
}

#[test]
fn h2_requests_obey_http1s_host_rules() {
    let up = mock(&["--quiet"]);
    let gw = h2c_gateway(up.addr);
    let rt = runtime();
    rt.block_on(async {
        let mut c = h2c(gw.addr).await;
        // One authority: :authority alone, or a host equal to it (case-insensitively).
        for ok in [&[][..], &["gw.test"], &["GW.test"]] {
            let got = with_hosts(&mut c, ok).await.expect("answered");
            assert_eq!(got, StatusCode::OK, "{ok:?}");
        }
        // Two authorities, two host fields, or one that is not an authority: 400 (or the
        // stream reset), and the connection serves on.
        for bad in [&["evil.example"][..], &["gw.test", "gw.test"], &["gw test"]] {
            match with_hosts(&mut c, bad).await {
                Ok(status) => assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}"),
                Err(e) => assert_eq!(e.reason(), Some(h2::Reason::PROTOCOL_ERROR), "{bad:?}"),
            }
        }
        assert_eq!(
            with_hosts(&mut c, &[]).await.expect("answered"),
            StatusCode::OK
        );
    });
    for cause in [
        "differs from the request target",
        "more than one host",
        "invalid host header",
    ] {
        let v = gw.wait_json(WAIT, cause, |v| {
            v["cause"].as_str().is_some_and(|c| c.contains(cause))
        });
        assert_eq!(v["status"], 400, "{v}");
        assert_eq!(v["flags"], serde_json::json!(["DPE"]), "{v}");
    }
}
