//! The request vector table: raw requests a client may send at an edge, and what a strict
//! HTTP/1.1 gateway must do with each — statuses, whether the connection stays usable, and
//! exactly which requests reach the upstream.
//!
//! Shared by `strict.rs` (hopline) and `compare.rs` (the same table against nginx and
//! HAProxy). The gateway under test routes `/ok*` and `/probe` to the recording upstream,
//! `/getonly` (GET and HEAD only) too, `/agg` to an aggregate route, and nothing else.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One vector.
#[derive(Debug, Clone)]
pub(crate) struct Vector {
    /// Short name, printed on failure.
    pub name: &'static str,
    /// Bytes the client sends (in one write).
    pub raw: Vec<u8>,
    /// Final statuses the client must read, in order (interim 1xx are skipped).
    pub statuses: Vec<u16>,
    /// The gateway must close the connection after them (else a probe must succeed on it).
    pub closed: bool,
    /// Requests the upstream must see.
    pub upstream: usize,
    /// Substrings every upstream request of this vector must contain (lower-cased match).
    pub has: Vec<&'static str>,
    /// Substrings no upstream request may contain (lower-cased match).
    pub lacks: Vec<&'static str>,
}

fn v(name: &'static str, raw: &str, statuses: &[u16], closed: bool, upstream: usize) -> Vector {
    Vector {
        name,
        raw: raw.as_bytes().to_vec(),
        statuses: statuses.to_vec(),
        closed,
        upstream,
        has: Vec::new(),
        lacks: Vec::new(),
    }
}

/// Served, connection kept, one upstream request.
fn ok(name: &'static str, raw: &str) -> Vector {
    v(name, raw, &[200], false, 1)
}

/// Refused with `status`, connection closed, nothing upstream.
fn bad(name: &'static str, raw: &str, status: u16) -> Vector {
    v(name, raw, &[status], true, 0)
}

fn bad_bytes(name: &'static str, raw: Vec<u8>, status: u16) -> Vector {
    Vector {
        raw,
        ..bad(name, "", status)
    }
}

