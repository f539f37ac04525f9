//! Bodies, buffers and slow clients over real sockets: uploads stream through at the
//! upstream's pace with flat memory, the buffer budget refuses what it cannot hold, slow
//! readers are cut with their slots released. The timing rules themselves are tested on
//! tokio's paused clock in the gateway crate (`request/streaming_tests.rs`); these prove
//! the wiring. The memory tests are `#[ignore]`d (they move gigabytes) and run by `.ci/run`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(20);

/// An upstream that reads each request's body whole (`content-length` or chunked),
/// counts its bytes into `total`, and answers `200` with the count.
fn counting_upstream(total: Arc<AtomicU64>) -> FakeUpstream {
    FakeUpstream::start(move |_, mut s| {
        while let Some(head) = read_request(&mut s) {
            let lower = head.to_ascii_lowercase();
            let n = if lower.contains("transfer-encoding: chunked") {
                read_chunked(&mut s)
            } else {
                let len: u64 = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                read_exactly(&mut s, len)
            };
            let Some(n) = n else { return };
            total.fetch_add(n, Ordering::Relaxed);
            let body = n.to_string();
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    })
}

fn read_exactly(s: &mut TcpStream, mut left: u64) -> Option<u64> {
    let total = left;
    let mut buf = vec![0u8; 256 << 10];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match s.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => left -= n as u64,
        }
    }
    Some(total)
}

/// Reads a chunked body (no extensions, no trailers) and returns its length.
fn read_chunked(s: &mut TcpStream) -> Option<u64> {
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if s.read(&mut b).ok()? == 0 {
                return None;
            }
            line.push(b[0]);
        }
        let size = u64::from_str_radix(std::str::from_utf8(&line).ok()?.trim(), 16).ok()?;
        read_exactly(s, size)?;
        read_exactly(s, 2)?;
        if size == 0 {
            return Some(total);
        }
        total += size;
    }
}

/// Sends `POST path` with a body of `len` bytes written in `piece`-byte writes, each
/// `gap` after the last; returns the response.
fn upload(addr: SocketAddr, path: &str, len: usize, piece: usize, gap: Duration) -> Response {
    let mut c = connect(addr);
    c.set_read_timeout(Some(Duration::from_secs(180)))
        .expect("timeout");
    let head = format!("POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len}\r\n\r\n");
    c.write_all(head.as_bytes()).expect("head");
    let mut writer = c.try_clone().expect("clone");
    let sending = std::thread::spawn(move || {
        let chunk = vec![b'u'; piece];
        let mut left = len;
        while left > 0 {
            let n = left.min(piece);
            if writer.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n;
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
    });
    let r = read_response(&mut c);
    let _ = sending.join();
    r
}

/// Samples the gateway's resident memory every 100 ms until `stop`; the highest seen.
fn peak_rss(gw: &Proc, stop: &AtomicBool) -> u64 {
    let mut peak = gw.rss_kib();
    while !stop.load(Ordering::Relaxed) {
        peak = peak.max(gw.rss_kib());
        std::thread::sleep(Duration::from_millis(100));
    }
    peak.max(gw.rss_kib())
}

fn upload_gateway(up: SocketAddr, server: &str, route: &str) -> Proc {
    gateway(
        &format!("max_connections = 2000\n{server}"),
        &format!(
            "[deadline]\nmax = \"180s\"\n[upstreams.m]\nendpoints = [\"{up}\"]\ntimeout = \"120s\"\nmax_in_flight = 2000\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\ntimeout = \"120s\"\nbody_read_timeout = \"120s\"\n{route}\n"
        ),
    )
}

#[test]
fn an_http2_upload_of_no_declared_length_reaches_an_http1_upstream_chunked_and_whole() {
    let total = Arc::new(AtomicU64::new(0));
    let up = counting_upstream(total.clone());
    let gw = gateway("h2c = true", &route_all(up.addr));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (status, body) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("tcp");
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.expect("ready");
        let req = http::Request::post("http://gw.test/up")
            .body(())
            .expect("req");
        let (resp, mut stream) = client.send_request(req, false).expect("send");
        // 1 MiB in 16 KiB DATA frames, each as the window allows.
        for _ in 0..64 {
            stream.reserve_capacity(16 << 10);
            let mut left = 16 << 10;
            while left > 0 {
                let got = std::future::poll_fn(|cx| stream.poll_capacity(cx))
                    .await
                    .expect("capacity")
                    .expect("capacity");
                let n = got.min(left);
                stream
                    .send_data(bytes::Bytes::from(vec![b'd'; n]), false)
                    .expect("data");
                left -= n;
            }
        }
        stream.send_data(bytes::Bytes::new(), true).expect("end");
        let resp = resp.await.expect("response");
        let status = resp.status();
        let mut recv = resp.into_body();
        let mut got = Vec::new();
        while let Some(c) = recv.data().await {
            let c = c.expect("data");
            let _ = recv.flow_control().release_capacity(c.len());
            got.extend_from_slice(&c);
        }
        (status, String::from_utf8_lossy(&got).into_owned())
    });
    assert_eq!(status, 200);
    assert_eq!(
        body,
        (1u64 << 20).to_string(),
        "the upstream counted every byte"
    );
    assert_eq!(total.load(Ordering::Relaxed), 1 << 20);
}

