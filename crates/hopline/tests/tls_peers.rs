//! TLS against the clients and servers users have: curl and `openssl s_client` against
//! hopline's TLS listener, Debian's nginx with `ssl` as hopline's upstream. `#[ignore]`d:
//! `.ci/run` installs the tools and runs them with `--ignored`.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::{tls_gateway, Ca, Validity};
use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// `openssl s_client` sending one request; its whole output.
fn s_client(addr: SocketAddr, ca: &std::path::Path, extra: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args(["-CAfile", path(ca), "-ign_eof"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GET /x HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .expect("write");
    let out = child.wait_with_output().expect("openssl output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
#[ignore = "needs curl and openssl (installed by .ci/run)"]
fn curl_and_openssl_s_client_speak_to_the_tls_listener() {
    let ca = Ca::new("peers");
    let leaf = ca.leaf("leaf", "localhost", &["localhost"], Validity::Good);
    let up = mock(&["--quiet", "--body", "hello over tls"]);
    let gw = tls_gateway(&leaf, "", "", up.addr);
    let addr = tls_addr(&gw);
    let url = format!("https://localhost:{}/x", addr.port());
    let out = Command::new("curl")
        .args(["-sS", "-v", "--cacert", path(&ca.cert), &url])
        .output()
        .expect("curl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello over tls");
    // curl offers h2 and http/1.1; hopline picks h2 ([server.h2] enabled by default).
    assert!(err.contains("ALPN: server accepted h2"), "ALPN: {err}");
    let line = gw.wait_json(WAIT, "curl's line", |v| v["path"] == "/x");
    assert_eq!(line["protocol"], "HTTP/2", "{line}");
    let h1 = Command::new("curl")
        .args(["-sS", "-v", "--http1.1", "--cacert", path(&ca.cert), &url])
        .output()
        .expect("curl");
    let err = String::from_utf8_lossy(&h1.stderr);
    assert!(
        err.contains("ALPN: server accepted http/1.1"),
        "ALPN: {err}"
    );
    assert_eq!(String::from_utf8_lossy(&h1.stdout), "hello over tls");
    // curl without our CA refuses us: the certificate is really verified.
    let refused = Command::new("curl")
        .args(["-sS", &url])
        .output()
        .expect("curl");
    assert!(!refused.status.success());
    // openssl: TLS 1.3 and 1.2, each resumed on a second connection.
    let dir = temp_dir();
    for (version, file) in [("-tls1_3", "s13.pem"), ("-tls1_2", "s12.pem")] {
        let sess = dir.join(file);
        let first = s_client(addr, &ca.cert, &[version, "-sess_out", path(&sess)]);
        assert!(
            first.contains("Verification: OK") || first.contains("Verify return code: 0 (ok)"),
            "{first}"
        );
        assert!(first.contains("HTTP/1.1 200 OK"), "{first}");
        assert!(first.contains("New, TLSv1."), "{first}");
        let again = s_client(addr, &ca.cert, &[version, "-sess_in", path(&sess)]);
        assert!(
            again.contains("Reused, TLSv1."),
            "{version} not resumed: {again}"
        );
        assert!(again.contains("HTTP/1.1 200 OK"), "{again}");
    }
}

/// Debian's nginx serving HTTPS with `cert`/`key`.
type Nginx = Daemon;

fn nginx_tls(
    dir: &std::path::Path,
    port: u16,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Nginx {
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/b;\n  proxy_temp_path {d}/p;\n\
         fastcgi_temp_path {d}/f;\n  uwsgi_temp_path {d}/u;\n  scgi_temp_path {d}/s;\n\
         server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {c};\n    ssl_certificate_key {k};\n\
         location / {{ return 200 \"from nginx over tls\\n\"; }}\n  }}\n}}\n",
        d = dir.display(),
        c = cert.display(),
        k = key.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("conf");
    let child = Command::new("nginx")
        .args(["-c", path(&conf_path), "-p", path(dir)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt install nginx-light)");
    let end = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "nginx never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon(child)
}

#[test]
#[ignore = "needs nginx (installed by .ci/run)"]
fn nginx_with_ssl_is_a_verified_pooled_upstream() {
    let ca = Ca::new("nginx-up");
    let leaf = ca.leaf("nginx", "nginx.test", &["localhost"], Validity::Good);
    let dir = temp_dir();
    let port = closed_port().port();
    let _nginx = nginx_tls(&dir, port, &leaf.cert, &leaf.key);
    let gw = gateway(
        "",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.n]\nendpoints = [\"https://localhost:{port}\"]\nca = \"{}\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"n\"\n",
            path(&ca.cert)
        ),
    );
    for i in 0..5 {
        let p = format!("/n{i}");
        let r = get(gw.addr, &p, "");
        assert_eq!((r.status, r.body.as_str()), (200, "from nginx over tls\n"));
        // The line is written once the upstream connection is back in the pool: the next
        // request finds it there (without this wait it may race the check-in).
        gw.wait_json(WAIT, &p, |v| v["path"] == p.as_str());
    }
    // Five requests, one TLS handshake: pooled TLS connections are reused.
    let metrics = get(admin_addr(&gw), "/metrics", "").body;
    let handshakes = metrics
        .lines()
        .find(|l| {
            l.starts_with("hopline_upstream_tls_handshake_duration_seconds_count{upstream=\"n\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(handshakes, Some(1.0), "{metrics}");
}
