//! Proxying to an HTTP/2 upstream (`protocol = "h2"`): the same limits, deadline and
//! retry rules as HTTP/1 (`proxy.rs`), on streams multiplexed over one connection per
//! endpoint. A gRPC request carries its deadline as `grpc-timeout`; trailers (gRPC's
//! `grpc-status`) are passed to the client. Dropping the request's future (client gone)
//! drops the stream, which h2 resets with CANCEL: the upstream sees the cancellation.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use hopline_core::{Phase, ProxyError, UpstreamErrorKind};

use hopline_h1::head::{is_hop_by_hop, parse_request, Headers};
use hopline_h1::write::put_decimal;
use hopline_h1::HeadLimits;
use tokio::time::timeout_at;

use crate::body::RequestBody;
use crate::exchange::attempt::Forward;
use crate::exchange::attempt::{attempts, slots, within, Answered, Failed, Hop, Retry, Wire};
use crate::front::{BodySize, ResponseStart, Sink};
use crate::upstream::endpoint::EndpointGuard;
use crate::upstream::endpoint::H2Stream;
use crate::upstream::millis_at_least_one;
use hopline_core::trace::SpanId;

/// Sends the hop's request with `body` to its HTTP/2 upstream and streams the answer into
/// `sink`.
pub(crate) async fn proxy_h2<S: Sink>(
    hop: &Hop<'_>,
    body: &mut RequestBody<'_>,
    sink: &mut S,
) -> Result<(), ProxyError> {
    let _slots = slots(hop).await?;
    let (x, guard) = attempts(hop, &H2, body).await?;
    let done = stream_response(hop, x, sink).await;
    if let Err(e) = &done {
        guard.reporter().failed(e);
    }
    done
}

/// HTTP/2 upstreams: streams multiplexed over one connection per endpoint (more when
/// the upstream's stream limit is reached).
struct H2;

impl Wire for H2 {
    /// A stream's place on a connection, and the endpoint.
    type Conn = (H2Stream, SocketAddr);
    type Answer = Exchanged;

    async fn connect(
        &self,
        hop: &Hop<'_>,
        guard: &EndpointGuard,
        _fresh: bool,
        _now: Instant,
    ) -> Result<((H2Stream, SocketAddr), Instant), ProxyError> {
        let stream = hop.h2_stream(guard.ep()).await?;
        Ok(((stream, guard.ep().addr), Instant::now()))
    }

    async fn exchange(
        &self,
        hop: &Hop<'_>,
        (stream, addr): (H2Stream, SocketAddr),
        body: &mut RequestBody<'_>,
        (span, started): (SpanId, Instant),
    ) -> Result<Exchanged, Failed> {
        exchange(hop, (stream, addr), body, (span, started)).await
    }
}

/// A response head from an HTTP/2 upstream, with its body stream, the attempt's limit,
/// and the stream's place on its connection (held until the response is done).
struct Exchanged {
    head: http::response::Parts,
    body: RecvStream,
    addr: SocketAddr,
    started: Instant,
    until: Instant,
    by_deadline: bool,
    _stream: H2Stream,
}

impl Answered for Exchanged {
    fn status(&self) -> u16 {
        self.head.status.as_u16()
    }
}

