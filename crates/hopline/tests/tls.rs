//! TLS both ways, against the real binary over loopback with certificates made at test
//! time: SNI and ALPN on the listener, the handshake bounded like a request head, plain
//! HTTP on the TLS port, certificate rotation by SIGHUP; upstream TLS verified, with every
//! certificate failure named and counted.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::pki::{connect, connect_with, get_tls, tls_gateway, Ca, Leaf, Validity};
use common::*;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn sni_picks_the_certificate_alpn_offers_h2_and_http11_and_the_log_shows_the_session() {
    let ca = Ca::new("sni");
    let default = ca.leaf("default", "default", &["default.test"], Validity::Good);
    let a = ca.leaf("a", "a", &["a.test"], Validity::Good);
    let b = ca.leaf("b", "b", &["*.b.test"], Validity::Good);
    let up = mock(&["--quiet"]);
    let extra = format!(
        "[[server.tls.certs]]\nserver_names = [\"a.test\"]\ncert = \"{}\"\nkey = \"{}\"\n[[server.tls.certs]]\nserver_names = [\"*.b.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        path(&a.cert), path(&a.key), path(&b.cert), path(&b.key)
    );
    let gw = tls_gateway(&default, &extra, "", up.addr);
    let addr = tls_addr(&gw);
    // Each name verifies only against the certificate issued for it: a handshake that
    // succeeds proves which certificate was served.
    for sni in ["a.test", "x.b.test", "default.test"] {
        let mut s =
            connect(addr, &ca.cert, sni, &["http/1.1"]).unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "{sni}");
        assert_eq!(get_tls(&mut s, "/x").0, 200, "{sni}");
    }
    // A client that offers h2 gets it (`[server.h2] enabled`, the default).
    let s = connect(addr, &ca.cert, "a.test", &["h2", "http/1.1"]).expect("h2 handshake");
    assert_eq!(s.conn.alpn_protocol(), Some(&b"h2"[..]));
    // An unknown name gets the default certificate, which is not valid for it.
    let e = connect(addr, &ca.cert, "other.test", &[]).expect_err("wrong name accepted");
    assert!(
        e.to_string()
            .contains("certificate is only valid for DnsName(\"default.test\")"),
        "{e}"
    );
    // A client that speaks neither shares no protocol with us: refused, counted.
    assert!(connect(addr, &ca.cert, "a.test", &["spdy/3.1"]).is_err());
    let line = gw.wait_json(WAIT, "a.test line", |v| v["sni"] == "a.test");
    assert_eq!(line["tls_version"], "1.3");
    let ms = line["tls_handshake_ms"].as_f64().expect("tls_handshake_ms");
    assert!(ms > 0.0 && ms < 5000.0, "{ms}");
    // Plain listener lines carry no TLS fields.
    let plain = get(gw.addr, "/plain", "");
    assert_eq!(plain.status, 200);
    let line = gw.wait_json(WAIT, "plain line", |v| v["path"] == "/plain");
    assert!(line.get("tls_version").is_none(), "{line}");
    assert!(
        metric(
            &gw,
            "hopline_tls_handshake_errors_total{reason=\"incompatible\"}"
        ) >= 1.0
    );
}

#[test]
fn an_idle_tls_connection_is_served_again_and_closes_at_its_idle_timeout() {
    let ca = Ca::new("idle");
    let leaf = ca.leaf("leaf", "leaf", &["localhost"], Validity::Good);
    let up = mock(&["--quiet"]);
    let gw = tls_gateway(&leaf, "", "idle_timeout = \"800ms\"", up.addr);
    let addr = tls_addr(&gw);
    let mut s = connect(addr, &ca.cert, "localhost", &["http/1.1"]).expect("handshake");
    s.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(get_tls(&mut s, "/a").0, 200);
    // Quiet past the 100 ms hot wait, the connection waits for its socket without a
    // read buffer; its next request is read and served all the same, twice.
    for path in ["/b", "/c"] {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(get_tls(&mut s, path).0, 200, "{path}");
    }
    // Then silent: closed once the idle timeout has passed since the last response.
    let last = Instant::now();
    let mut byte = [0u8; 1];
    let end = std::io::Read::read(&mut s, &mut byte);
    let took = last.elapsed();
    assert!(
        !matches!(end, Ok(n) if n > 0),
        "data on an idle connection: {end:?}"
    );
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
}

