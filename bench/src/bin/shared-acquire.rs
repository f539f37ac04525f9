//! What a shared egress scope (`[egress] shared`) costs a request: the time of taking a
//! new-connection token and an in-flight slot (and giving the slot back), measured call by
//! call while the lease task tops both up from a real Redis in the background. Also the
//! lease calls' round trip (from the gateway's own histogram) and any refusal.
//!
//! Usage: `shared-acquire REDIS_URL [CALLS_PER_SEC_PER_THREAD] [SECS] [THREADS]`
//! (bench/shared-egress.sh starts redis-server, runs it and saves the results).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hopline_core::config::{AccessLogSink, EgressConfig, SharedEgressConfig};
use hopline_gateway::shared::SharedEgress;
use hopline_gateway::{AccessLog, Metrics};

/// Per-thread results: call times in ns, refusals.
struct Run {
    ns: Vec<u64>,
    refused: u64,
}

fn paced(shared: &Arc<SharedEgress>, rate: u32, secs: u64) -> Run {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let n = u64::from(rate) * secs;
    let mut run = Run {
        ns: Vec::with_capacity(n as usize),
        refused: 0,
    };
    let start = Instant::now();
    for i in 0..n {
        let due = start + interval * i as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let t = Instant::now();
        let token = shared.take_connection();
        let slot = shared.acquire();
        let refused = token.is_err() || slot.is_err();
        drop(slot);
        let took = t.elapsed();
        run.refused += u64::from(refused);
        run.ns.push(took.as_nanos() as u64);
    }
    run
}

/// The smallest bucket bound of `name` holding `q` of its observations.
fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, n)| *n >= total * q)
        .map(|(le, _)| *le)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: shared-acquire REDIS_URL [RATE] [SECS] [THREADS]")?;
    let rate: u32 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(50_000);
    let secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let threads: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2);
    let shared_config = SharedEgressConfig {
        url,
        scope: format!("bench-{}", std::process::id()),
        password_env: SharedEgressConfig::PASSWORD_ENV.into(),
        ca: None,
        expected_replicas: Some(1),
        fallback_after: SharedEgressConfig::FALLBACK_AFTER,
    };
    // Budgets well above what the threads take: this measures the cost, not the limit.
    let egress = EgressConfig {
        max_in_flight: Some(100_000),
        max_new_connections_per_sec: Some(rate * threads as u32 * 4),
        shared: Some(shared_config.clone()),
        nat_limit: None,
        nat_idle_timeout: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let metrics = Arc::new(Metrics::new());
    let log = Arc::new(AccessLog::open(&AccessLogSink::Off)?);
    let shared = {
        let _in_runtime = rt.enter();
        SharedEgress::start(&egress, &shared_config, log, metrics.clone())?
    };
    rt.block_on(shared.settled(Duration::from_secs(2)));
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| paced(&shared, rate, secs)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut ns: Vec<u64> = runs.iter().flat_map(|r| r.ns.iter().copied()).collect();
    let refused: u64 = runs.iter().map(|r| r.refused).sum();
    ns.sort_unstable();
    let q = |p: f64| ns[((ns.len() as f64 * p).ceil() as usize).clamp(1, ns.len()) - 1];
    let sample = shared.sample();
    let text = metrics.encode(&[], &[], std::slice::from_ref(&sample));
    let lease = "hopline_egress_shared_lease_duration_seconds";
    let out = serde_json::json!({
        "calls": ns.len(),
        "threads": threads,
        "calls_per_sec_per_thread": rate,
        "acquire_ns": {"p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": ns[ns.len() - 1]},
        "refused": refused,
        "tokens_leased": sample.tokens_leased,
        "lease_failures": sample.lease_failures,
        "fallbacks": sample.fallbacks,
        "lease_round_trip_p99_le_ms": histogram_quantile(&text, lease, 0.99).map(|s| s * 1e3),
    });
    println!("{out}");
    Ok(())
}