/// Opens a stream, sends the request (a streamed body as the stream's window lets it
/// through, while already waiting for the answer) and waits for the response head, under
/// `min(timeout, time left)`.
async fn exchange(
    hop: &Hop<'_>,
    (slot, addr): (H2Stream, SocketAddr),
    body: &mut RequestBody<'_>,
    (span, started): (SpanId, Instant),
) -> Result<Exchanged, Failed> {
    let (up, req, progress) = (hop.up, hop.req, hop.progress);
    let send = slot.send.clone();
    let (mut until, by_deadline) = hop.deadline.bound(started, up.config.timeout);
    let fail = |kind, refused: bool| Failed {
        error: up.error(addr, started, kind),
        retry: if refused { Retry::Refused } else { Retry::No },
    };
    let left = until
        .saturating_duration_since(started)
        .saturating_sub(req.margin);
    let request =
        h2_request(req, span, up.tls_enabled(), millis_at_least_one(left)).map_err(|source| {
            fail(
                UpstreamErrorKind::Protocol {
                    phase: Phase::Request,
                    source,
                },
                false,
            )
        })?;
    progress.update(|p| p.phase = Some(Phase::Request));
    let clock = body.clock();
    let empty = body.is_empty();
    let whole = body.in_memory().cloned();
    let opening = std::pin::pin!(async {
        let mut send = send.ready().await?;
        let (response, mut stream) = send.send_request(request, empty)?;
        if let Some(bytes) = whole.filter(|b| !b.is_empty()) {
            stream.send_data(bytes, true)?;
        }
        Ok::<_, h2::Error>((response, stream))
    });
    let opened = within(hop, &mut until, clock, opening).await;
    let (mut response, mut stream) = match opened {
        None => return Err(fail(hop.timeout(by_deadline, Phase::Request), false)),
        Some(Err(e)) => return Err(fail(kind(Phase::Request, &e), refused(&e))),
        Some(Ok(r)) => r,
    };
    // A body in memory is already queued; a streamed one goes as the window opens, while
    // the answer may already come (an upstream can refuse an upload before its end).
    let mut uploaded = empty || body.in_memory().is_some();
    if uploaded {
        progress.update(|p| p.phase = Some(Phase::ResponseHeaders));
    }
    let answered = {
        let answering = std::pin::pin!(async {
            let mut upload = std::pin::pin!(send_body(&mut stream, body));
            loop {
                tokio::select! {
                    biased;
                    r = &mut response => return Ok(r),
                    u = &mut upload, if !uploaded => match u {
                        Ok(()) => {
                            uploaded = true;
                            progress.update(|p| p.phase = Some(Phase::ResponseHeaders));
                        }
                        Err(BodyUpload::Client(e)) => return Err(e),
                        // The stream failed under the upload: the response future says how.
                        Err(BodyUpload::Upstream) => uploaded = true,
                    },
                }
            }
        });
        within(hop, &mut until, clock, answering).await
    };
    let phase = if uploaded {
        Phase::ResponseHeaders
    } else {
        Phase::Request
    };
    match answered {
        None => Err(fail(hop.timeout(by_deadline, phase), false)),
        Some(Err(error)) => Err(Failed {
            error,
            retry: Retry::No,
        }),
        Some(Ok(Err(e))) => Err(fail(kind(phase, &e), refused(&e))),
        Some(Ok(Ok(resp))) => {
            let (head, body) = resp.into_parts();
            Ok(Exchanged {
                head,
                body,
                addr,
                started,
                until,
                by_deadline,
                _stream: slot,
            })
        }
    }
}

/// Why a streamed upload to an HTTP/2 upstream stopped.
enum BodyUpload {
    /// The client's side failed: the request is answered with this.
    Client(ProxyError),
    /// The stream failed (reset, connection gone).
    Upstream,
}

/// Sends a streamed body on `stream`, each piece as the upstream's window takes it (h2
/// would otherwise queue whatever it is given), then the end of the stream.
async fn send_body(
    stream: &mut h2::SendStream<Bytes>,
    body: &mut RequestBody<'_>,
) -> Result<(), BodyUpload> {
    while let Some(mut piece) = body.next_piece().await.map_err(BodyUpload::Client)? {
        let n = piece.len();
        while !piece.is_empty() {
            stream.reserve_capacity(piece.len());
            match poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(0)) => {}
                Some(Ok(window)) => {
                    let part = piece.split_to(window.min(piece.len()));
                    stream
                        .send_data(part, false)
                        .map_err(|_| BodyUpload::Upstream)?;
                }
                Some(Err(_)) | None => return Err(BodyUpload::Upstream),
            }
        }
        body.release(n);
    }
    stream
        .send_data(Bytes::new(), true)
        .map_err(|_| BodyUpload::Upstream)
}

