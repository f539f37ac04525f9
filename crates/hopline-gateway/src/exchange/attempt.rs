//! The attempt layer, once for every protocol: one upstream call ([`Hop`]) takes its limit
//! slots, then runs attempts — endpoint pick, connection, exchange — until a response head
//! arrives, retrying only where it is safe, within `max_retries`, the retry budget and the
//! deadline. HTTP/1 (`proxy.rs`) and HTTP/2 (`proxy_h2.rs`) upstreams say only how to get
//! a connection and how to exchange on it ([`Wire`]); aggregate calls are hops too. This
//! is the one file that spends the retry budget.
//!
//! Retried: a connect failure (nothing was sent), on another endpoint when there is one; a
//! stream the upstream refused unprocessed (h2 `REFUSED_STREAM`), whatever the method; and,
//! once and on a new connection, an idempotent request whose pooled connection turned out
//! stale (closed by the upstream just as it was reused, before any response byte).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;

use hopline_core::config::Zone;
use hopline_core::trace::{new_span_id, SpanId};
use hopline_core::{Overflow, Phase, ProxyError, TimeoutSource, UpstreamErrorKind};
use tokio::time::Instant;

use crate::body::{RequestBody, WaitClock};
use crate::clock::Deadline;
use crate::gateway::Gateway;
use crate::limits::{InFlightGuard, QueueRefusal};
use crate::observe::trace::AttemptSpan;
use crate::upstream::endpoint::H2Stream;
use crate::upstream::endpoint::{Endpoint, EndpointGuard, Verdict};
use crate::upstream::{ClientConn, EgressSlot, Upstream};

/// The request as it will be sent upstream, rendered once for all attempts.
#[derive(Debug)]
pub(crate) struct Forward {
    /// Request line and headers (the body's framing included), without the deadline
    /// header and the final CRLF.
    pub head: BytesMut,
    /// The body is sent chunk-encoded (a streamed body of no declared length).
    pub chunked: bool,
    /// Safe to send twice (RFC 9110 idempotent method).
    pub idempotent: bool,
    /// `HEAD` (the response has no body whatever its headers say).
    pub is_head: bool,
    /// A gRPC request (`content-type: application/grpc…`): an HTTP/2 upstream gets its
    /// deadline as `grpc-timeout`.
    pub grpc: bool,
    /// A WebSocket upgrade on a `websocket = true` route: a `101` answer hands the
    /// connection over to a tunnel.
    pub upgrade: bool,
    /// `deadline.margin`: kept back when telling the upstream how long it has.
    pub margin: Duration,
    /// The request's trace: each attempt sends `traceparent` with a span id of its own.
    pub trace: Option<crate::observe::trace::TraceCx>,
    /// The aggregate call this request is, if it is one (for its spans).
    pub call: Option<Arc<str>>,
}

/// What the request is doing now; read after the request future ends or is dropped, so a
/// cancelled request can still say what it was waiting on.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The last attempt's connection was a pooled one.
    pub upstream_reused: Option<bool>,
    /// How long it had been idle in the pool.
    pub upstream_idle: Option<std::time::Duration>,
    /// Upstream index of the current attempt.
    pub upstream: Option<usize>,
    /// Endpoint of the current attempt.
    pub endpoint: Option<SocketAddr>,
    /// Phase of the current attempt.
    pub phase: Option<Phase>,
    /// Attempts started.
    pub attempts: u32,
    /// The upstream status, once its head arrived.
    pub upstream_status: Option<u16>,
    /// The upstream's `grpc-status` (trailer, or header of a trailers-only response).
    pub upstream_grpc_status: Option<u16>,
    /// Response head written to the client.
    pub response_started: bool,
    /// Body bytes sent to the client.
    pub bytes_sent: u64,
    /// The upstream connection, after it answered a WebSocket upgrade with `101` (whose
    /// head went to the client): the tunnel's other end.
    pub upgraded: Option<ClientConn>,
    /// Why a failure that could otherwise have been retried was not: `1.2 MiB of the body
    /// already sent` (more than `retry_buffer_bytes` keeps).
    pub not_resent: Option<String>,
    /// How long the request waited in the upstream's queue for a slot, if it did.
    pub queued: Option<Duration>,
}

/// [`Progress`] shared between a request's future and the connection that may drop it.
#[derive(Debug, Default)]
pub(crate) struct ProgressCell(Mutex<Progress>);

