//! One client connection: server timeouts, request reading, cancellation on disconnect,
//! error responses and the access log line of every request.
//!
//! While a request waits on its upstream, the connection keeps reading from the client
//! in the same task (like Go's background read): EOF or a reset ends the request at once,
//! dropping every upstream connection it holds. Nothing of a request runs detached.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use hopline_core::config::ServerConfig;
use hopline_core::deadline::{parse_envoy_timeout_ms, parse_grpc_timeout};
use hopline_core::policy::{self, fail_to_proxy, Stage};
use hopline_core::text::push_ip;
use hopline_core::{Deadline, Flag, Phase, ProxyError};
use hopline_h1::client::put_request_line;
use hopline_h1::head::{put_content_length, put_header, strip_hop_by_hop};
use hopline_h1::{
    read_body_chunk, read_request_head, wait_first_byte, wait_first_byte_unbuffered, watch_gone,
};
use hopline_h1::{
    BodyDecoder, BodyError, BodyLength, HeadError, HeadLimits, ParseError, RequestHead, Version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::timeout_at;

use crate::access_log::AccessRecord;
use crate::aggregate::{self, CallRecord, CallState, CallsCell};
use crate::gateway::Action;
use crate::gateway::{Current, Gateway, Route};
use crate::proxy::{proxy, Forward, Outcome, Progress, ProgressCell};
use crate::response::{error_response, ErrorContext, CONTINUE};
use crate::stream::{ClientStream, Stream};
use crate::tls::TlsSession;

/// Signals from the server to its connections.
#[derive(Debug, Clone)]
pub struct Signals {
    /// True once draining: idle connections close after `drain_idle_grace`, responses
    /// say `connection: close`.
    pub drain: watch::Receiver<bool>,
    /// True once the drain period is over: in-flight requests are answered 503 `SD`.
    pub kill: watch::Receiver<bool>,
}

enum Next {
    KeepAlive,
    Close,
}

async fn raised(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How long a connection that just answered a request keeps its read buffer and request
/// state while waiting for the next one. Busy keep-alive connections then cost no
/// allocation per request; connections idle for longer give both back and wait holding
/// only their socket and a small task (see `bench/` idle-conns).
const HOT_WAIT: Duration = Duration::from_millis(100);

/// Lingering close (as nginx's `lingering_close`): after an error response to a client
/// that may still be sending, input is read and dropped for at most this long, so the
/// client reads our answer instead of a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// ... and at most this many bytes.
const LINGER_BYTES: usize = 1 << 20;

/// Who is on the other end of a client connection.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client's address.
    pub peer: SocketAddr,
    /// The TLS session, on the TLS listener.
    pub tls: Option<Arc<TlsSession>>,
}

/// Serves one accepted connection (after its TLS handshake, if any) until it closes.
/// `accepted` is when the TCP connection was accepted: the first request head is due
/// `header_read_timeout` after it, handshake included.
pub async fn serve_connection(
    current: Arc<Current>,
    mut stream: ClientStream,
    client: Client,
    mut signals: Signals,
    accepted: Instant,
) {
    let _ = stream.tcp().set_nodelay(true);
    let mut idle_since = accepted;
    let mut buf = BytesMut::new();
    let mut first = true;
    loop {
        let gw = current.load();
        let cfg = &gw.config.server;
        if buf.is_empty() {
            let wait = if first {
                // Counted from accept: a TLS handshake already spent part of it.
                cfg.header_read_timeout.saturating_sub(accepted.elapsed())
            } else {
                // `busy` already waited HOT_WAIT of the idle timeout.
                cfg.idle_timeout.saturating_sub(HOT_WAIT)
            };
            let r = tokio::select! {
                biased;
                r = idle_wait(&mut stream, &mut buf, wait) => r,
                _ = raised(&mut signals.drain) => {
                    let grace = cfg.drain_idle_grace;
                    drain_wait(&mut stream, &mut buf, idle_since, grace).await
                }
            };
            match r {
                Ok(()) => {}
                Err(HeadError::Idle) if first => {
                    let err = ProxyError::HeaderReadTimeout {
                        limit: cfg.header_read_timeout,
                    };
                    Box::pin(reject(&gw, &mut stream, &mut buf, &client, None, err)).await;
                    return;
                }
                Err(_) => return,
            }
        }
        let head_deadline = if first { accepted } else { Instant::now() } + cfg.header_read_timeout;
        first = false;
        drop(gw);
        // Boxed: the request state (head reading, upstream exchange, aggregate calls) lives
        // on the heap only while the connection is busy, so an idle one's task stays small.
        let next = Box::pin(busy(
            &current,
            &mut stream,
            &mut buf,
            head_deadline,
            &client,
            &mut signals,
            &mut idle_since,
        ))
        .await;
        match next {
            Next::KeepAlive => {}
            Next::Close => return,
        }
    }
}

/// Waits up to `wait` for the first byte of the next request. A plain connection holds
/// no read buffer meanwhile; a TLS one reads through its session (which buffers anyway).
async fn idle_wait(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    wait: Duration,
) -> Result<(), HeadError> {
    match stream {
        Stream::Plain(tcp) => wait_first_byte_unbuffered(tcp, buf, wait).await,
        Stream::Tls(tls) => wait_first_byte(&mut **tls, buf, wait).await,
    }
}

/// Draining, with no request on the connection: a client that is just sending still gets
/// served, so the connection closes only once it has been idle for `grace` (counted
/// from `idle_since`). A silent connection ends as `Closed`, never with a 408.
async fn drain_wait(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    idle_since: Instant,
    grace: Duration,
) -> Result<(), HeadError> {
    let left = (idle_since + grace).saturating_duration_since(Instant::now());
    match idle_wait(stream, buf, left).await {
        Err(HeadError::Idle) => Err(HeadError::Closed),
        r => r,
    }
}

/// Serves requests back to back while the client sends the next within [`HOT_WAIT`];
/// `KeepAlive` once it goes quiet (with `buf` empty), `Close` when the connection ends.
async fn busy(
    current: &Current,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    mut head_deadline: Instant,
    client: &Client,
    signals: &mut Signals,
    idle_since: &mut Instant,
) -> Next {
    // One waiter on each signal for the whole busy period, not one per request.
    let mut drain = pin!(raised(&mut signals.drain));
    let mut kill = pin!(raised(&mut signals.kill));
    loop {
        // Each request runs on the config current when it starts (reloads apply to
        // requests on existing keep-alive connections too).
        let gw = current.load();
        let served = request(&gw, stream, buf, head_deadline, client, kill.as_mut()).await;
        *idle_since = Instant::now();
        if let Next::Close = served {
            return Next::Close;
        }
        let cfg = &gw.config.server;
        if buf.is_empty() {
            let r = tokio::select! {
                biased;
                r = wait_first_byte(stream, buf, HOT_WAIT.min(cfg.idle_timeout)) => r,
                _ = &mut drain => drain_wait(stream, buf, *idle_since, cfg.drain_idle_grace).await,
            };
            match r {
                Ok(()) => {}
                Err(HeadError::Idle) => return Next::KeepAlive,
                Err(_) => return Next::Close,
            }
        }
        head_deadline = Instant::now() + cfg.header_read_timeout;
    }
}

/// The error a request head that could not be read is answered with.
fn head_error(cfg: &ServerConfig, e: ParseError) -> ProxyError {
    match e {
        ParseError::Rejected { error, .. } => head_error(cfg, *error),
        ParseError::TooLarge { .. } | ParseError::TooManyHeaders => ProxyError::HeadersTooLarge {
            limit: cfg.max_header_bytes,
        },
        ParseError::RequestLineTooLong { limit } => ProxyError::UriTooLong { limit },
        ParseError::UnsupportedTransferEncoding => ProxyError::NotImplemented {
            what: "transfer codings other than chunked",
        },
        p => ProxyError::Malformed(Box::new(p)),
    }
}

/// Reads one request head (whose first bytes are in `buf`) by `head_deadline` and serves it.
async fn request(
    gw: &Gateway,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    head_deadline: Instant,
    client: &Client,
    kill: Pin<&mut impl Future<Output = ()>>,
) -> Next {
    let cfg = &gw.config.server;
    let limits = HeadLimits {
        max_head: cfg.max_header_bytes,
        max_request_line: cfg.max_request_line_bytes.min(cfg.max_header_bytes),
    };
    let head = match read_request_head(
        stream,
        buf,
        limits,
        head_deadline.into(),
        cfg.header_read_timeout,
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            let mut line = None;
            let err = match e {
                HeadError::Timeout(_) => ProxyError::HeaderReadTimeout {
                    limit: cfg.header_read_timeout,
                },
                HeadError::Parse(p) => {
                    if let ParseError::Rejected { method, target, .. } = &p {
                        line = Some((method.clone(), target.clone()));
                    }
                    head_error(cfg, p)
                }
                HeadError::Idle | HeadError::Closed | HeadError::Incomplete | HeadError::Io(_) => {
                    return Next::Close
                }
            };
            reject(gw, stream, buf, client, line, err).await;
            return Next::Close;
        }
    };
    handle(gw, stream, buf, head, client, kill).await
}

