//! Surges through a proxy, for `bench/surge.sh`; one JSON line of what came back.
//!
//! - `surge burst HOST:PORT N`: opens N keep-alive connections, then writes one request on
//!   every one before reading any answer (N requests in flight at once), and counts the
//!   answers by status (`0`: the connection closed or reset, or no answer within 30 s).
//! - `surge queue HOST:PORT CLIENTS REQUESTS`: CLIENTS threads, each sending REQUESTS
//!   requests one after another on its keep-alive connection (a new one when the proxy
//!   closes it), counted by status, with the median, 99th percentile and slowest answer.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hopline_bench::read_response;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n";

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

fn burst(addr: SocketAddr, n: usize) -> std::io::Result<serde_json::Value> {
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        conns.push(connect(addr)?);
    }
    let started = Instant::now();
    for s in &mut conns {
        s.write_all(REQUEST)?;
    }
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut body = Vec::new();
    for s in &mut conns {
        let status = read_response(s, &mut body).unwrap_or(0);
        *statuses.entry(status).or_default() += 1;
    }
    Ok(serde_json::json!({
        "mode": "burst",
        "requests": n,
        "statuses": statuses,
        "answered_secs": started.elapsed().as_secs_f64(),
    }))
}

fn queue(addr: SocketAddr, clients: usize, requests: usize) -> serde_json::Value {
    let started = Instant::now();
    let results: Vec<(u16, Duration)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                sc.spawn(move || {
                    let mut out = Vec::with_capacity(requests);
                    let mut conn = connect(addr).ok();
                    let mut body = Vec::new();
                    for _ in 0..requests {
                        let t0 = Instant::now();
                        let status = match conn.as_mut() {
                            Some(s) => s
                                .write_all(REQUEST)
                                .and_then(|()| read_response(s, &mut body))
                                .unwrap_or(0),
                            None => 0,
                        };
                        let closes = status == 0
                            || String::from_utf8_lossy(&body)
                                .to_ascii_lowercase()
                                .contains("connection: close");
                        out.push((status, t0.elapsed()));
                        if closes {
                            conn = connect(addr).ok();
                        }
                    }
                    out
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for (s, _) in &results {
        *statuses.entry(*s).or_default() += 1;
    }
    let mut took: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    took.sort();
    let at = |q: f64| {
        took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    serde_json::json!({
        "mode": "queue",
        "requests": clients * requests,
        "statuses": statuses,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "slowest_ms": at(1.0),
        "took_secs": started.elapsed().as_secs_f64(),
    })
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> std::io::Error {
        eprintln!("usage: surge burst HOST:PORT N | surge queue HOST:PORT CLIENTS REQUESTS");
        std::process::exit(2)
    };
    let addr: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let num = |i: usize| -> std::io::Result<usize> {
        args.get(i).and_then(|v| v.parse().ok()).ok_or_else(usage)
    };
    let report = match args.get(1).map(String::as_str) {
        Some("burst") => burst(addr, num(3)?)?,
        Some("queue") => queue(addr, num(3)?, num(4)?),
        _ => return Err(usage()),
    };
    println!("{report}");
    Ok(())
}