#[test]
fn a_stalled_handshake_is_cut_at_header_read_timeout_and_plain_http_gets_400() {
    let ca = Ca::new("stall");
    let leaf = ca.leaf("leaf", "leaf", &["localhost"], Validity::Good);
    let up = mock(&["--quiet"]);
    let gw = tls_gateway(&leaf, "", "header_read_timeout = \"300ms\"", up.addr);
    let addr = tls_addr(&gw);
    // A client that starts a TLS record and stalls.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&[0x16, 0x03, 0x01]).expect("write");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
    let took = start.elapsed();
    assert_eq!(n, 0, "expected a close");
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    // Plain HTTP on the TLS port: a 400 that says why, then close. The request
    // arrives in two pieces with the answer read in between: the rest must be read
    // away by the gateway (lingering close), not answered with a reset.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /x HTTP/1.1\r\n").expect("write");
    let r = read_response(&mut s);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("plain HTTP"), "{}", r.body);
    s.write_all(b"host: test\r\n\r\n").expect("write the rest");
    let mut rest = [0u8; 16];
    let end = std::io::Read::read(&mut s, &mut rest);
    assert!(matches!(end, Ok(0)), "expected a clean close, got {end:?}");
    assert_eq!(
        metric(
            &gw,
            "hopline_tls_handshake_errors_total{reason=\"timeout\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "hopline_tls_handshake_errors_total{reason=\"plain_http\"}"
        ),
        1.0
    );
    // Without log.tls_errors, failed handshakes write no log line.
    assert!(gw.json_lines().iter().all(|v| v.get("event").is_none()));
}

#[test]
fn header_read_timeout_counts_from_accept_across_the_handshake() {
    let ca = Ca::new("accept");
    let leaf = ca.leaf("leaf", "leaf", &["localhost"], Validity::Good);
    let up = mock(&["--quiet"]);
    let gw = tls_gateway(&leaf, "", "header_read_timeout = \"1s\"", up.addr);
    let addr = tls_addr(&gw);
    let config = common::pki::client_config(&ca.cert).expect("config");
    // 800 ms of silence before the client hello, then a quick handshake and no request:
    // the 408 is due 1 s after accept, not 1 s after the handshake.
    let start = Instant::now();
    let tcp = TcpStream::connect(addr).expect("connect");
    std::thread::sleep(Duration::from_millis(800));
    let mut s = common::pki::handshake(tcp, config, "localhost").expect("handshake");
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    let took = start.elapsed();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(took < Duration::from_millis(1500), "408 after {took:?}");
}

#[test]
fn min_version_1_3_refuses_a_tls12_client_and_tls_errors_can_be_logged() {
    let ca = Ca::new("v13");
    let leaf = ca.leaf("leaf", "leaf", &["localhost"], Validity::Good);
    let up = mock(&["--quiet"]);
    let extra = "min_version = \"1.3\"\n[log]\ntls_errors = true";
    let gw = tls_gateway(&leaf, extra, "", up.addr);
    let addr = tls_addr(&gw);
    let tls12 = [&rustls::version::TLS12];
    assert!(connect_with(addr, &ca.cert, "localhost", &[], &tls12).is_err());
    let mut s = connect(addr, &ca.cert, "localhost", &[]).expect("TLS 1.3");
    assert_eq!(get_tls(&mut s, "/x").0, 200);
    let e = gw.wait_json(WAIT, "tls_error line", |v| v["event"] == "tls_error");
    assert_eq!(e["reason"], "incompatible", "{e}");
}

#[test]
fn sighup_rotates_certificates_keeps_open_connections_and_refuses_a_bad_key() {
    let old_ca = Ca::new("gen1");
    let new_ca = Ca::new("gen2");
    let leaf = old_ca.leaf("leaf", "gen1", &["localhost"], Validity::Good);
    let up = mock(&["--quiet"]);
    let gw = tls_gateway(&leaf, "", "", up.addr);
    let addr = tls_addr(&gw);
    let mut kept = connect(addr, &old_ca.cert, "localhost", &[]).expect("gen1");
    assert_eq!(get_tls(&mut kept, "/before").0, 200);
    // Rotate: the same file names, a certificate from another CA.
    let rotated = new_ca.leaf("rotated", "gen2", &["localhost"], Validity::Good);
    std::fs::copy(&rotated.cert, &leaf.cert).expect("copy cert");
    std::fs::copy(&rotated.key, &leaf.key).expect("copy key");
    let hup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &gw.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    };
    hup();
    gw.stderr
        .wait_for(WAIT, "reloaded", |l| l.contains("reloaded"));
    // The open connection is kept and still serves.
    assert_eq!(get_tls(&mut kept, "/after").0, 200);
    // New connections get the new certificate.
    assert!(connect(addr, &old_ca.cert, "localhost", &[]).is_err());
    let mut s = connect(addr, &new_ca.cert, "localhost", &[]).expect("gen2");
    assert_eq!(get_tls(&mut s, "/new").0, 200);
    // A key that does not match: the reload fails as a whole, naming the file.
    let other = new_ca.leaf("other", "other", &["localhost"], Validity::Good);
    std::fs::copy(&other.key, &leaf.key).expect("copy key");
    hup();
    let failed = gw
        .stderr
        .wait_for(WAIT, "reload failed", |l| l.contains("reload failed"));
    assert!(
        failed.contains("does not match the certificate"),
        "{failed}"
    );
    assert!(failed.contains(path(&leaf.key)), "{failed}");
    let mut s = connect(addr, &new_ca.cert, "localhost", &[]).expect("still gen2");
    assert_eq!(get_tls(&mut s, "/still").0, 200);
}

