//! The HTTP/2 front-end of the request core: one connection (ALPN `h2` on the TLS
//! listener, or h2c with prior knowledge), every stream a request of its own — its own
//! deadline, access-log line and cancellation: a client's RST_STREAM drops that stream's
//! upstream work and logs 499 `DC` while the other streams go on.
//!
//! Framing, HPACK, flow control and the RFC 9113 connection and stream errors are the
//! `h2` crate's; hopline sets its limits from `[server.h2]` (concurrent streams, header
//! list size, and the Rapid Reset and local-error reset bounds that end a flooding
//! connection with GOAWAY ENHANCE_YOUR_CALM).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use hopline_core::policy::{grpc_status, Decision};
use hopline_core::{Flag, ProxyError};
use hopline_h1::head::Headers;
use http::{HeaderName, HeaderValue, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use crate::body::BodySource;
use crate::client::conn::{raised, Signals};
use crate::client::h1::{LINGER_BYTES, LINGER_TIME};
use crate::front::{BodyFailure, BodySize, CannotCarry, Front, ResponseStart, Sink};
use crate::front::{Client, Request};
use crate::gateway::{Current, Gateway};
use crate::limits::{BufferGrant, BufferKind};
use crate::observe::access_log::TunnelEnd;
use crate::pace::Pace;
use crate::request::{reject, serve};
use crate::response::{error_parts, grpc_message, ErrorContext};
use crate::upstream::ClientConn;

/// The HTTP/2 connection preface a client opens with (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one HTTP/2 connection until it closes: the handshake within
/// `header_read_timeout` from accept, streams served concurrently, GOAWAY after
/// `idle_timeout` without streams or when draining.
pub(crate) async fn serve_h2<T>(
    current: Arc<Current>,
    io: T,
    client: Client,
    mut signals: Signals,
    accepted: Instant,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    let gw = current.load();
    let until = accepted + gw.config.server.header_read_timeout;
    let handshake = builder(&gw).handshake::<T, Bytes>(io);
    let Ok(Ok(mut conn)) = timeout_at(until, handshake).await else {
        return;
    };
    drop(gw);
    // Stream tasks belong to this connection: dropping the set (the connection's task
    // ending or aborted) cancels every stream's upstream work.
    let mut streams = JoinSet::new();
    let resets = Arc::new(Resets::default());
    let mut idle_since = Instant::now();
    // Once GOAWAY is sent, a client that neither finishes nor closes gets
    // `header_read_timeout` more (a stalled header block holds the whole connection).
    let mut closing: Option<Instant> = None;
    loop {
        let cfg = &current.load().config.server;
        let (idle_timeout, grace) = (cfg.idle_timeout, cfg.header_read_timeout);
        tokio::select! {
            biased;
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    let kill = signals.kill.clone();
                    resets.accepted.fetch_add(1, Ordering::Relaxed);
                    let resets = resets.clone();
                    streams.spawn(stream(current.clone(), req, respond, client.clone(), kill, resets));
                }
                // A connection error: h2 has sent GOAWAY with its reason.
                Some(Err(_)) | None => break,
            },
            _ = resets.calm.notified(), if closing.is_none() => {
                // The streams' upstream work goes with the connection.
                streams.abort_all();
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                closing = Some(Instant::now());
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    idle_since = Instant::now();
                }
            }
            _ = sleep_until(idle_since + idle_timeout), if streams.is_empty() && closing.is_none() => {
                conn.graceful_shutdown();
                closing = Some(Instant::now());
            }
            _ = raised(&mut signals.drain), if closing.is_none() => {
                conn.graceful_shutdown();
                closing = Some(Instant::now());
            }
            _ = sleep_until(closing.unwrap_or(idle_since) + grace), if closing.is_some() && streams.is_empty() => break,
        }
    }
    // Drive the connection while open streams finish (the drain's kill signal bounds
    // them), then give the client `header_read_timeout` to close its side.
    let grace = current.load().config.server.header_read_timeout;
    let mut closed = pin!(poll_fn(|cx| conn.poll_closed(cx)));
    loop {
        tokio::select! {
            _ = &mut closed => {
                while streams.join_next().await.is_some() {}
                return;
            }
            next = streams.join_next() => if next.is_none() { break },
        }
    }
    let _ = timeout(grace, closed).await;
}

/// Streams a connection must have had accepted before the premature-reset rule applies.
const PREMATURE_MIN_STREAMS: u64 = 100;
/// A client reset within this long after its stream was accepted is premature.
const PREMATURE_WITHIN: Duration = Duration::from_secs(1);

