//! Reproducible measurements of hopline against its contract: cancellation latency,
//! deadline accuracy, throughput.
//!
//! Shared helpers for the bench programs: finding and running the release binary,
//! percentile summaries, and writing results under `bench/results/`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process killed when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `hopline` binary: `$HOPLINE_BIN`, else `target/release/hopline`.
pub fn hopline_bin() -> PathBuf {
    std::env::var_os("HOPLINE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/hopline"))
}

/// Starts `hopline ARGS` and returns it with the address it printed.
pub fn spawn_hopline(args: &[&str]) -> std::io::Result<(Guard, SocketAddr)> {
    let mut child = Command::new(hopline_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no stderr"))?;
    let guard = Guard(child);
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(addr) = line
            .rsplit("listening on ")
            .next()
            .filter(|_| line.contains("listening on "))
        {
            let addr = addr.trim().parse().map_err(std::io::Error::other)?;
            std::thread::spawn(move || for _ in lines {});
            return Ok((guard, addr));
        }
    }
    Err(std::io::Error::other("hopline exited before listening"))
}

/// Median, p99, max and count of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
    /// Largest.
    pub max: Duration,
    /// Smallest.
    pub min: Duration,
}

impl Summary {
    /// Summarises `samples` (sorted in place).
    pub fn of(samples: &mut [Duration]) -> Summary {
        samples.sort();
        let n = samples.len();
        let rank = |q: f64| samples[(((n as f64) * q).ceil() as usize).clamp(1, n) - 1];
        Summary {
            n,
            p50: rank(0.5),
            p99: rank(0.99),
            max: samples[n - 1],
            min: samples[0],
        }
    }

    /// As JSON, in milliseconds.
    pub fn json(&self) -> serde_json::Value {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        serde_json::json!({"n": self.n, "min_ms": ms(self.min), "p50_ms": ms(self.p50), "p99_ms": ms(self.p99), "max_ms": ms(self.max)})
    }
}

/// Reads one small, `content-length`-framed response from a keep-alive connection (what
/// every bench upstream sends) into `buf`, which keeps its allocation between calls, and
/// returns the status code. An EOF before the response ends is an error.
pub fn read_response(s: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let mut need: Option<(u16, usize)> = None;
    loop {
        let k = s.read(&mut chunk)?;
        if k == 0 {
            return Err(std::io::Error::other("closed before the response ended"));
        }
        buf.extend_from_slice(&chunk[..k]);
        if need.is_none() {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                need = Some((status, end + 4 + len));
            }
        }
        if let Some((status, _)) = need.filter(|(_, n)| buf.len() >= *n) {
            return Ok(status);
        }
    }
}

/// Writes `value` to `bench/results/NAME-<unix time>.json` and returns the path.
pub fn save(name: &str, value: &serde_json::Value) -> std::io::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir)?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let path = dir.join(format!("{name}-{secs}.json"));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(value).map_err(std::io::Error::other)?,
    )?;
    Ok(path)
}
