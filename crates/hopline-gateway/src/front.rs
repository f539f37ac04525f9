//! What the request core needs from a client protocol, and nothing more: the request's
//! body, a response sink, a watch on the client, and a way to render the failure
//! policy's decision. HTTP/1 implements it in `h1`; a second protocol implements the same
//! two traits and inherits routing, deadlines, proxying, aggregation, the failure policy
//! and the access record unchanged.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use hopline_core::policy::Decision;
use hopline_core::ProxyError;
use hopline_h1::head::Headers;

pub(crate) use crate::body::BodyFailure;
use crate::body::BodySource;
use crate::observe::access_log::{TlsSession, TunnelEnd};
use crate::response::ErrorContext;
use crate::upstream::ClientConn;

/// Body bytes a response source buffers with the response head before the first write.
pub(crate) const COALESCE: usize = 64 * 1024;

/// What becomes of the client connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Ready for the next request.
    KeepAlive,
    /// Closed (or to be closed).
    Close,
}

/// A client protocol's side of one request.
pub(crate) trait Front {
    /// Before the route runs: refuses a body whose declared length is over
    /// `max_body_bytes`, and tells a client that waits for it (`Expect: 100-continue`) to
    /// send its body. No body byte is read.
    fn accept_body(&mut self) -> impl Future<Output = Result<(), BodyFailure>> + Send;

    /// A future that resolves with the reason once the client is gone (connection closed
    /// or reset, stream cancelled), the response sink, and the request body as it arrives
    /// (read only when asked for: the upstream takes it at its own pace). The core polls
    /// all three in one task while the route runs, so a client that leaves drops every
    /// upstream call at once.
    fn split(
        &mut self,
    ) -> (
        impl Future<Output = io::Error> + Send + '_,
        impl Sink + Send + '_,
        impl BodySource + '_,
    );

    /// Writes the locally generated error response for `err` as the failure policy
    /// decided (`d`: status, flag, and whether the connection is kept after it).
    fn respond(
        &mut self,
        err: &ProxyError,
        d: &Decision,
        cx: &ErrorContext<'_>,
    ) -> impl Future<Output = ()> + Send;

    /// Tunnels bytes between the client and `upstream` after its `101 Switching
    /// Protocols` (an HTTP/1.1 WebSocket upgrade) until either side closes or nothing
    /// moves for `idle`. Protocols without upgrades (HTTP/2) are never asked.
    fn tunnel(
        &mut self,
        upstream: ClientConn,
        idle: Duration,
    ) -> impl Future<Output = TunnelEnd> + Send;

    /// The protocol, as the access log names it: `HTTP/1.1`, `HTTP/1.0`, `HTTP/2`.
    fn protocol(&self) -> &'static str;

    /// When the request's head had been read: the start of its deadline and of its
    /// logged duration.
    fn arrival(&self) -> Instant;

    /// gRPC requests get gRPC statuses from this protocol (HTTP/2); elsewhere they are
    /// answered as any HTTP request.
    fn carries_grpc(&self) -> bool {
        false
    }

    /// The protocol can switch to a tunnel (HTTP/1.1 Upgrade).
    fn upgrades(&self) -> bool {
        false
    }

    /// Closes after an error answer, reading and dropping what the client still sends for
    /// a while, so it reads the answer instead of a reset.
    fn linger(&mut self) -> impl Future<Output = ()> + Send;
}

/// How the body of a response that is about to start is delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodySize {
    /// No body follows. `declared` is the length a response to `HEAD` states.
    Empty {
        /// The upstream's `content-length`, for a response to `HEAD`.
        declared: Option<Bytes>,
    },
    /// Exactly this many bytes.
    Known(u64),
    /// Not known in advance: the protocol delimits it (chunked, end of stream).
    Unknown,
    /// Transfer codings besides chunked, passed on as received (HTTP/1.1 clients only):
    /// re-chunked when `chunked` is the last coding, else raw until the connection closes.
    Coded {
        /// The `transfer-encoding` value.
        codings: Bytes,
        /// `chunked` is the last coding.
        chunked: bool,
    },
}

/// The start of a response.
#[derive(Debug)]
pub(crate) struct ResponseStart {
    /// The status code.
    pub status: u16,
    /// The reason phrase, as the upstream sent it (protocols that have one show it).
    pub reason: Bytes,
    /// End-to-end header fields (hop-by-hop ones already removed).
    pub headers: Headers,
    /// How the body is delimited.
    pub body: BodySize,
}

