//! HTTP/2 against the peers users have: curl with prior knowledge, and flood clients
//! written frame by frame with Python's hyperframe (`tests/h2_flood.py`). `#[ignore]`d:
//! `.ci/run` installs curl and the Python `h2` package and runs them with `--ignored`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Runs a flood from `tests/h2_flood.py`; what the server sent back.
fn flood(addr: std::net::SocketAddr, kind: &str, n: impl ToString) -> Value {
    python_json("h2_flood.py", &[&addr.to_string(), kind, &n.to_string()])
}

/// ENHANCE_YOUR_CALM (RFC 9113 §7).
const ENHANCE_YOUR_CALM: u64 = 0xb;

#[test]
#[ignore = "needs curl (installed by .ci/run)"]
fn curl_with_prior_knowledge_is_served_over_h2c() {
    let up = mock(&["--quiet", "--body", "over h2c"]);
    let gw = gateway("h2c = true", &route_all(up.addr));
    let url = format!("http://{}/c?x=1", gw.addr);
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version}",
            &url,
        ])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over h2c\n2");
    let line = gw.wait_json(WAIT, "curl line", |v| {
        v["path"] == "/c" && v["query"] == "x=1"
    });
    assert_eq!(line["protocol"], "HTTP/2", "{line}");
}

/// Streams reset after they were accepted (their upstream calls already started): over
/// half of at least 100 within 1 s of acceptance ends the connection with GOAWAY
/// ENHANCE_YOUR_CALM, and each is counted.
#[test]
#[ignore = "needs the Python h2 package (installed by .ci/run)"]
fn streams_reset_after_acceptance_end_the_connection_with_enhance_your_calm() {
    let up = mock(&["--quiet", "--latency", "2s"]);
    let gw = gateway(
        "h2c = true
[admin]
listen = \"127.0.0.1:0\"",
        &route_all(up.addr),
    );
    let r = flood(gw.addr, "accepted-reset", 2_000);
    assert_eq!(r["goaway"], ENHANCE_YOUR_CALM, "{r}");
    assert!(r["written"].as_u64().unwrap_or(u64::MAX) < 2_000, "{r}");
    let metrics = get(admin_addr(&gw), "/metrics", "").body;
    let counted: f64 = metrics
        .lines()
        .find(|l| l.starts_with("hopline_h2_premature_resets_total "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(counted >= 51.0, "{counted}\n{metrics}");
    // A well-behaved client on another connection is still served.
    assert_eq!(get(gw.addr, "/after", "").status, 200);
}

#[test]
#[ignore = "needs the Python h2 package (installed by .ci/run)"]
fn floods_end_with_goaway_enhance_your_calm_and_others_are_answered_in_bounded_memory() {
    let up = mock(&["--quiet"]);
    let gw = gateway("h2c = true", &route_all(up.addr));
    // Rapid Reset (CVE-2023-44487): streams opened and reset at once.
    let r = flood(gw.addr, "rapid-reset", 10_000);
    assert_eq!(r["goaway"], ENHANCE_YOUR_CALM, "{r}");
    assert!(r["written"].as_u64().unwrap_or(u64::MAX) < 10_000, "{r}");
    // CONTINUATION flood: one header block that never ends.
    let r = flood(gw.addr, "continuation", 100_000);
    assert_eq!(r["goaway"], ENHANCE_YOUR_CALM, "{r}");
    // Empty DATA frames on one stream.
    let r = flood(gw.addr, "empty-data", 100_000);
    assert!(r["goaway"].is_u64() || r["closed"] == true, "{r}");
    // PING and SETTINGS floods are answered by h2 frame for frame; the connection is not
    // closed, and memory stays bounded.
    let before = gw.rss_kib();
    let r = flood(gw.addr, "ping", 50_000);
    assert_eq!(r["ping_acks"], 50_000, "{r}");
    let r = flood(gw.addr, "settings", 50_000);
    assert_eq!(r["settings_acks"], 50_001, "{r}");
    let grown = gw.rss_kib().saturating_sub(before);
    assert!(grown < 32 * 1024, "grew {grown} KiB");
    // The gateway still serves.
    assert_eq!(get(gw.addr, "/after", "").status, 200);
}

#[test]
#[ignore = "needs the Python h2 package (installed by .ci/run)"]
fn protocol_violations_end_the_connection_with_goaway() {
    let up = mock(&["--quiet"]);
    let gw = gateway("h2c = true", &route_all(up.addr));
    // Where h2 answers with the code RFC 9113 names.
    for (case, code) in [
        ("data-on-idle-stream", 0x1),
        ("even-stream-id", 0x1),
        ("window-overflow", 0x3),
        ("frame-too-large", 0x6),
    ] {
        let r = flood(gw.addr, "violation", case);
        assert_eq!(r["goaway"], code, "{case}: {r}");
        assert_eq!(r["closed"], true, "{case}: {r}");
    }
    // Where h2 ends the connection with PROTOCOL_ERROR instead of the RFC's more specific
    // code (COMPRESSION_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR), or treats a stream
    // error as a connection error (which RFC 9113 §5.4.1 allows): documented in docs/http2.md.
    for case in [
        "bad-hpack",
        "settings-window-too-big",
        "settings-ack-with-payload",
        "ping-wrong-length",
        "zero-window-update-on-stream",
        "data-after-end-stream",
    ] {
        let r = flood(gw.addr, "violation", case);
        assert_eq!(r["goaway"], 0x1, "{case}: {r}");
        assert_eq!(r["closed"], true, "{case}: {r}");
    }
    // Each broke only its own connection.
    assert_eq!(get(gw.addr, "/after", "").status, 200);
}
