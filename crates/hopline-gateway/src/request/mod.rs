//! The protocol-independent request core: a parsed request goes in; route, deadline,
//! proxy or aggregate, response into the front-end's sink, the failure policy's decision
//! carried out, and the one access record come out. A client protocol (HTTP/1 in `h1`)
//! only parses requests and implements [`Front`]; it makes no decision of its own.
//!
//! Phases, each a function: [`serve`] → `prepare` (admit: route and method; the body) →
//! `request_deadline` → `run` (the route, raced against the client leaving and the drain
//! ending) → `settle` (what the run got done) → `conclude` (the failure policy).

pub(crate) mod aggregate;

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::time::SystemTime;
use tokio::time::Instant;

use bytes::Bytes;
use hopline_core::deadline::{parse_envoy_timeout_ms, parse_grpc_timeout};
use hopline_core::policy::{self, fail_to_proxy, Stage};
use hopline_core::{Flag, Phase, ProxyError};

use crate::body::{BodyLimits, BodySource, Incoming, MinRate, RequestBody, WaitClock};
use crate::clock::Deadline;
use crate::limits::BufferKind;
use hopline_h1::head::Headers;

use crate::exchange::attempt::Hop;
use crate::exchange::attempt::{Progress, ProgressCell};
use crate::exchange::forward::forward;
use crate::exchange::proxy::proxy;
use crate::exchange::websocket;
use crate::front::{BodyFailure, Client, Front, Next, Request, Sink};
use crate::gateway::{Action, Gateway, Route};
use crate::observe::access_log::AccessRecord;
use crate::observe::access_log::TunnelEnd;
use crate::observe::access_log::{CallRecord, CallState};
use crate::observe::redact;
use crate::observe::trace::TraceCx;
use crate::response::ErrorContext;
use aggregate::CallsCell;
use hopline_h1::path::{self, PathRules};
use std::borrow::Cow;

/// Serves a request whose head was read: admits it, reads its body, runs its route,
/// concludes it, and writes its one record. Says what becomes of the connection.
pub(crate) async fn serve<F: Front>(
    gw: &Gateway,
    front: &mut F,
    mut req: Request,
    client: &Client,
    kill: Pin<&mut impl Future<Output = ()>>,
) -> Next {
    let arrival = front.arrival();
    let trusted = gw.config.server.trusts(client.peer.ip());
    let (path, query) = redact::split(&req.target, &gw.config.log.redact_query);
    let mut rec = AccessRecord {
        client_ip: Some(client_ip(gw, &req.headers, client.peer.ip(), trusted)),
        ts: Some(SystemTime::now()),
        request_id: gw.next_request_id(),
        client_request_id: req.client_request_id(),
        trace: Some(TraceCx::of(&req.headers, gw.exporter.as_deref(), trusted)),
        client: Some(client.peer),
        tls: client.tls.clone(),
        method: req.method.clone(),
        path,
        query,
        protocol: Some(front.protocol()),
        client_idle: req.client_idle,
        ..AccessRecord::default()
    };
    let next = match prepare(gw, front, &mut req, &mut rec, arrival).await {
        Err(next) => next,
        Ok(route) => {
            let (deadline, refused) = request_deadline(gw, &req, route, arrival, trusted);
            rec.deadline = Some(deadline.budget());
            let job = Job {
                route,
                deadline,
                arrival,
                peer: client.peer,
                trusted,
                refused,
                trace: rec.trace.clone().unwrap_or_else(|| {
                    TraceCx::of(
                        &req.headers,
                        None::<&crate::observe::otlp::Exporter>,
                        trusted,
                    )
                }),
            };
            let ran = run(gw, front, &mut req, job, rec.x_request_id(), kill).await;
            settle(gw, front, &mut rec, ran, &req, arrival).await
        }
    };
    rec.duration = arrival.elapsed();
    gw.record(&rec);
    next
}

