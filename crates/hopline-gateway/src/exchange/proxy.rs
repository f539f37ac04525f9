//! Proxying one request to its route's upstream: limits, attempts, safe retries, and
//! streaming the response back, all bounded by the request's deadline.
//!
//! Every attempt runs under `min(upstream timeout, time left)` and every connect under
//! `min(connect_timeout, time left)`; the only way to call an upstream is through
//! [`proxy`], which takes a [`Deadline`], so no call can be unbounded.

use std::net::SocketAddr;
use std::pin::pin;
use tokio::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use hopline_core::config::UpstreamProtocol;
use hopline_core::{Phase, ProxyError, UpstreamErrorKind};

use hopline_h1::head::{strip_hop_by_hop, Headers, ResponseFraming};
use hopline_h1::write::{end_head, put_decimal};
use hopline_h1::{BodyDecoder, BodyError, BodyLength, Decoded, HeadError, ResponseHead};
use tokio::time::timeout_at;

use crate::body::RequestBody;
use crate::exchange::attempt::{
    attempts, slots, within, Answered, Failed, Forward, Hop, ProgressCell, Retry, Slots, Wire,
};
use crate::front::{BodySize, ResponseStart, Sink, COALESCE};
use crate::limits::{BufferGrant, BufferKind};
use crate::upstream::endpoint::{EndpointGuard, Reporter};
use crate::upstream::{millis_at_least_one, ClientConn, ExchangeError, Upstream};
use hopline_core::trace::SpanId;

/// Sends the hop's request with `body` to its upstream and streams the answer into `sink`.
pub(crate) async fn proxy<S: Sink>(
    hop: &Hop<'_>,
    body: &mut RequestBody<'_>,
    sink: &mut S,
) -> Result<(), ProxyError> {
    if hop.up.config.protocol == UpstreamProtocol::H2 {
        return crate::exchange::proxy_h2::proxy_h2(hop, body, sink).await;
    }
    let opened = open(hop, body).await?;
    let endpoint = opened.reporter();
    let done = stream_response(hop, opened, sink).await;
    if let Err(e) = &done {
        endpoint.failed(e);
    }
    done
}

/// An upstream exchange whose response head has arrived; holds its limit slots until
/// the body is done.
#[derive(Debug)]
pub(crate) struct Opened {
    head: ResponseHead,
    conn: ClientConn,
    until: Instant,
    by_deadline: bool,
    reusable: bool,
    _slots: Slots,
    endpoint: EndpointGuard,
}

impl Opened {
    /// Reports outcomes on the endpoint this exchange went to (a failure reading the
    /// body counts against it too).
    pub(crate) fn reporter(&self) -> Reporter {
        self.endpoint.reporter()
    }
}

/// Takes the limit slots, then attempts the exchange (the attempt layer retries where
/// safe) until a response head arrives, within the hop's deadline.
pub(crate) async fn open(hop: &Hop<'_>, body: &mut RequestBody<'_>) -> Result<Opened, ProxyError> {
    let slots = slots(hop).await?;
    let (x, endpoint) = attempts(hop, &H1, body).await?;
    hop.progress
        .update(|p| p.upstream_status = Some(x.head.status));
    Ok(Opened {
        head: x.head,
        conn: x.conn,
        until: x.until,
        by_deadline: x.by_deadline,
        reusable: x.reusable,
        _slots: slots,
        endpoint,
    })
}

/// HTTP/1.1 upstreams: pooled keep-alive connections, one exchange at a time on each.
struct H1;

impl Wire for H1 {
    type Conn = ClientConn;
    type Answer = Exchanged;

    async fn connect(
        &self,
        hop: &Hop<'_>,
        guard: &EndpointGuard,
        fresh: bool,
        now: Instant,
    ) -> Result<(ClientConn, Instant), ProxyError> {
        if !fresh {
            if let Some(c) = hop.up.checkout(guard.ep(), now) {
                return Ok((c, now));
            }
        }
        let ep = guard.ep();
        ep.connecting.set_limit(hop.up.config.max_connecting);
        let _connecting = match ep.connecting.take_now(now) {
            Some(slot) => slot,
            // Boxed: only a request that must wait carries the wait's state.
            None => match Box::pin(connect_or_reuse(hop, ep, fresh, now)).await? {
                Gate::Reused(c) => return Ok((c, Instant::now())),
                Gate::Connect(slot) => slot,
            },
        };
        let c = hop.connect(ep).await?;
        ep.note_progress();
        Ok((c, Instant::now()))
    }

