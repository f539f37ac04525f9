//! Full TLS handshakes per second, for `bench/tls.sh`: CONNS concurrent loops, each
//! opening a new TCP connection, doing a full handshake (rustls, session resumption off,
//! so every handshake is a full one; the server certificate is not verified, as with wrk,
//! but the handshake signature is), sending one `GET /` with `connection: close` and
//! reading the response to its last byte, then closing. One thread: pinned to one core it costs far less per
//! handshake than the server's signature, so the server is what is measured.
//!
//! Usage: `tls-handshakes HOST:PORT [CONNS=64] [SECS=10]` → one JSON line
//! `{"requests", "rps", "p50_ms", "p99_ms", "errors"}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n";

/// One request on a new connection; its latency, or `None` on any failure.
async fn once(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    buf: &mut Vec<u8>,
) -> Option<Duration> {
    let start = Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await.ok()?;
    tls.write_all(REQUEST).await.ok()?;
    // Read the response to its last byte (as wrk does), then drop the connection: waiting
    // for the server's close would measure its closing, not its answering.
    buf.clear();
    let mut chunk = [0u8; 4096];
    let mut need = None;
    loop {
        let n = tls.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if need.is_none() {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())?;
                need = Some(end + 4 + len);
            }
        }
        if need.is_some_and(|n| buf.len() >= n) {
            break;
        }
    }
    buf.starts_with(b"HTTP/1.1 200").then(|| start.elapsed())
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(addr) = args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()) else {
        eprintln!("usage: tls-handshakes HOST:PORT [CONNS=64] [SECS=10]");
        std::process::exit(2);
    };
    let conns: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(64);
    let secs: u64 = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(10);
    let settings = hopline_core::config::UpstreamTlsConfig {
        insecure_skip_verify: true,
        alpn: vec!["http/1.1".into()],
        ..Default::default()
    };
    let shared = hopline_tls::client::client_config(&settings).map_err(std::io::Error::other)?;
    let mut config = (*shared).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (latencies, errors) = rt.block_on(async move {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..conns {
            let connector = connector.clone();
            tasks.spawn(async move {
                let (mut ok, mut errors, mut buf) = (Vec::new(), 0u64, Vec::with_capacity(4096));
                while Instant::now() < end {
                    match once(addr, &connector, &mut buf).await {
                        Some(d) => ok.push(d),
                        None => errors += 1,
                    }
                }
                (ok, errors)
            });
        }
        let (mut all, mut errors) = (Vec::new(), 0);
        while let Some(Ok((ok, e))) = tasks.join_next().await {
            all.extend(ok);
            errors += e;
        }
        (all, errors)
    });
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        ms.get(((ms.len() as f64 * p) as usize).min(ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": ms.len(),
            "rps": ms.len() as f64 / secs as f64,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "errors": errors,
        })
    );
    Ok(())
}
