//! Latency at a fixed, unsaturated request rate, for `bench/run.sh`, the way wrk2 does it:
//! a fixed set of keep-alive connections, each sending its share of the rate on a fixed
//! schedule; latency counts from each request's *scheduled* time, so a stalled connection
//! is charged for every request it delays (no coordinated omission).
//!
//! A connection that fails (reset, timeout) stops; every request it had not had a 2xx
//! answer for counts as an error, so `error_share` (requests scheduled without a 2xx
//! answer / requests scheduled) is meaningful under overload too. `achieved_rate` is the
//! rate the answers came back at.
//!
//! Usage: `fixed-rate HOST:PORT RATE SECONDS [CONNECTIONS=64]` → one JSON line.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hopline_bench::{read_response, Summary};

/// What one connection got: latencies of its answered requests, how many of them were
/// not 2xx, and why it stopped early, if it did.
struct Outcome {
    lat: Vec<Duration>,
    non_2xx: u64,
    error: Option<std::io::Error>,
}

/// Sends `n` requests on one connection, request `i` scheduled at `start + offset + i * every`.
fn connection(
    addr: SocketAddr,
    start: Instant,
    offset: Duration,
    every: Duration,
    n: u64,
) -> Outcome {
    let mut out = Outcome {
        lat: Vec::with_capacity(n as usize),
        non_2xx: 0,
        error: None,
    };
    if let Err(e) = requests(addr, start, offset, every, n, &mut out) {
        out.error = Some(e);
    }
    out
}

fn requests(
    addr: SocketAddr,
    start: Instant,
    offset: Duration,
    every: Duration,
    n: u64,
    out: &mut Outcome,
) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n";
    let mut buf = Vec::with_capacity(16 * 1024);
    for i in 0..n {
        let due = start + offset + every * i as u32;
        // Sleep (no spinning: 64 threads share one core); oversleep counts as latency,
        // the same for every proxy measured.
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        s.write_all(req)?;
        if !(200..300).contains(&read_response(&mut s, &mut buf)?) {
            out.non_2xx += 1;
        }
        out.lat.push(due.elapsed());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .ok_or("usage: fixed-rate HOST:PORT RATE SECONDS [CONNECTIONS]")?
        .parse()?;
    let rate: f64 = args.next().ok_or("missing RATE")?.parse()?;
    let secs: f64 = args.next().ok_or("missing SECONDS")?.parse()?;
    let conns: u32 = args.next().map(|c| c.parse()).transpose()?.unwrap_or(64);
    let per_conn = rate / f64::from(conns);
    let every = Duration::from_secs_f64(1.0 / per_conn);
    let n = (per_conn * secs) as u64;
    let start = Instant::now() + Duration::from_millis(200);
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let offset = every.mul_f64(f64::from(c) / f64::from(conns));
            std::thread::spawn(move || connection(addr, start, offset, every, n))
        })
        .collect();
    let mut lat = Vec::new();
    let mut non_2xx = 0;
    let mut errors = 0;
    let mut first_error = None;
    for t in threads {
        let o = t.join().map_err(|_| "a connection thread panicked")?;
        lat.extend(o.lat);
        non_2xx += o.non_2xx;
        if let Some(e) = o.error {
            errors += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let scheduled = n * u64::from(conns);
    let ok = lat.len() as u64 - non_2xx;
    let s = Summary::of(&mut lat);
    println!(
        "{}",
        serde_json::json!({
            "rate": rate, "connections": conns, "scheduled": scheduled, "requests": lat.len(),
            "non_2xx": non_2xx, "failed_connections": errors, "first_error": first_error,
            "error_share": (scheduled - ok) as f64 / scheduled.max(1) as f64,
            "achieved_rate": lat.len() as f64 / elapsed, "latency": s.json()})
    );
    Ok(())
}