    async fn exchange(
        &self,
        hop: &Hop<'_>,
        conn: ClientConn,
        body: &mut RequestBody<'_>,
        (span, started): (SpanId, Instant),
    ) -> Result<Exchanged, Failed> {
        exchange(hop, conn, body, (span, started)).await
    }
}

/// What a request that found `max_connecting` connects in progress got first.
enum Gate {
    /// A connection another request returned to the pool.
    Reused(ClientConn),
    /// A connect slot of its own.
    Connect(crate::limits::InFlightGuard),
}

/// Waits for a pooled connection to come back (unless `fresh` is asked for) or a connect
/// slot to free, within the time left: a burst reuses the connections its first requests
/// opened instead of flooding the endpoint's listen queue. The wait ends sooner when
/// `connect_timeout` passes with no connect to the endpoint finishing and no connection
/// coming back to it (for anyone): then its connects are hanging, not merely busy.
async fn connect_or_reuse(
    hop: &Hop<'_>,
    ep: &std::sync::Arc<crate::upstream::endpoint::Endpoint>,
    fresh: bool,
    now: Instant,
) -> Result<Gate, ProxyError> {
    use std::sync::atomic::Ordering;
    let quiet = hop.up.config.connect_timeout;
    let deadline = hop.deadline.at();
    let mut until = (now + quiet).min(deadline);
    struct Awaiting<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Awaiting<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    ep.awaiting_return.fetch_add(1, Ordering::AcqRel);
    let _awaiting = Awaiting(&ep.awaiting_return);
    let mut seen = ep.progress.load(Ordering::Relaxed);
    loop {
        let returned = ep.returned.notified();
        let mut returned = std::pin::pin!(returned);
        returned.as_mut().enable();
        if !fresh {
            if let Some(c) = hop.up.checkout(ep, Instant::now()) {
                return Ok(Gate::Reused(c));
            }
        }
        tokio::select! {
            slot = ep.connecting.acquire_until(now, until) => match slot {
                Ok(slot) => return Ok(Gate::Connect(slot)),
                Err(_) => {
                    let progress = ep.progress.load(Ordering::Relaxed);
                    let at = Instant::now();
                    if fresh || progress == seen || at >= deadline {
                        return Err(ProxyError::Overflow(hopline_core::Overflow::Connecting {
                            upstream: hop.up.name.clone(),
                            endpoint: ep.addr,
                            limit: ep.connecting.limit(),
                            waited: at.saturating_duration_since(now),
                            stalled: at < deadline,
                        }));
                    }
                    // Connects finished or connections came back, for others: the
                    // endpoint is busy, not stuck.
                    seen = progress;
                    until = (at + quiet).min(deadline);
                }
            },
            () = &mut returned, if !fresh => {}
        }
    }
}

impl Answered for Exchanged {
    fn status(&self) -> u16 {
        self.head.status
    }
}

