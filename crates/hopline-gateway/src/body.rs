//! Request bodies on their way to the upstream. A body is read from the client only as
//! the upstream takes it (nothing piles up in hopline: a slow upstream slows the client),
//! under the client-side limits — `max_body_bytes`, `body_read_timeout` as a whole-body
//! limit from arrival, and `min_recv_rate` on the time spent waiting for the client. The
//! start of a streamed body is kept (up to `retry_buffer_bytes`) so that a request whose
//! pooled connection turned out stale can be sent again; a body read whole
//! (`request_buffering`) or an aggregate call's is sent from memory by every attempt.
//!
//! A client protocol hands its body over as a [`BodySource`]; the core wraps it in an
//! [`Incoming`] (the limits) and a [`RequestBody`] (what attempts send).

use std::future::poll_fn;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use hopline_core::ProxyError;

use crate::limits::{BufferBudget, BufferGrant, BufferKind};

/// Why the request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyFailure {
    /// The request is answered with this error (too large, too slow, bad framing).
    Respond(ProxyError),
    /// The client went away while sending it.
    Gone(io::Error),
}

/// A client protocol's request body, piece by piece as it arrives.
pub(crate) trait BodySource: Send {
    /// The next piece (`None` at the end). Nothing is read from the client before the
    /// first call.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyFailure>>>;

    /// `n` bytes of what [`BodySource::poll_chunk`] gave were passed on: a protocol with
    /// flow control lets the client send that much more.
    fn release(&mut self, _n: usize) {}
}

/// `server.min_recv_rate`: a sender slower than `bytes_per_sec`, averaged over `window` of
/// time spent waiting on it (after `grace` of such time), is cut with 408 `RT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MinRate {
    /// Bytes per second at least; 0 turns the rule off.
    pub bytes_per_sec: u64,
    /// The window the rate is averaged over.
    pub window: Duration,
    /// Waiting time before the first window starts.
    pub grace: Duration,
}

/// The client-side limits on one request body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// `max_body_bytes`.
    pub max: u64,
    /// `body_read_timeout`, counted from the request's arrival.
    pub read_timeout: Duration,
    /// When the request arrived.
    pub arrival: Instant,
    /// The request's deadline and its budget: the upload is part of the request.
    pub deadline: (Instant, Duration),
    /// `min_recv_rate`.
    pub min_rate: MinRate,
}

/// Time a request spent waiting on its client's body, readable while an attempt runs:
/// an upstream's own `timeout` does not run while hopline waits for the client (the
/// client-side limits do), so a slow sender is never an upstream's timeout.
#[derive(Debug)]
pub(crate) struct WaitClock {
    base: Instant,
    /// Nanoseconds waited, waits that ended.
    waited: AtomicU64,
    /// Nanoseconds after `base` the current wait started, plus one; 0 when not waiting.
    since: AtomicU64,
}

impl WaitClock {
    /// A clock counting from `base` (the request's arrival: no clock read for it).
    pub(crate) fn new(base: Instant) -> Self {
        WaitClock {
            base,
            waited: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    fn start(&self, now: Instant) {
        self.since.store(self.nanos(now) + 1, Ordering::Relaxed);
    }

    fn stop(&self, now: Instant) {
        let since = self.since.swap(0, Ordering::Relaxed);
        if since > 0 {
            let d = self.nanos(now).saturating_sub(since - 1);
            self.waited.fetch_add(d, Ordering::Relaxed);
        }
    }

    /// Time spent waiting on the client up to `now` (a wait in progress included).
    pub(crate) fn waited(&self, now: Instant) -> Duration {
        let mut n = self.waited.load(Ordering::Relaxed);
        let since = self.since.load(Ordering::Relaxed);
        if since > 0 {
            n += self.nanos(now).saturating_sub(since - 1);
        }
        Duration::from_nanos(n)
    }
}

/// A client's body as it arrives, under its [`BodyLimits`]. Only time spent waiting for
/// the client counts towards its rate: while the upstream is slow to take the body,
/// nothing is asked of the client.
pub(crate) struct Incoming<'a> {
    source: &'a mut (dyn BodySource + 'a),
    limits: BodyLimits,
    /// The length the client declared, if it did.
    declared: Option<u64>,
    clock: &'a WaitClock,
    received: u64,
    ended: bool,
    /// Time spent waiting on the client so far.
    waited: Duration,
    /// Waiting time at which the current rate window ends.
    window_end: Duration,
    /// `received` when the current window started.
    window_start_bytes: u64,
}

impl std::fmt::Debug for Incoming<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("received", &self.received)
            .field("ended", &self.ended)
            .finish()
    }
}

