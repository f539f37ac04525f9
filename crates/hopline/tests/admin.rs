//! Admin API, metrics, egress zones and reload, end to end on the real binary.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn scrape(admin: SocketAddr) -> String {
    let r = get(admin, "/metrics", "");
    assert_eq!(r.status, 200);
    r.body
}

/// The value of a sample line `name{labels} value`, with labels given in any order.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn base_config(up: SocketAddr) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.svc]\nendpoints = [\"{up}\"]\n\
         [upstreams.dead]\nendpoints = [\"{}\"]\nmax_retries = 0\n\
         [[routes]]\nname = \"ok\"\npath_prefix = \"/ok\"\nupstream = \"svc\"\ntimeout = \"2s\"\n\
         [[routes]]\nname = \"slow\"\npath_prefix = \"/slow\"\nupstream = \"svc\"\ntimeout = \"100ms\"\n\
         [[routes]]\nname = \"broken\"\npath_prefix = \"/broken\"\nupstream = \"dead\"\n",
        closed_port()
    )
}

#[test]
fn health_ready_and_effective_config() {
    let up = mock(&[]);
    let gw = gateway("", &base_config(up.addr));
    let admin = admin_addr(&gw);
    assert_eq!(get(admin, "/healthz", "").status, 200);
    assert_eq!(get(admin, "/readyz", "").status, 200);
    assert_eq!(get(admin, "/nope", "").status, 404);
    let r = get(admin, "/config", "");
    let cfg: Value = serde_json::from_str(&r.body).expect("json");
    let slow = cfg["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["name"] == "slow")
        .expect("slow")
        .clone();
    assert_eq!(slow["deadline_ms"], 100);
    assert_eq!(
        slow["proxy"]["attempt_timeout_ms"], 100,
        "the attempt timeout is capped by the deadline"
    );
    assert_eq!(slow["proxy"]["connect_timeout_ms"], 100);
    assert_eq!(cfg["server"]["idle_timeout_ms"], 75_000);
    // The whole effective configuration: upstreams with endpoints and pools, log, budget.
    let svc = cfg["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .find(|u| u["name"] == "svc")
        .expect("svc")
        .clone();
    assert_eq!(svc["endpoints"], json!([up.addr.to_string()]));
    assert_eq!(svc["pool_max_idle"], 128);
    assert_eq!(cfg["log"]["access"], "stdout");
    assert_eq!(cfg["retry_budget"]["min_per_sec"], 10);
    assert_eq!(cfg["server"]["overload"], "pause");
}

#[test]
fn metrics_agree_exactly_with_the_access_log() {
    let up = mock(&["--latency", "300ms"]);
    let gw = gateway("", &base_config(up.addr));
    let admin = admin_addr(&gw);
    let mut expected = 0;
    for i in 0..3 {
        assert_eq!(get(gw.addr, &format!("/ok/{i}"), "").status, 200);
        assert_eq!(get(gw.addr, &format!("/slow/{i}"), "").status, 504);
        assert_eq!(get(gw.addr, &format!("/broken/{i}"), "").status, 502);
        assert_eq!(get(gw.addr, &format!("/none/{i}"), "").status, 404);
        expected += 4;
    }
    gw.wait_json(WAIT, "last line", |v| v["path"] == "/none/2");
    let lines = gw.json_lines();
    assert_eq!(lines.len(), expected);
    let mut counts: HashMap<(String, String, String), f64> = HashMap::new();
    for l in &lines {
        // A 404's line and its metric label spell "no route" the same way.
        let route = l["route"].as_str().expect("route").to_string();
        let flag = l["flags"][0].as_str().unwrap_or("").to_string();
        *counts
            .entry((route, l["status"].to_string(), flag))
            .or_default() += 1.0;
    }
    let text = scrape(admin);
    for ((route, status, flag), n) in &counts {
        let got = sample(
            &text,
            "hopline_requests_total",
            &[("route", route), ("status", status), ("flag", flag)],
        );
        assert_eq!(got, *n, "route={route} status={status} flag={flag}\n{text}");
    }
    assert_eq!(
        sample(
            &text,
            "hopline_upstream_requests_total",
            &[("upstream", "svc"), ("outcome", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "hopline_upstream_requests_total",
            &[("upstream", "svc"), ("outcome", "UT")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "hopline_upstream_requests_total",
            &[("upstream", "dead"), ("outcome", "UF")]
        ),
        3.0
    );
    assert!(
        text.contains("hopline_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(!text.contains("/ok/1"), "no raw paths in labels");
}

#[test]
#[ignore = "needs promtool from Debian's prometheus package (installed by .ci/run)"]
fn promtool_accepts_a_live_scrape() {
    let up = mock(&[]);
    let gw = gateway("", &base_config(up.addr));
    let admin = admin_addr(&gw);
    assert_eq!(get(gw.addr, "/ok/x", "").status, 200);
    assert_eq!(get(gw.addr, "/broken/x", "").status, 502);
    let text = scrape(admin);
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn egress_limit_is_shared_by_all_egress_upstreams_and_zone_is_logged() {
    let a = mock(&["--latency", "1500ms"]);
    let b = mock(&[]);
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[egress]\nmax_in_flight = 1\n\
         [upstreams.a]\nendpoints = [\"{}\"]\nzone = \"egress\"\n\
         [upstreams.b]\nendpoints = [\"{}\"]\nzone = \"egress\"\nmax_pending = 0\n\
         [upstreams.inside]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"a\"\npath = \"/a\"\nupstream = \"a\"\n\
         [[routes]]\nname = \"b\"\npath = \"/b\"\nupstream = \"b\"\n\
         [[routes]]\nname = \"inside\"\npath = \"/inside\"\nupstream = \"inside\"\n",
        a.addr, b.addr, b.addr
    );
    let gw = gateway("", &text);
    let addr = gw.addr;
    let admin = admin_addr(&gw);
    let mut c = connect(addr);
    c.write_all(b"GET /a HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    // Wait until /a holds the only egress slot (its call is in flight)...
    let end = std::time::Instant::now() + WAIT;
    while sample(
        &scrape(admin),
        "hopline_upstream_in_flight",
        &[("upstream", "a")],
    ) < 1.0
    {
        assert!(std::time::Instant::now() < end, "/a never went in flight");
    }
    // ...then another egress upstream (which does not queue) fails fast...
    let r = get(addr, "/b", "");
    assert_eq!((r.status, r.header("x-hopline-flags")), (503, Some("UO")));
    // ...but an internal one does not share the NAT's budget.
    assert_eq!(get(addr, "/inside", "").status, 200);
    assert_eq!(read_response(&mut c).status, 200);
    let line = gw.wait_json(WAIT, "503 line", |v| v["status"] == 503);
    assert_eq!(
        (line["zone"].clone(), line["upstream"].clone()),
        (json!("egress"), json!("b"))
    );
    assert!(line["cause"]
        .as_str()
        .expect("cause")
        .contains("egress max_in_flight 1 reached"));
    let inside = gw.wait_json(WAIT, "inside line", |v| v["path"] == "/inside");
    assert_eq!(inside["zone"], "internal");
}

#[test]
fn sighup_reloads_valid_config_and_keeps_the_old_one_on_errors() {
    let up = mock(&[]);
    let path = temp_file(
        "reload.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}",
            base_config(up.addr)
        ),
    );
    let gw = Proc::spawn(&["serve", "-c", path.to_str().expect("utf8")]);
    let admin = admin_addr(&gw);
    let pid = gw_pid(&gw);
    assert_eq!(get(gw.addr, "/new", "").status, 404);

    // Valid: a new route appears for new requests.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}[[routes]]\nname = \"new\"\npath = \"/new\"\nupstream = \"svc\"\n",
        base_config(up.addr)
    );
    std::fs::write(&path, text).expect("write");
    hup(pid);
    gw.stderr
        .wait_for(WAIT, "reloaded", |l| l.contains("reloaded"));
    assert_eq!(get(gw.addr, "/new", "").status, 200);

    // Invalid: the error names file, line and key; the old config stays in force.
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:0\"\nidle_timeout = \"forever\"\n",
    )
    .expect("write");
    hup(pid);
    gw.stderr
        .wait_for(WAIT, "reload error", |l| l.contains("reload failed"));
    // The problem itself comes on the next line of the same message.
    let key = format!("{}:3:16: key `server.idle_timeout`", path.display());
    gw.stderr
        .wait_for(WAIT, "the problem's file:line:key", |l| l.contains(&key));
    assert_eq!(get(gw.addr, "/new", "").status, 200);
    let metrics = scrape(admin);
    assert_eq!(
        sample(&metrics, "hopline_config_reload_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "hopline_config_reload_total",
            &[("result", "error")]
        ),
        1.0
    );
}

fn gw_pid(gw: &Proc) -> u32 {
    gw.pid()
}

fn hup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn web_pages_cannot_reach_the_admin_api_but_probes_can() {
    let up = mock(&[]);
    let gw = gateway("", &base_config(up.addr));
    let admin = admin_addr(&gw);
    let ask = |method: &str, path: &str, extra: &str| {
        let mut s = connect(admin);
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: {admin}\r\n{extra}content-length: 0\r\n\r\n"
        )
        .expect("write");
        read_response(&mut s).status
    };
    // Prometheus, kubelet and curl: no Origin, no browser.
    assert_eq!(
        ask("GET", "/metrics", "user-agent: Prometheus/2.45\r\n"),
        200
    );
    assert_eq!(
        ask("GET", "/healthz", "user-agent: kube-probe/1.29\r\n"),
        200
    );
    assert_eq!(ask("GET", "/readyz", ""), 200);
    // A page's fetch carries an Origin; a browser's non-GET is refused too.
    assert_eq!(
        ask("GET", "/config", "origin: https://evil.example\r\n"),
        403
    );
    assert_eq!(ask("GET", "/metrics", "origin: null\r\n"), 403);
    assert_eq!(ask("POST", "/healthz", "user-agent: Mozilla/5.0\r\n"), 403);
}

/// Sends `GET path` with this `Host` line (and more lines) and returns status and body.
fn with_host(addr: SocketAddr, path: &str, host: &str, extra: &str) -> (u16, String) {
    let mut s = connect(addr);
    write!(s, "GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n").expect("write");
    let r = read_response(&mut s);
    (r.status, r.body)
}

#[test]
fn a_rebinding_host_is_refused_while_ip_literals_localhost_and_listed_names_are_answered() {
    let up = mock(&[]);
    let config = base_config(up.addr).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        "[admin]\nlisten = \"127.0.0.1:0\"\nallowed_hosts = [\"hopline-admin.monitoring.svc\"]\n",
    );
    let gw = gateway("", &config);
    let admin = admin_addr(&gw);
    // A page on evil.example whose name now resolves to 127.0.0.1: its own name in Host.
    let (status, body) = with_host(admin, "/config", "evil.example:9901", "");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin.allowed_hosts"), "{body}");
    assert_eq!(with_host(admin, "/config", "127.0.0.1.nip.io", "").0, 403);
    // What probes, Prometheus and curl send; and a name the operator listed.
    for host in [
        admin.to_string(),
        "10.0.3.7:9901".to_string(),
        "[::1]:9901".to_string(),
        "localhost:9901".to_string(),
        "Hopline-Admin.Monitoring.svc:9901".to_string(),
    ] {
        assert_eq!(with_host(admin, "/healthz", &host, "").0, 200, "{host}");
    }
    // Any Origin is a web page's, whatever the Host.
    assert_eq!(
        with_host(admin, "/metrics", "127.0.0.1", "origin: null\r\n").0,
        403
    );
    // The effective config says what is in force.
    let cfg: Value = serde_json::from_str(&get(admin, "/config", "").body).expect("json");
    assert_eq!(cfg["admin"]["max_connections"], 64);
    assert_eq!(
        cfg["admin"]["allowed_hosts"],
        json!(["hopline-admin.monitoring.svc"])
    );
}

#[test]
fn idle_admin_connections_are_capped_and_closed_at_the_head_timeout() {
    let up = mock(&[]);
    let gw = gateway("", &base_config(up.addr));
    let admin = admin_addr(&gw);
    // 64 connections that never send a byte hold every slot…
    let idle: Vec<TcpStream> = (0..64).map(|_| connect(admin)).collect();
    // …so each one more is answered 503 and closed at once, without a wait. (The
    // accept queue is first in, first out: these come after the 64.)
    let mut refused = 0;
    for _ in 0..136 {
        let mut s = connect(admin);
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        refused += 1;
    }
    assert_eq!(refused, 136);
    // The idle ones are closed at the 5 s head timeout, and the API answers again.
    let t0 = std::time::Instant::now();
    for mut s in idle {
        let mut rest = Vec::new();
        let n = s.read_to_end(&mut rest).expect("closed, not reset");
        assert_eq!(n, 0, "closed without a word");
    }
    assert!(t0.elapsed() < Duration::from_secs(9), "{:?}", t0.elapsed());
    let deadline = std::time::Instant::now() + WAIT;
    while get(admin, "/healthz", "").status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "no free slot within {WAIT:?}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn an_admin_body_over_64_kib_is_answered_413() {
    let up = mock(&[]);
    let gw = gateway("", &base_config(up.addr));
    let admin = admin_addr(&gw);
    let mut s = connect(admin);
    // Declared too large: refused before a byte of it is read.
    write!(
        s,
        "POST /healthz HTTP/1.1\r\nhost: {admin}\r\ncontent-length: 1048575\r\n\r\n"
    )
    .expect("write");
    let r = read_response(&mut s);
    assert_eq!(r.status, 413, "{}", r.body);
    // Chunked, growing past the cap.
    let mut s = connect(admin);
    write!(
        s,
        "POST /healthz HTTP/1.1\r\nhost: {admin}\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .expect("write");
    let chunk = format!("8000\r\n{}\r\n", "a".repeat(0x8000));
    for _ in 0..3 {
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    assert_eq!(read_response(&mut s).status, 413);
}

#[test]
fn a_stalled_stdout_does_not_stall_requests_and_every_request_is_logged_or_counted() {
    let up = mock(&[]);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        route_all(up.addr)
    );
    let path = temp_file("stalled.toml", &text);
    // Nobody reads the access log: the pipe (64 KiB) and the writer's queue (1 MiB) fill.
    let (gw, out) = Proc::spawn_holding_stdout(&[
        "serve",
        "-c",
        path.to_str().expect("utf8"),
        "--threads",
        "2",
    ]);
    let admin = admin_addr(&gw);
    const N: u64 = 4000;
    let t0 = std::time::Instant::now();
    let mut s = connect(gw.addr);
    for i in 0..N {
        write!(s, "GET /r/{i} HTTP/1.1\r\nhost: test\r\n\r\n").expect("write");
        assert_eq!(read_response(&mut s).status, 200, "request {i}");
    }
    drop(s);
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "requests waited on the log: {:?}",
        t0.elapsed()
    );
    let dropped = || sample(&scrape(admin), "hopline_access_log_dropped_total", &[]);
    assert!(dropped() > 0.0, "about 3 MB of lines cannot all wait");
    // Now the log is read: what was not dropped arrives, and the two add up exactly.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.contains("\"request_id\"") && tx.send(()).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + WAIT;
    let mut logged = 0u64;
    loop {
        while rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            logged += 1;
        }
        let d = dropped() as u64;
        if logged + d == N {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{logged} logged + {d} dropped != {N}"
        );
    }
    let requests: f64 = scrape(admin)
        .lines()
        .filter(|l| l.starts_with("hopline_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(requests as u64, N, "the counter counts every request");
}