/// Answers a request that could not even be read (with its method and target, when its
/// head was complete) as the failure policy decides, and logs it.
async fn reject(
    gw: &Gateway,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    client: &Client,
    line: Option<(Bytes, Bytes)>,
    err: ProxyError,
) {
    let (method, path) = line.unwrap_or_default();
    let mut rec = AccessRecord {
        ts: Some(SystemTime::now()),
        client: Some(client.peer),
        tls: client.tls.clone(),
        request_id: gw.next_request_id(),
        method,
        path,
        ..AccessRecord::default()
    };
    let progress = policy::Progress {
        stage: Stage::Head,
        response_started: false,
        keep_alive: false,
        upstream_status: None,
    };
    conclude(gw, stream, buf, &mut rec, &err, progress).await;
    gw.record(&rec);
}

/// Lingering close: our answer is complete (FIN sent), then whatever the client is still
/// sending is read and dropped until it closes, for at most [`LINGER_TIME`] and
/// [`LINGER_BYTES`]. Closing with unread input would make the kernel send an RST, which
/// can destroy the answer before the client reads it.
async fn linger(stream: &mut ClientStream, buf: &mut BytesMut) {
    if stream.shutdown().await.is_err() {
        return;
    }
    buf.clear();
    let until = Instant::now() + LINGER_TIME;
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        buf.reserve(16 * 1024);
        match timeout_at(until.into(), stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {
                dropped += n;
                buf.clear();
            }
            _ => return,
        }
    }
}