/// GETs `p` and returns the status, the first flag, the cause and the access-log line.
fn outcome(gw: &Proc, p: &str) -> (u16, String, String, serde_json::Value) {
    let r = get(gw.addr, p, "");
    let line = gw.wait_json(WAIT, p, |v| v["path"] == p);
    let flag = line["flags"][0].as_str().unwrap_or("").to_string();
    let cause = line["cause"].as_str().unwrap_or("").to_string();
    (r.status, flag, cause, line)
}

/// An upstream that accepts TCP and never says anything.
fn silent_upstream() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

#[test]
fn upstream_tls_is_verified_and_every_failure_names_its_cause() {
    let ca = Ca::new("up");
    let stranger = Ca::new("stranger");
    let good = ca.leaf("good", "pay.test", &["localhost"], Validity::Good);
    let expired = ca.leaf(
        "expired",
        "old.test",
        &["localhost"],
        Validity::ExpiredOn(2026, 10, 1),
    );
    let wrong = ca.leaf("wrong", "wrong.test", &["wrong.test"], Validity::Good);
    let unknown = stranger.leaf("unknown", "unknown.test", &["localhost"], Validity::Good);
    let client = ca.leaf(
        "client",
        "gateway-client",
        &["gateway.test"],
        Validity::Good,
    );
    let serve = |leaf: &Leaf, extra: &[&str]| {
        let mut args = vec![
            "--quiet",
            "--tls-cert",
            path(&leaf.cert),
            "--tls-key",
            path(&leaf.key),
        ];
        args.extend_from_slice(extra);
        mock(&args)
    };
    let m_good = serve(&good, &[]);
    let m_expired = serve(&expired, &[]);
    let m_wrong = serve(&wrong, &[]);
    let m_unknown = serve(&unknown, &[]);
    let m_mtls = serve(&good, &["--tls-client-ca", path(&ca.cert)]);
    let (_silent, silent) = silent_upstream();
    let ca_line = format!("ca = \"{}\"", path(&ca.cert));
    let client_lines = format!(
        "client_cert = \"{}\"\nclient_key = \"{}\"",
        path(&client.cert),
        path(&client.key)
    );
    let ups = [
        ("good", m_good.addr, ca_line.clone()),
        ("expired", m_expired.addr, ca_line.clone()),
        ("wrong", m_wrong.addr, ca_line.clone()),
        ("unknown", m_unknown.addr, ca_line.clone()),
        ("nocert", m_mtls.addr, ca_line.clone()),
        ("mtls", m_mtls.addr, format!("{ca_line}\n{client_lines}")),
        (
            "stall",
            silent,
            format!("{ca_line}\nconnect_timeout = \"250ms\""),
        ),
    ];
    let mut config = String::from("[admin]\nlisten = \"127.0.0.1:0\"\n");
    for (name, addr, extra) in &ups {
        config.push_str(&format!(
            "[upstreams.{name}]\nendpoints = [\"https://localhost:{}\"]\nmax_retries = 0\n{extra}\n[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\nupstream = \"{name}\"\n",
            addr.port()
        ));
    }
    let gw = gateway("", &config);
    let cause = |p: &str| {
        let (status, flag, cause, _) = outcome(&gw, p);
        (status, flag, cause)
    };
    assert_eq!(cause("/good").0, 200);
    assert_eq!(cause("/mtls").0, 200);
    let cases = [
        (
            "/expired",
            502,
            "TLS: certificate expired on 2026-10-01 (subject CN=old.test)",
        ),
        (
            "/wrong",
            502,
            "TLS: certificate not valid for name \"localhost\" (subject CN=wrong.test)",
        ),
        (
            "/unknown",
            502,
            "TLS: unknown issuer (subject CN=unknown.test)",
        ),
        ("/nocert", 502, "TLS: upstream refused the handshake"),
        (
            "/stall",
            504,
            "TLS handshake timed out after 250ms (connect_timeout)",
        ),
    ];
    for (p, status, want) in cases {
        let (got, flag, cause) = cause(p);
        assert_eq!((got, flag.as_str()), (status, "UF"), "{p}: {cause}");
        assert!(cause.contains(want), "{p}: {cause}");
    }
    for (upstream, reason) in [
        ("expired", "cert_expired"),
        ("wrong", "cert_wrong_name"),
        ("unknown", "unknown_issuer"),
        ("nocert", "peer_alert"),
        ("stall", "timeout"),
    ] {
        let series = format!(
            "hopline_upstream_tls_handshake_errors_total{{upstream=\"{upstream}\",zone=\"internal\",reason=\"{reason}\"}}"
        );
        assert_eq!(metric(&gw, &series), 1.0, "{series}");
    }
    assert!(
        metric(
            &gw,
            "hopline_upstream_tls_handshake_duration_seconds_count{upstream=\"good\""
        ) >= 1.0
    );
    let not_after = metric(
        &gw,
        "hopline_tls_cert_not_after_seconds{listener=\"\",upstream=\"mtls\",subject=\"CN=gateway-client\"}",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(not_after > now + 300.0 * 86_400.0, "{not_after}");
}

#[test]
fn every_chaos_toxic_applies_to_tls_bytes_unchanged() {
    let ca = Ca::new("chaos");
    let leaf = ca.leaf("leaf", "coupon.test", &["localhost"], Validity::Good);
    let up = mock(&[
        "--quiet",
        "--tls-cert",
        path(&leaf.cert),
        "--tls-key",
        path(&leaf.key),
    ]);
    let c = chaos(&[]);
    // toxic name, toxic JSON, expected status, flag, and a piece of the cause.
    let cases = [
        (
            "latency",
            r#"{"type":"latency","stream":"downstream","attributes":{"latency":200}}"#,
            200,
            "",
            "",
        ),
        (
            "bandwidth",
            r#"{"type":"bandwidth","stream":"downstream","attributes":{"rate":64}}"#,
            200,
            "",
            "",
        ),
        (
            "slicer",
            r#"{"type":"slicer","stream":"downstream","attributes":{"average_size":8,"size_variation":4,"delay":10}}"#,
            200,
            "",
            "",
        ),
        (
            "slow_close",
            r#"{"type":"slow_close","stream":"downstream","attributes":{"delay":100}}"#,
            200,
            "",
            "",
        ),
        (
            "timeout",
            r#"{"type":"timeout","stream":"upstream","attributes":{"timeout":0}}"#,
            504,
            "UF",
            "TLS handshake timed out after 500ms (connect_timeout)",
        ),
        (
            "loss",
            r#"{"type":"loss","stream":"downstream","attributes":{"probability":1.0,"stall":1000}}"#,
            504,
            "UF",
            "TLS handshake timed out",
        ),
        (
            "reset_peer",
            r#"{"type":"reset_peer","stream":"upstream","attributes":{"timeout":0}}"#,
            502,
            "UF",
            "TLS: connection lost during the handshake",
        ),
        (
            "limit_data",
            r#"{"type":"limit_data","stream":"downstream","attributes":{"bytes":100}}"#,
            502,
            "UF",
            "TLS: ",
        ),
    ];
    let mut config = String::new();
    for (name, toxic, ..) in &cases {
        let listen = proxy(&c, name, up.addr, false);
        add_toxic(&c, name, toxic);
        config.push_str(&format!(
            "[upstreams.{name}]\nendpoints = [\"https://{listen}\"]\nsni = \"localhost\"\nca = \"{}\"\nconnect_timeout = \"500ms\"\ntimeout = \"3s\"\nmax_retries = 0\npool_max_idle = 0\n[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\nupstream = \"{name}\"\ntimeout = \"5s\"\n",
            path(&ca.cert)
        ));
    }
    let gw = gateway("", &config);
    for (name, _, status, flag, cause) in cases {
        let p = format!("/{name}");
        let r = get(gw.addr, &p, "");
        let line = gw.wait_json(WAIT, &p, |v| v["path"] == p.as_str());
        assert_eq!(r.status, status, "{name}: {line}");
        assert_eq!(
            line["flags"][0].as_str().unwrap_or(""),
            flag,
            "{name}: {line}"
        );
        let got = line["cause"].as_str().unwrap_or("");
        assert!(got.contains(cause), "{name}: {got}");
        if name == "latency" {
            let ms = line["duration_ms"].as_f64().expect("duration");
            assert!(ms >= 200.0, "latency toxic not applied: {ms} ms");
        }
    }
}
