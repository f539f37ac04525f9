//! The HTTP/1 front-end of the request core: reads a request's body off the connection,
//! writes responses in HTTP/1 framing (chunked or close-delimited when the length is not
//! known), watches the connection while a route runs, renders the failure policy's
//! error responses and closes with lingering.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use hopline_core::policy::Decision;
use hopline_core::ProxyError;
use hopline_h1::body::{encode_chunk, LAST_CHUNK};
use hopline_h1::head::Headers;
use hopline_h1::write::{end_head, put_framing, put_status_line, response_framing, Framing};
use hopline_h1::{read_body_chunk, watch_gone, BodyDecoder, BodyError, BodyLength, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use crate::body::BodySource;
use crate::front::{BodyFailure, BodySize, CannotCarry, Front, ResponseStart, Sink};
use crate::gateway::Gateway;
use crate::observe::access_log::TunnelEnd;
use crate::pace::Pace;
use crate::response::{error_response, ErrorContext, CONTINUE};
use crate::stream::{ClientStream, WriteHalf};
use crate::upstream::ClientConn;

/// Lingering close (as nginx's `lingering_close`): after an error response to a client
/// that may still be sending, input is read and dropped for at most this long, so the
/// client reads our answer instead of a reset.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(2);
/// ... and at most this many bytes.
pub(crate) const LINGER_BYTES: usize = 1 << 20;

/// One HTTP/1 request on its connection, as the request core sees it.
pub(crate) struct H1Front<'a> {
    gw: &'a Gateway,
    stream: &'a mut ClientStream,
    buf: &'a mut BytesMut,
    /// How the request body is framed.
    length: BodyLength,
    /// The client speaks HTTP/1.1: it may wait for `100 Continue` and can take chunked
    /// responses.
    http11: bool,
    /// The client sent `expect: 100-continue`.
    expects_continue: bool,
    /// The request is `HEAD`: responses carry no body.
    head_only: bool,
    /// The client keeps the connection (and the gateway was not draining).
    keep_alive: bool,
    /// When the request's head was read.
    arrival: Instant,
    /// Hands body pieces from the connection's reader to the core.
    pipe: Pipe,
}

impl<'a> H1Front<'a> {
    /// The front-end of a request read from `stream` (with what follows its head in `buf`).
    pub(crate) fn new(
        gw: &'a Gateway,
        stream: &'a mut ClientStream,
        buf: &'a mut BytesMut,
        head: &hopline_h1::RequestHead,
        keep_alive: bool,
    ) -> Self {
        let http11 = head.version == Version::Http11;
        H1Front {
            gw,
            stream,
            buf,
            length: head.body_length(),
            http11,
            expects_continue: http11 && head.headers.has_token("expect", "100-continue"),
            head_only: &head.method[..] == b"HEAD",
            keep_alive,
            arrival: Instant::now(),
            pipe: Pipe::default(),
        }
    }

    /// The front-end of a connection whose request could not be read: only error
    /// responses and lingering close.
    pub(crate) fn idle(
        gw: &'a Gateway,
        stream: &'a mut ClientStream,
        buf: &'a mut BytesMut,
    ) -> Self {
        H1Front {
            gw,
            stream,
            buf,
            length: BodyLength::Empty,
            http11: false,
            expects_continue: false,
            head_only: false,
            keep_alive: false,
            arrival: Instant::now(),
            pipe: Pipe::default(),
        }
    }
}