/// Reads a whole response body (at most `max` bytes) within the attempt's limit, drawing
/// what it holds from `server.max_buffered_bytes` (503 `OM` when the budget is full).
pub(crate) async fn collect(
    hop: &Hop<'_>,
    mut opened: Opened,
    max: usize,
) -> Result<(u16, Bytes, BufferGrant), ProxyError> {
    let mut grant = hop.gw.buffers.grant();
    let (up, req, progress) = (hop.up, hop.req, hop.progress);
    let started = Instant::now();
    let addr = opened.conn.addr;
    let length = opened.head.body_length(req.is_head).map_err(|p| {
        up.error(
            addr,
            started,
            UpstreamErrorKind::Protocol {
                phase: Phase::ResponseHeaders,
                source: Box::new(p),
            },
        )
    })?;
    progress.update(|p| p.phase = Some(Phase::ResponseBody));
    let mut decoder = BodyDecoder::new(length);
    let mut body = BytesMut::new();
    loop {
        match timeout_at(opened.until, opened.conn.read_body(&mut decoder)).await {
            Err(_) => {
                return Err(up.error(
                    addr,
                    started,
                    hop.timeout(opened.by_deadline, Phase::ResponseBody),
                ))
            }
            Ok(Err(e)) => return Err(body_error(up, addr, started, e)),
            Ok(Ok(Some(piece))) => {
                if body.len() + piece.len() > max {
                    let source = format!("response body larger than {max} bytes").into();
                    return Err(up.error(
                        addr,
                        started,
                        UpstreamErrorKind::Protocol {
                            phase: Phase::ResponseBody,
                            source,
                        },
                    ));
                }
                if !grant.grow(piece.len()) {
                    hop.gw.metrics.count_buffer_refused(BufferKind::Aggregate);
                    return Err(ProxyError::BufferBudget {
                        kind: BufferKind::Aggregate.as_str(),
                        limit: hop.gw.buffers.limit(),
                    });
                }
                body.extend_from_slice(&piece);
            }
            Ok(Ok(None)) => break,
        }
    }
    if opened.reusable && opened.head.keep_alive() && length != BodyLength::UntilClose {
        up.checkin(opened.conn);
    }
    Ok((opened.head.status, body.freeze(), grant))
}

/// A response head, with the connection it came on and the attempt's limit.
struct Exchanged {
    head: ResponseHead,
    conn: ClientConn,
    until: Instant,
    by_deadline: bool,
    reusable: bool,
}

/// Sends the request and reads the response head, under `min(timeout, time left)`;
/// the attempt starts at `started`.
async fn exchange(
    hop: &Hop<'_>,
    mut conn: ClientConn,
    body: &mut RequestBody<'_>,
    (span, started): (SpanId, Instant),
) -> Result<Exchanged, Failed> {
    let (up, req, progress) = (hop.up, hop.req, hop.progress);
    let (mut until, by_deadline) = hop.deadline.bound(started, up.config.timeout);
    let timeout_kind = |phase| hop.timeout(by_deadline, phase);
    let addr = conn.addr;
    let reused = conn.reused;
    progress.update(|p| {
        p.upstream_reused = Some(reused);
        p.upstream_idle = conn.idle;
    });
    let fail = |kind, stale: bool| Failed {
        error: up.error(addr, started, kind),
        retry: if stale { Retry::Stale } else { Retry::No },
    };

    progress.update(|p| p.phase = Some(Phase::Request));
    // The per-attempt fields below (the remaining timeout, ~40 bytes; traceparent, ~70)
    // fit without growing `wire`, which cost a reallocation and a copy per request.
    // A small body in memory goes in the head's write; a larger one is written after it
    // as it is (never copied into the head's buffer).
    let whole = body.in_memory().filter(|b| b.len() <= COALESCE).cloned();
    let inline = whole.as_ref().map_or(0, Bytes::len);
    let mut wire = BytesMut::with_capacity(req.head.len() + inline + 256);
    wire.extend_from_slice(&req.head);
    wire.put_slice(b"x-envoy-expected-rq-timeout-ms: ");
    put_decimal(
        &mut wire,
        millis_at_least_one(
            until
                .saturating_duration_since(started)
                .saturating_sub(req.margin),
        ),
    );
    wire.put_slice(b"\r\n");
    if let Some(trace) = &req.trace {
        trace.put_attempt_headers(&mut wire, span);
    }
    end_head(&mut wire, false);
    if let Some(bytes) = &whole {
        wire.extend_from_slice(bytes);
    }
    let clock = body.clock();
    // A body in memory went with the head; a streamed one follows it as it arrives.
    let streamed = (whole.is_none()).then_some((body, req.chunked));
    let mut sent = false;
    // Once the request is out, the attempt is waiting on the upstream's answer: a client
    // leaving now left while the upstream had its request.
    let answering = || progress.update(|p| p.phase = Some(Phase::ResponseHeaders));
    let result = {
        let exchanged = pin!(conn.exchange_head(
            (&wire, up.config.max_response_header_bytes),
            streamed,
            &mut sent,
            answering,
        ));
        within(hop, &mut until, clock, exchanged).await
    };
    let phase = if sent {
        Phase::ResponseHeaders
    } else {
        Phase::Request
    };
    let stale = reused && conn.nothing_received();
    match result {
        None => Err(fail(timeout_kind(phase), false)),
        Some(Err(ExchangeError::Client(error))) => Err(Failed {
            error,
            retry: Retry::No,
        }),
        Some(Ok(head)) => Ok(Exchanged {
            head,
            conn,
            until,
            by_deadline,
            // The upstream answered before taking the whole request: the rest of it would
            // be read as the next request, so the connection is not reused.
            reusable: sent,
        }),
        Some(Err(ExchangeError::Send(e))) => {
            Err(fail(io_kind(up, &hop.gw.metrics, phase, e), stale))
        }
        Some(Err(ExchangeError::Read(e))) => {
            let kind = match e {
                HeadError::Closed | HeadError::Incomplete | HeadError::Idle => {
                    UpstreamErrorKind::Closed { phase }
                }
                HeadError::Io(e) => io_kind(up, &hop.gw.metrics, phase, e),
                HeadError::Parse(p) => UpstreamErrorKind::Protocol {
                    phase: Phase::ResponseHeaders,
                    source: Box::new(p),
                },
                HeadError::Timeout(_) => timeout_kind(phase),
            };
            Err(fail(kind, stale))
        }
    }
}