impl<'a> Incoming<'a> {
    /// The body `source` gives, under `limits`.
    pub(crate) fn new(
        (source, declared): (&'a mut (dyn BodySource + 'a), Option<u64>),
        limits: BodyLimits,
        clock: &'a WaitClock,
    ) -> Self {
        let rate = limits.min_rate;
        Incoming {
            source,
            limits,
            declared,
            clock,
            received: 0,
            ended: false,
            waited: Duration::ZERO,
            window_end: rate.grace + rate.window,
            window_start_bytes: 0,
        }
    }

    /// The next piece of the body, `None` at its end; a failure as the error the request
    /// is answered with (413, 408, 400, or the client gone).
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, ProxyError> {
        if self.ended {
            return Ok(None);
        }
        let source = &mut *self.source;
        // What is there already is taken without a timer: a client whose bytes were ready
        // was not slow, however long the upstream took to ask for them.
        let ready = poll_fn(|cx| Poll::Ready(source.poll_chunk(cx))).await;
        let got = match ready {
            Poll::Ready(got) => got,
            Poll::Pending => self.wait().await?,
        };
        match got {
            None => {
                self.ended = true;
                Ok(None)
            }
            Some(Ok(piece)) => {
                self.received += piece.len() as u64;
                if self.received > self.limits.max {
                    let limit = usize::try_from(self.limits.max).unwrap_or(usize::MAX);
                    return Err(ProxyError::BodyTooLarge { limit });
                }
                if self.declared == Some(self.received) {
                    // All of a declared length: its end is there without waiting (each
                    // protocol hands it over with the last piece), and it is taken now, so
                    // the body is known whole before an upstream can answer its last byte.
                    let source = &mut *self.source;
                    let end = poll_fn(|cx| Poll::Ready(source.poll_chunk(cx))).await;
                    self.ended = matches!(end, Poll::Ready(None));
                }
                Ok(Some(piece))
            }
            Some(Err(BodyFailure::Respond(e))) => Err(e),
            Some(Err(BodyFailure::Gone(source))) => Err(ProxyError::ClientGone {
                elapsed: self.limits.arrival.elapsed(),
                waiting_on: Some("the request body".into()),
                source,
            }),
        }
    }

    /// Waits for the client, within `body_read_timeout`, the deadline and the rate's
    /// current window.
    async fn wait(&mut self) -> Result<Option<Result<Bytes, BodyFailure>>, ProxyError> {
        let started = Instant::now();
        self.clock.start(started);
        let got = self.wait_from(started).await;
        self.clock.stop(Instant::now());
        got
    }

    async fn wait_from(
        &mut self,
        started: Instant,
    ) -> Result<Option<Result<Bytes, BodyFailure>>, ProxyError> {
        let by_timeout = self.limits.arrival + self.limits.read_timeout;
        let (deadline, budget) = self.limits.deadline;
        let read_until = by_timeout.min(deadline);
        let rate = self.limits.min_rate;
        // `waited` counts up to `mark`.
        let mut mark = started;
        loop {
            let window_until = mark + self.window_end.saturating_sub(self.waited);
            let until = if rate.bytes_per_sec > 0 {
                read_until.min(window_until)
            } else {
                read_until
            };
            let source = &mut *self.source;
            let mut chunk = pin!(poll_fn(|cx| source.poll_chunk(cx)));
            let got = tokio::time::timeout_at(until, chunk.as_mut()).await;
            let now = Instant::now();
            if let Ok(got) = got {
                self.waited += now - mark;
                self.roll_windows(got.as_ref().and_then(|r| r.as_ref().ok()));
                return Ok(got);
            }
            if now >= read_until {
                let (limit, setting) = if by_timeout <= deadline {
                    (self.limits.read_timeout, "body_read_timeout")
                } else {
                    (budget, "the request deadline")
                };
                return Err(ProxyError::BodyReadTimeout {
                    limit,
                    setting,
                    received: self.received,
                });
            }
            // A window ended while waiting: nothing came in it beyond what it had.
            self.waited = self.window_end;
            mark = now;
            self.check_window()?;
        }
    }

    /// After a piece arrived: closes the windows that ended while waiting for it (the
    /// piece counts in the window it completed, being what the client managed by then).
    fn roll_windows(&mut self, piece: Option<&Bytes>) {
        let rate = self.limits.min_rate;
        if rate.bytes_per_sec == 0 {
            return;
        }
        let n = piece.map_or(0, |p| p.len() as u64);
        while self.waited >= self.window_end {
            self.window_end += rate.window;
            self.window_start_bytes = self.received + n;
        }
    }

    /// A window ended with the client still silent: cut it when the window fell short.
    fn check_window(&mut self) -> Result<(), ProxyError> {
        let rate = self.limits.min_rate;
        let got = self.received - self.window_start_bytes;
        let need = rate
            .bytes_per_sec
            .saturating_mul(rate.window.as_secs().max(1));
        if got < need {
            return Err(ProxyError::BodyTooSlow {
                rate: rate.bytes_per_sec,
                window: rate.window,
                got,
                received: self.received,
            });
        }
        self.window_end += rate.window;
        self.window_start_bytes = self.received;
        Ok(())
    }

    /// The client's flow-control window may open by `n` (the upstream took them).
    pub(crate) fn release(&mut self, n: usize) {
        self.source.release(n);
    }

    /// The whole body was read.
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }
}

