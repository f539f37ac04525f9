//! Drain and reload lose nothing: every request a client sent is answered during a
//! SIGTERM drain, a reload under load never lets an upstream see more than its limit, and
//! a reload says what it could not apply.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// What one keep-alive client saw.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    answered: usize,
    lost: usize,
}

/// Sends requests back to back on one keep-alive connection until the gateway closes it
/// (after a `connection: close` response), or `max` requests. A request that was written
/// but got no response is lost.
fn client(addr: SocketAddr, max: usize, started: &AtomicUsize) -> Tally {
    let mut t = Tally::default();
    let Ok(mut s) = TcpStream::connect(addr) else {
        return t;
    };
    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
    s.set_nodelay(true).ok();
    started.fetch_add(1, Ordering::SeqCst);
    let mut pending = Vec::new();
    for i in 0..max {
        if write!(s, "GET /ok/{i} HTTP/1.1\r\nHost: t\r\n\r\n").is_err() {
            break;
        }
        t.sent += 1;
        match read_one(&mut s, &mut pending) {
            Some(close) => {
                t.answered += 1;
                if close {
                    break;
                }
            }
            None => {
                t.lost += 1;
                break;
            }
        }
    }
    t
}

/// Reads one content-length response; `Some(connection: close?)`, `None` at EOF or error.
fn read_one(s: &mut TcpStream, pending: &mut Vec<u8>) -> Option<bool> {
    use std::io::Read;
    let mut b = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let len: usize = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())?;
            while pending.len() < end + 4 + len {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => pending.extend_from_slice(&b[..n]),
                }
            }
            pending.drain(..end + 4 + len);
            return Some(head.contains("connection: close"));
        }
        match s.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&b[..n]),
        }
    }
}

#[test]
fn sigterm_drain_answers_every_request_keep_alive_clients_sent() {
    let up = mock(&[
        "--status",
        "200",
        "--body",
        "ok",
        "--latency",
        "1ms",
        "--quiet",
    ]);
    for run in 0..10 {
        let mut gw = gateway(
            "drain_timeout = \"5s\"\ndrain_idle_grace = \"1s\"",
            &route_all(up.addr),
        );
        let started = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..100)
            .map(|_| {
                let (addr, started) = (gw.addr, started.clone());
                std::thread::spawn(move || client(addr, 5_000, &started))
            })
            .collect();
        // Terminate once every client is connected and traffic is flowing.
        let end = Instant::now() + WAIT;
        while started.load(Ordering::SeqCst) < 100 || gw.json_lines().len() < 500 {
            assert!(Instant::now() < end, "run {run}: load did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        gw.terminate();
        let tallies: Vec<Tally> = clients
            .into_iter()
            .map(|c| c.join().expect("client"))
            .collect();
        let status = gw.wait_exit(WAIT).expect("gateway exits after draining");
        assert!(status.success(), "run {run}: {status:?}");
        let sent: usize = tallies.iter().map(|t| t.sent).sum();
        let answered: usize = tallies.iter().map(|t| t.answered).sum();
        let lost: usize = tallies.iter().map(|t| t.lost).sum();
        assert_eq!(
            lost, 0,
            "run {run}: {lost} of {sent} requests got no response"
        );
        // Every response has its log line (the log is flushed before exit).
        let end = Instant::now() + WAIT;
        while gw.json_lines().len() < answered && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            gw.json_lines().len(),
            answered,
            "run {run}: log lines vs responses"
        );
    }
}

#[test]
fn a_drained_connection_that_stays_idle_closes_after_the_grace_period() {
    let up = mock(&["--status", "200", "--quiet"]);
    let mut gw = gateway(
        "drain_timeout = \"10s\"\ndrain_idle_grace = \"300ms\"",
        &route_all(up.addr),
    );
    let mut idle = connect(gw.addr);
    idle.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    assert_eq!(read_response(&mut idle).status, 200);
    let begun = Instant::now();
    gw.terminate();
    gw.wait_exit(WAIT).expect("exit");
    let took = begun.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "drain waited {took:?} for an idle connection"
    );
}

