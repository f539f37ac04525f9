//! The drill load generator's ceiling: offered vs achieved rate against a fast
//! `hopline mock`, and how many requests left late, at increasing rates.
//!
//! Usage: `cargo build --release && cargo run --release -p hopline-bench --bin loadgen-ceiling`

use std::time::Duration;

use hopline_bench::{save, spawn_hopline};
use hopline_drill::load::{run, LoadPlan, Outcome, Step};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_mock, addr) = spawn_hopline(&["mock", "--listen", "127.0.0.1:0", "--quiet"])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let secs = 5;
    println!("open-loop load generator vs hopline mock, {secs} s per rate (both on this machine's 2 cores)");
    println!(
        "{:>10} {:>10} {:>10} {:>10} {:>10}",
        "offered/s", "answered/s", "late>5ms", "p99 ms", "errors"
    );
    let mut rows = Vec::new();
    for rate in [5_000.0, 12_000.0, 20_000.0, 30_000.0] {
        let plan = LoadPlan {
            target: addr,
            paths: vec!["/".into()],
            schedule: vec![Step {
                at: Duration::ZERO,
                rate,
                ramp: false,
            }],
            duration: Duration::from_secs(secs),
            client_timeout: Duration::from_secs(2),
            max_in_flight: 20_000,
            protocol: hopline_drill::load::Protocol::Http1,
        };
        let (samples, _) = rt.block_on(run(&plan, |_, _| {}, std::future::pending()));
        let ok = samples
            .iter()
            .filter(|s| s.outcome == Outcome::Status(200))
            .count();
        let errors = samples.len() - ok;
        let late = samples
            .iter()
            .filter(|s| s.latency > Duration::from_millis(5))
            .count();
        let mut lat: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        let p99 = hopline_bench::Summary::of(&mut lat).p99;
        let answered = ok as f64 / secs as f64;
        println!(
            "{rate:>10.0} {answered:>10.0} {:>9.2}% {:>10.2} {errors:>10}",
            late as f64 * 100.0 / samples.len() as f64,
            p99.as_secs_f64() * 1e3
        );
        rows.push(serde_json::json!({"offered": rate, "answered_per_s": answered, "late_5ms_ratio": late as f64 / samples.len() as f64, "p99_ms": p99.as_secs_f64() * 1e3, "errors": errors}));
    }
    let out = save("loadgen-ceiling", &serde_json::Value::Array(rows))?;
    println!("saved {}", out.display());
    Ok(())
}
