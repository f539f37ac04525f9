//! What an upstream's framing fields become for the client: an HTTP/2 upstream's
//! `content-length` is re-derived for HTTP/1 clients (never written twice); a HEAD
//! response's `Content-Length` is checked as syntax and never used to read a body; an
//! HTTP/2 upstream's header list is bounded by `max_response_header_bytes` (502 `UPE`,
//! not retried: the upstream processed the request).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// An h2c upstream answering by path, counting what it was asked.
struct H2Upstream {
    addr: SocketAddr,
    asked: Arc<Mutex<HashMap<String, usize>>>,
    _runtime: tokio::runtime::Runtime,
}

fn h2_upstream() -> H2Upstream {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let asked = Arc::new(Mutex::new(HashMap::new()));
    let counts = asked.clone();
    runtime.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counts = counts.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let path = req.uri().path().to_string();
                    *counts
                        .lock()
                        .expect("lock")
                        .entry(path.clone())
                        .or_insert(0) += 1;
                    let mut resp = http::Response::builder().status(200);
                    let body: &[u8] = match path.as_str() {
                        "/len" => {
                            resp = resp.header("content-length", "5");
                            b"hello"
                        }
                        "/head" => {
                            resp = resp.header("content-length", "7");
                            b""
                        }
                        "/big" => {
                            resp = resp.header("x-big", "a".repeat(70 * 1024));
                            b"x"
                        }
                        _ => b"other",
                    };
                    let end = body.is_empty();
                    let Ok(mut send) = respond.send_response(resp.body(()).expect("resp"), end)
                    else {
                        continue;
                    };
                    if !end {
                        let _ = send.send_data(Bytes::copy_from_slice(body), true);
                    }
                }
            });
        }
    });
    H2Upstream {
        addr,
        asked,
        _runtime: runtime,
    }
}

/// Sends `method path` with `connection: close` and returns everything received.
fn raw(addr: SocketAddr, method: &str, path: &str) -> String {
    let mut s = connect(addr);
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

fn lengths(response: &str) -> Vec<&str> {
    response
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length").then(|| v.trim())
        })
        .collect()
}

#[test]
fn an_h2_upstreams_framing_reaches_an_http1_client_once() {
    let up = h2_upstream();
    let gw = gateway(
        "",
        &route_all(up.addr).replace("[upstreams.m]\n", "[upstreams.m]\nprotocol = \"h2\"\n"),
    );
    let got = raw(gw.addr, "GET", "/len");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(lengths(&got), ["5"], "{got}");
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");
    // HEAD: the declared length, once, and no body.
    let got = raw(gw.addr, "HEAD", "/head");
    assert_eq!(lengths(&got), ["7"], "{got}");
    assert!(got.ends_with("\r\n\r\n"), "{got}");
}

#[test]
fn an_h2_upstreams_header_list_is_bounded_and_not_retried() {
    let up = h2_upstream();
    let gw = gateway(
        "",
        &route_all(up.addr).replace(
            "[upstreams.m]\n",
            "[upstreams.m]\nprotocol = \"h2\"\nmax_retries = 2\n",
        ),
    );
    let r = get(gw.addr, "/big", "");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.header("x-hopline-flags"), Some("UPE"));
    let line = gw.wait_json(WAIT, "big line", |v| v["path"] == "/big");
    let cause = line["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("over max_response_header_bytes"), "{line}");
    assert_eq!(line["attempts"], 1, "{line}");
    assert_eq!(up.asked.lock().expect("lock").get("/big"), Some(&1));
    // A larger limit lets it through.
    let gw = gateway(
        "",
        &route_all(up.addr).replace(
            "[upstreams.m]\n",
            "[upstreams.m]\nprotocol = \"h2\"\nmax_response_header_bytes = 131072\n",
        ),
    );
    assert_eq!(get(gw.addr, "/big", "").status, 200);
}

/// An HTTP/1 upstream answering every request with `head` (and no body).
fn h1_answering(head: &'static str) -> FakeUpstream {
    FakeUpstream::start(move |_, mut s| {
        while read_request(&mut s).is_some() {
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_head_responses_content_length_is_checked_and_never_read() {
    // One value, or equal ones: passed on as digits, once, and no body awaited.
    for (head, declared) in [
        ("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", "9"),
        ("HTTP/1.1 200 OK\r\ncontent-length: 9, 9\r\n\r\n", "9"),
    ] {
        let up = h1_answering(head);
        let gw = gateway("", &route_all(up.addr));
        let got = raw(gw.addr, "HEAD", "/h");
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        assert_eq!(lengths(&got), [declared], "{got}");
    }
    // Bad syntax, differing values, or a length with Transfer-Encoding: 502 UPE.
    for head in [
        "HTTP/1.1 200 OK\r\ncontent-length: 9x\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 9\r\ncontent-length: 8\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: chunked\r\n\r\n",
    ] {
        let up = h1_answering(head);
        let gw = gateway("", &route_all(up.addr));
        let got = raw(gw.addr, "HEAD", "/h");
        assert!(got.starts_with("HTTP/1.1 502"), "{head:?}: {got}");
        assert!(got.contains("x-hopline-flags: UPE"), "{got}");
    }
}