/// Resets of streams **already accepted**, which h2's own pending-accept bound does not
/// see: each HEADERS + RST_STREAM cycle that gets past accept starts upstream work that is
/// then torn down (a residual Rapid Reset). Envoy's rule: once at least 100 streams were
/// accepted on a connection, more than half of them reset by the client within 1 s of
/// being accepted ends the connection with GOAWAY `ENHANCE_YOUR_CALM`.
#[derive(Debug, Default)]
struct Resets {
    accepted: AtomicU64,
    premature: AtomicU64,
    calm: tokio::sync::Notify,
}

impl Resets {
    /// The client reset a stream accepted at `arrival`.
    fn reset(&self, arrival: Instant, metrics: &crate::observe::metrics::Metrics) {
        if arrival.elapsed() >= PREMATURE_WITHIN {
            return;
        }
        metrics.count_h2_premature_reset();
        let premature = self.premature.fetch_add(1, Ordering::Relaxed) + 1;
        let accepted = self.accepted.load(Ordering::Relaxed);
        if accepted >= PREMATURE_MIN_STREAMS && premature * 2 > accepted {
            self.calm.notify_one();
        }
    }
}

/// The h2 server settings from `[server.h2]`.
fn builder(gw: &Gateway) -> h2::server::Builder {
    let cfg = &gw.config.server;
    let h2 = &cfg.h2;
    let header_list = h2
        .max_header_list_bytes
        .unwrap_or(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(header_list)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(h2.max_local_error_reset_streams))
        .max_send_buffer_size(SEND_BUFFER);
    b
}

/// Response bytes buffered per stream before waiting for the client's flow-control window.
const SEND_BUFFER: usize = 64 * 1024;

/// One stream: a request to the core.
async fn stream(
    current: Arc<Current>,
    req: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
    client: Client,
    mut kill: watch::Receiver<bool>,
    resets: Arc<Resets>,
) {
    let gw = current.load();
    let (parts, body) = req.into_parts();
    let request = to_request(&parts, !body.is_end_stream());
    let mut front = H2Front {
        gw: &gw,
        body,
        out: Arc::new(Mutex::new(Responder::Head(respond))),
        head_only: parts.method == http::Method::HEAD,
        arrival: Instant::now(),
        resets,
        declared: request.body_length,
    };
    // HTTP/1's Host rules, `:authority` as the target's authority: one authority only, so
    // an HTTP/1 upstream never sees two. Answered 400 `DPE`, then the stream is reset.
    let authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
    if let Err(e) = hopline_h1::head::check_host(authority, &request.headers, true) {
        let line = Some((request.method.clone(), request.target.clone()));
        let err = ProxyError::Malformed(Box::new(e));
        Box::pin(reject(&gw, &mut front, &client, line, err)).await;
        match std::mem::replace(&mut *lock(&front.out), Responder::Done) {
            Responder::Head(mut r) => r.send_reset(h2::Reason::PROTOCOL_ERROR),
            Responder::Body(mut s) => s.send_reset(h2::Reason::PROTOCOL_ERROR),
            Responder::Done => {}
        }
        return;
    }
    let kill = pin!(raised(&mut kill));
    // Boxed: the request's state is large; spawning the stream then moves a small future
    // (a copy of the whole state per stream showed as the top entry of a profile).
    Box::pin(serve(&gw, &mut front, request, &client, kill)).await;
}

/// The protocol-independent request an HTTP/2 stream carries: `:authority` becomes
/// `host` when the client sent none.
fn to_request(parts: &http::request::Parts, has_body: bool) -> Request {
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut headers = Headers::new();
    if !parts.headers.contains_key(http::header::HOST) {
        if let Some(a) = parts.uri.authority() {
            headers.push("host", Bytes::copy_from_slice(a.as_str().as_bytes()));
        }
    }
    for (name, value) in &parts.headers {
        let name = Bytes::copy_from_slice(name.as_str().as_bytes());
        headers.push(name, Bytes::copy_from_slice(value.as_bytes()));
    }
    let target = Bytes::from(target);
    let body_length = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    Request {
        method: Bytes::copy_from_slice(parts.method.as_str().as_bytes()),
        origin: target.clone(),
        target,
        headers,
        has_body,
        body_length: body_length.filter(|_| has_body),
        // A stream's end never ends the connection.
        keep_alive: true,
        client_idle: None,
    }
}

