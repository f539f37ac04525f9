//! Measures two promises of `hopline serve` on loopback:
//!
//! 1. client close → upstream close: a client sends a request the upstream never answers,
//!    then closes; we time from the client's close to the upstream reading EOF.
//! 2. 504 accuracy: with a 100 ms route deadline and an upstream that never answers, how
//!    late after the deadline the client gets its 504.
//!
//! Usage: `cargo build --release && cargo run --release -p hopline-bench --bin gateway-timing [TRIALS]`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hopline_bench::{save, spawn_hopline, Summary};

const DEADLINE: Duration = Duration::from_millis(100);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let trials: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(300);

    // The upstream: reports each request it receives, never answers, reports EOF.
    let upstream = TcpListener::bind("127.0.0.1:0")?;
    let up_addr = upstream.local_addr()?;
    let (got_tx, got_rx) = mpsc::channel::<()>();
    let (eof_tx, eof_rx) = mpsc::channel::<Instant>();
    std::thread::spawn(move || {
        for conn in upstream.incoming() {
            let Ok(mut s) = conn else { continue };
            let (got_tx, eof_tx) = (got_tx.clone(), eof_tx.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = eof_tx.send(Instant::now());
                            return;
                        }
                        Ok(n) => {
                            seen.extend_from_slice(&buf[..n]);
                            if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                seen.clear();
                                let _ = got_tx.send(());
                            }
                        }
                    }
                }
            });
        }
    });

    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"off\"\n\
         [upstreams.hang]\nendpoints = [\"{up_addr}\"]\ntimeout = \"60s\"\nmax_retries = 0\n\
         [[routes]]\nname = \"cancel\"\npath = \"/cancel\"\nupstream = \"hang\"\ntimeout = \"30s\"\n\
         [[routes]]\nname = \"deadline\"\npath = \"/deadline\"\nupstream = \"hang\"\ntimeout = \"100ms\"\n"
    );
    let path = std::env::temp_dir().join(format!("hopline-bench-{}.toml", std::process::id()));
    std::fs::write(&path, config)?;
    let (_gw, gw_addr) = spawn_hopline(&["serve", "-c", path.to_str().unwrap_or_default()])?;

    // 1. client close -> upstream close.
    let mut close_lag = Vec::with_capacity(trials);
    for _ in 0..trials {
        let mut c = TcpStream::connect(gw_addr)?;
        c.set_nodelay(true)?;
        c.write_all(b"GET /cancel HTTP/1.1\r\nhost: b\r\n\r\n")?;
        got_rx.recv_timeout(Duration::from_secs(5))?;
        let closed = Instant::now();
        drop(c);
        let eof = eof_rx.recv_timeout(Duration::from_secs(5))?;
        close_lag.push(eof.saturating_duration_since(closed));
    }
    let close = Summary::of(&mut close_lag);

    // 2. 504 lateness against the deadline, seen by the client.
    let n504 = trials.min(200);
    let mut late = Vec::with_capacity(n504);
    for _ in 0..n504 {
        let mut c = TcpStream::connect(gw_addr)?;
        c.set_nodelay(true)?;
        let sent = Instant::now();
        c.write_all(b"GET /deadline HTTP/1.1\r\nhost: b\r\n\r\n")?;
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf)?;
        let took = sent.elapsed();
        if !buf[..n].starts_with(b"HTTP/1.1 504") {
            return Err(
                format!("expected 504, got {:?}", String::from_utf8_lossy(&buf[..n])).into(),
            );
        }
        late.push(took.saturating_sub(DEADLINE));
        let _ = eof_rx.recv_timeout(Duration::from_secs(5))?;
        let _ = got_rx.try_recv();
    }
    let lateness = Summary::of(&mut late);

    println!("hopline gateway timing ({trials} trials, loopback, release build)");
    println!(
        "{:<42} {:>9} {:>9} {:>9} {:>9}",
        "measure", "min", "median", "p99", "max"
    );
    for (name, s) in [
        ("client close -> upstream close", close),
        ("504 after 100ms deadline: lateness", lateness),
    ] {
        println!(
            "{name:<42} {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>7.3}ms",
            s.min.as_secs_f64() * 1e3,
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            s.max.as_secs_f64() * 1e3
        );
    }
    let out = save(
        "gateway-timing",
        &serde_json::json!({"trials": trials, "client_close_to_upstream_close": close.json(), "deadline_504_lateness": lateness.json()}),
    )?;
    println!("saved {}", out.display());
    Ok(())
}