/// Carries out the failure policy's decision for `err` at `progress`: writes the error
/// response and lingers when it says so, and puts the logged status, flag and cause into
/// `rec`. Whether the connection is kept is the policy's too.
async fn conclude(
    gw: &Gateway,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    rec: &mut AccessRecord,
    err: &ProxyError,
    progress: policy::Progress,
) -> Next {
    let d = fail_to_proxy(err, progress);
    if d.respond {
        let cx = ErrorContext {
            request_id: &rec.request_id,
            trace_id: rec.trace_id(),
            expose_cause: gw.config.server.expose_cause,
            head_only: &rec.method[..] == b"HEAD",
        };
        let out = error_response(err, &cx, !d.keep);
        let _ = tokio::time::timeout(gw.config.server.write_timeout, stream.write_all(&out)).await;
    }
    rec.status = d.status;
    if !rec.flags.contains(&d.flag.code()) {
        rec.flags.push(d.flag.code());
    }
    rec.cause = Some(err.cause());
    if d.linger {
        linger(stream, buf).await;
    }
    if d.keep {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// The client's `x-request-id`, when it is a sane one to forward and log.
fn client_request_id(head: &RequestHead) -> Option<String> {
    let id = head.headers.get("x-request-id")?;
    let ok = !id.is_empty() && id.len() <= 200 && id.iter().all(u8::is_ascii_graphic);
    // All ASCII graphic bytes, so valid UTF-8.
    ok.then(|| String::from_utf8_lossy(id).into_owned())
}

enum Ended {
    Done(Outcome),
    ClientGone(io::Error),
    Killed,
}

/// Serves a request whose head was read: admits it, reads its body, runs its route,
/// concludes it, and writes its one record.
async fn handle(
    gw: &Gateway,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    mut head: RequestHead,
    client: &Client,
    kill: Pin<&mut impl Future<Output = ()>>,
) -> Next {
    let arrival = Instant::now();
    let mut rec = AccessRecord {
        ts: Some(SystemTime::now()),
        request_id: gw.next_request_id(),
        client_request_id: client_request_id(&head),
        client: Some(client.peer),
        tls: client.tls.clone(),
        method: head.method.clone(),
        path: head.target.clone(),
        ..AccessRecord::default()
    };
    let keep_alive = head.keep_alive() && !gw.draining();
    let next = match prepare(gw, stream, buf, &head, &mut rec, keep_alive, arrival).await {
        Err(next) => next,
        Ok((route, body)) => {
            let deadline = request_deadline(gw, &head, route, arrival);
            rec.deadline = Some(deadline.budget());
            let ran = run(
                gw,
                stream,
                buf,
                (&mut head, body, client),
                (route, deadline, keep_alive),
                rec.trace_id(),
                kill,
            )
            .await;
            settle(gw, stream, buf, &mut rec, ran, keep_alive, arrival).await
        }
    };
    rec.duration = arrival.elapsed();
    gw.record(&rec);
    next
}

/// Admits the request and reads its body (buffered before proxying, as nginx does by
/// default: retries can resend it, and a slow uploader never holds an upstream
/// connection). A request refused or failed on the way is concluded here: `Err` says
/// what becomes of the connection.
async fn prepare<'g>(
    gw: &'g Gateway,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    head: &RequestHead,
    rec: &mut AccessRecord,
    keep_alive: bool,
    arrival: Instant,
) -> Result<(&'g Route, Bytes), Next> {
    let length = head.body_length();
    let unanswered = |stage| policy::Progress {
        stage,
        response_started: false,
        keep_alive,
        upstream_status: None,
    };
    let route = match admit(gw, head) {
        Ok(route) => route,
        Err((route, err)) => {
            rec.route = route.map(|r| r.name.clone());
            // With a body still to come (after a refused CONNECT, tunnel bytes may be),
            // the request is not read whole.
            let unread = length != BodyLength::Empty || &head.method[..] == b"CONNECT";
            let stage = if unread { Stage::Body } else { Stage::Done };
            return Err(conclude(gw, stream, buf, rec, &err, unanswered(stage)).await);
        }
    };
    rec.route = Some(route.name.clone());
    if let Action::Proxy { upstream } = route.action {
        let up = &gw.upstreams[upstream];
        rec.upstream = Some(up.name.clone());
        rec.zone = Some(up.zone().as_str());
    }
    match read_body(gw, stream, buf, head, length).await {
        Ok(body) => Ok((route, body)),
        Err(failure) => {
            let err = match failure {
                BodyFailure::Respond(err) => err,
                BodyFailure::Gone(source) => ProxyError::ClientGone {
                    elapsed: arrival.elapsed(),
                    waiting_on: Some("the request body".into()),
                    source,
                },
            };
            Err(conclude(gw, stream, buf, rec, &err, unanswered(Stage::Body)).await)
        }
    }
}

/// The request's deadline: the route's timeout, shortened by the caller's
/// (`x-envoy-expected-rq-timeout-ms` or `grpc-timeout`, less the margin), capped by
/// `deadline.max`.
fn request_deadline(gw: &Gateway, head: &RequestHead, route: &Route, arrival: Instant) -> Deadline {
    let caller = head
        .headers
        .get("x-envoy-expected-rq-timeout-ms")
        .and_then(parse_envoy_timeout_ms)
        .or_else(|| {
            head.headers
                .get("grpc-timeout")
                .and_then(parse_grpc_timeout)
        });
    let dl = &gw.config.deadline;
    Deadline::for_request(arrival, route.timeout, caller, dl.margin, dl.max)
}

/// How running a route ended, with what it got done.
struct Ran {
    ended: Ended,
    progress: Progress,
    calls: Vec<CallRecord>,
}

/// Runs the route (proxy or aggregate) while watching the client and the drain: the
/// first of the three to finish ends the request, dropping the others' work.
async fn run(
    gw: &Gateway,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    (head, body, client): (&mut RequestHead, Bytes, &Client),
    (route, deadline, keep_alive): (&Route, Deadline, bool),
    trace_id: &str,
    kill: Pin<&mut impl Future<Output = ()>>,
) -> Ran {
    let progress = ProgressCell::default();
    let calls = CallsCell::default();
    let ended = {
        let (mut rd, mut wr) = stream.split();
        // Pinned where it is built: moving this large future into the select would copy it.
        let work = pin!(async {
            match &route.action {
                Action::Proxy { upstream } => {
                    let fwd = forward(gw, head, body, trace_id, client.peer, keep_alive, *upstream);
                    proxy(gw, *upstream, &fwd, deadline, &progress, &mut wr).await
                }
                Action::Aggregate(agg) => {
                    let req = aggregate::Request {
                        head,
                        request_id: trace_id,
                        deadline,
                        keep_alive,
                    };
                    aggregate::run(gw, agg, &req, &progress, &calls, &mut wr).await
                }
            }
        });
        tokio::select! {
            biased;
            gone = watch_gone(&mut rd, buf, gw.config.server.max_header_bytes) => Ended::ClientGone(gone),
            _ = kill => Ended::Killed,
            o = work => Ended::Done(o),
        }
    };
    Ran {
        ended,
        progress: progress.into_inner(),
        calls: calls.into_inner(),
    }
}

/// Puts what a run got done into the record, and concludes it: a success keeps or closes
/// the connection as the response said; a failure goes to the failure policy.
async fn settle(
    gw: &Gateway,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    rec: &mut AccessRecord,
    Ran {
        ended,
        progress: p,
        calls,
    }: Ran,
    keep_alive: bool,
    arrival: Instant,
) -> Next {
    rec.degraded = calls
        .iter()
        .filter(|c| c.fallback)
        .map(|c| c.name.clone())
        .collect();
    rec.attempts = p.attempts;
    rec.endpoint = p.endpoint;
    rec.upstream_status = p.upstream_status;
    rec.bytes_sent = p.bytes_sent;
    let err = match ended {
        Ended::Done(Outcome { error: None, close }) => {
            rec.status = p.upstream_status.unwrap_or(0);
            if !rec.degraded.is_empty() {
                rec.flags.push(Flag::Degraded.code());
            }
            rec.calls = calls;
            return if close || !keep_alive {
                Next::Close
            } else {
                Next::KeepAlive
            };
        }
        Ended::Done(Outcome {
            error: Some(err), ..
        }) => {
            rec.calls = calls;
            err
        }
        Ended::ClientGone(source) => client_gone(gw, rec, &p, calls, source, arrival),
        Ended::Killed => ProxyError::Shutdown {
            drain: gw.config.server.drain_timeout,
        },
    };
    let progress = policy::Progress {
        stage: Stage::Done,
        response_started: p.response_started,
        keep_alive: keep_alive && !gw.draining(),
        upstream_status: p.upstream_status,
    };
    conclude(gw, stream, buf, rec, &err, progress).await
}

/// The client left while the route ran: what it was waiting on, and each call it cut off.
fn client_gone(
    gw: &Gateway,
    rec: &mut AccessRecord,
    p: &Progress,
    calls: Vec<CallRecord>,
    source: io::Error,
    arrival: Instant,
) -> ProxyError {
    let waiting = if calls.is_empty() {
        waiting_on(gw, p)
    } else {
        calls_waiting(&calls)
    };
    rec.calls = calls;
    for c in rec.calls.iter_mut().filter(|c| c.state != CallState::Done) {
        c.cause = Some(match c.state {
            CallState::Pending => "not started: client gone".into(),
            _ => "aborted: client gone".into(),
        });
    }
    rec.degraded.clear();
    ProxyError::ClientGone {
        elapsed: arrival.elapsed(),
        waiting_on: waiting,
        source,
    }
}

/// The route that serves `head`, or why none does (with the route, if one matched).
fn admit<'g>(
    gw: &'g Gateway,
    head: &RequestHead,
) -> Result<&'g Route, (Option<&'g Route>, ProxyError)> {
    if &head.method[..] == b"CONNECT" {
        return Err((None, ProxyError::NotImplemented { what: "CONNECT" }));
    }
    let Some(route) = gw.route(head.path()) else {
        return Err((None, ProxyError::NoRoute));
    };
    if !route.allows(&head.method) {
        let err = ProxyError::MethodNotAllowed {
            route: route.name.clone(),
            allow: route.allow.clone(),
        };
        return Err((Some(route), err));
    }
    Ok(route)
}

