//! Proxying one request to its route's upstream: limits, attempts, safe retries, and
//! streaming the response back, all bounded by the request's deadline.
//!
//! Every attempt runs under `min(upstream timeout, time left)` and every connect under
//! `min(connect_timeout, time left)`; the only way to call an upstream is through
//! [`proxy`], which takes a [`Deadline`], so no call can be unbounded.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hopline_core::config::Zone;
use hopline_core::{
    Deadline, DeadlineSource, Overflow, Phase, ProxyError, TimeoutSource, UpstreamErrorKind,
};
use hopline_h1::body::{encode_chunk, LAST_CHUNK};
use hopline_h1::head::{
    put_content_length, put_decimal, put_header, put_status_line, strip_hop_by_hop,
};
use hopline_h1::{BodyDecoder, BodyError, BodyLength, Decoded, HeadError, ResponseHead};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::timeout_at;

use crate::gateway::Gateway;
use crate::limits::InFlightGuard;
use crate::upstream::{millis_at_least_one, ClientConn, ExchangeError, Upstream};

/// The request as it will be sent upstream, rendered once for all attempts.
#[derive(Debug)]
pub struct Forward {
    /// Request line and headers, without the deadline header and the final CRLF.
    pub head: BytesMut,
    /// The buffered body.
    pub body: Bytes,
    /// Safe to send twice (RFC 9110 idempotent method).
    pub idempotent: bool,
    /// `HEAD` (the response has no body whatever its headers say).
    pub is_head: bool,
    /// The client speaks HTTP/1.1 (can take chunked responses).
    pub client_http11: bool,
    /// The client wants keep-alive (and we are not draining).
    pub client_keep_alive: bool,
    /// `deadline.margin`: kept back when telling the upstream how long it has.
    pub margin: Duration,
}

/// What the request is doing now; read after the request future ends or is dropped, so a
/// cancelled request can still say what it was waiting on.
#[derive(Debug, Default)]
pub struct Progress {
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
    /// Response head written to the client.
    pub response_started: bool,
    /// Body bytes sent to the client.
    pub bytes_sent: u64,
}

/// [`Progress`] shared between a request's future and the connection that may drop it.
#[derive(Debug, Default)]
pub struct ProgressCell(Mutex<Progress>);