#[test]
fn a_slow_http1_reader_is_cut_at_min_send_rate_and_its_slot_released() {
    // 64 MiB answered: far more than the socket buffers hold, so hopline waits on the
    // client, which reads 4 KiB every 100 ms (40 KiB/s) against a floor of 256 KiB/s.
    let (tx, closed) = mpsc::channel();
    let tx = Mutex::new(tx);
    let up = FakeUpstream::start(move |_, mut s| {
        if read_request(&mut s).is_none() {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n");
        let chunk = vec![b'z'; 1 << 20];
        for _ in 0..64 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = tx.lock().expect("lock").send(());
    });
    let gw = gateway(
        "min_send_rate = \"256KiB/s\"\nmin_send_rate_window = \"2s\"",
        &format!("[upstreams.m]\nendpoints = [\"{}\"]\nmax_in_flight = 1\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\ntimeout = \"60s\"\n[deadline]\nmax = \"60s\"\n", up.addr),
    );
    let mut c = connect(gw.addr);
    c.write_all(b"GET /big HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (mut c, reading) = (c.try_clone().expect("clone"), reading.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while reading.load(Ordering::Relaxed) {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
    };
    let line = gw.wait_json(WAIT, "/big line", |v| v["path"] == "/big");
    reading.store(false, Ordering::Relaxed);
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["flags"], serde_json::json!(["WT"]), "{line}");
    let cause = line["cause"].as_str().expect("cause");
    assert!(
        cause.contains("below min_send_rate 262144 bytes/s"),
        "{cause}"
    );
    // The upstream's connection was closed under it, and the one in-flight slot is free:
    // the next request is served.
    closed
        .recv_timeout(WAIT)
        .expect("upstream connection closed");
    let _ = c.shutdown(std::net::Shutdown::Both);
    reader.join().expect("reader");
    let r = get(gw.addr, "/again", "");
    assert_eq!(r.status, 200);
}

#[test]
fn a_slow_http2_reader_granting_a_byte_at_a_time_is_cut_per_stream() {
    let up = FakeUpstream::start(move |_, mut s| {
        while read_request(&mut s).is_some() {
            let body = vec![b'z'; 1 << 20];
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n");
            if s.write_all(&body).is_err() {
                return;
            }
        }
    });
    let gw = gateway(
        "h2c = true\nmin_send_rate = \"1KiB/s\"\nmin_send_rate_window = \"2s\"\nwrite_timeout = \"30s\"",
        &route_all(up.addr),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ended = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("tcp");
        let (client, conn) = h2::client::Builder::new()
            .initial_window_size(1024)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .expect("h2");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.expect("ready");
        let req = http::Request::get("http://gw.test/slow")
            .body(())
            .expect("req");
        let (resp, _) = client.send_request(req, true).expect("send");
        let mut recv = resp.await.expect("response").into_body();
        // Reads what the 1 KiB window let through, then grants one byte every 500 ms.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            match tokio::time::timeout(Duration::from_millis(500), recv.data()).await {
                Ok(Some(Ok(c))) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = recv.flow_control().release_capacity(c.len().min(1));
                }
                Ok(Some(Err(_))) | Ok(None) => return true,
                Err(_) => {}
            }
        }
        false
    });
    assert!(ended, "the stream was not cut");
    let line = gw.wait_json(WAIT, "/slow line", |v| v["path"] == "/slow");
    assert_eq!(line["flags"], serde_json::json!(["WT"]), "{line}");
    assert!(
        line["cause"]
            .as_str()
            .expect("cause")
            .contains("below min_send_rate 1024 bytes/s"),
        "{line}"
    );
}

