//! The legacy gateway (examples/legacy-gateway) reproduces the incident's defects: with the
//! coupon service hanging behind a front with a 1 s timeout, the front answers 504, the
//! legacy gateway logs the misleading "下游服务器超时" for every call, and the abandoned
//! coupon call keeps running.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn legacy_bin() -> std::path::PathBuf {
    let p = std::path::Path::new(bin()).with_file_name("legacy-gateway");
    assert!(
        p.exists(),
        "{} missing: cargo build -p legacy-gateway (cargo test --workspace builds it)",
        p.display()
    );
    p
}

#[test]
fn legacy_gateway_reproduces_the_incident_behind_a_front_proxy() {
    let coupon = mock(&["--latency", "20s"]);
    let coin = mock(&["--body", r#"{"coins":1}"#]);
    let sub = mock(&["--body", r#"{"sub_coins":1}"#]);
    let mut cmd = Command::new(legacy_bin());
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--coupon",
        &coupon.addr.to_string(),
        "--coin",
        &coin.addr.to_string(),
        "--sub-coin",
        &sub.addr.to_string(),
    ]);
    let legacy = Proc::spawn_command(cmd);
    // The front: hopline as the sidecar, 1 s timeout.
    let front = gateway("", &format!(
        "[upstreams.gw]\nendpoints = [\"{}\"]\ntimeout = \"1s\"\nmax_retries = 0\n[[routes]]\nname = \"front\"\npath_prefix = \"/\"\nupstream = \"gw\"\ntimeout = \"1s\"\n",
        legacy.addr
    ));
    let r = get(front.addr, "/api/benefits?uid=7", "");
    assert_eq!((r.status, r.header("x-hopline-flags")), (504, Some("UT")));
    // Once the front gives up, the legacy gateway blames "the downstream server" for every
    // call — including coin and sub-coin, which had nothing to do with it.
    let wrong = legacy.wait_json(Duration::from_secs(10), "misleading cause", |v| {
        v["msg"] == "get sub account coin failed"
    });
    assert_eq!(wrong["err"], "下游服务器超时");
    let errors = legacy
        .json_lines()
        .into_iter()
        .filter(|v| v["err"] == "下游服务器超时")
        .count();
    assert_eq!(errors, 3);
    // (Whether coin and sub-coin were reached is a race, as in Go: `Send` starts the
    // goroutine before its select sees the cancelled context, and nobody stops it.)
    // The abandoned coupon call is still running: the coupon service saw no cancellation.
    assert!(coupon.json_lines().iter().all(|v| v["cancelled"] != true));
}
