//! Surges over real sockets: requests over an upstream's `max_in_flight` wait for a slot
//! within their deadline instead of failing, a request that cannot be served in time is
//! refused at once with `Retry-After`. The queue's rules themselves are tested on tokio's
//! paused clock (`crates/hopline-gateway/src/request/queue_tests.rs`).

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

fn queued_gateway(up: std::net::SocketAddr, upstream_extra: &str) -> Proc {
    gateway(
        "",
        &format!("[upstreams.m]\nendpoints = [\"{up}\"]\nmax_in_flight = 8\n{upstream_extra}\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\ntimeout = \"3s\"\n"),
    )
}

/// `count` keep-alive requests on one connection, each answered before the next; their
/// statuses.
fn client(
    addr: std::net::SocketAddr,
    count: usize,
    extra: &str,
) -> Vec<(u16, Duration, Option<String>)> {
    let mut c = connect(addr);
    (0..count)
        .map(|i| {
            let t0 = Instant::now();
            write!(c, "GET /r{i} HTTP/1.1\r\nhost: t\r\n{extra}\r\n").expect("write");
            let r = read_response(&mut c);
            let retry = r.header("retry-after").map(str::to_string);
            let closes = r.header("connection") == Some("close");
            if closes {
                c = connect(addr);
            }
            (r.status, t0.elapsed(), retry)
        })
        .collect()
}

#[test]
fn thirty_two_clients_on_eight_slots_are_all_served_within_the_deadline() {
    let up = mock(&["--latency", "50ms", "--quiet"]);
    let gw = queued_gateway(up.addr, "");
    let addr = gw.addr;
    let all: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..32)
            .map(|_| s.spawn(move || client(addr, 8, "")))
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    });
    assert_eq!(all.len(), 256);
    let refused = all.iter().filter(|(s, _, _)| *s != 200).count();
    assert_eq!(
        refused, 0,
        "every one could be served by waiting for a slot"
    );
    let lines = gw.json_lines();
    let queued = lines
        .iter()
        .filter(|l| l["queue_ms"].as_f64().is_some())
        .count();
    assert!(queued > 0, "some waited in the queue");
}

#[test]
fn requests_that_cannot_be_served_in_their_budget_are_refused_at_once() {
    // Eight slots held 400 ms each; twenty more requests, each with 100 ms to live (a
    // trusted caller's budget), arrive behind them.
    let up = mock(&["--latency", "400ms", "--quiet"]);
    let gw = queued_gateway(up.addr, "");
    let addr = gw.addr;
    // Teach the queue the hold time, with every slot taken once.
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|_| s.spawn(move || client(addr, 1, "")))
            .collect();
        for h in hs {
            assert!(h.join().expect("warm").iter().all(|(s, _, _)| *s == 200));
        }
    });
    let (holders, late) = std::thread::scope(|s| {
        let holders: Vec<_> = (0..8)
            .map(|_| s.spawn(move || client(addr, 1, "")))
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let late: Vec<_> = (0..20)
            .map(|_| s.spawn(move || client(addr, 1, "x-envoy-expected-rq-timeout-ms: 100\r\n")))
            .collect();
        (
            holders
                .into_iter()
                .flat_map(|h| h.join().expect("holder"))
                .collect::<Vec<_>>(),
            late.into_iter()
                .flat_map(|h| h.join().expect("late"))
                .collect::<Vec<_>>(),
        )
    });
    assert!(holders.iter().all(|(s, _, _)| *s == 200));
    let mut refused = 0;
    for (status, took, retry) in &late {
        match status {
            200 => assert!(*took < Duration::from_millis(150), "served late: {took:?}"),
            503 => {
                refused += 1;
                // At once: microseconds in the gateway; loose for a loaded 2-core host.
                assert!(*took < Duration::from_millis(250), "refused late: {took:?}");
                assert!(retry.is_some(), "503 without Retry-After");
            }
            other => panic!("status {other}"),
        }
    }
    assert!(refused >= 1, "none refused: {late:?}");
}