/// An I/O error on an upstream connection: a TLS alert (say, the upstream refusing our
/// client certificate, which TLS 1.3 reports on the first read) is a TLS failure of
/// phase `TLS handshake`, counted like one; anything else by its kind.
fn io_kind(
    up: &Upstream,
    metrics: &crate::observe::metrics::Metrics,
    phase: Phase,
    e: std::io::Error,
) -> UpstreamErrorKind {
    match hopline_tls::client::tls_failure(e) {
        Ok(f) => {
            metrics.upstream_tls_failed(&up.name, up.zone().as_str(), f.reason());
            UpstreamErrorKind::Tls(Box::new(f))
        }
        Err(e) => UpstreamErrorKind::from_io(phase, e),
    }
}

/// Streams the response whose head arrived into `sink`: the head with whatever body is
/// already buffered in one write, then the body as it comes, each read bounded by the
/// attempt's limit. A body that fails before anything went out becomes a 502; after,
/// the response is cut short (the failure policy closes the connection).
async fn stream_response<S: Sink>(
    hop: &Hop<'_>,
    opened: Opened,
    sink: &mut S,
) -> Result<(), ProxyError> {
    let (up, req, progress) = (hop.up, hop.req, hop.progress);
    let Opened {
        head,
        mut conn,
        until,
        by_deadline,
        reusable,
        ..
    } = opened;
    let started = Instant::now();
    let addr = conn.addr;
    if head.status == 101 {
        return switching(up, head, conn, req, progress, sink).await;
    }
    let upstream_keep_alive = head.keep_alive();
    let length = start_response(head, req.is_head, sink).map_err(|source| {
        let kind = UpstreamErrorKind::Protocol {
            phase: Phase::ResponseHeaders,
            source,
        };
        up.error(addr, started, kind)
    })?;
    progress.update(|p| p.phase = Some(Phase::ResponseBody));

    let mut decoder = BodyDecoder::new(length);
    let mut done = false;
    // Coalesce the body the upstream has already sent with the head: one write for
    // responses up to COALESCE bytes that arrived together, even when they are larger than
    // one read (a 10 KiB body took a second read and a second write to the client).
    while sink.buffered() < COALESCE {
        match conn.buffered_body(&mut decoder) {
            Ok(Decoded::Data(d)) => {
                progress.update(|p| p.bytes_sent += d.len() as u64);
                sink.data(&d);
            }
            Ok(Decoded::NeedMore) => {
                if !conn.read_ready().await {
                    break;
                }
            }
            Ok(Decoded::End) => {
                done = true;
                sink.finish();
                break;
            }
            // Nothing has gone to the client yet: it gets a 502 instead of a cut response.
            Err(e) => {
                progress.update(|p| p.bytes_sent = 0);
                sink.discard();
                return Err(body_error(up, addr, started, e));
            }
        }
    }
    progress.update(|p| p.response_started = true);
    sink.flush().await?;

    while !done {
        match timeout_at(until, conn.read_body(&mut decoder)).await {
            Err(_) => {
                let kind = hop.timeout(by_deadline, Phase::ResponseBody);
                return Err(up.error(addr, started, kind));
            }
            Ok(Err(e)) => return Err(body_error(up, addr, started, e)),
            Ok(Ok(Some(d))) => {
                progress.update(|p| p.bytes_sent += d.len() as u64);
                sink.data(&d);
            }
            Ok(Ok(None)) => {
                done = true;
                sink.finish();
            }
        }
        sink.flush().await?;
    }
    if reusable && upstream_keep_alive && length != BodyLength::UntilClose {
        up.checkin(conn);
    }
    Ok(())
}