/// The body every attempt of a request sends.
#[derive(Debug)]
pub(crate) enum RequestBody<'a> {
    /// Whole, in memory: no body, a body read whole first, an aggregate call's.
    Full {
        /// The bytes.
        bytes: Bytes,
        /// Their share of the buffer budget, held while the request runs.
        _grant: Option<BufferGrant>,
        /// The current attempt was handed them (as one piece, for a body sent apart
        /// from its head).
        given: bool,
    },
    /// Streamed from the client as the upstream takes it.
    Streamed(Box<Streamed<'a>>),
}

/// A body streamed from the client, and what of it is kept for a resend.
#[derive(Debug)]
pub(crate) struct Streamed<'a> {
    incoming: Incoming<'a>,
    /// The length the client declared, if it did.
    declared: Option<u64>,
    /// The start of the body, while it fits `retry_buffer_bytes`.
    replay: BytesMut,
    replay_cap: usize,
    grant: BufferGrant,
    /// Bytes handed to an attempt so far (the current attempt's).
    sent: u64,
    /// Bytes of `replay` the current attempt has yet to resend.
    replay_at: Option<usize>,
    /// More was sent than `replay` keeps: the body cannot be sent again.
    outgrown: bool,
}

impl<'a> RequestBody<'a> {
    /// A body in memory.
    pub(crate) fn full(bytes: Bytes) -> Self {
        RequestBody::Full {
            bytes,
            _grant: None,
            given: false,
        }
    }

    /// A body streamed from `incoming`, of `declared` length if known; up to `replay_cap`
    /// bytes of its start kept for a resend, drawn from `budget`.
    pub(crate) fn streamed(
        incoming: Incoming<'a>,
        declared: Option<u64>,
        replay_cap: usize,
        budget: &Arc<BufferBudget>,
    ) -> Self {
        RequestBody::Streamed(Box::new(Streamed {
            incoming,
            declared,
            replay: BytesMut::new(),
            replay_cap,
            grant: budget.grant(),
            sent: 0,
            replay_at: None,
            outgrown: false,
        }))
    }

    /// The body's length when known before it is sent: a body in memory, or a streamed
    /// one whose client declared it. `None`: sent chunked.
    pub(crate) fn length(&self) -> Option<u64> {
        match self {
            RequestBody::Full { bytes, .. } => Some(bytes.len() as u64),
            RequestBody::Streamed(s) => s.declared,
        }
    }