impl ProgressCell {
    /// Updates the progress (never held across an await).
    pub fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Reads the progress so far.
    pub fn read<T>(&self, f: impl FnOnce(&Progress) -> T) -> T {
        f(&self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The final progress.
    pub fn into_inner(self) -> Progress {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a proxied request ended.
#[derive(Debug)]
pub struct Outcome {
    /// The failure, if any. When `Progress::response_started` is false the caller answers
    /// with the error response; otherwise the response was cut short.
    pub error: Option<ProxyError>,
    /// The connection to the client must be closed afterwards.
    pub close: bool,
}

impl Outcome {
    /// A failure before any response byte went out (the caller answers it).
    pub fn fail(e: ProxyError) -> Outcome {
        Outcome {
            error: Some(e),
            close: false,
        }
    }
}

/// Sends `req` to upstream `up` and streams the answer to `client`.
pub async fn proxy<W: AsyncWrite + Unpin>(
    gw: &Gateway,
    up_index: usize,
    req: &Forward,
    deadline: Deadline,
    progress: &ProgressCell,
    client: &mut W,
) -> Outcome {
    match open(gw, up_index, req, &deadline, progress).await {
        Ok(opened) => {
            stream_response(
                gw,
                &gw.upstreams[up_index],
                opened,
                req,
                &deadline,
                progress,
                client,
            )
            .await
        }
        Err(e) => Outcome::fail(e),
    }
}

/// An upstream exchange whose response head has arrived; holds its limit slots until
/// the body is done.
#[derive(Debug)]
pub struct Opened {
    head: ResponseHead,
    conn: ClientConn,
    until: Instant,
    by_deadline: bool,
    reusable: bool,
    _slot: InFlightGuard,
    _egress_slot: Option<InFlightGuard>,
}

/// Takes the limit slots, then attempts the exchange (retrying only where safe) until a
/// response head arrives, within `deadline`.
pub async fn open(
    gw: &Gateway,
    up_index: usize,
    req: &Forward,
    deadline: &Deadline,
    progress: &ProgressCell,
) -> Result<Opened, ProxyError> {
    let up = &gw.upstreams[up_index];
    progress.update(|p| p.upstream = Some(up_index));
    up.budget.deposit();
    let slot = up.in_flight.try_acquire().ok_or_else(|| {
        ProxyError::Overflow(Overflow::UpstreamInFlight {
            upstream: up.name.clone(),
            limit: up.in_flight.limit(),
        })
    })?;
    let egress_slot = match (&gw.egress.in_flight, up.zone()) {
        (Some(limit), Zone::Egress) => Some(limit.try_acquire().ok_or(ProxyError::Overflow(
            Overflow::EgressInFlight {
                limit: limit.limit(),
            },
        ))?),
        _ => None,
    };

    let mut last_error: Option<ProxyError> = None;
    let mut retries = 0;
    let mut stale_retry_used = false;
    let mut fresh_only = false;
    loop {
        let now = Instant::now();
        if deadline.expired(now) {
            return Err(last_error.unwrap_or(ProxyError::DeadlineSpent {
                budget: deadline.budget(),
            }));
        }
        let ep = up.pick();
        progress.update(|p| {
            p.attempts += 1;
            p.endpoint = Some(up.addr(ep));
            p.phase = Some(Phase::Connect);
        });
        let pooled = if fresh_only {
            None
        } else {
            up.checkout(ep, now)
        };
        let (conn, now) = match pooled {
            Some(c) => (c, now),
            None => match up.connect(ep, deadline, &gw.egress, &gw.metrics).await {
                Ok(c) => (c, Instant::now()),
                Err(e) => {
                    let connect_failure =
                        matches!(&e, ProxyError::Upstream(u) if u.kind.before_request_sent());
                    if connect_failure && retries < up.config.max_retries && up.budget.try_spend() {
                        retries += 1;
                        last_error = Some(e);
                        continue;
                    }
                    return Err(e);
                }
            },
        };
        match exchange(&gw.metrics, up, conn, req, deadline, progress, now).await {
            Ok(x) => {
                progress.update(|p| p.upstream_status = Some(x.head.status));
                return Ok(Opened {
                    head: x.head,
                    conn: x.conn,
                    until: x.until,
                    by_deadline: x.by_deadline,
                    reusable: x.reusable,
                    _slot: slot,
                    _egress_slot: egress_slot,
                });
            }
            Err(Failed { error, stale }) => {
                // The stale keep-alive race: the upstream closed a pooled connection just as
                // we reused it, before any response byte. Safe to resend once, on a new
                // connection (the next pooled one may be just as stale), within the budget.
                if stale && req.idempotent && !stale_retry_used && up.budget.try_spend() {
                    stale_retry_used = true;
                    fresh_only = true;
                    last_error = Some(error);
                    continue;
                }
                return Err(error);
            }
        }
    }
}

/// Reads a whole response body (at most `max` bytes) within the attempt's limit.
pub async fn collect(
    up: &Upstream,
    mut opened: Opened,
    req: &Forward,
    deadline: &Deadline,
    progress: &ProgressCell,
    max: usize,
) -> Result<(u16, Bytes), ProxyError> {
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
        match timeout_at(opened.until.into(), opened.conn.read_body(&mut decoder)).await {
            Err(_) => {
                return Err(up.error(
                    addr,
                    started,
                    attempt_timeout(up, deadline, opened.by_deadline, Phase::ResponseBody),
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
                body.extend_from_slice(&piece);
            }
            Ok(Ok(None)) => break,
        }
    }
    if opened.reusable && opened.head.keep_alive() && length != BodyLength::UntilClose {
        up.checkin(opened.conn);
    }
    Ok((opened.head.status, body.freeze()))
}

/// The timeout error of an attempt: by the deadline, or by the upstream's own timeout.
fn attempt_timeout(
    up: &Upstream,
    deadline: &Deadline,
    by_deadline: bool,
    phase: Phase,
) -> UpstreamErrorKind {
    UpstreamErrorKind::Timeout {
        phase,
        limit: if by_deadline {
            deadline.budget()
        } else {
            up.config.timeout
        },
        source_limit: if !by_deadline {
            TimeoutSource::AttemptTimeout
        } else if deadline.source() == DeadlineSource::Call {
            TimeoutSource::CallTimeout
        } else {
            TimeoutSource::Deadline
        },
    }
}

struct Failed {
    error: ProxyError,
    stale: bool,
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
    gw_metrics: &crate::metrics::Metrics,
    up: &Upstream,
    mut conn: ClientConn,
    req: &Forward,
    deadline: &Deadline,
    progress: &ProgressCell,
    started: Instant,
) -> Result<Exchanged, Failed> {
    let (until, by_deadline) = deadline.bound(started, up.config.timeout);
    let timeout_kind = |phase| attempt_timeout(up, deadline, by_deadline, phase);
    let addr = conn.addr;
    let reused = conn.reused;
    let fail = |kind, stale| Failed {
        error: up.error(addr, started, kind),
        stale,
    };

    progress.update(|p| p.phase = Some(Phase::Request));
    let mut wire = BytesMut::with_capacity(req.head.len() + req.body.len() + 64);
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
    wire.put_slice(b"\r\n\r\n");
    wire.extend_from_slice(&req.body);
    let mut sent = false;
    let result = timeout_at(until.into(), conn.exchange_head(&wire, &mut sent)).await;
    let phase = if sent {
        Phase::ResponseHeaders
    } else {
        Phase::Request
    };
    let stale = reused && conn.nothing_received();
    match result {
        Err(_) => Err(fail(timeout_kind(phase), false)),
        Ok(Ok(head)) => Ok(Exchanged {
            head,
            conn,
            until,
            by_deadline,
            // The upstream answered before taking the whole request: the rest of it would
            // be read as the next request, so the connection is not reused.
            reusable: sent,
        }),
        Ok(Err(ExchangeError::Send(e))) => Err(fail(io_kind(up, gw_metrics, phase, e), stale)),
        Ok(Err(ExchangeError::Read(e))) => {
            let kind = match e {
                HeadError::Closed | HeadError::Incomplete | HeadError::Idle => {
                    UpstreamErrorKind::Closed { phase }
                }
                HeadError::Io(e) => io_kind(up, gw_metrics, phase, e),
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
    metrics: &crate::metrics::Metrics,
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

async fn stream_response<W: AsyncWrite + Unpin>(
    gw: &Gateway,
    up: &Upstream,
    opened: Opened,
    req: &Forward,
    deadline: &Deadline,
    progress: &ProgressCell,
    client: &mut W,
) -> Outcome {
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
    let protocol_error = |source: Box<dyn std::error::Error + Send + Sync>| {
        up.error(
            addr,
            started,
            UpstreamErrorKind::Protocol {
                phase: Phase::ResponseHeaders,
                source,
            },
        )
    };
    let framing = match head.framing(req.is_head) {
        Ok(f) => f,
        Err(p) => return Outcome::fail(protocol_error(Box::new(p))),
    };
    let length = framing.length;
    // Transfer codings besides chunked (`gzip, chunked`, or a final `gzip`) are passed on
    // as received: re-chunked when chunked is last, else close-delimited and raw. Only an
    // HTTP/1.1 client can take them.
    let codings = length != BodyLength::Empty && framing.other_codings;
    if codings && !req.client_http11 {
        let source = "transfer-coding that an HTTP/1.0 client cannot receive".into();
        return Outcome::fail(protocol_error(source));
    }
    let raw_until_close = codings && length == BodyLength::UntilClose;
    progress.update(|p| p.phase = Some(Phase::ResponseBody));
    let delimited_by_us = matches!(length, BodyLength::Chunked | BodyLength::UntilClose);
    let chunked = delimited_by_us && req.client_http11 && !raw_until_close;
    let close_delimited = delimited_by_us && !chunked;
    let mut close = !req.client_keep_alive || close_delimited || gw.draining();

    let mut out = BytesMut::with_capacity(1024);
    put_status_line(&mut out, head.status, &head.reason);
    // Read what is needed from the upstream's head, then rewrite its fields in place (no copy).
    let upstream_keep_alive = head.keep_alive();
    let mut headers = head.headers;
    let head_length = if req.is_head {
        headers.get("content-length").map(Bytes::copy_from_slice)
    } else {
        None
    };
    let te = codings.then(|| {
        let values: Vec<&[u8]> = headers.get_all("transfer-encoding").collect();
        values.join(&b", "[..])
    });
    strip_hop_by_hop(&mut headers);
    headers.write_to(&mut out);
    match length {
        _ if te.is_some() => put_header(
            &mut out,
            b"transfer-encoding",
            te.as_deref().unwrap_or_default(),
        ),
        _ if chunked => put_header(&mut out, b"transfer-encoding", b"chunked"),
        BodyLength::Length(n) => {
            put_content_length(&mut out, n);
        }
        BodyLength::Empty => {
            if let Some(v) = head_length {
                put_header(&mut out, b"content-length", &v);
            } else if head.status >= 200 && head.status != 204 && head.status != 304 {
                put_header(&mut out, b"content-length", b"0");
            }
        }
        BodyLength::Chunked | BodyLength::UntilClose => {}
    }
    if close {
        put_header(&mut out, b"connection", b"close");
    }
    out.put_slice(b"\r\n");

    let mut decoder = BodyDecoder::new(length);
    let mut done = false;
    let mut error: Option<ProxyError> = None;
    // Coalesce whatever body is already buffered with the head: one write for small responses.
    loop {
        match conn.buffered_body(&mut decoder) {
            Ok(Decoded::Data(d)) => {
                progress.update(|p| p.bytes_sent += d.len() as u64);
                put_body(&mut out, &d, chunked);
                if out.len() >= 64 * 1024 {
                    break;
                }
            }
            Ok(Decoded::NeedMore) => break,
            Ok(Decoded::End) => {
                done = true;
                break;
            }
            // Nothing has gone to the client yet: it gets a 502 instead of a cut response.
            Err(e) => {
                progress.update(|p| p.bytes_sent = 0);
                return Outcome::fail(body_error(up, addr, started, e));
            }
        }
    }
    if done && chunked {
        out.put_slice(LAST_CHUNK);
    }
    progress.update(|p| p.response_started = true);
    if let Err(e) = write_client(gw, client, &out, deadline).await {
        return Outcome {
            error: Some(e),
            close: true,
        };
    }

    while !done && error.is_none() {
        match timeout_at(until.into(), conn.read_body(&mut decoder)).await {
            Err(_) => {
                error = Some(up.error(
                    addr,
                    started,
                    attempt_timeout(up, deadline, by_deadline, Phase::ResponseBody),
                ))
            }
            Ok(Err(e)) => error = Some(body_error(up, addr, started, e)),
            Ok(Ok(piece)) => {
                out.clear();
                match piece {
                    Some(d) => {
                        progress.update(|p| p.bytes_sent += d.len() as u64);
                        put_body(&mut out, &d, chunked);
                    }
                    None => {
                        done = true;
                        if chunked {
                            out.put_slice(LAST_CHUNK);
                        }
                    }
                }
                if !out.is_empty() {
                    if let Err(e) = write_client(gw, client, &out, deadline).await {
                        return Outcome {
                            error: Some(e),
                            close: true,
                        };
                    }
                }
            }
        }
    }
    if error.is_some() {
        // The response is cut short: closing is the only honest signal left to the client.
        close = true;
    } else if reusable && upstream_keep_alive && length != BodyLength::UntilClose {
        up.checkin(conn);
    }
    Outcome { error, close }
}

fn put_body(out: &mut BytesMut, data: &[u8], chunked: bool) {
    if chunked {
        encode_chunk(out, data);
    } else {
        out.extend_from_slice(data);
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

/// Writes to the client within `write_timeout`: a client that does not read for that long
/// is [`ProxyError::ClientWriteTimeout`] (`WT`), a write error means it is gone (`DC`).
pub async fn write_client<W: AsyncWrite + Unpin>(
    gw: &Gateway,
    client: &mut W,
    bytes: &[u8],
    deadline: &Deadline,
) -> Result<(), ProxyError> {
    let limit = gw.config.server.write_timeout;
    let mut write = pin!(client.write_all(bytes));
    // Most writes fit the socket buffer at once: no timer for those.
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    let res = match first {
        Poll::Ready(r) => r,
        Poll::Pending => match tokio::time::timeout(limit, write).await {
            Ok(r) => r,
            Err(_) => return Err(ProxyError::ClientWriteTimeout { limit }),
        },
    };
    res.map_err(|source| ProxyError::ClientGone {
        elapsed: deadline.start().elapsed(),
        waiting_on: None,
        source,
    })
}