/// Answers a request that could not even be read (with its method and target, when its
/// head was complete) as the failure policy decides, and logs it.
pub(crate) async fn reject<F: Front>(
    gw: &Gateway,
    front: &mut F,
    client: &Client,
    line: Option<(Bytes, Bytes)>,
    err: ProxyError,
) {
    let (method, target) = line.unwrap_or_default();
    let (path, query) = redact::split(&target, &gw.config.log.redact_query);
    let mut rec = AccessRecord {
        ts: Some(SystemTime::now()),
        client: Some(client.peer),
        tls: client.tls.clone(),
        request_id: gw.next_request_id(),
        method,
        path,
        query,
        ..AccessRecord::default()
    };
    let progress = policy::Progress {
        stage: Stage::Head,
        response_started: false,
        keep_alive: false,
        upstream_status: None,
    };
    conclude(gw, front, &mut rec, &err, (progress, false)).await;
    gw.record(&rec);
}

/// Carries out the failure policy's decision for `err` at `progress`: the front-end
/// writes the error response and lingers when it says so; the logged status, flag and
/// cause go into `rec`. Whether the connection is kept is the policy's too.
async fn conclude<F: Front>(
    gw: &Gateway,
    front: &mut F,
    rec: &mut AccessRecord,
    err: &ProxyError,
    (progress, grpc): (policy::Progress, bool),
) -> Next {
    let grpc = grpc && front.carries_grpc();
    let d = fail_to_proxy(err, progress);
    if d.respond {
        let cx = ErrorContext {
            request_id: &rec.request_id,
            trace_id: rec.x_request_id(),
            expose_cause: gw.config.server.expose_cause,
            head_only: &rec.method[..] == b"HEAD",
            grpc,
        };
        front.respond(err, &d, &cx).await;
    }
    if grpc {
        // What the client saw (or, cut short or gone, what it stands for).
        rec.grpc_status = Some(u16::from(policy::grpc_status(d.flag)));
    }
    rec.status = d.status;
    if !rec.flags.contains(&d.flag.code()) {
        rec.flags.push(d.flag.code());
    }
    rec.cause = Some(err.cause());
    if d.linger {
        front.linger().await;
    }
    if d.keep {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Admits the request, and lets its body come (the upstream will read it). A request
/// refused on the way is concluded here: `Err` says what becomes of the connection.
async fn prepare<'g, F: Front>(
    gw: &'g Gateway,
    front: &mut F,
    req: &mut Request,
    rec: &mut AccessRecord,
    arrival: Instant,
) -> Result<&'g Route, Next> {
    let unanswered = |stage| policy::Progress {
        stage,
        response_started: false,
        keep_alive: req.keep_alive,
        upstream_status: None,
    };
    // One spelling per path before anything looks at it: routes match, the log shows
    // and the upstream receives the normalized path.
    let rules = PathRules {
        escaped_slashes: gw.config.server.escaped_slashes,
        merge_slashes: gw.config.server.merge_slashes,
    };
    let normalized = match path::normalize(&req.origin, rules) {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(p)) => Some(Bytes::from(p)),
        Err(e) => {
            let unread = req.has_body;
            let stage = if unread { Stage::Body } else { Stage::Done };
            let at = (unanswered(stage), req.is_grpc());
            let err = ProxyError::Malformed(Box::new(e));
            return Err(conclude(gw, front, rec, &err, at).await);
        }
    };
    if let Some(p) = normalized {
        // The query was passed on as received: only the path part changes.
        rec.path = redact::split(&p, &[]).0;
        req.origin = p;
    }
    let req = &*req;
    let route = match admit(gw, req) {
        Ok(route) => route,
        Err((route, err)) => {
            rec.route = route.map(|r| r.name.clone());
            // With a body still to come (after a refused CONNECT, tunnel bytes may be),
            // the request is not read whole.
            let unread = req.has_body || &req.method[..] == b"CONNECT";
            let stage = if unread { Stage::Body } else { Stage::Done };
            let at = (unanswered(stage), req.is_grpc());
            return Err(conclude(gw, front, rec, &err, at).await);
        }
    };
    rec.route = Some(route.name.clone());
    if let Action::Proxy { upstream } = route.action {
        let up = &gw.upstreams[upstream];
        rec.upstream = Some(up.name.clone());
        rec.zone = Some(up.zone().as_str());
    }
    match front.accept_body().await {
        Ok(()) => Ok(route),
        Err(failure) => {
            let err = match failure {
                BodyFailure::Respond(err) => err,
                BodyFailure::Gone(source) => ProxyError::ClientGone {
                    elapsed: arrival.elapsed(),
                    waiting_on: Some("the request body".into()),
                    source,
                },
            };
            let at = (unanswered(Stage::Body), req.is_grpc());
            Err(conclude(gw, front, rec, &err, at).await)
        }
    }
}