/// What a cancelled aggregate request was waiting on, e.g. `calls coupons (running), coin (not started)`.
fn calls_waiting(calls: &[CallRecord]) -> Option<String> {
    let open: Vec<String> = calls
        .iter()
        .filter(|c| c.state != CallState::Done)
        .map(|c| {
            let state = if c.state == CallState::Running {
                "running"
            } else {
                "not started"
            };
            format!("{} -> {} ({}) {state}", c.name, c.upstream, c.zone)
        })
        .collect();
    (!open.is_empty()).then(|| format!("calls {}", open.join(", ")))
}

/// What a cancelled request was waiting on, e.g. `upstream coupon 127.0.0.1:9001 (egress) response headers`.
fn waiting_on(gw: &Gateway, p: &Progress) -> Option<String> {
    let up = &gw.upstreams[p.upstream?];
    let phase = p.phase.unwrap_or(Phase::Connect);
    Some(match p.endpoint {
        Some(ep) => format!(
            "upstream {} {} ({}) {}",
            up.name,
            ep,
            up.zone().as_str(),
            phase
        ),
        None => format!("upstream {} ({}) {}", up.name, up.zone().as_str(), phase),
    })
}

enum BodyFailure {
    Respond(ProxyError),
    Gone(io::Error),
}

async fn read_body(
    gw: &Gateway,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    head: &RequestHead,
    length: BodyLength,
) -> Result<Bytes, BodyFailure> {
    let cfg = &gw.config.server;
    let max = cfg.max_body_bytes;
    match length {
        BodyLength::Empty => return Ok(Bytes::new()),
        BodyLength::Length(n) if n > max as u64 => {
            return Err(BodyFailure::Respond(ProxyError::BodyTooLarge {
                limit: max,
            }))
        }
        _ => {}
    }
    // RFC 9110 §10.1.1: only an HTTP/1.1 client waits for 100 Continue; it gets it once
    // the request passed every check that needs no body (route, method, length).
    if head.version == Version::Http11
        && head.headers.has_token("expect", "100-continue")
        && buf.is_empty()
    {
        stream
            .write_all(CONTINUE)
            .await
            .map_err(BodyFailure::Gone)?;
    }
    let until = Instant::now() + cfg.body_read_timeout;
    let mut decoder = BodyDecoder::new(length).with_max_trailers(cfg.max_header_bytes);
    let mut body = BytesMut::new();
    loop {
        match timeout_at(until.into(), read_body_chunk(stream, buf, &mut decoder)).await {
            Err(_) => {
                return Err(BodyFailure::Respond(ProxyError::BodyReadTimeout {
                    limit: cfg.body_read_timeout,
                    received: body.len() as u64,
                }))
            }
            Ok(Ok(None)) => return Ok(body.freeze()),
            Ok(Ok(Some(piece))) => {
                if body.len() + piece.len() > max {
                    return Err(BodyFailure::Respond(ProxyError::BodyTooLarge {
                        limit: max,
                    }));
                }
                if body.is_empty() && decoder.is_done() {
                    return Ok(piece);
                }
                body.extend_from_slice(&piece);
            }
            Ok(Err(BodyError::Io(e))) => return Err(BodyFailure::Gone(e)),
            Ok(Err(BodyError::Incomplete)) => {
                return Err(BodyFailure::Gone(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed the connection in the middle of the request body",
                )))
            }
            Ok(Err(e)) => return Err(BodyFailure::Respond(ProxyError::Malformed(Box::new(e)))),
        }
    }
}

