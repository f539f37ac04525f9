//! WebSocket through hopline: a real client and server (Python websockets,
//! `tests/ws_peer.py`; `#[ignore]`d, `.ci/run` installs it), and the refused-upgrade case
//! driven by hand over raw sockets (that one runs everywhere).

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(15);

fn ws_server() -> Proc {
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ws_peer.py"))
        .arg("server");
    Proc::spawn_command(cmd)
}

/// Sends a WebSocket upgrade for `path` and reads the 12 bytes `HTTP/1.1 101` (the rest
/// of the head is the caller's to read or to leave).
fn open_tunnel(addr: std::net::SocketAddr, path: &str) -> std::net::TcpStream {
    let mut s = connect(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
    .expect("write");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("101");
    assert_eq!(&head, b"HTTP/1.1 101");
    s
}

fn ws_routes(up: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[upstreams.ws]\nendpoints = [\"{up}\"]\n\
         [[routes]]\nname = \"ws\"\npath_prefix = \"/ws\"\nupstream = \"ws\"\nwebsocket = true\n{extra}\n\
         [[routes]]\nname = \"plain\"\npath_prefix = \"/\"\nupstream = \"ws\"\n"
    )
}

#[test]
#[ignore = "needs Python websockets (installed by .ci/run)"]
fn messages_echo_through_the_tunnel_and_it_is_logged_once() {
    let server = ws_server();
    let gw = gateway("", &ws_routes(server.addr, ""));
    let url = format!("ws://{}/ws/chat", gw.addr);
    let r = python_json("ws_peer.py", &["client", &url, "3"]);
    assert_eq!(r["echoes"], serde_json::json!(["m0", "m1", "m2"]), "{r}");
    assert_eq!(r["close_code"], 1000, "{r}");
    // The client's close reached the server through the tunnel.
    let seen = server.wait_json(WAIT, "server line", |v| v["path"] == "/ws/chat");
    assert_eq!(seen["messages"], 3, "{seen}");
    assert_eq!(seen["close_code"], 1000, "{seen}");
    let line = gw.wait_json(WAIT, "tunnel line", |v| v["path"] == "/ws/chat");
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["tunnel"]["closed_by"], "upstream", "{line}");
    assert!(num(&line["tunnel"], "bytes_up") > 0.0, "{line}");
    assert!(num(&line["tunnel"], "bytes_down") > 0.0, "{line}");
    assert_eq!(
        gw.json_lines()
            .iter()
            .filter(|v| v["path"] == "/ws/chat")
            .count(),
        1
    );
    // A route without `websocket = true` does not upgrade: the server refuses the plain
    // request it gets, and the client sees no 101.
    let r = python_json(
        "ws_peer.py",
        &["client", &format!("ws://{}/other", gw.addr), "1"],
    );
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("status ")),
        "{r}"
    );
}

#[test]
#[ignore = "needs Python websockets (installed by .ci/run)"]
fn a_silent_tunnel_is_closed_at_its_idle_timeout() {
    let server = ws_server();
    let gw = gateway(
        "",
        &ws_routes(server.addr, "websocket_idle_timeout = \"300ms\""),
    );
    let mut s = open_tunnel(gw.addr, "/ws/idle");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let line = gw.wait_json(WAIT, "idle line", |v| v["path"] == "/ws/idle");
    assert_eq!(line["tunnel"]["closed_by"], "idle", "{line}");
}

/// Pingora's CVE-2026-2833: bytes after an upgrade request must never reach the upstream
/// as a tunnel unless it answered 101. Here it answers 200: the client's extra bytes are
/// read as HTTP (and refused), never passed on raw.
#[test]
fn nothing_is_tunnelled_when_the_upstream_refuses_the_upgrade() {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(tx);
    let up = FakeUpstream::start(move |_, mut s| {
        let Some(head) = read_request(&mut s) else {
            return;
        };
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno");
        // Whatever else arrives on this connection, until hopline closes or pools it.
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let mut all = head.into_bytes();
        all.extend_from_slice(&rest);
        let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(all);
    });
    let gw = gateway("", &ws_routes(up.addr, ""));
    let mut s = connect(gw.addr);
    s.write_all(
        b"GET /ws/x HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n\
          \x81\x85SMUGGLED-FRAME-BYTES",
    )
    .expect("write");
    let r = read_response(&mut s);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "no");
    let seen = rx.recv_timeout(WAIT).expect("upstream saw the request");
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("upgrade: websocket"), "{seen}");
    assert!(
        !seen.contains("SMUGGLED"),
        "raw bytes reached the upstream: {seen}"
    );
}

/// A client that stops reading while the upstream keeps sending: the tunnel is cut once a
/// write to the client has waited `server.write_timeout`, not held for ever.
#[test]
fn a_client_that_stops_reading_is_cut_at_the_write_timeout() {
    let up = FakeUpstream::start(|_, mut s| {
        if read_request(&mut s).is_none() {
            return;
        }
        let _ = s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
              sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        );
        // Binary frames of 64 KiB, until hopline stops taking them (at most 1 GiB).
        let mut frame = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        frame.resize(10 + 65536, 0x5a);
        for _ in 0..16_384 {
            if s.write_all(&frame).is_err() {
                return;
            }
        }
    });
    let gw = gateway(
        "write_timeout = \"400ms\"",
        &ws_routes(up.addr, "websocket_idle_timeout = \"60s\""),
    );
    let s = open_tunnel(gw.addr, "/ws/stalled");
    // From here the client reads nothing: the socket buffers fill, hopline's write waits.
    let line = gw.wait_json(WAIT, "the tunnel's line", |v| v["path"] == "/ws/stalled");
    assert_eq!(line["tunnel"]["closed_by"], "write_timeout", "{line}");
    assert!(
        line["tunnel"]["bytes_down"].as_u64().is_some_and(|n| n > 0),
        "{line}"
    );
    drop(s);
}