/// The upstream refused the stream without processing it. Only its own RST_STREAM says
/// so: h2 refuses a stream itself when a response's headers pass max_header_list_size,
/// and that request was processed.
fn refused(e: &h2::Error) -> bool {
    e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM)
}

/// An h2 failure during `phase`, by kind: I/O as I/O, the upstream's reset or GOAWAY as a
/// reset naming the HTTP/2 error code; one h2 raised on what the upstream sent (headers
/// over `max_response_header_bytes`, a malformed frame) and anything else a protocol error.
fn kind(phase: Phase, e: &h2::Error) -> UpstreamErrorKind {
    if e.is_io() {
        let source = io::Error::new(io::ErrorKind::ConnectionReset, e.to_string());
        return UpstreamErrorKind::from_io(phase, source);
    }
    if e.is_library() {
        // h2 refuses a header list over the limit (REFUSED_STREAM), or too many
        // CONTINUATION frames for it (PROTOCOL_ERROR).
        let what = match phase {
            Phase::ResponseHeaders => {
                format!("response headers over max_response_header_bytes or malformed ({e})")
            }
            _ => e.to_string(),
        };
        return UpstreamErrorKind::Protocol {
            phase,
            source: what.into(),
        };
    }
    if e.is_reset() || e.is_go_away() {
        let source = io::Error::new(io::ErrorKind::ConnectionReset, e.to_string());
        return UpstreamErrorKind::Reset { phase, source };
    }
    UpstreamErrorKind::Protocol {
        phase,
        source: e.to_string().into(),
    }
}

/// The HTTP/2 request for `req`, from the same rendered head every attempt sends
/// (`Host` becomes `:authority`; connection-specific fields go), with the time left as
/// `grpc-timeout` for gRPC and `x-envoy-expected-rq-timeout-ms` otherwise.
fn h2_request(
    req: &Forward,
    span: SpanId,
    tls: bool,
    left_ms: u64,
) -> Result<http::Request<()>, Box<dyn std::error::Error + Send + Sync>> {
    let mut raw = BytesMut::with_capacity(req.head.len() + 2);
    raw.extend_from_slice(&req.head);
    raw.extend_from_slice(b"\r\n\r\n");
    let limits = HeadLimits {
        max_head: usize::MAX,
        max_request_line: usize::MAX,
    };
    let head = parse_request(&mut raw, limits)?.ok_or("incomplete request head")?;
    let authority = head
        .headers
        .get("host")
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .unwrap_or_default();
    let scheme = if tls { "https" } else { "http" };
    let uri = format!("{scheme}://{authority}{}", head.origin_str());
    let mut b = http::Request::builder().method(head.method_str()).uri(uri);
    for (n, v) in head.headers.iter() {
        if n.eq_ignore_ascii_case(b"host") || is_hop_by_hop(n) {
            continue;
        }
        b = b.header(n, v);
    }
    let mut ms = BytesMut::new();
    if req.grpc {
        put_decimal(&mut ms, left_ms);
        ms.extend_from_slice(b"m");
        // gRPC servers require it (RFC 9113 allows `te` with this one value).
        b = b.header("te", "trailers").header("grpc-timeout", &ms[..]);
    } else {
        put_decimal(&mut ms, left_ms);
        b = b.header("x-envoy-expected-rq-timeout-ms", &ms[..]);
    }
    if let Some(trace) = &req.trace {
        let traceparent = trace.attempt_traceparent(span);
        b = b.header("traceparent", traceparent);
        if let Some(state) = &trace.state {
            b = b.header("tracestate", &state[..]);
        }
    }
    Ok(b.body(())?)
}

