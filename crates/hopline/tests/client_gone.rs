//! A client that leaves is answered 499 `DC` and logged with the phase its request was
//! waiting in — connect, TLS handshake, request (still being written), response headers
//! (on a new and on a reused connection), response body — for HTTP/1 and HTTP/2
//! upstreams. Aggregate calls: tests/aggregate.rs.
//!
//! Each test leaves only once the upstream side shows the phase has been reached (a SYN
//! in flight, a ClientHello received, the request received, a body half sent), so no test
//! depends on timing.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// One upstream `up` (generous limits, no retries) behind a route for every path.
fn config(endpoint: &str, extra: &str) -> String {
    format!(
        "[upstreams.up]\nendpoints = [\"{endpoint}\"]\nconnect_timeout = \"20s\"\ntimeout = \"20s\"\n\
         max_retries = 0\n{extra}\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"up\"\ntimeout = \"30s\"\n"
    )
}

/// The 499 line of `path`, checked for `DC`, the phase and the cause's words.
fn left_in(gw: &Proc, path: &str, phase: &str, words: &str) -> Value {
    let line = gw.wait_json(WAIT, "499 line", |v| v["path"] == path);
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["flags"], serde_json::json!(["DC"]), "{line}");
    assert_eq!(line["phase"], phase, "{line}");
    let cause = line["cause"].as_str().expect("cause");
    assert!(
        cause.contains("client closed the connection")
            && cause.contains(&format!("(internal) {words}")),
        "{cause}"
    );
    line
}

/// An upstream that reports each request head it gets, then holds the connection
/// (reading, so it sees the close) without answering; with `answer_first`, the first
/// request on a connection is answered `200` and only the second held.
fn holding_upstream(answer_first: bool) -> (FakeUpstream, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let up = FakeUpstream::start(move |_, mut s| {
        if answer_first {
            if read_request(&mut s).is_none() {
                return;
            }
            let _ = s.write_all(OK_RESPONSE);
        }
        if read_request(&mut s).is_none() {
            return;
        }
        let _ = tx.lock().expect("lock").send(());
        let mut b = [0u8; 256];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
    });
    (up, rx)
}

/// An upstream that takes a TLS ClientHello (reporting it) and never answers it.
fn hello_upstream() -> (FakeUpstream, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let up = FakeUpstream::start(move |_, mut s| {
        let mut b = [0u8; 1024];
        if !matches!(s.read(&mut b), Ok(n) if n > 0) {
            return;
        }
        let _ = tx.lock().expect("lock").send(());
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
    });
    (up, rx)
}