    /// The time this body's attempts spent waiting on the client, if it is streamed.
    pub(crate) fn clock(&self) -> Option<&'a WaitClock> {
        match self {
            RequestBody::Full { .. } => None,
            RequestBody::Streamed(s) => Some(s.incoming.clock),
        }
    }

    /// Nothing to send.
    pub(crate) fn is_empty(&self) -> bool {
        self.length() == Some(0)
    }

    /// The body in memory, if it is.
    pub(crate) fn in_memory(&self) -> Option<&Bytes> {
        match self {
            RequestBody::Full { bytes, .. } => Some(bytes),
            RequestBody::Streamed(_) => None,
        }
    }

    /// The whole body was read from the client (a body in memory always was).
    pub(crate) fn read_whole(&self) -> bool {
        match self {
            RequestBody::Full { .. } => true,
            RequestBody::Streamed(s) => s.incoming.ended(),
        }
    }

    /// What was sent of it so far is kept, so it can be sent again from the start.
    pub(crate) fn can_resend(&self) -> bool {
        match self {
            RequestBody::Full { .. } => true,
            RequestBody::Streamed(s) => s.sent == 0 || !s.outgrown,
        }
    }

    /// Prepares a resend from the start (when [`RequestBody::can_resend`]).
    pub(crate) fn rewind(&mut self) {
        match self {
            RequestBody::Full { given, .. } => *given = false,
            RequestBody::Streamed(s) if !s.outgrown => {
                s.replay_at = Some(0);
                s.sent = 0;
            }
            RequestBody::Streamed(_) => {}
        }
    }

    /// Why the body cannot be sent again, for the log: `1.2 MiB of the body already sent`.
    pub(crate) fn why_not_resent(&self) -> Option<String> {
        match self {
            RequestBody::Streamed(s) if s.outgrown => {
                Some(format!("{} of the body already sent", human_bytes(s.sent)))
            }
            _ => None,
        }
    }

    /// The next piece an attempt sends (of a streamed body, what is kept first on a
    /// resend; a body in memory is one piece), `None` at its end.
    pub(crate) async fn next_piece(&mut self) -> Result<Option<Bytes>, ProxyError> {
        let s = match self {
            RequestBody::Full { bytes, given, .. } => {
                let first = !std::mem::replace(given, true);
                return Ok((first && !bytes.is_empty()).then(|| bytes.clone()));
            }
            RequestBody::Streamed(s) => s,
        };
        if let Some(at) = s.replay_at {
            if at < s.replay.len() {
                s.replay_at = Some(s.replay.len());
                let piece = Bytes::copy_from_slice(&s.replay[at..]);
                s.sent += piece.len() as u64;
                return Ok(Some(piece));
            }
            s.replay_at = None;
        }
        let Some(piece) = s.incoming.next().await? else {
            return Ok(None);
        };
        s.sent += piece.len() as u64;
        if !s.outgrown {
            let fits = s.replay.len() + piece.len() <= s.replay_cap;
            // The budget refusing the copy costs the resend, never the request.
            if fits && s.grant.grow(piece.len()) {
                s.replay.extend_from_slice(&piece);
            } else {
                s.outgrown = true;
                s.replay = BytesMut::new();
                let held = s.grant.held();
                s.grant.shrink(held);
            }
        }
        Ok(Some(piece))
    }

    /// `n` bytes of a piece were written upstream: the client may send more.
    pub(crate) fn release(&mut self, n: usize) {
        if let RequestBody::Streamed(s) = self {
            s.incoming.release(n);
        }
    }

    /// Reads a streamed body whole into memory, drawing from `budget` as it grows (for
    /// `request_buffering`): 503 `OM` when the budget cannot hold it.
    pub(crate) async fn buffer(&mut self, budget: &Arc<BufferBudget>) -> Result<(), ProxyError> {
        let RequestBody::Streamed(s) = self else {
            return Ok(());
        };
        let refused = || ProxyError::BufferBudget {
            kind: BufferKind::RequestBody.as_str(),
            limit: budget.limit(),
        };
        let mut grant = budget.grant();
        // A declared length is taken at once, so a body that cannot fit is refused
        // before a byte of it is read.
        let declared = s
            .declared
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let first = declared.min(usize::try_from(s.incoming.limits.max).unwrap_or(usize::MAX));
        if !grant.grow(first) {
            return Err(refused());
        }
        let mut body = BytesMut::with_capacity(first);
        while let Some(piece) = s.incoming.next().await? {
            let more = (body.len() + piece.len()).saturating_sub(grant.held());
            if !grant.grow(more) {
                return Err(refused());
            }
            if body.is_empty() && s.incoming.ended() {
                body = BytesMut::from(&piece[..]);
            } else {
                body.extend_from_slice(&piece);
            }
            s.incoming.release(piece.len());
        }
        *self = RequestBody::Full {
            bytes: body.freeze(),
            _grant: Some(grant),
            given: false,
        };
        Ok(())
    }

    /// Reads a streamed body to its end and drops it (a route that does not send it on).
    pub(crate) async fn drain(&mut self) -> Result<(), ProxyError> {
        if let RequestBody::Streamed(s) = self {
            while let Some(piece) = s.incoming.next().await? {
                s.incoming.release(piece.len());
            }
        }
        Ok(())
    }
}

/// `1.2 MiB`, `64 KiB`, `300 B`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v >= 10.0 || v.fract() < 0.05 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Sends a request body to an HTTP/1 upstream after its head: `content-length` bodies as
/// they are, others chunk-encoded; each write waits for the upstream (backpressure).
pub(crate) async fn write_h1<W>(
    body: &mut RequestBody<'_>,
    w: &mut W,
    chunked: bool,
) -> Result<(), Upload>
where
    W: tokio::io::AsyncWrite + Unpin + Send,
{
    use tokio::io::AsyncWriteExt;
    let mut frame = BytesMut::new();
    loop {
        let piece = body.next_piece().await.map_err(Upload::Client)?;
        let Some(piece) = piece else { break };
        let n = piece.len();
        if chunked {
            frame.clear();
            hopline_h1::body::encode_chunk(&mut frame, &piece);
            w.write_all(&frame).await.map_err(Upload::Upstream)?;
        } else {
            w.write_all(&piece).await.map_err(Upload::Upstream)?;
        }
        body.release(n);
    }
    if chunked {
        w.write_all(hopline_h1::body::LAST_CHUNK)
            .await
            .map_err(Upload::Upstream)?;
    }
    Ok(())
}

/// Why sending a request body stopped.
#[derive(Debug)]
pub(crate) enum Upload {
    /// The client's side failed (too large, too slow, gone): the request is answered so.
    Client(ProxyError),
    /// Writing to the upstream failed.
    Upstream(io::Error),
}