/// Streams the upstream's response into `sink`: head, DATA as it comes (each read bounded
/// by the attempt's limit), trailers; records the upstream's `grpc-status`.
async fn stream_response<S: Sink>(
    hop: &Hop<'_>,
    x: Exchanged,
    sink: &mut S,
) -> Result<(), ProxyError> {
    let (up, req, progress) = (hop.up, hop.req, hop.progress);
    let Exchanged {
        head,
        mut body,
        addr,
        started,
        until,
        by_deadline,
        ..
    } = x;
    let status = head.status.as_u16();
    let head_grpc = grpc_status(&head.headers);
    progress.update(|p| {
        p.upstream_status = Some(status);
        p.upstream_grpc_status = head_grpc;
        p.phase = Some(Phase::ResponseBody);
    });
    let protocol = |source| {
        let kind = UpstreamErrorKind::Protocol {
            phase: Phase::ResponseHeaders,
            source,
        };
        up.error(addr, started, kind)
    };
    let size = body_size(&head.headers, req.is_head, body.is_end_stream())
        .map_err(|what| protocol(what.into()))?;
    let start = ResponseStart {
        status,
        reason: Bytes::new(),
        headers: fields(&head.headers),
        body: size,
    };
    sink.start(start).map_err(|e| protocol(Box::new(e)))?;
    progress.update(|p| p.response_started = true);
    if body.is_end_stream() {
        sink.finish();
        return sink.flush().await;
    }
    sink.flush().await?;
    let timed_out = || up.error(addr, started, hop.timeout(by_deadline, Phase::ResponseBody));
    let failed = |e: h2::Error| up.error(addr, started, kind(Phase::ResponseBody, &e));
    loop {
        match timeout_at(until, body.data()).await {
            Err(_) => return Err(timed_out()),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(failed(e)),
            Ok(Some(Ok(chunk))) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                progress.update(|p| p.bytes_sent += chunk.len() as u64);
                sink.data(&chunk);
                sink.flush().await?;
            }
        }
    }
    match timeout_at(until, body.trailers()).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => return Err(failed(e)),
        Ok(Ok(Some(trailers))) => {
            let code = grpc_status(&trailers);
            progress.update(|p| p.upstream_grpc_status = code.or(p.upstream_grpc_status));
            sink.trailers(fields(&trailers));
        }
        Ok(Ok(None)) => {}
    }
    sink.finish();
    sink.flush().await
}

/// How the body of an HTTP/2 response is delimited for the client: its
/// `content-length` (one `1*DIGIT` value, or several equal ones; anything else is the
/// upstream's protocol error), none after `HEAD` or a HEADERS frame that ended the stream
/// (trailers-only gRPC answers stay trailers-only), else unknown. After `HEAD` the
/// validated length is declared to the client and no body is read.
fn body_size(
    headers: &http::HeaderMap,
    is_head: bool,
    ended: bool,
) -> Result<BodySize, &'static str> {
    let mut declared = None;
    for v in headers.get_all(http::header::CONTENT_LENGTH) {
        let v = v.as_bytes();
        let n = (!v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .flatten()
            .ok_or("a content-length that is not one 1*DIGIT value")?;
        if declared.is_some_and(|d| d != n) {
            return Err("content-length fields that differ");
        }
        declared = Some(n);
    }
    Ok(match declared {
        _ if is_head => BodySize::Empty {
            declared: declared.map(|n| Bytes::from(n.to_string().into_bytes())),
        },
        _ if ended => BodySize::Empty { declared: None },
        Some(n) => BodySize::Known(n),
        None => BodySize::Unknown,
    })
}

/// End-to-end fields of an HTTP/2 header map. `content-length` is not one: the client's
/// framing is derived from the body (an HTTP/1 client would otherwise get it twice).
fn fields(map: &http::HeaderMap) -> Headers {
    let mut out = Headers::new();
    for (n, v) in map {
        if !is_hop_by_hop(n.as_str().as_bytes()) && n != http::header::CONTENT_LENGTH {
            out.push(
                Bytes::copy_from_slice(n.as_str().as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            );
        }
    }
    out
}

/// The `grpc-status` field, if any.
fn grpc_status(map: &http::HeaderMap) -> Option<u16> {
    map.get("grpc-status")?.to_str().ok()?.parse().ok()
}