/// The upstream switched protocols: for a WebSocket upgrade, the 101 (with its
/// `upgrade` and `connection: upgrade`) goes to the client and the connection to the
/// tunnel; a 101 to anything else is a protocol error (nothing is tunnelled).
async fn switching<S: Sink>(
    up: &Upstream,
    head: ResponseHead,
    conn: ClientConn,
    req: &Forward,
    progress: &ProgressCell,
    sink: &mut S,
) -> Result<(), ProxyError> {
    let started = Instant::now();
    let websocket = head.headers.has_token("upgrade", "websocket");
    if !req.upgrade || !websocket {
        let source = "101 Switching Protocols to a request that did not ask for a WebSocket";
        let kind = UpstreamErrorKind::Protocol {
            phase: Phase::ResponseHeaders,
            source: source.into(),
        };
        return Err(up.error(conn.addr, started, kind));
    }
    let ResponseHead {
        status,
        reason,
        mut headers,
        ..
    } = head;
    strip_hop_by_hop(&mut headers);
    headers.push("connection", "upgrade");
    headers.push("upgrade", "websocket");
    let start = ResponseStart {
        status,
        reason,
        headers,
        body: BodySize::Empty { declared: None },
    };
    sink.start(start)
        .map_err(|e| ProxyError::NotImplemented { what: e.0 })?;
    progress.update(|p| p.response_started = true);
    sink.flush().await?;
    progress.update(|p| p.upgraded = Some(conn));
    Ok(())
}

/// Hands the upstream's response head to the sink, hop-by-hop fields removed; the body's
/// framing, or why the response cannot be passed on (bad framing, or a response this
/// client cannot receive).
fn start_response<S: Sink>(
    head: ResponseHead,
    is_head: bool,
    sink: &mut S,
) -> Result<BodyLength, Box<dyn std::error::Error + Send + Sync>> {
    let framing = head.framing(is_head)?;
    let ResponseHead {
        status,
        reason,
        mut headers,
        ..
    } = head;
    let body = response_size(&headers, &framing);
    strip_hop_by_hop(&mut headers);
    let start = ResponseStart {
        status,
        reason,
        headers,
        body,
    };
    sink.start(start)?;
    Ok(framing.length)
}

/// How the client's response body is delimited, from the upstream's framing. Transfer
/// codings besides chunked (`gzip, chunked`, or a final `gzip`) are passed on as received.
fn response_size(headers: &Headers, framing: &ResponseFraming) -> BodySize {
    match framing.length {
        // A HEAD's or 304's validated length, written as digits (`5, 5` is one value, 5).
        BodyLength::Empty => BodySize::Empty {
            declared: framing
                .declared
                .map(|n| Bytes::from(n.to_string().into_bytes())),
        },
        _ if framing.other_codings => {
            let values: Vec<&[u8]> = headers.get_all("transfer-encoding").collect();
            BodySize::Coded {
                codings: Bytes::from(values.join(&b", "[..])),
                chunked: framing.length == BodyLength::Chunked,
            }
        }
        BodyLength::Length(n) => BodySize::Known(n),
        BodyLength::Chunked | BodyLength::UntilClose => BodySize::Unknown,
    }
}

fn body_error(up: &Upstream, addr: SocketAddr, started: Instant, e: BodyError) -> ProxyError {
    let kind = match e {
        BodyError::Incomplete => UpstreamErrorKind::Closed {
            phase: Phase::ResponseBody,
        },
        BodyError::Io(e) => UpstreamErrorKind::from_io(Phase::ResponseBody, e),
        other => UpstreamErrorKind::Protocol {
            phase: Phase::ResponseBody,
            source: Box::new(other),
        },
    };
    up.error(addr, started, kind)
}