impl Vector {
    fn has(mut self, s: &[&'static str]) -> Self {
        self.has.extend_from_slice(s);
        self
    }
    fn lacks(mut self, s: &[&'static str]) -> Self {
        self.lacks.extend_from_slice(s);
        self
    }
}

const H: &str = "Host: t\r\n";

/// Every vector.
pub(crate) fn table() -> Vec<Vector> {
    let post =
        |te_or_cl: &str, body: &str| format!("POST /ok HTTP/1.1\r\n{H}{te_or_cl}\r\n\r\n{body}");
    let chunked = |body: &str| post("Transfer-Encoding: chunked", body);
    let big_ext = format!("1;{}\r\na\r\n", "e".repeat(2000)).repeat(10) + "0\r\n\r\n";
    vec![
        // Served.
        ok("simple GET", "GET /ok HTTP/1.1\r\nHost: t\r\n\r\n"),
        ok("GET with query", "GET /ok?a=1&b=2 HTTP/1.1\r\nHost: t\r\n\r\n").has(&["get /ok?a=1&b=2 http/1.1"]),
        ok("POST content-length", &post("Content-Length: 5", "hello")).has(&["content-length: 5", "\r\n\r\nhello"]),
        // Streamed as it arrives: re-chunked (its length is not known in advance).
        ok("POST chunked", &chunked("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")).has(&["transfer-encoding: chunked", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"]).lacks(&["content-length"]),
        ok("chunked with extensions", &chunked("5;name=value;x\r\nhello\r\n0\r\n\r\n")).has(&["hello"]),
        ok("chunked with trailers", &chunked("5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n")).has(&["hello"]),
        ok("chunked upper-case hex", &chunked("A\r\n0123456789\r\n0\r\n\r\n")).has(&["0123456789"]),
        ok("chunked mixed-case coding", &post("Transfer-Encoding: ChUnKeD", "1\r\na\r\n0\r\n\r\n")),
        ok("chunked coding with OWS", &post("Transfer-Encoding:   chunked  ", "1\r\na\r\n0\r\n\r\n")),
        ok("content-length list of equal values", &post("Content-Length: 3, 3", "abc")).has(&["content-length: 3"]),
        ok("content-length repeated, equal", &post("Content-Length: 3\r\nContent-Length: 3", "abc")),
        v("two pipelined GETs", "GET /ok/1 HTTP/1.1\r\nHost: t\r\n\r\nGET /ok/2 HTTP/1.1\r\nHost: t\r\n\r\n", &[200, 200], false, 2),
        v("three pipelined, with a body between", &format!("GET /ok/1 HTTP/1.1\r\n{H}\r\n{}GET /ok/3 HTTP/1.1\r\n{H}\r\n", post("Content-Length: 2", "xy")), &[200, 200, 200], false, 3),
        v("HTTP/1.0 without Host", "GET /ok HTTP/1.0\r\n\r\n", &[200], true, 1),
        ok("HTTP/1.0 keep-alive", "GET /ok HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        v("Connection: close", "GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", &[200], true, 1),
        ok("absolute-form target", "GET http://t/ok/abs?q=1 HTTP/1.1\r\nHost: t\r\n\r\n").has(&["get /ok/abs?q=1 http/1.1"]).lacks(&["http://"]),
        ok("absolute-form https, upper-case scheme", "GET HTTPS://T:8443/ok HTTP/1.1\r\nHost: t:8443\r\n\r\n").has(&["get /ok http/1.1"]),
        ok("Upgrade: h2c served as HTTP/1.1", "GET /ok HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n").lacks(&["upgrade", "http2-settings"]),
        ok("Upgrade: websocket served as HTTP/1.1", "GET /ok HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n").lacks(&["upgrade:"]),
        ok("x-forwarded-for fields merged", "GET /ok HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n\r\n").has(&["x-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"]),
        ok("proxy-authorization stripped", "GET /ok HTTP/1.1\r\nHost: t\r\nProxy-Authorization: Basic c2VjcmV0\r\n\r\n").lacks(&["proxy-authorization", "c2vjcmv0"]),
        ok("client x-request-id kept", "GET /ok HTTP/1.1\r\nHost: t\r\nX-Request-Id: trace-42\r\n\r\n").has(&["x-request-id: trace-42"]),
        ok("hop-by-hop named by Connection stripped", "GET /ok HTTP/1.1\r\nHost: t\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n").lacks(&["x-secret", "keep-alive:", "\r\nte:"]),
        ok("HEAD", "HEAD /ok HTTP/1.1\r\nHost: t\r\n\r\n"),
        // Paths: routed, logged and forwarded normalized (only /ok is routed; an upstream
        // that normalizes would serve /x for every one of these).
        v("dot segment out of the prefix", "GET /ok/../x HTTP/1.1\r\nHost: t\r\n\r\n", &[404], false, 0),
        v("encoded dot segment %2e%2e", "GET /ok/%2e%2e/x HTTP/1.1\r\nHost: t\r\n\r\n", &[404], false, 0),
        v("encoded dot segment %2E%2E", "GET /ok/%2E%2E/x HTTP/1.1\r\nHost: t\r\n\r\n", &[404], false, 0),
        v("dot then dot-dot", "GET /ok/./../x HTTP/1.1\r\nHost: t\r\n\r\n", &[404], false, 0),
        v("half-encoded dot-dot .%2e", "GET /ok/.%2e/x HTTP/1.1\r\nHost: t\r\n\r\n", &[404], false, 0),
        bad("dot-dot then an escaped slash", "GET /ok/..%2fx HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        bad("dot-dot-semicolon segment", "GET /ok/..;/x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ok("encoded unreserved letter", "GET /%6Fk/x HTTP/1.1\r\nHost: t\r\n\r\n").has(&["get /ok/x http/1.1"]),
        ok("dot segment inside the prefix", "GET /ok/a/../b?q=/../c HTTP/1.1\r\nHost: t\r\n\r\n").has(&["get /ok/b?q=/../c http/1.1"]),
        ok("obs-text in a value", "GET /ok HTTP/1.1\r\nHost: t\r\nX-Name: caf\u{e9}\r\n\r\n"),
        ok("empty line before the request line", "\r\nGET /ok HTTP/1.1\r\nHost: t\r\n\r\n"),
        ok("GET-only route, GET", "GET /getonly HTTP/1.1\r\nHost: t\r\n\r\n"),
        v("GET-only route, DELETE: 405", "DELETE /getonly HTTP/1.1\r\nHost: t\r\n\r\n", &[405], false, 0),
        v("GET-only route, POST with body: 405, closed", &format!("POST /getonly HTTP/1.1\r\n{H}Content-Length: 3\r\n\r\nabc"), &[405], true, 0),
        v("aggregate route, POST: 405", "POST /agg HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &[405], false, 0),
        v("aggregate route, HEAD: no body", "HEAD /agg HTTP/1.1\r\nHost: t\r\n\r\n", &[200], false, 1),
        v("no route: 404 kept", "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", &[404], false, 0),
        v("no route with a body: 404 closed", &format!("POST /nope HTTP/1.1\r\n{H}Content-Length: 3\r\n\r\nabc"), &[404], true, 0),
        v("OPTIONS *: no route", "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", &[404], false, 0),
        // Ambiguous or unsupported framing.
        bad("CL and TE", &post("Content-Length: 4\r\nTransfer-Encoding: chunked", "0\r\n\r\n"), 400),
        bad("TE chunked, chunked", &post("Transfer-Encoding: chunked, chunked", "0\r\n\r\n"), 400),
        bad("TE chunked on two lines", &post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", "0\r\n\r\n"), 400),
        bad("TE gzip, chunked", &post("Transfer-Encoding: gzip, chunked", "0\r\n\r\n"), 501),
        bad("TE gzip", &post("Transfer-Encoding: gzip", "x"), 501),
        bad("TE chunked, gzip", &post("Transfer-Encoding: chunked, gzip", "0\r\n\r\n"), 400),
        bad("TE empty", &post("Transfer-Encoding: ", "0\r\n\r\n"), 400),
        bad("TE comma", &post("Transfer-Encoding: ,", "0\r\n\r\n"), 400),
        bad("TE quoted", &post("Transfer-Encoding: \"chunked\"", "0\r\n\r\n"), 400),
        bad("TE junk after chunked", &post("Transfer-Encoding: chunked x", "0\r\n\r\n"), 400),
        bad_bytes("TE chunked + vertical tab", post("Transfer-Encoding: chunked\x0b", "0\r\n\r\n").into_bytes(), 400),
        bad("TE with parameters on chunked", &post("Transfer-Encoding: chunked;q=1", "0\r\n\r\n"), 400),
        bad("TE on HTTP/1.0 with a request behind it", "POST /ok HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /ok/smuggled HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        bad("CL +5", &post("Content-Length: +5", "hello"), 400),
        bad("CL 5 5", &post("Content-Length: 5 5", "hello"), 400),
        bad("CL list that differs", &post("Content-Length: 5, 6", "hello"), 400),
        bad("CL repeated, different", &post("Content-Length: 5\r\nContent-Length: 6", "hello"), 400),
        bad("CL -1", &post("Content-Length: -1", ""), 400),
        bad("CL hex", &post("Content-Length: 0x5", "hello"), 400),
        bad("CL empty", &post("Content-Length: ", ""), 400),
        bad("CL overflow", &post("Content-Length: 99999999999999999999", ""), 400),
        // Host and target.
        bad("missing Host", "GET /ok HTTP/1.1\r\n\r\n", 400),
        bad("two Hosts", "GET /ok HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        bad("Host with a space", "GET /ok HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        bad("Host with a path", "GET /ok HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        bad("absolute-form authority differs from Host", "GET http://a/ok HTTP/1.1\r\nHost: b\r\n\r\n", 400),
        bad("absolute-form with userinfo", "GET http://u@t/ok HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        bad("relative target", "GET ok HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        bad("asterisk with GET", "GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        bad("CONNECT", "CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", 501),
        // Field syntax.
        bad("space before colon", "GET /ok HTTP/1.1\r\nHost : t\r\n\r\n", 400),
        bad("obs-fold", "GET /ok HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n", 400),
        bad_bytes("NUL in a value", b"GET /ok HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n".to_vec(), 400),
        bad("bare CR in a value", "GET /ok HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", 400),
        bad("invalid method token", "G(T /ok HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        bad("invalid field-name token", "GET /ok HTTP/1.1\r\nHost: t\r\nX@Y: 1\r\n\r\n", 400),
        bad("HTTP/1.2", "GET /ok HTTP/1.2\r\nHost: t\r\n\r\n", 400),
        bad("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        // Sizes.
        bad("request line over max_request_line_bytes", &format!("GET /ok/{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(5000)), 414),
        bad("head over max_header_bytes", &format!("GET /ok HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(20_000)), 431),
        bad("content-length over max_body_bytes", &post("Content-Length: 5000", &"z".repeat(5000)), 413),
        // Chunked bodies.
        // Refused on the size line, not after max_body_bytes were awaited.
        bad("chunk size over max_body_bytes", &chunked("FFFFFFFFFFFFFFFF\r\n"), 413),
        bad("chunk sizes adding up over max_body_bytes", &chunked(&format!("800\r\n{}\r\n801\r\n", "c".repeat(2048))), 413),
        bad("chunk size with leading space", &chunked(" 5\r\nhello\r\n0\r\n\r\n"), 400),
        bad("chunk size with bare LF", &chunked("5\nhello\r\n0\r\n\r\n"), 400),
        bad("chunk data without CRLF", &chunked("5\r\nhelloX0\r\n\r\n"), 400),
        bad("chunk size of 17 digits", &chunked("00000000000000005\r\nhello\r\n0\r\n\r\n"), 400),
        bad("chunk size that is not hex", &chunked("5g\r\nhello\r\n0\r\n\r\n"), 400),
        bad("chunk size with sign", &chunked("+5\r\nhello\r\n0\r\n\r\n"), 400),
        bad("bare CR in a chunk extension", &chunked("5;a\rb\r\nhello\r\n0\r\n\r\n"), 400),
        bad("chunk extensions over 16 KiB", &chunked(&big_ext), 400),
        bad("trailers over max_header_bytes", &chunked(&format!("1\r\na\r\n0\r\nX-T: {}\r\n\r\n", "t".repeat(20_000))), 400),
        bad("obs-fold in a trailer", &chunked("1\r\na\r\n0\r\nX-T: 1\r\n folded\r\n\r\n"), 400),
        bad("last chunk with bare LF", &chunked("1\r\na\r\n0\n\r\n"), 400),
    ]
}

/// A response as a client reads it.
#[derive(Debug)]
pub(crate) struct Read1 {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

/// Reads one final response (skipping 1xx); `None` at EOF before any byte. `head_req`:
/// the request was HEAD (no body follows).
pub(crate) fn read_one(s: &mut TcpStream, pending: &mut Vec<u8>, head_req: bool) -> Option<Read1> {
    loop {
        let end = loop {
            if let Some(i) = find(pending, b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(s, pending) {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end);
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        if (100..200).contains(&status) {
            continue;
        }
        let lower = head.to_ascii_lowercase();
        let field = |name: &str| {
            lower.split("\r\n").find_map(|l| {
                l.strip_prefix(&format!("{name}:"))
                    .map(|v| v.trim().to_string())
            })
        };
        let mut body = Vec::new();
        if head_req || status == 204 || status == 304 {
        } else if field("transfer-encoding").is_some() {
            loop {
                let line_end = loop {
                    if let Some(i) = find(pending, b"\r\n") {
                        break i;
                    }
                    if !fill(s, pending) {
                        return Some(Read1 { status, head, body });
                    }
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&pending[..line_end])
                        .split(';')
                        .next()?
                        .trim(),
                    16,
                )
                .ok()?;
                pending.drain(..line_end + 2);
                while pending.len() < size + 2 {
                    if !fill(s, pending) {
                        return Some(Read1 { status, head, body });
                    }
                }
                body.extend_from_slice(&pending[..size]);
                pending.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = field("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while pending.len() < n {
                if !fill(s, pending) {
                    break;
                }
            }
            let n = n.min(pending.len());
            body.extend(pending.drain(..n));
        } else {
            while fill(s, pending) {}
            body.append(pending);
        }
        return Some(Read1 { status, head, body });
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn fill(s: &mut TcpStream, pending: &mut Vec<u8>) -> bool {
    let mut b = [0u8; 16 * 1024];
    match s.read(&mut b) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            pending.extend_from_slice(&b[..n]);
            true
        }
    }
}

/// True when the peer closes (EOF or reset) within `within`, discarding bytes meanwhile.
pub(crate) fn closes_within(s: &mut TcpStream, within: Duration) -> bool {
    let end = Instant::now() + within;
    let mut b = [0u8; 4096];
    while Instant::now() < end {
        let _ = s.set_read_timeout(Some(
            end.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ));
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

/// The length of the chunked body starting at `start` in `pending` (reading more as
/// needed), trailers included; `None` when the connection ends first.
fn chunked_len(s: &mut TcpStream, pending: &mut Vec<u8>, start: usize) -> Option<usize> {
    let mut at = start;
    loop {
        let i = line_at(s, pending, at)?;
        let text = String::from_utf8_lossy(&pending[at..at + i]).into_owned();
        let size = usize::from_str_radix(text.split(';').next()?.trim(), 16).ok()?;
        at += i + 2;
        if size == 0 {
            loop {
                let i = line_at(s, pending, at)?;
                at += i + 2;
                if i == 0 {
                    return Some(at - start);
                }
            }
        }
        while pending.len() < at + size + 2 {
            if !fill(s, pending) {
                return None;
            }
        }
        at += size + 2;
    }
}

/// The length of the CRLF-ended line at `at` (reading more as needed).
fn line_at(s: &mut TcpStream, pending: &mut Vec<u8>, at: usize) -> Option<usize> {
    loop {
        if let Some(i) = find(&pending[at..], b"\r\n") {
            return Some(i);
        }
        if !fill(s, pending) {
            return None;
        }
    }
}

/// An upstream that records every request it receives (raw head + body, per connection)
/// and answers each `200 ok` (no body for HEAD), keeping connections open.
pub(crate) struct Recorder {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Recorder {
    pub(crate) fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for (conn, s) in listener.incoming().enumerate() {
                let Ok(mut s) = s else { continue };
                let seen = seen2.clone();
                std::thread::spawn(move || {
                    let mut pending = Vec::new();
                    loop {
                        let end = loop {
                            if let Some(i) = find(&pending, b"\r\n\r\n") {
                                break i + 4;
                            }
                            if !fill(&mut s, &mut pending) {
                                return;
                            }
                        };
                        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                        let lower = head.to_ascii_lowercase();
                        let chunked = lower
                            .split("\r\n")
                            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
                        let n = if chunked {
                            // Other proxies forward chunked bodies as they are.
                            match chunked_len(&mut s, &mut pending, end) {
                                Some(n) => n,
                                None => return,
                            }
                        } else {
                            lower
                                .split("\r\n")
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0)
                        };
                        while pending.len() < end + n {
                            if !fill(&mut s, &mut pending) {
                                return;
                            }
                        }
                        let raw = String::from_utf8_lossy(&pending[..end + n]).into_owned();
                        pending.drain(..end + n);
                        seen.lock().expect("lock").push((conn, raw));
                        let reply: &[u8] = if lower.starts_with("head ") {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if s.write_all(reply).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Recorder { addr, seen }
    }

    /// Requests seen so far, without the probes.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, r)| !r.starts_with("GET /probe "))
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// Runs one vector against a gateway at `addr`; `Err(why)` when it does not hold.
pub(crate) fn check(addr: SocketAddr, rec: &Recorder, v: &Vector) -> Result<(), String> {
    let before = rec.requests().len();
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(&v.raw).map_err(|e| format!("write: {e}"))?;
    let head_req = v.raw.starts_with(b"HEAD ");
    let mut pending = Vec::new();
    let mut got = Vec::new();
    for _ in &v.statuses {
        match read_one(&mut s, &mut pending, head_req) {
            Some(r) => got.push(r.status),
            None => break,
        }
    }
    if got != v.statuses {
        return Err(format!("statuses {got:?}, expected {:?}", v.statuses));
    }
    if v.closed {
        if !pending.is_empty() || !closes_within(&mut s, Duration::from_secs(3)) {
            return Err("connection not closed".into());
        }
    } else {
        s.write_all(b"GET /probe HTTP/1.1\r\nHost: t\r\n\r\n")
            .map_err(|e| format!("probe write: {e}"))?;
        match read_one(&mut s, &mut pending, false) {
            Some(r) if r.status == 200 => {}
            other => return Err(format!("connection not usable after: probe got {other:?}")),
        }
    }
    let seen: Vec<String> = rec.requests().split_off(before);
    if seen.len() != v.upstream {
        return Err(format!(
            "upstream saw {} requests, expected {}: {seen:?}",
            seen.len(),
            v.upstream
        ));
    }
    for r in &seen {
        let lower = r.to_ascii_lowercase();
        for h in &v.has {
            if !lower.contains(&h.to_ascii_lowercase()) {
                return Err(format!("upstream request lacks {h:?}: {r:?}"));
            }
        }
        for l in &v.lacks {
            if lower.contains(&l.to_ascii_lowercase()) {
                return Err(format!("upstream request has {l:?}: {r:?}"));
            }
        }
    }
    Ok(())
}

/// What a gateway did with a vector, as a client and the upstream see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observed {
    /// Final statuses read (as many as the vector expects at most).
    pub statuses: Vec<u16>,
    /// The connection was closed after them (a probe on it got no answer).
    pub closed: bool,
    /// Requests that reached the upstream.
    pub upstream: usize,
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let statuses: Vec<String> = self.statuses.iter().map(u16::to_string).collect();
        let statuses = if statuses.is_empty() {
            "no answer".to_string()
        } else {
            statuses.join("+")
        };
        let fate = if self.closed { "closed" } else { "kept" };
        write!(f, "{statuses}, {fate}, {} upstream", self.upstream)
    }
}

/// Sends a vector to any gateway and records what happened, without judging it.
pub(crate) fn observe(addr: SocketAddr, rec: &Recorder, v: &Vector) -> Observed {
    let before = rec.requests().len();
    let mut statuses = Vec::new();
    let mut closed = true;
    if let Ok(mut s) = TcpStream::connect(addr) {
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        let _ = s.write_all(&v.raw);
        let head_req = v.raw.starts_with(b"HEAD ");
        let mut pending = Vec::new();
        for _ in &v.statuses {
            match read_one(&mut s, &mut pending, head_req) {
                Some(r) => statuses.push(r.status),
                None => break,
            }
        }
        if s.write_all(b"GET /probe HTTP/1.1\r\nHost: t\r\n\r\n")
            .is_ok()
        {
            closed = !matches!(read_one(&mut s, &mut pending, false), Some(r) if r.status == 200);
        }
    }
    // The recorder logs a request before answering it, and the probe was answered (or
    // refused) after everything the gateway forwarded before it.
    Observed {
        statuses,
        closed,
        upstream: rec.requests().len() - before,
    }
}