#[test]
#[ignore = "moves 600 MiB through the gateway; run by .ci/run"]
fn forty_slow_uploads_stream_through_with_flat_memory_and_gets_are_served_meanwhile() {
    let total = Arc::new(AtomicU64::new(0));
    let up = counting_upstream(total.clone());
    let gw = upload_gateway(up.addr, "", "");
    const N: usize = 40;
    const LEN: usize = 15 << 20;
    // Warm up (thread pools, the pool's first connections), then the base.
    assert_eq!(
        upload(gw.addr, "/warm", 1 << 20, 64 << 10, Duration::ZERO).status,
        200
    );
    let base = gw.rss_kib();
    let stop = AtomicBool::new(false);
    let (peak, gets, statuses) = std::thread::scope(|s| {
        let peak = s.spawn(|| peak_rss(&gw, &stop));
        let gets = s.spawn(|| {
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(get(gw.addr, "/small", "").status, 200);
                served += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            served
        });
        // ~0.7 MB/s each: 64 KiB every 90 ms.
        let ups: Vec<_> = (0..N)
            .map(|i| {
                let addr = gw.addr;
                s.spawn(move || {
                    upload(
                        addr,
                        &format!("/u{i}"),
                        LEN,
                        64 << 10,
                        Duration::from_millis(90),
                    )
                })
            })
            .collect();
        let statuses: Vec<(u16, String)> = ups
            .into_iter()
            .map(|h| {
                let r = h.join().expect("upload");
                (r.status, r.body)
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        (
            peak.join().expect("peak"),
            gets.join().expect("gets"),
            statuses,
        )
    });
    for (status, body) in &statuses {
        assert_eq!((*status, body.as_str()), (200, LEN.to_string().as_str()));
    }
    assert_eq!(total.load(Ordering::Relaxed), (N * LEN + (1 << 20)) as u64);
    assert!(gets > 10, "small GETs served meanwhile: {gets}");
    let growth = peak.saturating_sub(base);
    eprintln!("40 slow 15 MiB uploads: RSS {base} KiB -> peak {peak} KiB (+{growth} KiB)");
    assert!(growth < 64 << 10, "RSS grew {growth} KiB");
}

#[test]
#[ignore = "moves 600 MiB through the gateway; run by .ci/run"]
fn buffered_uploads_take_what_the_budget_holds_and_refuse_the_rest_with_om() {
    let total = Arc::new(AtomicU64::new(0));
    let up = counting_upstream(total.clone());
    let budget: u64 = 128 << 20;
    let gw = upload_gateway(
        up.addr,
        &format!("max_buffered_bytes = {budget}"),
        "request_buffering = true",
    );
    const N: usize = 40;
    const LEN: usize = 15 << 20;
    let base = gw.rss_kib();
    let stop = AtomicBool::new(false);
    let (peak, statuses) = std::thread::scope(|s| {
        let peak = s.spawn(|| peak_rss(&gw, &stop));
        let ups: Vec<_> = (0..N)
            .map(|i| {
                let addr = gw.addr;
                s.spawn(move || {
                    upload(
                        addr,
                        &format!("/b{i}"),
                        LEN,
                        64 << 10,
                        Duration::from_millis(20),
                    )
                    .status
                })
            })
            .collect();
        let statuses: Vec<u16> = ups.into_iter().map(|h| h.join().expect("upload")).collect();
        stop.store(true, Ordering::Relaxed);
        (peak.join().expect("peak"), statuses)
    });
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(ok + refused, N, "{statuses:?}");
    assert!(ok >= 1 && refused >= 1, "{ok} taken, {refused} refused");
    assert!(
        ok as u64 * LEN as u64 <= budget + (N as u64 * LEN as u64),
        "{ok}"
    );
    let lines = gw.json_lines();
    let om = lines
        .iter()
        .filter(|l| l["flags"] == serde_json::json!(["OM"]))
        .count();
    assert_eq!(om, refused, "each refusal logged OM");
    let growth = peak.saturating_sub(base);
    eprintln!("40 buffered 15 MiB uploads, budget 128 MiB: {ok} taken, {refused} refused; RSS +{growth} KiB");
    assert!(
        growth < (budget >> 10) + (64 << 10),
        "RSS grew {growth} KiB"
    );
}

#[test]
#[ignore = "moves 1 GiB through the gateway; run by .ci/run"]
fn a_one_gib_upload_passes_with_flat_memory() {
    let total = Arc::new(AtomicU64::new(0));
    let up = counting_upstream(total.clone());
    let gw = upload_gateway(up.addr, "max_body_bytes = 2147483648", "");
    assert_eq!(
        upload(gw.addr, "/warm", 1 << 20, 64 << 10, Duration::ZERO).status,
        200
    );
    let base = gw.rss_kib();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (peak, r) = std::thread::scope(|s| {
        let peak = s.spawn(|| peak_rss(&gw, &stop));
        let r = upload(gw.addr, "/gib", 1 << 30, 256 << 10, Duration::ZERO);
        stop.store(true, Ordering::Relaxed);
        (peak.join().expect("peak"), r)
    });
    let took = started.elapsed();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, (1u64 << 30).to_string().as_str())
    );
    let growth = peak.saturating_sub(base);
    eprintln!(
        "1 GiB upload in {:.1} s ({:.0} MiB/s): RSS {base} KiB -> peak {peak} KiB (+{growth} KiB)",
        took.as_secs_f64(),
        1024.0 / took.as_secs_f64()
    );
    assert!(growth < 16 << 10, "RSS grew {growth} KiB");
}