/// nginx answering `return 200` on `port`, listening with a listen queue of 64 (as small
/// as many application servers'), so that a connect storm overflows it.
fn small_backlog_nginx(dir: &std::path::Path, port: u16) -> Daemon {
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/b;\n  proxy_temp_path {d}/p;\n\
         fastcgi_temp_path {d}/f;\n  uwsgi_temp_path {d}/u;\n  scgi_temp_path {d}/s;\n\
         server {{\n    listen 127.0.0.1:{port} backlog=64;\n    location / {{ return 200 \"ok\"; }}\n  }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("conf");
    let child = std::process::Command::new("nginx")
        .args([
            "-c",
            path.to_str().expect("utf8"),
            "-p",
            dir.to_str().expect("utf8"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx (apt install nginx-light)");
    Daemon(child)
}

/// Opens `n` keep-alive connections, then sends one GET on every one at the same moment;
/// the statuses.
async fn burst(addr: std::net::SocketAddr, n: usize) -> Vec<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let go = go.clone();
            tokio::spawn(async move {
                go.wait().await;
                if c.write_all(b"GET /b HTTP/1.1\r\nhost: t\r\n\r\n")
                    .await
                    .is_err()
                {
                    return 0;
                }
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                let read = async {
                    loop {
                        match c.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            return;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(30), read).await;
                std::str::from_utf8(buf.get(9..12).unwrap_or(b"000"))
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap_or(0));
    }
    out
}

#[test]
#[ignore = "5,000 connections against nginx with a 64-entry listen queue; run by .ci/run"]
fn a_burst_of_five_thousand_does_not_storm_an_upstream_with_a_small_listen_queue() {
    let dir = temp_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let _nginx = small_backlog_nginx(&dir, port);
    let up: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(up).is_err() {
        assert!(Instant::now() < end, "nginx never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let gw = gateway(
        "max_connections = 12000\nheader_read_timeout = \"30s\"",
        &format!("[upstreams.m]\nendpoints = [\"{up}\"]\nmax_in_flight = 10000\npool_max_idle = 1024\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\ntimeout = \"20s\"\n[deadline]\nmax = \"20s\"\n"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for run in 1..=3 {
        let statuses = rt.block_on(burst(gw.addr, 5000));
        let ok = statuses.iter().filter(|s| **s == 200).count();
        let others: Vec<_> = statuses.iter().filter(|s| **s != 200).take(10).collect();
        eprintln!("burst {run}: {ok} of 5000 answered 200 {others:?}");
        if ok != 5000 {
            let causes: Vec<_> = gw
                .json_lines()
                .iter()
                .filter(|l| l["status"] != 200)
                .take(5)
                .map(|l| format!("{} {} {}", l["status"], l["flags"], l["cause"]))
                .collect();
            panic!("run {run}: {ok} of 5000 answered 200; {others:?}; causes: {causes:#?}");
        }
    }
    let connects = gw
        .json_lines()
        .iter()
        .filter(|l| l["upstream_reused"] == false)
        .count();
    eprintln!("upstream connections opened over 3 bursts: {connects}");
}

#[test]
fn a_grpc_call_refused_by_a_full_upstream_gets_unavailable_with_pushback() {
    let (tx, got) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let up = FakeUpstream::start(move |_, mut s| {
        if read_request(&mut s).is_some() {
            let _ = tx.lock().expect("lock").send(());
            std::thread::sleep(Duration::from_millis(1500));
            let _ = s.write_all(OK_RESPONSE);
        }
    });
    let gw = gateway(
        "h2c = true",
        &format!("[upstreams.m]\nendpoints = [\"{}\"]\nmax_in_flight = 1\nmax_pending = 0\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n", up.addr),
    );
    let addr = gw.addr;
    // One request holds the only slot.
    let holder = std::thread::spawn(move || get(addr, "/hold", "").status);
    got.recv_timeout(Duration::from_secs(10))
        .expect("the holder reached the upstream");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let headers = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.expect("ready");
        let req = http::Request::post("http://gw.test/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("req");
        let (resp, _) = client.send_request(req, true).expect("send");
        resp.await.expect("response").into_parts().0.headers
    });
    assert_eq!(
        headers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"14"[..])
    );
    assert_eq!(
        headers.get("grpc-retry-pushback-ms").map(|v| v.as_bytes()),
        Some(&b"1000"[..]),
        "{headers:?}"
    );
    assert_eq!(holder.join().expect("holder"), 200);
}

#[test]
fn diagnose_names_an_upstream_whose_queue_ran_out_of_time() {
    // One slot held 2 s by each request; eight requests with a 300 ms deadline: the first
    // times out on the upstream, the others run out of time in the queue (or are refused
    // once the queue knows the hold time).
    let up = mock(&["--latency", "2s", "--quiet"]);
    let gw = gateway(
        "",
        &format!("[upstreams.m]\nendpoints = [\"{}\"]\nmax_in_flight = 1\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\ntimeout = \"300ms\"\n", up.addr),
    );
    let addr = gw.addr;
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(move || client(addr, 1, "")[0].0))
            .collect();
        hs.into_iter().map(|h| h.join().expect("client")).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        7,
        "{statuses:?}"
    );
    // The access log is written by its own thread: wait for all eight records.
    let end = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines: Vec<_> = gw
            .json_lines()
            .into_iter()
            .filter(|l| l["status"].is_u64())
            .collect();
        if lines.len() >= 8 || Instant::now() > end {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let queued = lines.iter().filter(|l| l["phase"] == "queue").count();
    assert_eq!(queued, 7, "{lines:#?}");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let log = temp_file("access.log", &text);
    let o = std::process::Command::new(bin())
        .arg("diagnose")
        .arg(&log)
        .output()
        .expect("diagnose");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("WHO    upstream m: its max_in_flight slots were full — of the requests that queued for one, "),
        "{out}"
    );
}