/// The route that serves `req`, or why none does (with the route, if one matched).
fn admit<'g>(gw: &'g Gateway, req: &Request) -> Result<&'g Route, (Option<&'g Route>, ProxyError)> {
    if &req.method[..] == b"CONNECT" {
        return Err((None, ProxyError::NotImplemented { what: "CONNECT" }));
    }
    let Some(route) = gw.route(req.path()) else {
        return Err((None, ProxyError::NoRoute));
    };
    if !route.allows(&req.method) {
        let err = ProxyError::MethodNotAllowed {
            route: route.name.clone(),
            allow: route.allow.clone(),
        };
        return Err((Some(route), err));
    }
    Ok(route)
}

/// The request's deadline: the route's timeout, shortened by the caller's
/// (`x-envoy-expected-rq-timeout-ms` or `grpc-timeout`, less the margin), capped by
/// `deadline.max`; and the caller's budget when it is below `deadline.min_caller`.
fn request_deadline(
    gw: &Gateway,
    req: &Request,
    route: &Route,
    arrival: Instant,
    trusted: bool,
) -> (Deadline, Option<std::time::Duration>) {
    // grpc-timeout from anyone (gRPC requires honouring it); Envoy's header only from a
    // trusted proxy, as Envoy does: an internet client cannot shorten the budget with it.
    let envoy = trusted
        .then(|| req.headers.get("x-envoy-expected-rq-timeout-ms"))
        .flatten()
        .and_then(parse_envoy_timeout_ms);
    let caller = envoy.or_else(|| req.headers.get("grpc-timeout").and_then(parse_grpc_timeout));
    let dl = &gw.config.deadline;
    let deadline = Deadline::for_request(arrival, route.timeout, caller, dl.margin, dl.max);
    // A budget too short to be served is the caller's problem, answered before any work.
    (deadline, caller.filter(|&c| c < dl.min_caller))
}

/// The client's address: the peer, or behind trusted proxies the first address from the
/// right of `x-forwarded-for` that is not itself a trusted proxy (the leftmost when every
/// one is).
fn client_ip(gw: &Gateway, headers: &Headers, peer: IpAddr, trusted: bool) -> IpAddr {
    if !trusted || headers.get("x-forwarded-for").is_none() {
        return peer;
    }
    let server = &gw.config.server;
    let mut found = peer;
    let values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"x-forwarded-for"))
        .map(|(_, v)| v)
        .collect::<Vec<_>>();
    for value in values.iter().rev() {
        for entry in value.rsplit(|&b| b == b',') {
            let text = std::str::from_utf8(hopline_h1::head::trim(entry)).unwrap_or("");
            let Ok(ip) = text.parse::<IpAddr>() else {
                // Garbage is not an address: the last good one stands.
                return found;
            };
            found = ip;
            if !server.trusts(ip) {
                return ip;
            }
        }
    }
    found
}

/// What a run needs besides the request.
struct Job<'g> {
    route: &'g Route,
    deadline: Deadline,
    /// When the request arrived: the body's limits count from it.
    arrival: Instant,
    peer: SocketAddr,
    /// The peer is in `server.trusted_proxies`.
    trusted: bool,
    /// The caller's budget, when below `deadline.min_caller`: answered before any call.
    refused: Option<std::time::Duration>,
    trace: TraceCx,
}

enum Ended {
    Done(Result<(), ProxyError>),
    ClientGone(io::Error),
    Killed,
}

/// How running a route ended, with what it got done.
struct Ran {
    ended: Ended,
    progress: Progress,
    calls: Vec<CallRecord>,
    /// The response was complete and the connection can serve another request.
    reusable: bool,
    /// The WebSocket tunnel the request became, once it ended.
    tunnel: Option<TunnelEnd>,
    /// The request body was read to its end (else the connection cannot serve another
    /// request).
    read_whole: bool,
}

