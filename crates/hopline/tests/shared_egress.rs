//! Cluster-wide egress budgets (`[egress] shared`) against a real `redis-server` (Debian's,
//! installed by `.ci/run`): several gateway processes share one new-connection rate and one
//! in-flight count; a killed gateway's slots come back after the holding TTL; Redis slow or
//! down means the local share within `fallback_after`, and back; `rediss://` with the
//! password from the environment. `#[ignore]`d so that plain `cargo test` needs no Redis.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{Ca, Validity};
use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// A `redis-server` on a loopback port, stopped when dropped.
struct Redis {
    daemon: Option<Daemon>,
    port: u16,
    args: Vec<String>,
}

impl Redis {
    /// Starts one on a free port with `extra` arguments (`{port}` replaced by the port).
    fn start(extra: &[&str]) -> Redis {
        let port = free_port();
        let args = extra
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let mut r = Redis {
            daemon: None,
            port,
            args,
        };
        r.restart();
        r
    }

    /// Plain TCP on the port.
    fn plain() -> Redis {
        Redis::start(&["--port", "{port}"])
    }

    /// (Re)starts it on the same port and waits until the port accepts.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt install redis-server)");
        self.daemon = Some(Daemon(child));
        let end = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < end, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> String {
        self.daemon.as_ref().expect("running").0.id().to_string()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Kills it and waits until it is gone.
    fn kill(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.0.kill();
            let _ = d.0.wait();
            // Reaped: its pid may be another process's now, so no SIGTERM on drop.
            std::mem::forget(d);
        }
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// An upstream that counts connections and answers each with one response, then closes.
/// A request for `/hold` is answered only when the gateway closes the connection.
fn counting_upstream() -> (FakeUpstream, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let up = FakeUpstream::start(move |_, mut s| {
        c.fetch_add(1, Ordering::SeqCst);
        let Some(head) = read_request(&mut s) else {
            return;
        };
        if head.starts_with("GET /hold") {
            let mut b = [0u8; 64];
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    });
    (up, count)
}

/// A gateway whose every route goes to `up`, an egress upstream whose connections are not
/// pooled (every call opens one), with `[egress]` = `egress` and the environment `env`.
fn shared_gateway(egress: &str, up: SocketAddr, env: &[(&str, &str)]) -> Proc {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [egress]\n{egress}\n\
         [upstreams.pay]\nendpoints = [\"{up}\"]\nzone = \"egress\"\npool_max_idle = 0\nmax_retries = 0\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"pay\"\n"
    );
    let path = temp_file("shared.toml", &text);
    let mut cmd = Command::new(bin());
    cmd.args([
        "serve",
        "-c",
        path.to_str().expect("utf8"),
        "--threads",
        "1",
    ]);
    cmd.env_remove("HOPLINE_REDIS_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn_command(cmd)
}

/// Sends GETs to `addr` at `per_sec` for `for_`; returns (200s, 503s).
fn paced(addr: SocketAddr, per_sec: u32, for_: Duration) -> (usize, usize) {
    let start = Instant::now();
    let every = Duration::from_secs(1) / per_sec;
    let (mut ok, mut refused) = (0, 0);
    let mut n = 0u32;
    while start.elapsed() < for_ {
        match get(addr, "/call", "").status {
            200 => ok += 1,
            503 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
        n += 1;
        let next = start + every * n;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    (ok, refused)
}

fn metrics(gw: &Proc) -> String {
    get(admin_addr(gw), "/metrics", "").body
}

#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn three_gateways_share_one_new_connection_rate() {
    let redis = Redis::plain();
    let (up, connections) = counting_upstream();
    let egress = format!(
        "max_new_connections_per_sec = 100\nshared = \"{}\"\nscope = \"three\"\nexpected_replicas = 3\nfallback_after = \"200ms\"",
        redis.url()
    );
    let gws: Vec<Proc> = (0..3)
        .map(|_| shared_gateway(&egress, up.addr, &[]))
        .collect();
    let addrs: Vec<SocketAddr> = gws.iter().map(|g| g.addr).collect();
    // 3 × the budget, from 6 clients spread over the three gateways, for 10 s.
    let window = Duration::from_secs(10);
    let before = connections.load(Ordering::SeqCst);
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let addr = addrs[i % 3];
            std::thread::spawn(move || paced(addr, 50, window))
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for c in clients {
        let (o, r) = c.join().expect("client");
        ok += o;
        refused += r;
    }
    let opened = connections.load(Ordering::SeqCst) - before;
    // 1000 in 10 s, plus the scope's burst (half a second) and the tokens each holds.
    assert!(
        (900..=1_100).contains(&opened),
        "{opened} connections, {ok} ok, {refused} refused"
    );
    assert_eq!(opened, ok, "every 200 opened one connection");
    assert!(refused > 1_000, "{refused} refused");
    for gw in &gws {
        let m = metrics(gw);
        assert!(
            m.contains("hopline_egress_shared_local{scope=\"three\"} 0"),
            "{m}"
        );
        assert!(
            m.contains("hopline_egress_shared_budget{scope=\"three\",limit=\"new_connections_per_sec\"} 100"),
            "{m}"
        );
        let line = gw.wait_json(WAIT, "refused call", |v| v["status"] == 503);
        assert_eq!(line["flags"][0], "UO", "{line}");
        assert_eq!(
            line["cause"], "egress scope three: cluster new-connection rate 100/s reached",
            "{line}"
        );
    }
}

#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn a_killed_gateways_slots_return_to_the_scope_after_the_holding_ttl() {
    let redis = Redis::plain();
    let (up, _) = counting_upstream();
    let egress = format!(
        "max_in_flight = 4\nshared = \"{}\"\nscope = \"slots\"\nexpected_replicas = 2\nfallback_after = \"200ms\"",
        redis.url()
    );
    let mut a = shared_gateway(&egress, up.addr, &[]);
    let b = shared_gateway(&egress, up.addr, &[]);
    // Four calls through A hold every slot of the scope. B held spare slots while the
    // scope had room, and gives them back once it has none: A's calls that find no slot
    // are refused meanwhile (never queued), and the next one gets it.
    let in_use =
        |n: usize| format!("hopline_egress_shared_slots{{scope=\"slots\",limit=\"in_use\"}} {n}");
    let mut held = Vec::new();
    let end = Instant::now() + WAIT;
    while held.len() < 4 {
        assert!(Instant::now() < end, "A never had 4 calls in flight");
        let mut s = connect(a.addr);
        write!(s, "GET /hold HTTP/1.1\r\nhost: t\r\n\r\n").expect("write");
        let n = held.len() + 1;
        // In flight (A counts it) or answered, whichever shows first: no fixed window, which
        // a loaded machine outlasted (a call that got its slot late was read as refused).
        s.set_read_timeout(Some(Duration::from_millis(10)))
            .expect("read timeout");
        let answered = loop {
            if metrics(&a).contains(&in_use(n)) {
                break false;
            }
            if matches!(s.peek(&mut [0u8; 1]), Ok(k) if k > 0) {
                break true;
            }
            assert!(
                Instant::now() < end,
                "call {n} neither in flight nor answered"
            );
        };
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("read timeout");
        if answered {
            assert_eq!(read_response(&mut s).status, 503);
        } else {
            held.push(s);
        }
    }
    // B is refused until the holding of a dead A lapses — once B has heard that its
    // spare slots went to A: until its lease's answer arrives it may still use them (a
    // window of one Redis round trip, which a loaded machine stretches).
    let none_held = "hopline_egress_shared_slots{scope=\"slots\",limit=\"held\"} 0";
    let end = Instant::now() + WAIT;
    while !metrics(&b).contains(none_held) {
        assert!(Instant::now() < end, "B never gave its spare slots back");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(get(b.addr, "/quick", "").status, 503);
    let line = b.wait_json(WAIT, "refused", |v| v["path"] == "/quick");
    assert_eq!(
        line["cause"], "egress scope slots: cluster in-flight limit 4 reached",
        "{line}"
    );
    let killed = Command::new("kill")
        .args(["-KILL", &a.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert!(a.wait_exit(WAIT).is_some(), "A did not die");
    let killed = Instant::now();
    drop(held);
    loop {
        if get(b.addr, "/quick", "").status == 200 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(9),
            "A's slots never returned"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The holding lasts 5 s from A's last renewal (at most 1 s before it died).
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "slots returned after {took:?}: before the TTL"
    );
}

#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn redis_slow_or_down_means_the_local_share_within_the_bound_and_back() {
    let mut redis = Redis::plain();
    let (up, _) = counting_upstream();
    let egress = format!(
        "max_new_connections_per_sec = 40\nmax_in_flight = 10\nshared = \"{}\"\nscope = \"fb\"\nexpected_replicas = 2\nfallback_after = \"20ms\"",
        redis.url()
    );
    let gw = shared_gateway(&egress, up.addr, &[]);
    assert_eq!(get(gw.addr, "/call", "").status, 200);
    // Slow: the process stops answering.
    redis.signal("-STOP");
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let (mut ok, mut refused) = (0, 0);
    while start.elapsed() < Duration::from_secs(2) {
        let t = Instant::now();
        match get(gw.addr, "/call", "").status {
            200 => ok += 1,
            _ => refused += 1,
        }
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Requests never wait for Redis.
    assert!(
        slowest < Duration::from_millis(500),
        "slowest call {slowest:?}"
    );
    let event = gw.wait_json(WAIT, "local event", |v| {
        v["event"] == "egress" && v["state"] == "local"
    });
    assert_eq!(event["scope"], "fb", "{event}");
    assert!(
        event["detail"]
            .as_str()
            .unwrap_or("")
            .contains("local share 20 new connections/s, 5 in flight"),
        "{event}"
    );
    // 2 s of the local share (20/s, starting empty), plus the tokens leased before.
    assert!((20..=50).contains(&ok), "{ok} ok, {refused} refused");
    let line = gw.wait_json(WAIT, "local refusal", |v| v["status"] == 503);
    assert_eq!(
        line["cause"],
        "egress scope fb: local share of the new-connection rate 20/s reached (Redis unreachable)",
        "{line}"
    );
    assert!(metrics(&gw).contains("hopline_egress_shared_local{scope=\"fb\"} 1"));
    // Back: the next probe succeeds.
    redis.signal("-CONT");
    gw.wait_json(WAIT, "shared again", |v| {
        v["event"] == "egress" && v["state"] == "shared"
    });
    assert!(metrics(&gw).contains("hopline_egress_shared_local{scope=\"fb\"} 0"));
    // Down: connections refused.
    redis.kill();
    let end = Instant::now() + WAIT;
    while !metrics(&gw).contains("hopline_egress_shared_fallbacks_total{scope=\"fb\"} 2") {
        let _ = get(gw.addr, "/call", "");
        assert!(Instant::now() < end, "no second fallback");
        std::thread::sleep(Duration::from_millis(20));
    }
    redis.restart();
    let end = Instant::now() + WAIT;
    while !metrics(&gw).contains("hopline_egress_shared_local{scope=\"fb\"} 0") {
        assert!(Instant::now() < end, "not back to shared after a restart");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(gw.addr, "/call", "").status, 200);
}

#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn rediss_with_the_password_from_the_environment() {
    let ca = Ca::new("redis");
    let leaf = ca.leaf(
        "redis",
        "localhost",
        &["localhost", "127.0.0.1"],
        Validity::Good,
    );
    let redis = Redis::start(&[
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        path(&leaf.cert),
        "--tls-key-file",
        path(&leaf.key),
        "--tls-ca-cert-file",
        path(&ca.cert),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "s3cret",
    ]);
    let (up, _) = counting_upstream();
    let egress = format!(
        "max_new_connections_per_sec = 50\nshared = \"rediss://localhost:{}\"\nscope = \"tls\"\nca = \"{}\"\npassword_env = \"PAY_REDIS_PASSWORD\"",
        redis.port,
        path(&ca.cert)
    );
    let gw = shared_gateway(&egress, up.addr, &[("PAY_REDIS_PASSWORD", "s3cret")]);
    assert_eq!(get(gw.addr, "/call", "").status, 200);
    let m = metrics(&gw);
    assert!(
        m.contains("hopline_egress_shared_local{scope=\"tls\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("hopline_egress_shared_tokens_leased_total{scope=\"tls\"}"),
        "{m}"
    );
    // The wrong password: the local share, and the event says why.
    let wrong = shared_gateway(&egress, up.addr, &[("PAY_REDIS_PASSWORD", "nope")]);
    let event = wrong.wait_json(WAIT, "local event", |v| v["event"] == "egress");
    assert_eq!(event["state"], "local", "{event}");
    let detail = event["detail"].as_str().unwrap_or("");
    assert!(detail.contains("authentication failed"), "{event}");
}

#[test]
#[ignore = "needs redis-server (run by .ci/run)"]
fn a_reload_changes_the_budget_but_not_the_scope() {
    let redis = Redis::plain();
    let (up, _) = counting_upstream();
    let text = |rate: u32, scope: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [egress]\nmax_new_connections_per_sec = {rate}\nshared = \"{}\"\nscope = \"{scope}\"\n\
             [upstreams.pay]\nendpoints = [\"{}\"]\nzone = \"egress\"\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"pay\"\n",
            redis.url(),
            up.addr
        )
    };
    let file = temp_file("shared-reload.toml", &text(100, "one"));
    let gw = Proc::spawn(&["serve", "-c", path(&file)]);
    std::fs::write(&file, text(300, "two")).expect("write");
    let hup = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let line = gw.stderr.wait_for(WAIT, "scope not applied", |l| {
        l.contains("egress.shared changed")
    });
    assert!(
        line.contains("scope two") && line.contains("scope one"),
        "{line}"
    );
    gw.stderr
        .wait_for(WAIT, "reloaded", |l| l.contains("hopline serve: reloaded"));
    let end = Instant::now() + WAIT;
    while !metrics(&gw).contains(
        "hopline_egress_shared_budget{scope=\"one\",limit=\"new_connections_per_sec\"} 300",
    ) {
        assert!(Instant::now() < end, "the new budget never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    let config = get(admin_addr(&gw), "/config", "").body;
    let v: serde_json::Value = serde_json::from_str(&config).expect("json");
    assert_eq!(v["egress"]["shared"]["scope"], "one", "{v}");
    assert_eq!(v["egress"]["max_new_connections_per_sec"], 300, "{v}");
    assert_eq!(v["egress"]["shared"]["now"]["mode"], "shared", "{v}");
}