/// The kernel's timer on the TCP connection between `local` and `remote` (IPv4 loopback),
/// from `/proc/net/tcp`: 2 is the keepalive timer.
fn tcp_timer(local_port: u16, remote: SocketAddr) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        (port(f.get(1)?)? == local_port && port(f.get(2)?)? == remote.port())
            .then(|| f.get(5)?.split(':').next()?.parse().ok())
            .flatten()
    })
}

#[test]
fn pooled_upstream_connections_and_client_connections_carry_tcp_keepalive() {
    let (tx, conns) = mpsc::channel();
    let tx = Mutex::new(tx);
    let up = FakeUpstream::start(move |_, mut s| {
        let _ = tx.lock().expect("lock").send(s.peer_addr().expect("peer"));
        while read_request(&mut s).is_some() {
            if s.write_all(OK_RESPONSE).is_err() {
                return;
            }
        }
    });
    let gw = gateway("", &route_all(up.addr));
    let mut c = connect(gw.addr);
    c.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    assert_eq!(read_response(&mut c).status, 200);
    // The gateway's end of its pooled connection: keepalive's timer is armed on it.
    let gateway_end = conns.recv_timeout(WAIT).expect("upstream connection");
    assert_eq!(
        tcp_timer(gateway_end.port(), up.addr),
        Some(2),
        "no keepalive timer"
    );
    // And on the client's connection, on the gateway's side.
    let client = c.local_addr().expect("local");
    assert_eq!(
        tcp_timer(gw.addr.port(), client),
        Some(2),
        "no keepalive timer"
    );
    // Turned off, none.
    let gw = gateway(
        "tcp_keepalive = false",
        &format!("[upstreams.m]\nendpoints = [\"{}\"]\ntcp_keepalive = false\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n", up.addr),
    );
    let mut c = connect(gw.addr);
    c.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .expect("write");
    assert_eq!(read_response(&mut c).status, 200);
    let gateway_end = conns.recv_timeout(WAIT).expect("upstream connection");
    assert_eq!(tcp_timer(gateway_end.port(), up.addr), Some(0));
    let client = c.local_addr().expect("local");
    assert_eq!(tcp_timer(gw.addr.port(), client), Some(0));
}