/// Where a stream's response is: not started, sending its body, or complete.
enum Responder {
    Head(SendResponse<Bytes>),
    Body(SendStream<Bytes>),
    Done,
}

/// Locks the responder (never held across an await).
fn lock(out: &Mutex<Responder>) -> MutexGuard<'_, Responder> {
    out.lock().unwrap_or_else(|p| p.into_inner())
}

/// The client left: its stream was reset, or the connection is gone.
fn gone(e: h2::Error) -> io::Error {
    match e.reason() {
        Some(r) => reset(r),
        None => io::Error::other(e),
    }
}

/// The client reset the stream with `reason`.
fn reset(reason: h2::Reason) -> io::Error {
    let what = format!("client reset the stream ({reason:?})");
    io::Error::new(io::ErrorKind::ConnectionReset, what)
}

/// One HTTP/2 stream, as the request core sees it.
struct H2Front<'a> {
    gw: &'a Gateway,
    body: RecvStream,
    /// Shared by the sink (which sends) and the watcher (which waits for a reset).
    out: Arc<Mutex<Responder>>,
    head_only: bool,
    arrival: Instant,
    /// The connection's count of resets (this stream's, if the client resets it).
    resets: Arc<Resets>,
    /// The body's `content-length`, if declared.
    declared: Option<u64>,
}

/// A stream's request body as the core reads it: a DATA frame's bytes count against
/// `server.max_buffered_bytes` from when h2 hands them over until the upstream took them,
/// and only then is the client's window opened by as much (a slow upstream slows the
/// client; nothing piles up here).
struct H2Body<'a> {
    body: &'a mut RecvStream,
    resets: &'a Arc<Resets>,
    arrival: Instant,
    gw: &'a Gateway,
    held: BufferGrant,
}

impl BodySource for H2Body<'_> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFailure>>> {
        let got = match self.body.poll_data(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(got) => got,
        };
        Poll::Ready(match got {
            None => None,
            Some(Err(e)) => {
                if e.is_reset() && e.is_remote() {
                    self.resets.reset(self.arrival, &self.gw.metrics);
                }
                Some(Err(BodyFailure::Gone(gone(e))))
            }
            Some(Ok(chunk)) if !self.held.grow(chunk.len()) => {
                let _ = self.body.flow_control().release_capacity(chunk.len());
                self.gw.metrics.count_buffer_refused(BufferKind::H2Data);
                Some(Err(BodyFailure::Respond(ProxyError::BufferBudget {
                    kind: BufferKind::H2Data.as_str(),
                    limit: self.gw.buffers.limit(),
                })))
            }
            Some(Ok(chunk)) => Some(Ok(chunk)),
        })
    }

    fn release(&mut self, n: usize) {
        self.held.shrink(n);
        let _ = self.body.flow_control().release_capacity(n);
    }
}