/// Runs the route (proxy or aggregate) while watching the client and the drain: the
/// first of the three to finish ends the request, dropping the others' work.
async fn run<F: Front>(
    gw: &Gateway,
    front: &mut F,
    req: &mut Request,
    job: Job<'_>,
    trace_id: &str,
    mut kill: Pin<&mut impl Future<Output = ()>>,
) -> Ran {
    let progress = ProgressCell::default();
    let calls = CallsCell::default();
    let Job {
        route,
        deadline,
        arrival,
        peer,
        trusted: job_trusted,
        refused,
        trace,
    } = job;
    let upgrade = route.websocket.is_some() && front.upgrades() && websocket::is_upgrade(req);
    let has_body = req.has_body;
    let clock = WaitClock::new(arrival);
    let (gone, mut sink, mut source) = front.split();
    let mut body = request_body(gw, req, route, (arrival, &deadline), &mut source, &clock);
    let ended = {
        // Pinned where it is built: moving this large future into the select would copy it.
        let work = pin!(async {
            if let Some(budget) = refused {
                let min = gw.config.deadline.min_caller;
                return Err(ProxyError::CallerBudgetTooShort { budget, min });
            }
            match &route.action {
                Action::Proxy { upstream } => {
                    if route.request_buffering {
                        body.buffer(&gw.buffers).await.inspect_err(|e| {
                            if matches!(e, ProxyError::BufferBudget { .. }) {
                                gw.metrics.count_buffer_refused(BufferKind::RequestBody);
                            }
                        })?;
                    }
                    let ids = (trace_id, &trace);
                    let from = (peer, job_trusted);
                    let fwd = forward(gw, req, body.length(), ids, from, (*upstream, upgrade));
                    let hop = Hop::new(gw, *upstream, &fwd, &deadline, &progress);
                    proxy(&hop, &mut body, &mut sink).await
                }
                Action::Aggregate(agg) => {
                    // The calls carry no body of the client's: it is read and dropped.
                    body.drain().await?;
                    let call = aggregate::Request {
                        req,
                        request_id: trace_id,
                        trace: &trace,
                        deadline,
                    };
                    aggregate::run(gw, agg, &call, &progress, &calls, &mut sink).await
                }
            }
        });
        tokio::select! {
            biased;
            gone = gone => Ended::ClientGone(gone),
            _ = kill.as_mut() => Ended::Killed,
            o = work => Ended::Done(o),
        }
    };
    let reusable = sink.reusable();
    let read_whole = !has_body || body.read_whole();
    drop(body);
    drop(source);
    drop(sink);
    let mut progress = progress.into_inner();
    // A WebSocket upgrade the upstream accepted: the connection is the tunnel's now
    // (a drain that runs out closes it).
    let upgraded = progress.upgraded.take();
    let tunnel = match (upgraded, route.websocket, &ended) {
        (Some(conn), Some(idle), Ended::Done(Ok(()))) => tokio::select! {
            end = front.tunnel(conn, idle) => Some(end),
            _ = kill => Some(TunnelEnd { closed_by: "shutdown", ..TunnelEnd::default() }),
        },
        _ => None,
    };
    Ran {
        ended,
        progress,
        calls: calls.into_inner(),
        reusable: reusable && tunnel.is_none(),
        tunnel,
        read_whole,
    }
}

/// The request's body as attempts send it: none, or streamed from the client under the
/// route's limits (the start of it kept for a resend, as the upstream's
/// `retry_buffer_bytes` says).
fn request_body<'a>(
    gw: &Gateway,
    req: &Request,
    route: &Route,
    (arrival, deadline): (Instant, &Deadline),
    source: &'a mut (dyn BodySource + 'a),
    clock: &'a WaitClock,
) -> RequestBody<'a> {
    if !req.has_body {
        return RequestBody::full(Bytes::new());
    }
    let server = &gw.config.server;
    let limits = BodyLimits {
        max: server.max_body_bytes as u64,
        read_timeout: route.body_read_timeout,
        arrival,
        deadline: (deadline.at(), deadline.budget()),
        min_rate: MinRate {
            bytes_per_sec: server.min_recv_rate,
            window: RECV_RATE_WINDOW,
            grace: RECV_RATE_GRACE,
        },
    };
    let replay = match route.action {
        Action::Proxy { upstream } => gw.upstreams[upstream].config.retry_buffer_bytes,
        Action::Aggregate(_) => 0,
    };
    let incoming = Incoming::new((source, req.body_length), limits, clock);
    RequestBody::streamed(incoming, req.body_length, replay, &gw.buffers)
}

