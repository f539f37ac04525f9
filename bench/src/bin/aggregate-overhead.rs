//! Latency of an aggregate route (three parallel calls) against a plain proxy route to the
//! same kind of upstream, at a fixed request rate, through `hopline serve`.
//!
//! Usage: `cargo build --release && cargo run --release -p hopline-bench --bin aggregate-overhead [RATE] [SECS]`

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hopline_bench::{read_response, save, spawn_hopline, Summary};

fn run(addr: SocketAddr, path: &str, rate: u32, secs: u64) -> std::io::Result<Summary> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: b\r\n\r\n");
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let n = rate as u64 * secs;
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n as usize);
    let mut buf = Vec::with_capacity(64 * 1024);
    for i in 0..n {
        let due = start + interval * i as u32;
        // Sleep most of the wait, spin the rest: sleep alone overshoots by about a
        // millisecond here, which would swamp what we measure.
        if let Some(wait) = due.checked_duration_since(Instant::now() + Duration::from_millis(2)) {
            std::thread::sleep(wait);
        }
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        s.write_all(req.as_bytes())?;
        let status = read_response(&mut s, &mut buf)?;
        if status != 200 {
            return Err(std::io::Error::other(format!("status {status}")));
        }
        // Latency from the scheduled send time (no coordinated omission).
        lat.push(due.elapsed());
    }
    Ok(Summary::of(&mut lat))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rate: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(500);
    let secs: u64 = std::env::args()
        .nth(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let mut mocks = Vec::new();
    let mut addrs = Vec::new();
    for body in [
        r#"{"coupons":[1,2]}"#,
        r#"{"coins":120}"#,
        r#"{"sub_coins":7}"#,
    ] {
        let (g, a) =
            spawn_hopline(&["mock", "--listen", "127.0.0.1:0", "--quiet", "--body", body])?;
        mocks.push(g);
        addrs.push(a);
    }
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"off\"\n\
         [upstreams.coupon]\nendpoints = [\"{}\"]\n[upstreams.coin]\nendpoints = [\"{}\"]\n[upstreams.sub_coin]\nendpoints = [\"{}\"]\n\
         [[routes]]\nname = \"direct\"\npath = \"/direct\"\nupstream = \"coupon\"\ntimeout = \"1s\"\n\
         [[routes]]\nname = \"benefits\"\npath = \"/benefits\"\ntimeout = \"1s\"\naggregate.mode = \"parallel\"\n\
         [[routes.aggregate.calls]]\nname = \"coupons\"\nupstream = \"coupon\"\npath = \"/c\"\nfallback = {{ coupons = [] }}\n\
         [[routes.aggregate.calls]]\nname = \"coin\"\nupstream = \"coin\"\npath = \"/coin\"\nfallback = 0\n\
         [[routes.aggregate.calls]]\nname = \"sub_coin\"\nupstream = \"sub_coin\"\npath = \"/sub\"\nfallback = 0\n",
        addrs[0], addrs[1], addrs[2]
    );
    let path = std::env::temp_dir().join(format!("hopline-agg-bench-{}.toml", std::process::id()));
    std::fs::write(&path, config)?;
    let (_gw, gw) = spawn_hopline(&["serve", "-c", path.to_str().unwrap_or_default()])?;
    // Warm up pools, then measure interleaved.
    run(gw, "/direct", rate, 1)?;
    run(gw, "/benefits", rate, 1)?;
    run(addrs[0], "/c", rate, 1)?;
    let baseline = run(addrs[0], "/c", rate, secs)?;
    let direct = run(gw, "/direct", rate, secs)?;
    let agg = run(gw, "/benefits", rate, secs)?;
    println!("aggregate route (3 parallel calls) vs plain proxy route, {rate} req/s for {secs} s each, one keep-alive client");
    println!("{:<28} {:>9} {:>9} {:>9}", "route", "median", "p99", "max");
    for (name, s) in [
        ("mock alone (no gateway)", baseline),
        ("proxy /direct", direct),
        ("aggregate /benefits", agg),
    ] {
        println!(
            "{name:<28} {:>7.3}ms {:>7.3}ms {:>7.3}ms",
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            s.max.as_secs_f64() * 1e3
        );
    }
    let out = save(
        "aggregate-overhead",
        &serde_json::json!({"rate": rate, "secs": secs, "mock_alone": baseline.json(), "proxy": direct.json(), "aggregate": agg.json()}),
    )?;
    println!("saved {}", out.display());
    Ok(())
}
