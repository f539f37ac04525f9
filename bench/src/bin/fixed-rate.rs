//! Latency at a fixed, unsaturated request rate (open loop, latency from each request's
//! scheduled time), for `bench/run.sh`.
//!
//! Usage: `fixed-rate HOST:PORT RATE SECONDS` → one JSON line.

use std::time::Duration;

use hopline_bench::Summary;
use hopline_drill::load::{run, LoadPlan, Outcome, Step};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .ok_or("usage: fixed-rate HOST:PORT RATE SECONDS")?
        .parse()?;
    let rate: f64 = args.next().ok_or("missing RATE")?.parse()?;
    let secs: u64 = args.next().ok_or("missing SECONDS")?.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let plan = LoadPlan {
        target,
        paths: vec!["/".into()],
        schedule: vec![Step {
            at: Duration::ZERO,
            rate,
            ramp: false,
        }],
        duration: Duration::from_secs(secs),
        client_timeout: Duration::from_secs(5),
        max_in_flight: 50_000,
    };
    let samples = rt.block_on(run(&plan, |_, _| {}));
    let non_2xx = samples
        .iter()
        .filter(|s| !matches!(s.outcome, Outcome::Status(200..=299)))
        .count();
    let mut lat: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    let s = Summary::of(&mut lat);
    println!(
        "{}",
        serde_json::json!({"rate": rate, "requests": samples.len(), "non_2xx": non_2xx, "latency": s.json()})
    );
    Ok(())
}