#[test]
fn waiting_for_response_headers_on_a_new_connection() {
    let (up, got) = holding_upstream(false);
    let gw = gateway("", &config(&up.addr.to_string(), ""));
    let mut c = connect(gw.addr);
    c.write_all(b"GET /new HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    got.recv_timeout(WAIT).expect("upstream got the request");
    drop(c);
    let line = left_in(&gw, "/new", "response_headers", "response headers");
    assert_eq!(line["upstream_reused"], false, "{line}");
}

#[test]
fn waiting_for_response_headers_on_a_reused_connection() {
    let (up, got) = holding_upstream(true);
    let gw = gateway("", &config(&up.addr.to_string(), ""));
    let mut c = connect(gw.addr);
    c.write_all(b"GET /first HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    assert_eq!(read_response(&mut c).status, 200);
    c.write_all(b"GET /second HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    got.recv_timeout(WAIT)
        .expect("upstream got the second request");
    drop(c);
    let line = left_in(&gw, "/second", "response_headers", "response headers");
    assert_eq!(line["upstream_reused"], true, "{line}");
}

#[test]
fn leaving_in_the_middle_of_a_streamed_request_body() {
    // The upstream reads what it gets and never answers; the client sends 1 MiB of a
    // declared 48 MiB, then closes: hopline, streaming the body, sees the end mid-body.
    let (tx, got) = mpsc::channel();
    let tx = Mutex::new(tx);
    let up = FakeUpstream::start(move |_, mut s| {
        if read_request(&mut s).is_none() {
            return;
        }
        let _ = tx.lock().expect("lock").send(());
        let mut b = [0u8; 64 << 10];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
    });
    let gw = gateway(
        "max_body_bytes = 67108864",
        &config(&up.addr.to_string(), ""),
    );
    const BODY: usize = 48 << 20;
    let mut c = connect(gw.addr);
    let head = format!("POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: {BODY}\r\n\r\n");
    c.write_all(head.as_bytes()).expect("head");
    c.write_all(&vec![b'x'; 1 << 20]).expect("the first MiB");
    got.recv_timeout(WAIT)
        .expect("upstream got the request while its body was arriving");
    c.shutdown(std::net::Shutdown::Both).expect("shutdown");
    drop(c);
    let line = gw.wait_json(WAIT, "499 line", |v| v["path"] == "/upload");
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["flags"], serde_json::json!(["DC"]), "{line}");
    assert_eq!(line["phase"], "request", "{line}");
    let cause = line["cause"].as_str().expect("cause");
    assert!(
        cause.contains("client closed the connection") && cause.contains("the request body"),
        "{cause}"
    );
}

#[test]
fn waiting_in_the_response_body() {
    let (tx, got) = mpsc::channel();
    let tx = Mutex::new(tx);
    let up = FakeUpstream::start(move |_, mut s| {
        if read_request(&mut s).is_none() {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nten bytes.");
        let _ = tx.lock().expect("lock").send(());
        let mut b = [0u8; 256];
        while matches!(s.read(&mut b), Ok(n) if n > 0) {}
    });
    let gw = gateway("", &config(&up.addr.to_string(), ""));
    let mut c = connect(gw.addr);
    c.write_all(b"GET /body HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    got.recv_timeout(WAIT)
        .expect("upstream sent part of the body");
    // The head reached the client: the response had started.
    let mut first = [0u8; 12];
    c.read_exact(&mut first).expect("response head");
    assert_eq!(&first, b"HTTP/1.1 200");
    drop(c);
    let line = gw.wait_json(WAIT, "line", |v| v["path"] == "/body");
    assert_eq!(line["phase"], "response_body", "{line}");
    assert!(
        line["flags"]
            .as_array()
            .expect("flags")
            .iter()
            .any(|f| f == "DC"),
        "{line}"
    );
}

#[test]
fn waiting_in_the_tls_handshake() {
    let (up, got) = hello_upstream();
    let gw = gateway(
        "",
        &config(&format!("https://{}", up.addr), "sni = \"localhost\""),
    );
    let mut c = connect(gw.addr);
    c.write_all(b"GET /tls HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    got.recv_timeout(WAIT).expect("upstream got a ClientHello");
    drop(c);
    left_in(&gw, "/tls", "tls", "TLS handshake");
}

/// A listening socket whose accept queue is full (backlog 0, one connection queued and
/// never accepted): the kernel drops further SYNs, so a connect to it stays in SYN-SENT.
struct FullListener {
    addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: Vec<TcpStream>,
    _rt: tokio::runtime::Runtime,
}

impl FullListener {
    fn new() -> FullListener {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let listener = rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4().expect("socket");
            s.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            s.listen(0).expect("listen")
        });
        let addr = listener.local_addr().expect("addr");
        // Fill the queue: connects succeed until one times out (its SYN dropped).
        let mut queued = Vec::new();
        for _ in 0..8 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => queued.push(s),
                Err(_) => break,
            }
        }
        assert!(queued.len() < 8, "the accept queue never filled");
        FullListener {
            addr,
            _listener: listener,
            _queued: queued,
            _rt: rt,
        }
    }

    /// True when some socket is connecting to this listener (SYN-SENT, in /proc/net/tcp).
    fn syn_sent(&self) -> bool {
        let port = format!(":{:04X}", self.addr.port());
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2].ends_with(&port) && f[3] == "02"
        })
    }
}

#[test]
fn waiting_in_connect() {
    let full = FullListener::new();
    let gw = gateway("", &config(&full.addr.to_string(), ""));
    let mut c = connect(gw.addr);
    c.write_all(b"GET /connect HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    let end = Instant::now() + WAIT;
    while !full.syn_sent() {
        assert!(Instant::now() < end, "hopline never started connecting");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(c);
    left_in(&gw, "/connect", "connect", "connect");
}

#[test]
fn waiting_for_an_h2_upstreams_response_headers() {
    // The h2 upstream is a second gateway (h2c) in front of a holding upstream: once that
    // one has the request, the h2 stream is waiting on its response head.
    let (up, got) = holding_upstream(false);
    let inner = gateway("h2c = true", &route_all(up.addr));
    let gw = gateway("", &config(&inner.addr.to_string(), "protocol = \"h2\""));
    let mut c = connect(gw.addr);
    c.write_all(b"GET /h2 HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    got.recv_timeout(WAIT).expect("upstream got the request");
    drop(c);
    left_in(&gw, "/h2", "response_headers", "response headers");
}

#[test]
fn waiting_in_an_h2_upstreams_tls_handshake() {
    let (up, got) = hello_upstream();
    let gw = gateway(
        "",
        &config(
            &format!("https://{}", up.addr),
            "sni = \"localhost\"\nprotocol = \"h2\"",
        ),
    );
    let mut c = connect(gw.addr);
    c.write_all(b"GET /h2tls HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    got.recv_timeout(WAIT).expect("upstream got a ClientHello");
    drop(c);
    left_in(&gw, "/h2tls", "tls", "TLS handshake");
}
