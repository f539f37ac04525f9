//! What `hopline chaos` costs with no toxics: bulk MB/s and small request/response rate,
//! through the proxy versus direct, on loopback.
//!
//! Usage: `cargo build --release && cargo run --release -p hopline-bench --bin chaos-throughput`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hopline_bench::{save, spawn_hopline};

const BULK_BYTES: u64 = 2 << 30;
const RR_SECS: u64 = 5;
const RR_CONNS: usize = 16;

/// Upstream that discards what it reads and answers "ok" to each 64-byte request.
fn upstream() -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let _ = c.set_nodelay(true);
                let mut buf = vec![0u8; 256 * 1024];
                let mut pending = 0usize;
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            // Request/response mode: every 64 bytes in, 2 bytes out.
                            if buf[0] == b'Q' {
                                pending += n;
                                while pending >= 64 {
                                    pending -= 64;
                                    if c.write_all(b"ok").is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn bulk(addr: SocketAddr) -> std::io::Result<f64> {
    let mut s = TcpStream::connect(addr)?;
    let chunk = vec![b'B'; 256 * 1024];
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < BULK_BYTES {
        s.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(sent as f64 / 1e6 / t0.elapsed().as_secs_f64())
}

fn request_response(addr: SocketAddr) -> std::io::Result<(f64, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..RR_CONNS {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let (stop, count) = (stop.clone(), count.clone());
        threads.push(std::thread::spawn(move || {
            let req = [b'Q'; 64];
            let mut resp = [0u8; 2];
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(&req).is_err() || s.read_exact(&mut resp).is_err() {
                    return;
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(RR_SECS));
    stop.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    let took = t0.elapsed();
    for t in threads {
        let _ = t.join();
    }
    let rps = n as f64 / took.as_secs_f64();
    // Mean round trip per connection.
    let rtt = Duration::from_secs_f64(RR_CONNS as f64 / rps);
    Ok((rps, rtt))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let up = upstream()?;
    let (chaos, api) = spawn_hopline(&["chaos", "--api", "127.0.0.1:0", "--seed", "1"])?;
    let mut s = TcpStream::connect(api)?;
    let body = format!(r#"{{"name":"bench","listen":"127.0.0.1:0","upstream":"{up}"}}"#);
    write!(s, "POST /proxies HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let json: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap_or("{}").trim())?;
    let proxied: SocketAddr = json["listen"].as_str().ok_or("no listen")?.parse()?;

    let direct_bulk = bulk(up)?;
    let proxy_bulk = bulk(proxied)?;
    let (direct_rps, direct_rtt) = request_response(up)?;
    let (proxy_rps, proxy_rtt) = request_response(proxied)?;
    drop(chaos);

    println!("hopline chaos, no toxics, loopback, release build");
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "measure", "direct", "via chaos", "ratio"
    );
    println!(
        "{:<34} {:>9.0}MB/s {:>9.0}MB/s {:>8.2}",
        "bulk transfer (2 GiB, 1 conn)",
        direct_bulk,
        proxy_bulk,
        proxy_bulk / direct_bulk
    );
    println!(
        "{:<34} {:>10.0}/s {:>10.0}/s {:>8.2}",
        "64 B req / 2 B resp, 16 conns",
        direct_rps,
        proxy_rps,
        proxy_rps / direct_rps
    );
    println!(
        "{:<34} {:>10.1}us {:>10.1}us {:>+7.1}us",
        "mean round trip",
        direct_rtt.as_secs_f64() * 1e6,
        proxy_rtt.as_secs_f64() * 1e6,
        (proxy_rtt.as_secs_f64() - direct_rtt.as_secs_f64()) * 1e6
    );
    let out = save(
        "chaos-throughput",
        &serde_json::json!({
            "bulk_mb_s": {"direct": direct_bulk, "chaos": proxy_bulk},
            "rr_per_s": {"direct": direct_rps, "chaos": proxy_rps},
            "rtt_us": {"direct": direct_rtt.as_secs_f64() * 1e6, "chaos": proxy_rtt.as_secs_f64() * 1e6},
        }),
    )?;
    println!("saved {}", out.display());
    Ok(())
}
