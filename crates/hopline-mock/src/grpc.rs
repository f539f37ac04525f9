//! `hopline mock --grpc STATUS`: a gRPC-shaped HTTP/2 upstream. Every request (h2c with
//! prior knowledge, or `h2` by ALPN with TLS) is answered after `latency` as a unary call:
//! `200`, `content-type: application/grpc`, the body as one gRPC message, and trailers
//! with `grpc-status: STATUS`. A call the client resets while it waits is logged
//! `"cancelled": true` — the upstream's view of a cancellation that crossed the gateway.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;

use crate::MockConfig;

/// Serves one HTTP/2 connection: each stream a gRPC call.
pub(crate) async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    config: &MockConfig,
    grpc_status: u16,
) {
    let Ok(Ok(mut conn)) =
        tokio::time::timeout(Duration::from_secs(10), h2::server::handshake(stream)).await
    else {
        return;
    };
    let message = Bytes::from(frame(config.body.as_bytes()));
    let mut calls = JoinSet::new();
    while let Some(Ok((req, respond))) = conn.accept().await {
        let (latency, log, message) = (config.latency, config.log, message.clone());
        calls.spawn(async move {
            let seen = Seen::of(&req);
            let body = read_all(req.into_body()).await;
            let arrived = Instant::now();
            let outcome = answer(respond, latency, message, grpc_status).await;
            if log {
                seen.log(peer, arrived.elapsed(), body, outcome, grpc_status);
            }
        });
        while calls.try_join_next().is_some() {}
    }
}

/// A gRPC length-prefixed message: not compressed, 4-byte big-endian length, bytes.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads the request body to its end; its size.
async fn read_all(mut body: RecvStream) -> usize {
    let mut n = 0;
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        n += chunk.len();
    }
    n
}

/// Waits `latency` (watching for a reset), then answers; whether the call was cancelled.
async fn answer(
    mut respond: SendResponse<Bytes>,
    latency: Duration,
    message: Bytes,
    grpc_status: u16,
) -> bool {
    if !latency.is_zero() {
        let reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
        tokio::select! {
            _ = reset => return true,
            _ = tokio::time::sleep(latency) => {}
        }
    }
    let mut head = Response::new(());
    head.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let Ok(mut stream) = respond.send_response(head, false) else {
        return true;
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(grpc_status));
    if grpc_status != 0 {
        trailers.insert("grpc-message", HeaderValue::from_static("hopline mock"));
    }
    let sent = stream.send_data(message, false).is_ok() && stream.send_trailers(trailers).is_ok();
    !sent
}

/// What the mock logs of a request.
struct Seen {
    ts: SystemTime,
    method: String,
    path: String,
    request_id: Option<String>,
    grpc_timeout: Option<String>,
}

impl Seen {
    fn of(req: &Request<RecvStream>) -> Seen {
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Seen {
            ts: SystemTime::now(),
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            request_id: header("x-request-id"),
            grpc_timeout: header("grpc-timeout"),
        }
    }

    fn log(&self, peer: SocketAddr, elapsed: Duration, body: usize, cancelled: bool, code: u16) {
        let mut out = BytesMut::new().writer();
        let line = serde_json::json!({
            "ts": hopline_core::time::rfc3339(self.ts),
            "client": peer.to_string(),
            "protocol": "HTTP/2",
            "method": self.method,
            "path": self.path,
            "request_id": self.request_id,
            "grpc_timeout": self.grpc_timeout,
            "body_bytes": body,
            "grpc_status": if cancelled { None } else { Some(code) },
            "cancelled": cancelled,
            "elapsed_ms": (elapsed.as_secs_f64() * 1e6).round() / 1e3,
        });
        let _ = serde_json::to_writer(&mut out, &line);
        crate::print_line(&out.into_inner());
    }
}