#[test]
fn reload_under_load_never_lets_the_upstream_see_more_than_its_limit() {
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n2, p2) = (now.clone(), peak.clone());
    let up = FakeUpstream::start(move |_, mut s| {
        while read_request(&mut s).is_some() {
            let c = n2.fetch_add(1, Ordering::SeqCst) + 1;
            p2.fetch_max(c, Ordering::SeqCst);
            // The upstream's own service time, so that requests overlap.
            std::thread::sleep(Duration::from_millis(20));
            n2.fetch_sub(1, Ordering::SeqCst);
            if s.write_all(OK_RESPONSE).is_err() {
                return;
            }
        }
    });
    let config = |timeout: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.s]\nendpoints = [\"{}\"]\nmax_in_flight = 32\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"s\"\ntimeout = \"{timeout}\"\n",
            up.addr
        )
    };
    let path = temp_file("reload-load.toml", &config("2s"));
    let gw = Proc::spawn(&["serve", "-c", path.to_str().expect("utf8")]);
    let admin = admin_addr(&gw);
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..64)
        .map(|_| {
            let (addr, stop) = (gw.addr, stop.clone());
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut pending = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && n < 2_000 {
                    if s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").is_err() {
                        break;
                    }
                    if read_one(&mut s, &mut pending).is_none_or(|close| close) {
                        s = connect(addr);
                        pending.clear();
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let mut gauge_seen = 0.0f64;
    for i in 0..5 {
        // Wait for the upstream to be at its limit, then reload with a changed route.
        let end = Instant::now() + WAIT;
        while now.load(Ordering::SeqCst) < 16 {
            assert!(Instant::now() < end, "load did not build up");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::fs::write(&path, config(if i % 2 == 0 { "3s" } else { "2s" })).expect("write");
        let reloads = gw
            .stderr
            .all()
            .iter()
            .filter(|l| l.contains("reloaded"))
            .count();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &gw.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let end = Instant::now() + WAIT;
        while gw
            .stderr
            .all()
            .iter()
            .filter(|l| l.contains("reloaded"))
            .count()
            <= reloads
        {
            assert!(Instant::now() < end, "reload {i} not done");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The in-flight gauge counts the calls that started before the reload too.
        let metrics = get(admin, "/metrics", "").body;
        let v = metrics
            .lines()
            .find(|l| l.starts_with("hopline_upstream_in_flight{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        gauge_seen = gauge_seen.max(v);
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.join().expect("load thread");
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= 32,
        "the upstream saw {peak} concurrent requests (limit 32)"
    );
    assert!(peak >= 16, "the load never reached the limit ({peak})");
    assert!(
        gauge_seen >= 1.0,
        "hopline_upstream_in_flight read 0 under load after reloads"
    );
}

#[test]
fn reload_reports_what_it_cannot_apply_and_config_shows_what_is_in_force() {
    let up = mock(&["--status", "200", "--quiet"]);
    let text = |listen: &str, max_conn: u32| {
        format!(
            "[server]\nlisten = \"{listen}\"\nmax_connections = {max_conn}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstreams.m]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n",
            up.addr
        )
    };
    let path = temp_file("reload-truth.toml", &text("127.0.0.1:0", 100));
    let gw = Proc::spawn(&["serve", "-c", path.to_str().expect("utf8")]);
    let admin = admin_addr(&gw);
    let other = closed_port();
    std::fs::write(&path, text(&other.to_string(), 200)).expect("write");
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &gw.pid().to_string()])
            .status()
            .expect("kill")
    };
    assert!(hup().success());
    let line = gw
        .stderr
        .wait_for(WAIT, "not applied", |l| l.contains("server.listen changed"));
    assert!(
        line.contains(&other.to_string()) && line.contains("not applied"),
        "{line}"
    );
    gw.stderr
        .wait_for(WAIT, "max_connections not applied", |l| {
            l.contains("server.max_connections changed to 200") && l.contains("still 100")
        });
    let config = get(admin, "/config", "").body;
    assert!(
        !config.contains(&other.to_string()),
        "/config claims the unbound address: {config}"
    );
    // A second reload compares against what is really in force.
    assert!(hup().success());
    let end = Instant::now() + WAIT;
    while gw
        .stderr
        .all()
        .iter()
        .filter(|l| l.contains("server.listen changed"))
        .count()
        < 2
    {
        assert!(Instant::now() < end, "second reload not reported");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = gw
        .stderr
        .all()
        .into_iter()
        .rfind(|l| l.contains("server.listen changed"))
        .expect("line");
    assert!(second.contains("still 127.0.0.1:0"), "{second}");
    // The gateway still serves on the address it has.
    assert_eq!(get(gw.addr, "/x", "").status, 200);
}

#[test]
fn beyond_max_connections_overload_close_refuses_at_once_and_counts_it() {
    let up = mock(&["--status", "200", "--quiet"]);
    let gw = gateway(
        "max_connections = 1\noverload = \"close\"",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{}", route_all(up.addr)),
    );
    let admin = admin_addr(&gw);
    // The one slot, held by a keep-alive connection.
    let mut held = connect(gw.addr);
    held.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    assert_eq!(read_response(&mut held).status, 200);
    // The next connection is accepted and closed at once, not left in the backlog.
    let mut refused = connect(gw.addr);
    let begun = Instant::now();
    let mut b = [0u8; 1];
    let n = std::io::Read::read(&mut refused, &mut b).unwrap_or(0);
    assert_eq!(n, 0, "refused connection got data");
    assert!(
        begun.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        begun.elapsed()
    );
    let end = Instant::now() + WAIT;
    loop {
        let m = get(admin, "/metrics", "").body;
        if m.lines()
            .any(|l| l == "hopline_connections_refused_total 1")
        {
            break;
        }
        assert!(Instant::now() < end, "refusal not counted:\n{m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Once the slot is free, connections are served again.
    drop(held);
    let end = Instant::now() + WAIT;
    loop {
        let mut s = connect(gw.addr);
        if s.write_all(b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .is_ok()
        {
            let mut got = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut got);
            if got.starts_with(b"HTTP/1.1 200") {
                break;
            }
        }
        assert!(Instant::now() < end, "slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_host_name_listen_binds_every_address_it_resolves_to() {
    let path = temp_file(
        "hopline.toml",
        "[server]\nlisten = \"localhost:0\"\n[admin]\nlisten = \"localhost:0\"\n",
    );
    let gw = Proc::spawn(&["serve", "-c", path.to_str().expect("utf8")]);
    // The admin lines follow every listener line.
    admin_addr(&gw);
    let bound = |prefix: &str| -> Vec<SocketAddr> {
        gw.stderr
            .all()
            .iter()
            .filter_map(|l| l.split_once(prefix))
            .map(|(_, a)| a.trim().parse().expect("addr"))
            .collect()
    };
    let want: Vec<std::net::IpAddr> = {
        let mut ips: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs("localhost:0")
            .expect("localhost resolves")
            .map(|a| a.ip())
            .filter(|ip| std::net::TcpListener::bind((*ip, 0)).is_ok())
            .collect();
        ips.sort();
        ips.dedup();
        ips
    };
    for prefix in ["listening on ", "admin on "] {
        let addrs = bound(prefix);
        let ips: Vec<_> = addrs.iter().map(|a| a.ip()).collect();
        assert_eq!(ips, want, "{prefix}: {addrs:?}");
    }
    // Every listener serves: a request to each gets the gateway's 404 (no routes).
    for a in bound("listening on ") {
        let mut s = TcpStream::connect(a).expect("connect");
        s.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .expect("write");
        assert_eq!(read_response(&mut s).status, 404, "{a}");
    }
}

#[test]
fn a_signal_sent_as_soon_as_the_listening_line_appears_is_acted_on() {
    let up = mock(&["--status", "200", "--quiet"]);
    let file = temp_file(
        "signal-at-start.toml",
        &format!("[server]\nlisten = \"127.0.0.1:0\"\n{}", route_all(up.addr)),
    );
    let signal = |pid: u32, sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    for _ in 0..3 {
        // SIGHUP right away: a reload, not the default action (termination).
        let mut gw = Proc::spawn(&["serve", "-c", path(&file)]);
        signal(gw.pid(), "-HUP");
        gw.stderr
            .wait_for(WAIT, "reloaded", |l| l.contains("hopline serve: reloaded"));
        assert_eq!(get(gw.addr, "/", "").status, 200);
        // SIGTERM right away: a drain and a clean exit.
        let mut fresh = Proc::spawn(&["serve", "-c", path(&file)]);
        signal(fresh.pid(), "-TERM");
        let status = fresh.wait_exit(WAIT).expect("serve did not exit");
        assert!(status.success(), "serve exited with {status}");
        fresh
            .stderr
            .wait_for(WAIT, "stopped", |l| l.contains("hopline serve: stopped"));
        gw.terminate();
        assert!(gw.wait_exit(WAIT).is_some_and(|s| s.success()));
    }
    // The same for the mock and chaos: SIGTERM right after their first line.
    for args in [
        &["mock", "--listen", "127.0.0.1:0", "--quiet"][..],
        &["chaos", "--api", "127.0.0.1:0"][..],
    ] {
        let mut p = Proc::spawn(args);
        signal(p.pid(), "-TERM");
        let status = p.wait_exit(WAIT).expect("did not exit");
        assert!(status.success(), "{args:?} exited with {status}");
    }
}

#[test]
fn the_listen_backlog_is_the_configured_one() {
    // A short accept queue drops a burst's SYNs (each one a 1 s retransmission for the
    // client); the kernel shows a listening socket's backlog as its Send-Q.
    let up = mock(&["--status", "200", "--quiet"]);
    let gw = gateway("backlog = 777\n", &route_all(up.addr));
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", gw.addr.port())])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let send_q = text.split_whitespace().nth(2);
    assert_eq!(send_q, Some("777"), "{text}");
}