impl Front for H1Front<'_> {
    async fn accept_body(&mut self) -> Result<(), BodyFailure> {
        let max = self.gw.config.server.max_body_bytes;
        match self.length {
            BodyLength::Empty => return Ok(()),
            BodyLength::Length(n) if n > max as u64 => {
                return Err(BodyFailure::Respond(ProxyError::BodyTooLarge {
                    limit: max,
                }))
            }
            _ => {}
        }
        // RFC 9110 §10.1.1: only an HTTP/1.1 client waits for 100 Continue; it gets it once
        // the request passed every check that needs no body (route, method, length).
        if self.expects_continue && self.buf.is_empty() {
            self.stream
                .write_all(CONTINUE)
                .await
                .map_err(BodyFailure::Gone)?;
        }
        Ok(())
    }

    fn split(
        &mut self,
    ) -> (
        impl Future<Output = io::Error> + Send + '_,
        impl Sink + Send + '_,
        impl BodySource + '_,
    ) {
        let cfg = &self.gw.config.server;
        let cap = cfg.max_header_bytes;
        let decoder = (self.length != BodyLength::Empty).then(|| {
            BodyDecoder::new(self.length)
                .with_max_trailers(cfg.max_header_bytes)
                .with_max_body(cfg.max_body_bytes as u64)
        });
        let (mut rd, wr) = self.stream.split();
        let buf = &mut *self.buf;
        let pipe = &self.pipe;
        // The body is read here, a piece each time the core asks for one; once it is
        // read whole, the same read half watches for the client leaving.
        let gone = async move {
            if let Some(decoder) = decoder {
                // Boxed, for requests with a body only: the reader's state would enlarge
                // (and be copied with) every request's watch.
                Box::pin(pump(pipe, &mut rd, &mut *buf, decoder)).await;
            }
            watch_gone(&mut rd, buf, cap).await
        };
        let sink = H1Sink {
            gw: self.gw,
            wr,
            out: BytesMut::new(),
            head_only: self.head_only,
            http11: self.http11,
            chunked: false,
            close: !self.keep_alive,
            arrival: self.arrival,
            trailers: None,
            pace: Pace::new(cfg.min_send_rate, cfg.min_send_rate_window),
        };
        (gone, sink, PipeBody { pipe })
    }

    async fn respond(&mut self, err: &ProxyError, d: &Decision, cx: &ErrorContext<'_>) {
        let out = error_response(err, d, cx);
        let limit = self.gw.config.server.write_timeout;
        let _ = tokio::time::timeout(limit, self.stream.write_all(&out)).await;
    }

    async fn linger(&mut self) {
        linger(self.stream, self.buf).await;
    }

    async fn tunnel(&mut self, upstream: ClientConn, idle: Duration) -> TunnelEnd {
        let write = self.gw.config.server.write_timeout;
        crate::exchange::websocket::tunnel(self.stream, self.buf, upstream, idle, write).await
    }

    fn upgrades(&self) -> bool {
        self.http11
    }

    fn protocol(&self) -> &'static str {
        if self.http11 {
            "HTTP/1.1"
        } else {
            "HTTP/1.0"
        }
    }

    fn arrival(&self) -> Instant {
        self.arrival
    }
}

/// One body piece handed from the connection's reader (the `gone` future) to the core,
/// which asks for each: no piece is read before it is asked for, so the body moves at the
/// pace of whoever takes it.
#[derive(Debug, Default)]
struct Pipe(Mutex<PipeState>);

#[derive(Debug, Default)]
struct PipeState {
    /// The core asked for a piece.
    want: bool,
    /// The piece read (`Some(None)`: the body's end).
    item: Option<Option<Result<Bytes, BodyFailure>>>,
    /// The body's end was read with its last piece: nothing more is asked of the reader.
    ended: bool,
    /// The core, waiting for `item`.
    taker: Option<Waker>,
    /// The reader, waiting for `want`.
    reader: Option<Waker>,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The core's end of the [`Pipe`].
struct PipeBody<'a> {
    pipe: &'a Pipe,
}

impl BodySource for PipeBody<'_> {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFailure>>> {
        let mut s = self.pipe.lock();
        if let Some(item) = s.item.take() {
            return Poll::Ready(item);
        }
        if s.ended {
            return Poll::Ready(None);
        }
        s.want = true;
        if !s.taker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.taker = Some(cx.waker().clone());
        }
        if let Some(w) = s.reader.take() {
            w.wake();
        }
        Poll::Pending
    }
}

/// Reads the body a piece at a time, each when the core asks; returns at its end. After
/// a failure (handed to the core) the connection's framing is lost: it waits for ever
/// (the request ends first).
async fn pump<R>(pipe: &Pipe, rd: &mut R, buf: &mut BytesMut, mut decoder: BodyDecoder)
where
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        std::future::poll_fn(|cx| {
            let mut s = pipe.lock();
            if s.want {
                return Poll::Ready(());
            }
            s.reader = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let (item, last) = match read_body_chunk(rd, buf, &mut decoder).await {
            // The last piece of a known length: the end goes with it, so the core knows
            // the body is whole before an upstream could answer it.
            Ok(Some(piece)) => (Some(Ok(piece)), decoder.is_done()),
            Ok(None) => (None, true),
            Err(e) => (Some(Err(body_failure(e))), true),
        };
        let failed = matches!(item, Some(Err(_)));
        {
            let mut s = pipe.lock();
            s.want = false;
            s.ended = last && !failed;
            s.item = Some(item);
            if let Some(w) = s.taker.take() {
                w.wake();
            }
        }
        if failed {
            std::future::pending::<()>().await;
        }
        if last {
            return;
        }
    }
}

