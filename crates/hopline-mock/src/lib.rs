//! A configurable HTTP upstream (latency, status, body, headers) that logs cancellations,
//! for tests and drills.
//!
//! Every request is answered after `latency` with the configured status, headers and
//! body, and logged as one JSON line. While it waits, the mock watches its client: if the
//! client goes away first, the line says `"cancelled": true` with the elapsed time. That is
//! how drills and tests see, from the upstream's side, that a gateway really cancelled.

mod grpc;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use hopline_h1::write::put_response;
use hopline_h1::{
    read_body_chunk, read_request_head, wait_first_byte, watch_gone, BodyDecoder, HeadLimits,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// What the mock answers.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Wait before answering. Default 0.
    pub latency: Duration,
    /// Status code. Default 200.
    pub status: u16,
    /// Body. Default `{"ok":true}`.
    pub body: String,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// Keep-alive idle timeout: idle connections are closed after it. Default 60 s.
    pub idle_timeout: Duration,
    /// Write one JSON line per request to stdout. Default true.
    pub log: bool,
    /// Serve TLS with this config (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `--grpc STATUS`: speak HTTP/2 and answer every request as a gRPC call ending with
    /// this `grpc-status` (the body becomes its one message).
    pub grpc: Option<u16>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Duration::ZERO,
            status: 200,
            body: "{\"ok\":true}".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            idle_timeout: Duration::from_secs(60),
            log: true,
            tls: None,
            grpc: None,
        }
    }
}

/// Serves `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: MockConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let config = Arc::new(config);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok((stream, peer)) => {
                    let config = config.clone();
                    tasks.spawn(async move {
                        let _ = stream.set_nodelay(true);
                        match &config.tls {
                            None => serve(stream, peer, &config).await,
                            Some(tls) => {
                                let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
                                let shake = acceptor.accept(stream);
                                match tokio::time::timeout(Duration::from_secs(10), shake).await {
                                    Ok(Ok(s)) => serve(s, peer, &config).await,
                                    Ok(Err(e)) if config.log => tls_error_line(peer, &e.to_string()),
                                    _ => {}
                                }
                            }
                        }
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
        while tasks.try_join_next().is_some() {}
    }
    tasks.abort_all();
}

/// One connection, as HTTP/1.1, or as HTTP/2 gRPC calls with `--grpc`.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    config: &MockConfig,
) {
    match config.grpc {
        Some(code) => grpc::connection(stream, peer, config, code).await,
        None => connection(stream, peer, config).await,
    }
}

/// Writes one log line (and its newline) to stdout at once.
fn print_line(line: &[u8]) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    config: &MockConfig,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let response = render(config);
    loop {
        if wait_first_byte(&mut stream, &mut buf, config.idle_timeout)
            .await
            .is_err()
        {
            return;
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        let Ok(head) = read_request_head(
            &mut stream,
            &mut buf,
            HeadLimits::new(64 * 1024),
            until,
            Duration::from_secs(10),
        )
        .await
        else {
            return;
        };
        let arrived = Instant::now();
        let ts = SystemTime::now();
        let length = head.body_length();
        let mut decoder = BodyDecoder::new(length);
        let mut body_bytes = 0;
        loop {
            match read_body_chunk(&mut stream, &mut buf, &mut decoder).await {
                Ok(Some(piece)) => body_bytes += piece.len(),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // No timer at all without latency: a zero sleep still waits for the next timer
        // tick (about 1 ms), which would dominate every fast measurement.
        let cancelled = !config.latency.is_zero() && {
            let (mut rd, _) = tokio::io::split(&mut stream);
            tokio::select! {
                biased;
                _ = watch_gone(&mut rd, &mut buf, 64 * 1024) => true,
                _ = tokio::time::sleep(config.latency) => false,
            }
        };
        let sent = !cancelled && stream.write_all(&response).await.is_ok();
        if config.log {
            log_line(
                &head,
                peer,
                ts,
                arrived.elapsed(),
                body_bytes,
                cancelled,
                if sent { config.status } else { 0 },
            );
        }
        if !sent || !head.keep_alive() {
            return;
        }
    }
}

fn render(config: &MockConfig) -> BytesMut {
    let mut out = BytesMut::new();
    let fields = config.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    put_response(
        &mut out,
        config.status,
        fields,
        config.body.as_bytes(),
        false,
        false,
    );
    out
}

fn log_line(
    head: &hopline_h1::RequestHead,
    peer: SocketAddr,
    ts: SystemTime,
    elapsed: Duration,
    body_bytes: usize,
    cancelled: bool,
    status: u16,
) {
    let header = |n: &str| {
        head.headers
            .get(n)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let line = serde_json::json!({
        "ts": hopline_core::time::rfc3339(ts),
        "client": peer.to_string(),
        "method": head.method_str(),
        "path": head.target_str(),
        "request_id": header("x-request-id"),
        "expected_rq_timeout_ms": header("x-envoy-expected-rq-timeout-ms"),
        "body_bytes": body_bytes,
        "status": status,
        "cancelled": cancelled,
        "elapsed_ms": (elapsed.as_secs_f64() * 1e6).round() / 1e3,
    });
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A handshake the mock refused (or the client aborted), as one JSON line.
fn tls_error_line(peer: SocketAddr, error: &str) {
    let line = serde_json::json!({
        "ts": hopline_core::time::rfc3339(SystemTime::now()),
        "client": peer.to_string(),
        "event": "tls_error",
        "error": error,
    });
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Parses a `K:V` header argument.
pub fn parse_header(arg: &str) -> Result<(String, String), String> {
    match arg.split_once(':') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("expected NAME:VALUE, got {arg:?}")),
    }
}