impl Front for H2Front<'_> {
    async fn accept_body(&mut self) -> Result<(), BodyFailure> {
        let max = self.gw.config.server.max_body_bytes;
        match self.declared {
            Some(n) if n > max as u64 => Err(BodyFailure::Respond(ProxyError::BodyTooLarge {
                limit: max,
            })),
            // No 100 Continue in HTTP/2 terms: the stream's window says when to send.
            _ => Ok(()),
        }
    }

    fn split(
        &mut self,
    ) -> (
        impl Future<Output = io::Error> + Send + '_,
        impl Sink + Send + '_,
        impl BodySource + '_,
    ) {
        let out = self.out.clone();
        let (resets, arrival, metrics) = (self.resets.clone(), self.arrival, &self.gw.metrics);
        let watch = poll_fn(move |cx| {
            let polled = match &mut *lock(&out) {
                Responder::Head(s) => s.poll_reset(cx),
                Responder::Body(s) => s.poll_reset(cx),
                Responder::Done => return Poll::Pending,
            };
            match polled {
                Poll::Ready(Ok(reason)) => {
                    resets.reset(arrival, metrics);
                    Poll::Ready(reset(reason))
                }
                Poll::Ready(Err(e)) => Poll::Ready(gone(e)),
                Poll::Pending => Poll::Pending,
            }
        });
        let sink = H2Sink {
            gw: self.gw,
            out: self.out.clone(),
            head: None,
            buf: BytesMut::new(),
            end: false,
            trailers: None,
            head_only: self.head_only,
            arrival: self.arrival,
            pace: Pace::new(
                self.gw.config.server.min_send_rate,
                self.gw.config.server.min_send_rate_window,
            ),
        };
        let body = H2Body {
            body: &mut self.body,
            resets: &self.resets,
            arrival: self.arrival,
            gw: self.gw,
            held: self.gw.buffers.grant(),
        };
        (watch, sink, body)
    }

    async fn respond(&mut self, err: &ProxyError, d: &Decision, cx: &ErrorContext<'_>) {
        if cx.grpc {
            return self.respond_grpc(err, d.flag, cx);
        }
        let r = error_parts(err, d, cx);
        let mut head = Response::new(());
        *head.status_mut() =
            http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        put_headers(head.headers_mut(), &r.headers);
        head.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(r.body.len()),
        );
        let body = (!cx.head_only).then(|| Bytes::from(r.body));
        let mut out = lock(&self.out);
        let Responder::Head(respond) = &mut *out else {
            return;
        };
        let eos = body.is_none();
        if let Ok(mut stream) = respond.send_response(head, eos) {
            if let Some(b) = body {
                // Small enough for the initial window; h2 buffers it if not.
                let _ = stream.send_data(b, true);
            }
        }
        *out = Responder::Done;
    }

    async fn tunnel(&mut self, _upstream: ClientConn, _idle: Duration) -> TunnelEnd {
        // HTTP/2 has no Upgrade (`upgrades()` is false): never called.
        TunnelEnd {
            closed_by: "upstream",
            ..TunnelEnd::default()
        }
    }

    async fn linger(&mut self) {
        // After an answer that did not wait for the whole body: what the client still
        // sends is read and dropped for a while, so the stream ends on both sides.
        // Dropped unread, h2 would reset it, and a reset can overtake the answer's last
        // frames still queued for the client.
        let until = Instant::now() + LINGER_TIME;
        let mut dropped = 0;
        while dropped < LINGER_BYTES && !self.body.is_end_stream() {
            match timeout_at(until, self.body.data()).await {
                Ok(Some(Ok(chunk))) => {
                    dropped += chunk.len();
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                }
                _ => return,
            }
        }
    }

    fn protocol(&self) -> &'static str {
        "HTTP/2"
    }

    fn arrival(&self) -> Instant {
        self.arrival
    }

    fn carries_grpc(&self) -> bool {
        true
    }
}

impl H2Front<'_> {
    /// A failed gRPC request: HTTP 200, trailers-only (one HEADERS frame that ends the
    /// stream), `grpc-status` from the failure policy's flag and the short reason as
    /// `grpc-message`.
    fn respond_grpc(&mut self, err: &ProxyError, flag: Flag, cx: &ErrorContext<'_>) {
        let mut head = Response::new(());
        let h = head.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(grpc_status(flag))),
        );
        if let Ok(v) = HeaderValue::from_str(&grpc_message(err, flag, cx)) {
            h.insert("grpc-message", v);
        }
        h.insert("x-hopline-flags", HeaderValue::from_static(flag.code()));
        // gRPC's pushback: when to retry (hopline's own limits), in milliseconds.
        if let Some(after) = crate::response::retry_after(err) {
            let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
            h.insert("grpc-retry-pushback-ms", HeaderValue::from(ms));
        }
        if let Ok(v) = HeaderValue::from_str(cx.trace_id) {
            h.insert("x-request-id", v);
        }
        let mut out = lock(&self.out);
        if let Responder::Head(respond) = &mut *out {
            let _ = respond.send_response(head, true);
        }
        *out = Responder::Done;
    }
}

/// Copies end-to-end fields into an HTTP/2 header map; connection-specific fields (which
/// RFC 9113 §8.2.2 forbids) and fields that are not valid HTTP are dropped.
fn put_headers(map: &mut http::HeaderMap, headers: &Headers) {
    for (n, v) in headers.iter() {
        if hopline_h1::head::is_hop_by_hop(n) || n.eq_ignore_ascii_case(b"transfer-encoding") {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            map.append(n, v);
        }
    }
}

/// An HTTP/2 response on its way to the client.
struct H2Sink<'a> {
    gw: &'a Gateway,
    out: Arc<Mutex<Responder>>,
    head: Option<Response<()>>,
    buf: BytesMut,
    end: bool,
    trailers: Option<http::HeaderMap>,
    head_only: bool,
    arrival: Instant,
    /// `min_send_rate`.
    pace: Pace,
}

