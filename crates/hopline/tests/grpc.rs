//! gRPC through hopline with a real gRPC server and client (Python grpcio,
//! `tests/grpc_peer.py`): the client speaks h2c to hopline, hopline speaks HTTP/2 to the
//! server (`protocol = "h2"`). `#[ignore]`d: `.ci/run` installs grpcio and runs them
//! with `--ignored`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_peer.py");

fn grpc_server() -> Proc {
    let mut cmd = Command::new("python3");
    cmd.args([PEER, "server"]);
    Proc::spawn_command(cmd)
}

/// One call through `addr`: `[timeout_s [cancel_after_s]]`.
fn call(addr: std::net::SocketAddr, method: &str, extra: &[&str]) -> Value {
    let addr = addr.to_string();
    let mut args = vec!["client", addr.as_str(), method];
    args.extend_from_slice(extra);
    python_json("grpc_peer.py", &args)
}

/// A gateway with h2c in front of the gRPC server; `Slow` gets `slow_timeout`.
fn grpc_gateway(server: &Proc, slow_timeout: &str) -> Proc {
    gateway(
        "h2c = true",
        &format!(
            "[upstreams.g]\nendpoints = [\"{}\"]\nprotocol = \"h2\"\n\
             [[routes]]\nname = \"slow\"\npath = \"/test.Echo/Slow\"\nupstream = \"g\"\ntimeout = \"{slow_timeout}\"\n\
             [[routes]]\nname = \"echo\"\npath_prefix = \"/test.Echo/\"\nupstream = \"g\"\ntimeout = \"5s\"\n",
            server.addr
        ),
    )
}

#[test]
#[ignore = "needs Python grpcio (installed by .ci/run)"]
fn unary_and_server_streaming_pass_with_their_status() {
    let server = grpc_server();
    let gw = grpc_gateway(&server, "5s");
    let r = call(gw.addr, "Unary", &["3"]);
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(r["responses"], serde_json::json!(["hello"]), "{r}");
    // The server saw the client's 3 s deadline, shortened by the margin, as grpc-timeout.
    let left: u64 = r["trailing"]["x-time-remaining-ms"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("remaining");
    assert!((2_500..3_000).contains(&left), "{r}");
    let s = call(gw.addr, "Stream", &[]);
    assert_eq!(s["code"], 0, "{s}");
    assert_eq!(s["responses"].as_array().map(Vec::len), Some(5), "{s}");
    let line = gw.wait_json(WAIT, "unary line", |v| v["path"] == "/test.Echo/Unary");
    assert_eq!(line["protocol"], "HTTP/2", "{line}");
    assert_eq!(line["grpc_status"], 0, "{line}");
    assert_eq!(line["upstream_grpc_status"], 0, "{line}");
}

#[test]
#[ignore = "needs Python grpcio (installed by .ci/run)"]
fn the_deadline_reaches_the_server_and_hopline_fails_calls_as_grpc_statuses() {
    let server = grpc_server();
    let gw = gateway(
        "h2c = true",
        &format!(
            "[upstreams.g]\nendpoints = [\"{}\"]\nprotocol = \"h2\"\n\
             [upstreams.gone]\nendpoints = [\"{}\"]\nprotocol = \"h2\"\nmax_retries = 0\n\
             [[routes]]\nname = \"slow\"\npath = \"/test.Echo/Slow\"\nupstream = \"g\"\ntimeout = \"300ms\"\n\
             [[routes]]\nname = \"down\"\npath_prefix = \"/down.Svc/\"\nupstream = \"gone\"\n",
            server.addr,
            closed_port()
        ),
    );
    // The route's 300 ms become the server's grpc-timeout (less the margin): the server
    // gives up just before hopline would, and the client gets DEADLINE_EXCEEDED.
    let r = call(gw.addr, "Slow", &["10"]);
    assert_eq!(r["code"], 4, "{r}");
    let seen = server.wait_json(WAIT, "slow line", |v| v["slow"] == true);
    let ms = seen["deadline_ms"].as_u64().expect("deadline_ms");
    assert!((200..300).contains(&ms), "{seen}");
    let line = gw.wait_json(WAIT, "slow line", |v| v["path"] == "/test.Echo/Slow");
    assert_eq!(line["grpc_status"], 4, "{line}");
    // hopline's own failures: an upstream that refuses connections is UNAVAILABLE, with
    // the short reason, flag and request id; no route is UNIMPLEMENTED.
    let r = call(gw.addr, "/down.Svc/Call", &["5"]);
    assert_eq!(r["code"], 14, "{r}");
    let details = r["details"].as_str().unwrap_or_default();
    assert!(details.contains("(flag UF, request id "), "{details}");
    let line = gw.wait_json(WAIT, "down line", |v| v["path"] == "/down.Svc/Call");
    assert_eq!(line["status"], 502, "{line}");
    assert_eq!(line["grpc_status"], 14, "{line}");
    assert_eq!(line["flags"], serde_json::json!(["UF"]), "{line}");
    let r = call(gw.addr, "/nowhere.Svc/Call", &["5"]);
    assert_eq!(r["code"], 12, "{r}");
    let details = r["details"].as_str().unwrap_or_default();
    assert!(details.contains("no route (flag NR"), "{details}");
}

#[test]
#[ignore = "needs Python grpcio (installed by .ci/run)"]
fn a_cancelled_call_is_cancelled_at_the_server() {
    let server = grpc_server();
    let gw = grpc_gateway(&server, "10s");
    let r = call(gw.addr, "Slow", &["10", "0.3"]);
    assert_eq!(r["code"], 1, "{r}");
    // The server's handler sees the cancellation (it would otherwise wait 5 s).
    let seen = server.wait_json(WAIT, "slow line", |v| v["slow"] == true);
    assert_eq!(seen["cancelled"], true, "{seen}");
    let line = gw.wait_json(WAIT, "cancel line", |v| v["path"] == "/test.Echo/Slow");
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["grpc_status"], 1, "{line}");
    assert!(num(&line, "duration_ms") < 1_000.0, "{line}");
}