/// `min_recv_rate` is averaged over this much time spent waiting on the client...
const RECV_RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
/// ... after this much of it.
const RECV_RATE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Puts what a run got done into the record, and concludes it: a success keeps or closes
/// the connection as the response said; a failure goes to the failure policy.
async fn settle<F: Front>(
    gw: &Gateway,
    front: &mut F,
    rec: &mut AccessRecord,
    ran: Ran,
    req: &Request,
    arrival: Instant,
) -> Next {
    let Ran {
        ended,
        progress: p,
        calls,
        reusable,
        tunnel,
        read_whole,
    } = ran;
    rec.tunnel = tunnel;
    rec.degraded = calls
        .iter()
        .filter(|c| c.fallback)
        .map(|c| c.name.clone())
        .collect();
    rec.attempts = p.attempts;
    rec.endpoint = p.endpoint;
    rec.upstream_reused = p.upstream_reused;
    rec.upstream_idle = p.upstream_idle;
    rec.queue = p.queued;
    rec.upstream_status = p.upstream_status;
    rec.upstream_grpc_status = p.upstream_grpc_status;
    rec.bytes_sent = p.bytes_sent;
    let err = match ended {
        Ended::Done(Ok(())) => {
            rec.status = p.upstream_status.unwrap_or(0);
            rec.grpc_status = p.upstream_grpc_status;
            if !rec.degraded.is_empty() {
                rec.flags.push(Flag::Degraded.code());
            }
            rec.calls = calls;
            if !read_whole {
                // The upstream answered before taking the whole body: what the client still
                // sends is not a request. Read and dropped for a while, so it reads the answer.
                front.linger().await;
                return Next::Close;
            }
            return if reusable {
                Next::KeepAlive
            } else {
                Next::Close
            };
        }
        Ended::Done(Err(err)) => {
            rec.calls = calls;
            err
        }
        Ended::ClientGone(source) => client_gone(gw, rec, &p, calls, source, arrival),
        Ended::Killed => ProxyError::Shutdown {
            drain: gw.config.server.drain_timeout,
        },
    };
    rec.phase = match &err {
        ProxyError::ClientGone { .. } => p.phase.map(|ph| ph.label()),
        e => e.upstream_phase().map(|ph| ph.label()),
    };
    let progress = policy::Progress {
        stage: if read_whole { Stage::Done } else { Stage::Body },
        response_started: p.response_started,
        keep_alive: req.keep_alive && !gw.draining(),
        upstream_status: p.upstream_status,
    };
    let next = conclude(gw, front, rec, &err, (progress, req.is_grpc())).await;
    if let (Some(note), Some(cause)) = (p.not_resent, rec.cause.as_mut()) {
        *cause = format!("{cause}; not retried: {note}");
    }
    next
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

/// What a cancelled aggregate request was waiting on, e.g.
/// `calls coupons -> coupon (egress) response headers, coin -> coin (internal) not started`.
fn calls_waiting(calls: &[CallRecord]) -> Option<String> {
    let open: Vec<String> = calls
        .iter()
        .filter(|c| c.state != CallState::Done)
        .map(|c| match (c.state, c.phase) {
            (CallState::Running, Some(phase)) => {
                format!("{} -> {} ({}) {phase}", c.name, c.upstream, c.zone)
            }
            (CallState::Running, None) => {
                format!("{} -> {} ({}) running", c.name, c.upstream, c.zone)
            }
            _ => format!("{} -> {} ({}) not started", c.name, c.upstream, c.zone),
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod streaming_tests;

#[cfg(test)]
mod queue_tests;
