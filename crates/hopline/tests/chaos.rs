//! `hopline chaos` end to end: the real binary, its Toxiproxy-compatible API, and one test
//! per toxic measuring its effect on real loopback connections.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// A free loopback address whose port is below Linux's ephemeral range (32768+), so no
/// outgoing connection or port-0 listener of a concurrent test can take it.
fn non_ephemeral_port() -> std::net::SocketAddr {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (start..32_000)
        .chain(20_000..start)
        .find_map(|port| {
            std::net::TcpListener::bind(("127.0.0.1", port))
                .and_then(|l| l.local_addr())
                .ok()
        })
        .expect("a free port below the ephemeral range")
}

fn timed_get(addr: std::net::SocketAddr, path: &str) -> (Response, Duration) {
    let t0 = Instant::now();
    let r = get(addr, path, "");
    (r, t0.elapsed())
}

#[test]
fn api_shapes_and_status_codes_follow_toxiproxy() {
    let c = chaos(&[]);
    let (s, v) = api(c.addr, "GET", "/version", "");
    assert_eq!(s, 200);
    assert!(v["version"].as_str().expect("version").starts_with('2'));
    let up = echo_upstream();
    // Disabling closes the proxy's listener and /reset binds it again: its port must not be
    // one the kernel may hand to another process meanwhile, so not an ephemeral one.
    let listen = non_ephemeral_port();
    let (s, v) = api(
        c.addr,
        "POST",
        "/proxies",
        &format!(
            r#"{{"name":"db","listen":"{listen}","upstream":"{}"}}"#,
            up.addr
        ),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = api(
        c.addr,
        "POST",
        "/proxies",
        &format!(r#"{{"name":"db","upstream":"{}"}}"#, up.addr),
    );
    assert_eq!((s, v["status"].as_u64()), (409, Some(409)), "{v}");
    assert_eq!(api(c.addr, "GET", "/proxies/nope", "").0, 404);
    assert_eq!(api(c.addr, "POST", "/proxies", r#"{"name":"x"}"#).0, 400);
    assert_eq!(
        api(
            c.addr,
            "POST",
            "/proxies/db/toxics",
            r#"{"type":"latency","attributes":{"latency":"x"}}"#
        )
        .0,
        400
    );
    assert_eq!(
        api(c.addr, "POST", "/proxies/db/toxics", r#"{"type":"warp"}"#).0,
        400
    );
    assert_eq!(
        api(c.addr, "POST", "/proxies/db/toxics", "{not json").0,
        400
    );

    let (s, t) = api(
        c.addr,
        "POST",
        "/proxies/db/toxics",
        r#"{"type":"latency","attributes":{"latency":100,"jitter":10}}"#,
    );
    assert_eq!(s, 200);
    assert_eq!(
        t,
        serde_json::json!({"name":"latency_downstream","type":"latency","stream":"downstream","toxicity":1.0,"attributes":{"latency":100,"jitter":10}})
    );
    assert_eq!(
        api(
            c.addr,
            "POST",
            "/proxies/db/toxics",
            r#"{"type":"latency"}"#
        )
        .0,
        409
    );
    let (s, t) = api(
        c.addr,
        "POST",
        "/proxies/db/toxics/latency_downstream",
        r#"{"attributes":{"latency":250}}"#,
    );
    assert_eq!((s, t["attributes"]["latency"].as_u64()), (200, Some(250)));
    let (_, list) = api(c.addr, "GET", "/proxies", "");
    assert_eq!(list["db"]["toxics"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["db"]["enabled"], true);

    assert_eq!(
        api(c.addr, "POST", "/proxies/db", r#"{"enabled":false}"#).0,
        200
    );
    assert_eq!(api(c.addr, "POST", "/reset", "").0, 204);
    let (_, p) = api(c.addr, "GET", "/proxies/db", "");
    assert_eq!(
        (p["enabled"].clone(), p["toxics"].clone()),
        (serde_json::json!(true), serde_json::json!([]))
    );
    let (s, v) = api(
        c.addr,
        "POST",
        "/populate",
        &format!(
            r#"[{{"name":"db","listen":"127.0.0.1:0","upstream":"{}"}},{{"name":"cache","listen":"127.0.0.1:0","upstream":"{}"}}]"#,
            up.addr, up.addr
        ),
    );
    assert_eq!(
        (s, v["proxies"].as_array().map(Vec::len)),
        (201, Some(2)),
        "{v}"
    );
    assert_eq!(api(c.addr, "DELETE", "/proxies/db/toxics/none", "").0, 404);
    assert_eq!(api(c.addr, "DELETE", "/proxies/cache", "").0, 204);
    assert_eq!(api(c.addr, "GET", "/proxies/cache", "").0, 404);
}

#[test]
fn forwards_bytes_exactly_and_respects_half_close() {
    let c = chaos(&[]);
    let up = echo_upstream();
    let addr = proxy(&c, "echo", up.addr, false);
    let data: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut s = connect(addr);
    let mut writer = s.try_clone().expect("clone");
    let sent = data.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&sent).expect("write");
        writer.shutdown(Shutdown::Write).expect("half close");
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("read to EOF");
    w.join().expect("writer");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "bytes differ");
}

#[test]
fn latency_toxic_applies_to_live_connections_and_is_removable() {
    let c = chaos(&[]);
    let up = mock(&[]);
    let addr = proxy(&c, "svc", up.addr, false);
    let mut s = connect(addr);
    let one = |s: &mut TcpStream| {
        let t0 = Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            .expect("write");
        assert_eq!(read_response(s).status, 200);
        t0.elapsed()
    };
    assert!(one(&mut s) < Duration::from_millis(100));
    add_toxic(
        &c,
        "svc",
        r#"{"type":"latency","attributes":{"latency":200}}"#,
    );
    let slow = one(&mut s);
    assert!(
        slow >= Duration::from_millis(195) && slow < Duration::from_millis(600),
        "{slow:?}"
    );
    assert_eq!(
        api(
            c.addr,
            "DELETE",
            "/proxies/svc/toxics/latency_downstream",
            ""
        )
        .0,
        204
    );
    assert!(one(&mut s) < Duration::from_millis(100));
}

#[test]
fn bandwidth_toxic_caps_throughput() {
    let c = chaos(&[]);
    let up = echo_upstream();
    let addr = proxy(&c, "bw", up.addr, false);
    add_toxic(
        &c,
        "bw",
        r#"{"type":"bandwidth","attributes":{"rate":100}}"#,
    );
    let mut s = connect(addr);
    let t0 = Instant::now();
    s.write_all(&[7u8; 50_000]).expect("write");
    let mut got = vec![0u8; 50_000];
    s.read_exact(&mut got).expect("echo");
    let took = t0.elapsed();
    // 50 KB at 100 KB/s is 0.5 s.
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn limit_data_closes_after_the_byte_budget() {
    let c = chaos(&[]);
    let up = echo_upstream();
    let addr = proxy(&c, "lim", up.addr, false);
    add_toxic(
        &c,
        "lim",
        r#"{"type":"limit_data","attributes":{"bytes":100}}"#,
    );
    let mut s = connect(addr);
    s.write_all(&[1u8; 1000]).expect("write");
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    assert_eq!(back.len(), 100);
}

#[test]
fn reset_peer_sends_rst_its_timeout_after_the_first_data() {
    let c = chaos(&[]);
    let up = echo_upstream();
    let addr = proxy(&c, "rst", up.addr, false);
    add_toxic(
        &c,
        "rst",
        r#"{"type":"reset_peer","stream":"upstream","attributes":{"timeout":200}}"#,
    );
    let mut s = connect(addr);
    // As Toxiproxy's: nothing happens until data arrives; the timeout counts from there.
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut b = [0u8; 16];
    let idle = s.read(&mut b).expect_err("no reset without data");
    assert!(
        matches!(idle.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{idle:?}"
    );
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let t0 = Instant::now();
    s.write_all(b"hello").expect("write");
    let err = s.read(&mut b).expect_err("reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    assert!(
        t0.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn timeout_toxic_blackholes_then_closes() {
    let c = chaos(&[]);
    let up = echo_upstream();
    let addr = proxy(&c, "bh", up.addr, false);
    add_toxic(
        &c,
        "bh",
        r#"{"type":"timeout","stream":"upstream","attributes":{"timeout":300}}"#,
    );
    let mut s = connect(addr);
    let t0 = Instant::now();
    s.write_all(b"hello").expect("write");
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back);
    assert!(back.is_empty(), "no data passes");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn slow_close_delays_the_fin() {
    let c = chaos(&[]);
    let up = echo_upstream();
    let addr = proxy(&c, "sc", up.addr, false);
    add_toxic(
        &c,
        "sc",
        r#"{"type":"slow_close","attributes":{"delay":300}}"#,
    );
    let mut s = connect(addr);
    s.write_all(b"bye").expect("write");
    s.shutdown(Shutdown::Write).expect("half close");
    let t0 = Instant::now();
    let mut back = Vec::new();
    s.read_to_end(&mut back).expect("eof");
    assert_eq!(back, b"bye");
    assert!(
        t0.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn slicer_splits_data_with_delays_and_keeps_it_intact() {
    let c = chaos(&[]);
    let up = echo_upstream();
    let addr = proxy(&c, "sl", up.addr, false);
    add_toxic(
        &c,
        "sl",
        r#"{"type":"slicer","attributes":{"average_size":10,"size_variation":5,"delay":2000}}"#,
    );
    let mut s = connect(addr);
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let t0 = Instant::now();
    s.write_all(&data).expect("write");
    let mut back = vec![0u8; 1000];
    s.read_exact(&mut back).expect("read");
    assert_eq!(back, data);
    // About 100 slices 2 ms apart.
    assert!(
        t0.elapsed() >= Duration::from_millis(120),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn conn_rate_limit_stalls_like_dropped_syns_then_resets_after_max_stall() {
    let c = chaos(&["--proxy-metrics"]);
    let up = mock(&[]);
    let addr = proxy(&c, "nat", up.addr, false);
    add_toxic(
        &c,
        "nat",
        r#"{"type":"conn_rate_limit","attributes":{"rate":1,"burst":1}}"#,
    );
    let (r, first) = timed_get(addr, "/a");
    assert_eq!(r.status, 200);
    assert!(first < Duration::from_millis(300), "{first:?}");
    // The bucket is empty: the next connection gets nothing through for 1 s (first SYN
    // retransmission), then the token that refilled meanwhile lets it pass.
    let (r, second) = timed_get(addr, "/b");
    assert_eq!(r.status, 200);
    assert!(
        second >= Duration::from_millis(900) && second < Duration::from_millis(2500),
        "{second:?}"
    );

    assert_eq!(
        api(
            c.addr,
            "POST",
            "/proxies/nat/toxics/conn_rate_limit_downstream",
            r#"{"attributes":{"rate":1,"burst":1,"max_stall":400}}"#
        )
        .0,
        200
    );
    // The bucket is still empty from /b: this connection is over the rate.
    let mut s = connect(addr);
    let t0 = Instant::now();
    s.write_all(b"GET /c HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    let mut b = [0u8; 64];
    let err = s.read(&mut b).expect_err("reset after max_stall");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // What the NAT model did is counted: 3 connections, 2 stalled, 1 reset.
    let metrics = get(c.addr, "/metrics", "").body;
    for line in [
        "hopline_chaos_connections_total{proxy=\"nat\"} 3",
        "hopline_chaos_nat_stalled_total{proxy=\"nat\"} 2",
        "hopline_chaos_nat_reset_total{proxy=\"nat\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
}

#[test]
fn loss_stalls_chunks_like_retransmissions() {
    let c = chaos(&[]);
    let up = mock(&[]);
    let addr = proxy(&c, "lossy", up.addr, false);
    add_toxic(
        &c,
        "lossy",
        r#"{"type":"loss","attributes":{"probability":1.0,"stall":300}}"#,
    );
    let (r, took) = timed_get(addr, "/lossy");
    assert_eq!(r.status, 200);
    // Both the request chunk (upstream) and... only the downstream toxic: one stall.
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn cc_defense_answers_302_without_reaching_the_upstream() {
    let c = chaos(&[]);
    let up = mock(&[]);
    let addr = proxy(&c, "cc", up.addr, true);
    add_toxic(
        &c,
        "cc",
        r#"{"type":"cc_defense","attributes":{"max_rps_per_client":1,"location":"https://captcha.example/"}}"#,
    );
    let mut s = connect(addr);
    let mut redirected = 0;
    let mut passed = 0;
    for i in 0..4 {
        write!(s, "GET /r{i} HTTP/1.1\r\nhost: t\r\n\r\n").expect("write");
        let r = read_response(&mut s);
        match r.status {
            302 => {
                assert_eq!(r.header("location"), Some("https://captcha.example/"));
                redirected += 1;
            }
            200 => passed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(redirected >= 2, "{redirected} redirected");
    // A last request after the toxic is gone, on the same connection: once the upstream
    // logged it, it has logged everything that reached it before.
    assert_eq!(
        api(
            c.addr,
            "DELETE",
            "/proxies/cc/toxics/cc_defense_downstream",
            ""
        )
        .0,
        204
    );
    s.write_all(b"GET /final HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    assert_eq!(read_response(&mut s).status, 200);
    up.wait_json(Duration::from_secs(5), "final request", |v| {
        v["path"] == "/final"
    });
    assert_eq!(
        up.json_lines().len(),
        passed + 1,
        "only the requests that passed reached the upstream"
    );
}

#[test]
fn abort_answers_the_status_in_place_of_the_upstream() {
    let c = chaos(&[]);
    let up = mock(&[]);
    let addr = proxy(&c, "ab", up.addr, true);
    add_toxic(
        &c,
        "ab",
        r#"{"type":"abort","attributes":{"status":503,"probability":1.0}}"#,
    );
    let r = get(addr, "/x", "");
    assert_eq!(
        (r.status, r.header("x-hopline-chaos")),
        (503, Some("injected"))
    );
    assert_eq!(
        api(c.addr, "DELETE", "/proxies/ab/toxics/abort_downstream", "").0,
        204
    );
    assert_eq!(get(addr, "/y", "").status, 200);
    up.wait_json(Duration::from_secs(5), "the passed request", |v| {
        v["path"] == "/y"
    });
    assert_eq!(
        up.json_lines().len(),
        1,
        "the aborted request never reached the upstream"
    );
}

#[test]
fn config_file_starts_proxies_and_bad_files_name_the_line() {
    let up = mock(&[]);
    let path = temp_file(
        "chaos.toml",
        &format!("seed = 3\n[[proxies]]\nname = \"coupon_nat\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n[[proxies.toxics]]\ntype = \"latency\"\nattributes = {{ latency = 100 }}\n", up.addr),
    );
    let c = Proc::spawn(&[
        "chaos",
        "-c",
        path.to_str().expect("utf8"),
        "--api",
        "127.0.0.1:0",
    ]);
    c.stderr.wait_for(Duration::from_secs(5), "seed line", |l| {
        l.contains("seed 3")
    });
    let (_, p) = api(c.addr, "GET", "/proxies/coupon_nat", "");
    let addr: std::net::SocketAddr = p["listen"].as_str().expect("listen").parse().expect("addr");
    let (r, took) = timed_get(addr, "/");
    assert_eq!(r.status, 200);
    assert!(took >= Duration::from_millis(95), "{took:?}");

    let bad = temp_file("bad-chaos.toml", "[[proxies]]\nname = \"x\"\nupstream = \"127.0.0.1:1\"\n[[proxies.toxics]]\ntype = \"latency\"\nattributes = { latency = 100, jiter = 5 }\n");
    let out = std::process::Command::new(bin())
        .args(["chaos", "-c", bad.to_str().expect("utf8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:6:31: key `proxies[0].toxics[0].attributes.jiter`: unknown attribute",
            bad.display()
        )),
        "{err}"
    );
}

/// Runs a third-party Toxiproxy client script against a fresh `hopline chaos` and a mock
/// upstream (`PROGRAM SCRIPT API_PORT UPSTREAM`); it must exit 0 and say so.
fn third_party_client(program: &str, script: &str, env: &[(&str, std::path::PathBuf)]) {
    let c = chaos(&[]);
    let up = mock(&[]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(program)
        .arg(root.join("tests/third_party").join(script))
        .arg(c.addr.port().to_string())
        .arg(up.addr.to_string())
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
}

/// Needs PyPI's `toxiproxy-python==0.1.1` (installed by `.ci/run`); run with `--ignored`.
#[test]
#[ignore = "needs the third-party Python client toxiproxy-python (installed by .ci/run)"]
fn third_party_toxiproxy_python_client_drives_the_api() {
    third_party_client("python3", "toxiproxy_python.py", &[]);
}

/// Needs npm's `toxiproxy-node-client@4.1.0` under `target/node` (installed by `.ci/run`).
#[test]
#[ignore = "needs the third-party Node client toxiproxy-node-client (installed by .ci/run)"]
fn third_party_toxiproxy_node_client_drives_the_api() {
    let modules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/node/node_modules");
    third_party_client("node", "toxiproxy_node.js", &[("NODE_PATH", modules)]);
}

/// `GET /version` with this `Host` and more lines: the status and body.
fn version_with(api: std::net::SocketAddr, host: &str, extra: &str) -> (u16, String) {
    let mut s = connect(api);
    write!(s, "GET /version HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n").expect("write");
    let r = read_response(&mut s);
    (r.status, r.body)
}

#[test]
fn the_chaos_api_refuses_rebinding_names_and_web_pages() {
    let c = chaos(&["--api-allowed-host", "chaos.drill.internal"]);
    // A rebinding page cannot create a relay to anywhere: its name is in Host.
    let (status, body) = version_with(c.addr, "evil.example", "");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--api-allowed-host"), "{body}");
    // A page's fetch carries an Origin (Firefox lets it set any user agent).
    let addr = c.addr.to_string();
    assert_eq!(
        version_with(c.addr, &addr, "origin: https://evil.example\r\n").0,
        403
    );
    // Toxiproxy clients name the address; localhost and a listed name are answered.
    for host in [addr.as_str(), "localhost:8474", "CHAOS.drill.internal"] {
        assert_eq!(version_with(c.addr, host, "").0, 200, "{host}");
    }
}

#[test]
fn the_chaos_proxy_bounds_bodies_attributes_and_forgotten_names() {
    let c = chaos(&["--proxy-metrics"]);
    let up = mock(&[]);
    let addr = proxy(&c, "web", up.addr, true);
    // An HTTP-mode proxy reads bodies whole: one declared over 16 MiB is refused unread.
    let mut s = connect(addr);
    s.write_all(b"POST /big HTTP/1.1\r\nhost: t\r\ncontent-length: 17000000\r\n\r\n")
        .expect("write");
    assert_eq!(read_response(&mut s).status, 413);
    // An attribute near u64::MAX is a clear 400, not an overflow later.
    let (status, v) = api(
        c.addr,
        "POST",
        "/proxies/web/toxics",
        r#"{"type":"latency","attributes":{"latency":18446744073709551615}}"#,
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("at most")),
        "{v}"
    );
    // A deleted proxy's counters leave /metrics.
    let metrics = || {
        let mut s = connect(c.addr);
        write!(s, "GET /metrics HTTP/1.1\r\nhost: {}\r\n\r\n", c.addr).expect("write");
        read_response(&mut s).body
    };
    assert!(metrics().contains("proxy=\"web\""));
    assert_eq!(api(c.addr, "DELETE", "/proxies/web", "").0, 204);
    assert!(!metrics().contains("proxy=\"web\""), "{}", metrics());
}