impl H2Sink<'_> {
    fn gone(&self, e: h2::Error) -> ProxyError {
        ProxyError::ClientGone {
            elapsed: self.arrival.elapsed(),
            waiting_on: None,
            source: gone(e),
        }
    }

    /// Sends the head (with the end of the stream when nothing follows).
    fn send_head(&mut self, head: Response<()>) -> Result<(), ProxyError> {
        let mut out = lock(&self.out);
        let Responder::Head(respond) = &mut *out else {
            return Ok(());
        };
        let eos = self.end && self.buf.is_empty() && self.trailers.is_none();
        match respond.send_response(head, eos) {
            Ok(stream) => {
                *out = if eos {
                    Responder::Done
                } else {
                    Responder::Body(stream)
                };
                Ok(())
            }
            Err(e) => {
                drop(out);
                Err(self.gone(e))
            }
        }
    }

    /// Waits for the client's flow-control window to take up to `want` more bytes.
    async fn capacity(&mut self, want: usize) -> Result<usize, ProxyError> {
        let limit = self.gw.config.server.write_timeout;
        let out = &self.out;
        let mut wait = pin!(poll_fn(|cx| match &mut *lock(out) {
            Responder::Body(s) => {
                s.reserve_capacity(want);
                s.poll_capacity(cx)
            }
            _ => Poll::Ready(None),
        }));
        // Usually the window is open: no timer for that.
        let first = poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await;
        let got = match first {
            Poll::Ready(r) => r,
            // Waiting on the client: `write_timeout` and `min_send_rate` run (a window
            // grant counts only as the bytes it lets through).
            Poll::Pending => self.pace.wait(limit, wait).await?,
        };
        match got {
            Some(Ok(n)) => Ok(n),
            Some(Err(e)) => Err(self.gone(e)),
            None => Err(ProxyError::ClientGone {
                elapsed: self.arrival.elapsed(),
                waiting_on: None,
                source: io::Error::new(io::ErrorKind::ConnectionReset, "stream closed"),
            }),
        }
    }
}

impl Sink for H2Sink<'_> {
    fn start(&mut self, head: ResponseStart) -> Result<(), CannotCarry> {
        let mut resp = Response::new(());
        *resp.status_mut() = http::StatusCode::from_u16(head.status)
            .map_err(|_| CannotCarry("a status code outside 100-999"))?;
        put_headers(resp.headers_mut(), &head.headers);
        let length = match head.body {
            BodySize::Coded { .. } => {
                return Err(CannotCarry("a transfer-coding, which HTTP/2 cannot carry"))
            }
            BodySize::Known(n) => Some(HeaderValue::from(n)),
            BodySize::Empty { declared: Some(v) } => HeaderValue::from_maybe_shared(v).ok(),
            BodySize::Empty { declared: None } | BodySize::Unknown => None,
        };
        if let Some(v) = length {
            resp.headers_mut().insert(http::header::CONTENT_LENGTH, v);
        }
        self.head = Some(resp);
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) {
        if !self.head_only {
            self.buf.extend_from_slice(bytes);
        }
    }

    fn trailers(&mut self, fields: Headers) {
        let mut map = http::HeaderMap::new();
        put_headers(&mut map, &fields);
        self.trailers = Some(map);
    }

    fn finish(&mut self) {
        self.end = true;
    }

    fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn discard(&mut self) {
        self.head = None;
        self.buf.clear();
        self.end = false;
    }

    async fn flush(&mut self) -> Result<(), ProxyError> {
        if let Some(head) = self.head.take() {
            self.send_head(head)?;
        }
        while !self.buf.is_empty() || self.end {
            if !matches!(&*lock(&self.out), Responder::Body(_)) {
                break;
            }
            let n = if self.buf.is_empty() {
                0
            } else {
                self.capacity(self.buf.len()).await?
            };
            if n == 0 && !self.buf.is_empty() {
                continue;
            }
            let chunk = self.buf.split_to(n.min(self.buf.len())).freeze();
            self.pace.took(chunk.len());
            let last = self.end && self.buf.is_empty();
            let trailers = if last { self.trailers.take() } else { None };
            let mut out = lock(&self.out);
            if let Responder::Body(s) = &mut *out {
                let sent = if let Some(t) = trailers {
                    let data = if chunk.is_empty() {
                        Ok(())
                    } else {
                        s.send_data(chunk, false)
                    };
                    data.and_then(|()| s.send_trailers(t))
                } else {
                    s.send_data(chunk, last)
                };
                if last {
                    *out = Responder::Done;
                }
                drop(out);
                sent.map_err(|e| self.gone(e))?;
            }
            if last {
                break;
            }
        }
        Ok(())
    }

    fn reusable(&self) -> bool {
        true
    }
}
