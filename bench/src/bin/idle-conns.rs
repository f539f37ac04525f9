//! Memory held per idle keep-alive client connection, for `bench/run.sh`: opens N
//! connections to a proxy, sends one request on each and reads its response (so every
//! connection has been through a request and is now idle in keep-alive), then reads the
//! proxy worker's resident set from `/proc/PID/status` and subtracts the baseline taken
//! with one such connection open.
//!
//! With `--burst`, the N connections are opened first and then each sends its request at
//! the same moment (all written before any response is read), so the proxy holds N
//! requests in flight at once; every response must be a 2xx (a burst answered 503 proves
//! nothing), and the RSS is read one second after the last one: what the proxy keeps
//! after a burst, not only what an idle connection costs. Both modes also report the RSS
//! one second after every connection but one closed again (`after_close_kib`): memory
//! that stays then is not held by connections.
//!
//! With `--hold`, the connections stay open after the JSON line (printed at once, without
//! the after-close reading) until standard input reaches its end, so another load can be
//! measured while they are open (`bench/growth.sh`).
//!
//! Usage: `idle-conns HOST:PORT PID [N=10000] [--burst] [--hold]` → one JSON line.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hopline_bench::read_response;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n";

fn rss_kib(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no VmRSS line"))
}

/// Opens a connection, makes one request and reads its whole (small) response.
fn one_request(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(REQUEST)?;
    let status = read_response(&mut s, &mut Vec::new())?;
    if !(200..300).contains(&status) {
        return Err(std::io::Error::other(format!("status {status}")));
    }
    Ok(s)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: idle-conns HOST:PORT PID [N=10000] [--burst] [--hold]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[1].parse().map_err(std::io::Error::other)?;
    let pid: u32 = args[2].parse().map_err(std::io::Error::other)?;
    let n: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let burst = args.iter().any(|a| a == "--burst");
    let hold = args.iter().any(|a| a == "--hold");

    let mut conns = vec![one_request(addr)?];
    // Let the proxy settle (allocator caches, lazily built state) before the baseline.
    for _ in 0..100 {
        drop(one_request(addr)?);
    }
    std::thread::sleep(Duration::from_millis(200));
    let baseline = rss_kib(pid)?;
    let started = Instant::now();
    // Burst phases: connections open, requests written, every answer read (seconds).
    let mut phases = None;
    if burst {
        let mut fresh = Vec::with_capacity(n - 1);
        while fresh.len() + 1 < n {
            let s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            fresh.push(s);
        }
        let connected = started.elapsed();
        for s in &mut fresh {
            s.write_all(REQUEST)?;
        }
        let written = started.elapsed();
        let mut body = Vec::new();
        for (i, s) in fresh.iter_mut().enumerate() {
            let status = read_response(s, &mut body)?;
            if !(200..300).contains(&status) {
                return Err(std::io::Error::other(format!(
                    "burst connection {i}: status {status}"
                )));
            }
        }
        phases = Some((connected, written, started.elapsed()));
        conns.extend(fresh);
        std::thread::sleep(Duration::from_secs(1));
    } else {
        while conns.len() < n {
            conns.push(one_request(addr)?);
        }
        // 1.5 s: long enough for an allocator that returns freed pages over about a
        // second (hopline's jemalloc) to have done so; what is left is held.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let after = rss_kib(pid)?;
    let per_conn = (after.saturating_sub(baseline) * 1024) as f64 / (n - 1) as f64;
    let mut report = serde_json::json!({
        "connections": n,
        "burst": burst,
        "baseline_kib": baseline,
        "after_kib": after,
        "bytes_per_connection": (per_conn * 10.0).round() / 10.0,
        "open_secs": started.elapsed().as_secs_f64(),
        "burst_secs": phases.map(|(c, w, r): (Duration, Duration, Duration)| serde_json::json!({
            "connected": c.as_secs_f64(), "written": w.as_secs_f64(), "answered": r.as_secs_f64()})),
    });
    if hold {
        println!("{report}");
        std::io::stdout().flush()?;
        std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
        return Ok(());
    }
    // And once every connection is closed again: what stays is not held by a connection.
    conns.truncate(1);
    std::thread::sleep(Duration::from_secs(1));
    report["after_close_kib"] = rss_kib(pid)?.into();
    println!("{report}");
    drop(conns);
    Ok(())
}