/// A failure reading the body: a client that left, or bad framing (400).
fn body_failure(e: BodyError) -> BodyFailure {
    match e {
        BodyError::Io(e) => BodyFailure::Gone(e),
        BodyError::Incomplete => BodyFailure::Gone(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "client closed the connection in the middle of the request body",
        )),
        BodyError::TooLarge { limit } => BodyFailure::Respond(ProxyError::BodyTooLarge {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        }),
        e => BodyFailure::Respond(ProxyError::Malformed(Box::new(e))),
    }
}

/// Lingering close: our answer is complete (FIN sent), then whatever the client is still
/// sending is read and dropped until it closes, for at most [`LINGER_TIME`] and
/// [`LINGER_BYTES`]. Closing with unread input would make the kernel send an RST, which
/// can destroy the answer before the client reads it.
pub(crate) async fn linger<S>(stream: &mut S, buf: &mut BytesMut)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if stream.shutdown().await.is_err() {
        return;
    }
    buf.clear();
    let until = Instant::now() + LINGER_TIME;
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        buf.reserve(16 * 1024);
        match timeout_at(until, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {
                dropped += n;
                buf.clear();
            }
            _ => return,
        }
    }
}

/// An HTTP/1 response on its way to the client.
pub(crate) struct H1Sink<'a> {
    gw: &'a Gateway,
    wr: WriteHalf<'a, tokio_rustls::server::TlsStream<TcpStream>>,
    out: BytesMut,
    head_only: bool,
    http11: bool,
    chunked: bool,
    close: bool,
    arrival: Instant,
    trailers: Option<Headers>,
    /// `min_send_rate`.
    pace: Pace,
}

impl Sink for H1Sink<'_> {
    fn start(&mut self, head: ResponseStart) -> Result<(), CannotCarry> {
        let (chunked, close_delimited) = match &head.body {
            BodySize::Coded { .. } if !self.http11 => {
                return Err(CannotCarry(
                    "transfer-coding that an HTTP/1.0 client cannot receive",
                ))
            }
            BodySize::Coded { chunked, .. } => (*chunked, !*chunked),
            BodySize::Unknown => (self.http11, !self.http11),
            BodySize::Empty { .. } | BodySize::Known(_) => (false, false),
        };
        self.chunked = chunked;
        self.close |= close_delimited || self.gw.draining();
        let out = &mut self.out;
        out.reserve(1024);
        put_status_line(out, head.status, &head.reason);
        head.headers.write_to(out);
        let framing = match &head.body {
            BodySize::Coded { codings, .. } => Framing::Coded(codings),
            BodySize::Unknown if chunked => Framing::Coded(b"chunked"),
            BodySize::Unknown => Framing::Unstated,
            BodySize::Known(n) => Framing::Length(*n),
            BodySize::Empty {
                declared: Some(v), ..
            } => Framing::Declared(v),
            BodySize::Empty { declared: None } => response_framing(head.status, 0),
        };
        put_framing(out, framing);
        // A 101 carries its own `connection: upgrade`; the connection is the tunnel's now.
        end_head(out, self.close && head.status != 101);
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) {
        if self.head_only {
            // A body after a response to HEAD would be read as the next response.
        } else if self.chunked {
            encode_chunk(&mut self.out, bytes);
        } else {
            self.out.extend_from_slice(bytes);
        }
    }

    fn trailers(&mut self, fields: Headers) {
        self.trailers = Some(fields);
    }

    fn finish(&mut self) {
        if !self.chunked || self.head_only {
            return;
        }
        match self.trailers.take() {
            Some(t) => {
                self.out.put_slice(b"0\r\n");
                t.write_to(&mut self.out);
                self.out.put_slice(b"\r\n");
            }
            None => self.out.put_slice(LAST_CHUNK),
        }
    }

    fn buffered(&self) -> usize {
        self.out.len()
    }

    fn discard(&mut self) {
        self.out.clear();
    }

    async fn flush(&mut self) -> Result<(), ProxyError> {
        let limit = self.gw.config.server.write_timeout;
        let gone = |source| ProxyError::ClientGone {
            elapsed: self.arrival.elapsed(),
            waiting_on: None,
            source,
        };
        let (wr, out, pace) = (&mut self.wr, &self.out, &mut self.pace);
        let mut at = 0;
        while at < out.len() {
            let mut write = pin!(wr.write(&out[at..]));
            // Most writes fit the socket buffer at once: no timer for those.
            let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
            let n = match first {
                Poll::Ready(r) => r,
                // Waiting on the client: `write_timeout` and `min_send_rate` run.
                Poll::Pending => pace.wait(limit, write).await?,
            }
            .map_err(gone)?;
            if n == 0 {
                return Err(gone(io::ErrorKind::WriteZero.into()));
            }
            pace.took(n);
            at += n;
        }
        self.out.clear();
        Ok(())
    }

    fn reusable(&self) -> bool {
        !self.close
    }
}