impl ProgressCell {
    /// Updates the progress (never held across an await).
    pub(crate) fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Reads the progress so far.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Progress) -> T) -> T {
        f(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The final progress.
    pub(crate) fn into_inner(self) -> Progress {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// One call to an upstream: what every step of it needs, in one place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop<'a> {
    /// The gateway (egress limits, metrics).
    pub gw: &'a Gateway,
    /// The upstream's index in `gw.upstreams`.
    pub index: usize,
    /// The upstream.
    pub up: &'a Upstream,
    /// The request, as rendered for every attempt.
    pub req: &'a Forward,
    /// The call's deadline (the request's, or an aggregate call's narrower one).
    pub deadline: &'a Deadline,
    /// What the call is doing, for a request cut off while it runs.
    pub progress: &'a ProgressCell,
}

impl<'a> Hop<'a> {
    /// A call to upstream `index`.
    pub(crate) fn new(
        gw: &'a Gateway,
        index: usize,
        req: &'a Forward,
        deadline: &'a Deadline,
        progress: &'a ProgressCell,
    ) -> Self {
        Hop {
            gw,
            index,
            up: &gw.upstreams[index],
            req,
            deadline,
            progress,
        }
    }

    /// The timeout error of an attempt, bounded by the deadline (`by_deadline`) or by the
    /// upstream's own `timeout`.
    pub(crate) fn timeout(&self, by_deadline: bool, phase: Phase) -> UpstreamErrorKind {
        UpstreamErrorKind::Timeout {
            phase,
            limit: if by_deadline {
                self.deadline.budget()
            } else {
                self.up.config.timeout
            },
            source_limit: self
                .deadline
                .limit_source(by_deadline, TimeoutSource::AttemptTimeout),
        }
    }

    /// How long the call may wait in a queue for a slot: until `deadline.min_caller` before
    /// its deadline, since a slot with less time left could make no useful call.
    pub(crate) fn wait_until(&self) -> Instant {
        let at = self.deadline.at();
        at.checked_sub(self.gw.config.deadline.min_caller)
            .unwrap_or(at)
    }

    /// Notes the phase the call is in.
    pub(crate) fn phase(&self, phase: Phase) {
        self.progress.update(|p| p.phase = Some(phase));
    }

    /// A new HTTP/1 connection to `ep` (connect and TLS under `min(connect_timeout, time
    /// left)`), the phases it goes through noted.
    pub(crate) async fn connect(&self, ep: &Arc<Endpoint>) -> Result<ClientConn, ProxyError> {
        let (gw, note) = (self.gw, |phase| self.phase(phase));
        self.up
            .connect(ep, self.deadline, &gw.egress, &gw.metrics, &note)
            .await
    }

    /// A stream on an HTTP/2 connection to `ep`, opening one if needed.
    pub(crate) async fn h2_stream(&self, ep: &Arc<Endpoint>) -> Result<H2Stream, ProxyError> {
        let (gw, note) = (self.gw, |phase| self.phase(phase));
        self.up
            .h2_sender(ep, self.deadline, &gw.egress, &gw.metrics, &note)
            .await
    }
}

/// The limit slots a call holds until its response is done.
#[derive(Debug)]
pub(crate) struct Slots {
    _in_flight: InFlightGuard,
    _egress: Option<EgressSlot>,
}

/// Counts the call against the retry budget and takes its slots: the upstream's
/// in-flight slot (waiting in its queue, `max_pending`, within the deadline when the limit
/// is full), and for an egress upstream the shared egress slot; `UO` when a limit refuses.
/// Nothing of the request's body is read while it waits.
pub(crate) async fn slots(hop: &Hop<'_>) -> Result<Slots, ProxyError> {
    let up = hop.up;
    hop.progress.update(|p| p.upstream = Some(hop.index));
    up.budget.deposit();
    let in_flight = match up.in_flight.take_now(hop.deadline.start()) {
        Some(slot) => slot,
        // Boxed: only a request that must wait carries the queue's state.
        None => Box::pin(queue(hop)).await?,
    };
    let egress = match up.zone() {
        Zone::Egress => {
            // If it has to wait for an egress slot, it waits in a queue.
            hop.phase(Phase::Queue);
            let (since, until) = (hop.deadline.start(), hop.wait_until());
            let max_pending = up.config.max_pending;
            let egress = hop.gw.egress.slot_within(since, max_pending, until);
            egress.await.map_err(ProxyError::Overflow)?
        }
        Zone::Internal => None,
    };
    Ok(Slots {
        _in_flight: in_flight,
        _egress: egress,
    })
}

/// Waits in the upstream's queue for an in-flight slot, as long as the deadline allows.
async fn queue(hop: &Hop<'_>) -> Result<InFlightGuard, ProxyError> {
    let (up, gw) = (hop.up, hop.gw);
    let max_pending = up.config.max_pending;
    let limit = up.in_flight.limit();
    if max_pending == 0 {
        gw.metrics.count_queue(&up.name, "full");
        return Err(ProxyError::Overflow(Overflow::UpstreamInFlight {
            upstream: up.name.clone(),
            limit,
        }));
    }
    hop.phase(Phase::Queue);
    let start = Instant::now();
    // Counted `client_gone` if the request is dropped while it waits.
    let mut waiting = Waiting {
        hop,
        start,
        done: false,
    };
    let got = up
        .in_flight
        .acquire(start, max_pending, hop.wait_until())
        .await;
    waiting.done = true;
    let waited = start.elapsed();
    hop.progress.update(|p| p.queued = Some(waited));
    match got {
        Ok(slot) => {
            gw.metrics.count_queue(&up.name, "served");
            gw.metrics.queue_waited(&up.name, waited);
            Ok(slot)
        }
        Err(why) => {
            let outcome = match why {
                QueueRefusal::Full { .. } => "full",
                QueueRefusal::ExpectedWait { .. } => "expected_wait",
                QueueRefusal::Expired { .. } => "expired",
            };
            gw.metrics.count_queue(&up.name, outcome);
            Err(ProxyError::Overflow(Overflow::Queued {
                upstream: up.name.clone(),
                limit,
                why,
            }))
        }
    }
}

/// A request waiting in a queue: when dropped before it got its answer (the client left),
/// counted as `client_gone` with the time it waited.
struct Waiting<'a, 'h> {
    hop: &'a Hop<'h>,
    start: Instant,
    done: bool,
}

impl Drop for Waiting<'_, '_> {
    fn drop(&mut self) {
        if !self.done {
            let waited = self.start.elapsed();
            self.hop.progress.update(|p| p.queued = Some(waited));
            self.hop
                .gw
                .metrics
                .count_queue(&self.hop.up.name, "client_gone");
        }
    }
}

/// Why an exchange failed, and whether sending it again is safe.
#[derive(Debug)]
pub(crate) struct Failed {
    /// The failure.
    pub error: ProxyError,
    /// What a retry would be.
    pub retry: Retry,
}

/// Whether a failed exchange may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// No: the upstream may have acted on it.
    No,
    /// A pooled connection that was closed before any response byte: an idempotent
    /// request is resent once, on a new connection. Not the endpoint's failure.
    Stale,
    /// The upstream refused it unprocessed (h2 `REFUSED_STREAM`): any method is resent.
    Refused,
}

/// A response head, as a protocol's exchange returns it.
pub(crate) trait Answered {
    /// Its status.
    fn status(&self) -> u16;
}

/// How one protocol gets a connection to an endpoint and exchanges a request on it.
pub(crate) trait Wire {
    /// A connection (or stream) one attempt uses.
    type Conn: Send;
    /// What an exchange returns once the response head arrived.
    type Answer: Answered + Send;

    /// A connection to the attempt's endpoint: pooled (unless `fresh`) or new, and the
    /// instant the exchange on it starts.
    fn connect(
        &self,
        hop: &Hop<'_>,
        guard: &EndpointGuard,
        fresh: bool,
        now: Instant,
    ) -> impl Future<Output = Result<(Self::Conn, Instant), ProxyError>> + Send;

    /// Sends the request with `body` on `conn` and waits for the response head, under
    /// `min(timeout, time left)` from `started` (see [`within`]).
    fn exchange(
        &self,
        hop: &Hop<'_>,
        conn: Self::Conn,
        body: &mut RequestBody<'_>,
        attempt: (SpanId, Instant),
    ) -> impl Future<Output = Result<Self::Answer, Failed>> + Send;
}

/// Runs `f` until `*until` (an attempt's limit), extended by whatever time the request
/// spends waiting on its client meanwhile (`clock`: a streamed body) but never past the
/// deadline: an upstream's `timeout` runs only while hopline waits on the upstream, so a
/// slow sender is never the upstream's timeout (the body's own limits judge it). `None`
/// when the limit was reached; `*until` is left at the limit in force. `f` is pinned by
/// the caller where it is built (moving a large future in would copy it).
pub(crate) async fn within<F: Future>(
    hop: &Hop<'_>,
    until: &mut Instant,
    clock: Option<&WaitClock>,
    mut f: std::pin::Pin<&mut F>,
) -> Option<F::Output> {
    let Some(clock) = clock else {
        return tokio::time::timeout_at(*until, f).await.ok();
    };
    let (first, cap) = (*until, hop.deadline.at());
    let base = clock.waited(Instant::now());
    loop {
        if let Ok(out) = tokio::time::timeout_at(*until, f.as_mut()).await {
            return Some(out);
        }
        let now = Instant::now();
        let extended = (first + (clock.waited(now) - base)).min(cap);
        if extended <= now {
            return None;
        }
        *until = extended;
    }
}

/// Runs attempts over `wire` until a response head arrives (with the endpoint it came
/// from), or the call fails. A resend sends `body` again from its start, when what was
/// sent of it is still kept.
pub(crate) async fn attempts<W: Wire>(
    hop: &Hop<'_>,
    wire: &W,
    body: &mut RequestBody<'_>,
) -> Result<(W::Answer, EndpointGuard), ProxyError> {
    let up = hop.up;
    let mut last_error: Option<ProxyError> = None;
    let mut retries = 0;
    let mut stale_retry_used = false;
    let mut fresh = false;
    // After a connect failure, the retry goes to another endpoint when there is one.
    let mut avoid = None;
    loop {
        let now = Instant::now();
        let guard = next_attempt(hop, now, &mut last_error, avoid)?;
        let span = new_span_id();
        // The wall clock is read only for a span that will be recorded.
        let start = match &hop.req.trace {
            Some(t) if t.records() => SystemTime::now(),
            _ => SystemTime::UNIX_EPOCH,
        };
        let attempt = (start, now, guard.ep().addr);
        // Once the deadline is spent no retry would run: no token is spent for one.
        let may_retry = || !hop.deadline.expired(Instant::now()) && up.budget.try_spend();
        let (conn, started) = match wire.connect(hop, &guard, fresh, now).await {
            Ok(c) => c,
            Err(e) => {
                guard.reporter().failed(&e);
                record_attempt(hop, span, attempt, Err(&e));
                let unsent = matches!(&e, ProxyError::Upstream(u) if u.kind.before_request_sent());
                if unsent && retries < up.config.max_retries && may_retry() {
                    retries += 1;
                    last_error = Some(e);
                    avoid = Some(guard.ep().addr);
                    continue;
                }
                return Err(e);
            }
        };
        match wire.exchange(hop, conn, body, (span, started)).await {
            Ok(x) => {
                guard.answered_in(started.elapsed());
                guard.report(Verdict::of_status(x.status()));
                record_attempt(hop, span, attempt, Ok(x.status()));
                return Ok((x, guard));
            }
            Err(Failed { error, retry }) => {
                record_attempt(hop, span, attempt, Err(&error));
                if retry != Retry::Stale {
                    guard.reporter().failed(&error);
                }
                let mut again = match retry {
                    Retry::Stale => hop.req.idempotent && !stale_retry_used,
                    Retry::Refused => retries < up.config.max_retries,
                    Retry::No => false,
                };
                if again && !body.can_resend() {
                    let why = body.why_not_resent();
                    hop.progress.update(|p| p.not_resent = why);
                    again = false;
                }
                if again && may_retry() {
                    body.rewind();
                    match retry {
                        // The next pooled connection may be just as stale.
                        Retry::Stale => (stale_retry_used, fresh) = (true, true),
                        _ => retries += 1,
                    }
                    last_error = Some(error);
                    continue;
                }
                return Err(error);
            }
        }
    }
}

/// Starts an attempt: the endpoint it goes to (by the upstream's `lb`, among usable
/// endpoints, avoiding `avoid`), recorded in the progress; once the deadline is spent, the
/// last attempt's error (or `DeadlineSpent`) instead; 503 `UH` when no endpoint is usable.
fn next_attempt(
    hop: &Hop<'_>,
    now: Instant,
    last_error: &mut Option<ProxyError>,
    avoid: Option<SocketAddr>,
) -> Result<EndpointGuard, ProxyError> {
    if hop.deadline.expired(now) {
        return Err(last_error.take().unwrap_or(ProxyError::DeadlineSpent {
            budget: hop.deadline.budget(),
        }));
    }
    let guard = match hop.up.pick(avoid) {
        Ok(g) => g,
        // A retry that finds nothing usable reports what the last attempt ran into.
        Err(e) => return Err(last_error.take().unwrap_or(e)),
    };
    hop.progress.update(|p| {
        p.attempts += 1;
        p.endpoint = Some(guard.ep().addr);
        p.phase = Some(Phase::Connect);
    });
    Ok(guard)
}

/// Records an attempt as a span of the request's trace, when it is sampled.
fn record_attempt(
    hop: &Hop<'_>,
    span: SpanId,
    (start, started, endpoint): (SystemTime, Instant, SocketAddr),
    outcome: Result<u16, &ProxyError>,
) {
    let Some(trace) = &hop.req.trace else { return };
    trace.record(|| AttemptSpan {
        span_id: span,
        start,
        duration: started.elapsed(),
        upstream: hop.up.name.clone(),
        endpoint: Some(endpoint),
        call: hop.req.call.clone(),
        status: outcome.as_ref().ok().copied(),
        error: outcome.err().map(|e| hopline_core::error::cause_chain(e)),
    });
}