/// Renders the upstream request head: origin-form target, hop-by-hop fields removed,
/// `x-request-id` and `x-forwarded-for` set (every received `x-forwarded-for` merged, then
/// the client's address), the body re-framed with `content-length`.
fn forward(
    gw: &Gateway,
    head: &mut RequestHead,
    body: Bytes,
    request_id: &str,
    peer: SocketAddr,
    client_keep_alive: bool,
    upstream: usize,
) -> Forward {
    let mut out = BytesMut::with_capacity(512);
    put_request_line(&mut out, &head.method, head.origin_form());
    strip_hop_by_hop(&mut head.headers);
    let mut forwarded_for: Vec<u8> = Vec::new();
    let mut has_host = false;
    for (name, value) in head.headers.iter() {
        let n = name;
        if n.eq_ignore_ascii_case(b"x-forwarded-for") {
            let value = hopline_h1::head::trim(value);
            if !value.is_empty() {
                if !forwarded_for.is_empty() {
                    forwarded_for.extend_from_slice(b", ");
                }
                forwarded_for.extend_from_slice(value);
            }
            continue;
        }
        if n.eq_ignore_ascii_case(b"x-envoy-expected-rq-timeout-ms")
            || n.eq_ignore_ascii_case(b"grpc-timeout")
            || n.eq_ignore_ascii_case(b"expect")
            || n.eq_ignore_ascii_case(b"x-request-id")
        {
            continue;
        }
        has_host |= n.eq_ignore_ascii_case(b"host");
        put_header(&mut out, n, value);
    }
    if !has_host {
        let ep = gw.upstreams[upstream]
            .config
            .endpoints
            .first()
            .map(String::as_str)
            .unwrap_or("");
        put_header(&mut out, b"host", ep.as_bytes());
    }
    put_header(&mut out, b"x-request-id", request_id.as_bytes());
    if !forwarded_for.is_empty() {
        forwarded_for.extend_from_slice(b", ");
    }
    push_ip(&mut forwarded_for, peer.ip());
    put_header(&mut out, b"x-forwarded-for", &forwarded_for);
    let method = &head.method[..];
    if !body.is_empty() || matches!(method, b"POST" | b"PUT" | b"PATCH") {
        put_content_length(&mut out, body.len() as u64);
    }
    Forward {
        head: out,
        body,
        idempotent: head.is_idempotent(),
        is_head: method == b"HEAD",
        client_http11: head.version == Version::Http11,
        client_keep_alive,
        margin: gw.config.deadline.margin,
    }
}