/// A response this client cannot receive (nothing of it was sent).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CannotCarry(pub &'static str);

/// Where a response goes. `start`, `data` and `finish` only buffer; `flush` writes, so a
/// small response leaves in one write.
pub(crate) trait Sink {
    /// Buffers the response head; `Err` when this client cannot receive such a response.
    fn start(&mut self, head: ResponseStart) -> Result<(), CannotCarry>;
    /// Buffers body bytes (dropped for a response to `HEAD`).
    fn data(&mut self, bytes: &[u8]);
    /// Buffers trailer fields, sent with the end of the body (gRPC's `grpc-status`);
    /// dropped where the client's framing has no place for them (a known-length or
    /// HTTP/1.0 body).
    fn trailers(&mut self, fields: Headers);
    /// Buffers the end of the body.
    fn finish(&mut self);
    /// Bytes buffered and not yet written.
    fn buffered(&self) -> usize;
    /// Drops what is buffered, before anything was written: the response can still be
    /// replaced by an error response.
    fn discard(&mut self);
    /// Writes what is buffered within `server.write_timeout`: a client that does not read
    /// for that long is `WT`, one that is gone is `DC`.
    fn flush(&mut self) -> impl Future<Output = Result<(), ProxyError>> + Send;
    /// After a complete response: the connection can serve another request.
    fn reusable(&self) -> bool;
}

/// Who is on the other end of a client connection.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    /// The client's address.
    pub peer: SocketAddr,
    /// The TLS session, on the TLS listener.
    pub tls: Option<Arc<TlsSession>>,
    /// Requests served on this connection so far (HTTP/1).
    pub requests: Arc<std::sync::atomic::AtomicU32>,
}

/// A parsed request, whatever protocol carried it.
#[derive(Debug)]
pub(crate) struct Request {
    /// The method token, e.g. `GET`.
    pub method: Bytes,
    /// The target as received (what the access log shows).
    pub target: Bytes,
    /// Path and query (origin form): what routes match and upstreams receive.
    pub origin: Bytes,
    /// Header fields.
    pub headers: Headers,
    /// A body follows the head (read through the [`BodySource`] of [`Front::split`]);
    /// while it is unread the connection cannot be reused.
    pub has_body: bool,
    /// The body's declared length (`content-length`), if the client declared one.
    pub body_length: Option<u64>,
    /// The client keeps the connection after this request (and the gateway was not
    /// draining when it arrived).
    pub keep_alive: bool,
    /// How long the client's connection had been idle before this request (`None` on
    /// its first request, and on HTTP/2).
    pub client_idle: Option<std::time::Duration>,
}

impl Request {
    /// The path, without the query.
    pub(crate) fn path(&self) -> &str {
        let o = std::str::from_utf8(&self.origin).unwrap_or("");
        o.split_once('?').map_or(o, |(p, _)| p)
    }

    /// The query string, if any (without the `?`).
    pub(crate) fn query(&self) -> Option<&str> {
        let o = std::str::from_utf8(&self.origin).ok()?;
        o.split_once('?').map(|(_, q)| q)
    }

    /// RFC 9110 idempotent method: safe to send twice.
    pub(crate) fn is_idempotent(&self) -> bool {
        matches!(
            &self.method[..],
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        )
    }

    /// A gRPC request: `content-type: application/grpc`, or `application/grpc+…`.
    pub(crate) fn is_grpc(&self) -> bool {
        self.headers.get("content-type").is_some_and(is_grpc)
    }

    /// The client's `x-request-id`, when it is a sane one to forward and log.
    pub(crate) fn client_request_id(&self) -> Option<String> {
        let id = self.headers.get("x-request-id")?;
        let ok = !id.is_empty() && id.len() <= 200 && id.iter().all(u8::is_ascii_graphic);
        // All ASCII graphic bytes, so valid UTF-8.
        ok.then(|| String::from_utf8_lossy(id).into_owned())
    }
}

/// `application/grpc`, `application/grpc+proto`, `application/grpc;…` (any case).
pub(crate) fn is_grpc(content_type: &[u8]) -> bool {
    let p = b"application/grpc";
    content_type.len() >= p.len()
        && content_type[..p.len()].eq_ignore_ascii_case(p)
        && matches!(content_type.get(p.len()), None | Some(b'+' | b';'))
}
