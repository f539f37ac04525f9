//! Aggregate routes: one request fans out to several upstream calls (in parallel or in
//! sequence) and is answered with one JSON object keyed by call name.
//!
//! The incident's "benefits" endpoint done right: every call is bounded by
//! `min(its timeout, time left)`, a failed call is served from its fallback with its own
//! cause, calls that cannot run any more are not started, and everything runs inside the
//! request's future, so a client that leaves cancels every call at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use hopline_core::config::AggregateMode;
use hopline_core::ProxyError;

use crate::clock::Deadline;
use hopline_h1::head::Headers;
use hopline_h1::write::{put_framing, put_header, put_request_line, request_framing};

use crate::body::RequestBody;
use crate::exchange::attempt::Hop;
use crate::exchange::attempt::{Forward, ProgressCell};
use crate::exchange::proxy::{collect, open};
use crate::front::{BodySize, ResponseStart, Sink};
use crate::gateway::{Aggregate, Call, Gateway};
use crate::limits::BufferGrant;
use crate::observe::access_log::{CallRecord, CallState};

/// A call's JSON body, and its share of `server.max_buffered_bytes` (held until the
/// response is built).
type Answer = (Bytes, BufferGrant);

/// The calls of one request, readable after its future was dropped.
#[derive(Debug, Default)]
pub(crate) struct CallsCell(Mutex<Vec<CallRecord>>);

impl CallsCell {
    fn update(&self, i: usize, f: impl FnOnce(&mut CallRecord)) {
        if let Some(r) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get_mut(i) {
            f(r);
        }
    }

    /// One pending record per call of `agg`.
    fn start(&self, gw: &Gateway, agg: &Aggregate) {
        let mut records = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *records = agg
            .calls
            .iter()
            .map(|c| CallRecord {
                name: c.name.clone(),
                upstream: gw.upstreams[c.upstream].name.clone(),
                zone: gw.upstreams[c.upstream].zone().as_str(),
                state: CallState::Pending,
                status: None,
                cause: None,
                phase: None,
                fallback: false,
                duration: Duration::ZERO,
                attempts: 0,
            })
            .collect();
    }

    /// The final records.
    pub(crate) fn into_inner(self) -> Vec<CallRecord> {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// A call in flight; on drop (finished, or aborted with its request) it writes what the
/// call did into its record.
struct RunningCall<'a> {
    calls: &'a CallsCell,
    i: usize,
    started: Instant,
    progress: ProgressCell,
}

impl Drop for RunningCall<'_> {
    fn drop(&mut self) {
        let (attempts, status, phase) = self
            .progress
            .read(|p| (p.attempts, p.upstream_status, p.phase));
        let elapsed = self.started.elapsed();
        self.calls.update(self.i, |r| {
            r.attempts = attempts;
            r.status = status;
            r.duration = elapsed;
            // Cut off (its request gone): what it was waiting in.
            if r.state == CallState::Running && status.is_none() {
                r.phase = phase;
            }
        });
    }
}

/// Why a call did not give a usable answer.
#[derive(Debug, thiserror::Error)]
enum CallFailure {
    #[error(transparent)]
    Proxy(ProxyError),
    #[error("upstream {upstream} answered {status}")]
    Status { upstream: Arc<str>, status: u16 },
    #[error("upstream {upstream} answered a body that is not JSON")]
    NotJson {
        upstream: Arc<str>,
        #[source]
        source: serde_json::Error,
    },
    #[error("not started: {0}")]
    NotStarted(&'static str),
}

impl CallFailure {
    fn into_proxy_error(self, call: &str, budget: Duration) -> ProxyError {
        match self {
            CallFailure::Proxy(e) => e,
            CallFailure::NotStarted(_) => ProxyError::DeadlineSpent { budget },
            other => ProxyError::BadCallResponse {
                call: call.to_string(),
                detail: hopline_core::error::cause_chain(&other),
            },
        }
    }
}

/// The client request an aggregate route serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    /// The client's request (method, query and headers feed the calls).
    pub req: &'a crate::front::Request,
    /// The `x-request-id` the calls carry.
    pub request_id: &'a str,
    /// The request's trace: each call attempt sends `traceparent` with its own span id.
    pub trace: &'a crate::observe::trace::TraceCx,
    /// Its deadline.
    pub deadline: Deadline,
}

/// A placeholder value that would change the call's path instead of filling one segment.
#[derive(Debug, thiserror::Error)]
#[error("call {call}: placeholder value {value:?} is a dot-segment")]
pub(crate) struct PlaceholderError {
    call: Arc<str>,
    value: String,
}

/// Runs an aggregate route and writes its response into `sink` (head only for `HEAD`).
pub(crate) async fn run<S: Sink>(
    gw: &Gateway,
    agg: &Aggregate,
    req: &Request<'_>,
    progress: &ProgressCell,
    calls: &CallsCell,
    sink: &mut S,
) -> Result<(), ProxyError> {
    let Request {
        req: head,
        request_id,
        trace,
        deadline,
    } = *req;
    // Every call's request is built before any starts: a bad placeholder value fails the
    // request (400), it never reaches an upstream.
    let requests = match agg
        .calls
        .iter()
        .map(|c| call_request(gw, c, head, (request_id, trace)))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(r) => r,
        Err(e) => return Err(ProxyError::Malformed(Box::new(e))),
    };
    calls.start(gw, agg);
    let results = run_calls(gw, agg, &requests, &deadline, calls).await;
    let (body, degraded) = json_body(agg, results, &deadline)?;
    let head_only = &head.method[..] == b"HEAD";
    progress.update(|p| {
        p.response_started = true;
        p.upstream_status = Some(200);
        p.bytes_sent = if head_only { 0 } else { body.len() as u64 };
    });
    respond(sink, request_id, &body, &degraded).await
}

/// Runs the calls, all at once (parallel) or one by one until a required one fails
/// (sequential); each call's JSON body or why not, in call order.
async fn run_calls(
    gw: &Gateway,
    agg: &Aggregate,
    requests: &[Forward],
    deadline: &Deadline,
    calls: &CallsCell,
) -> Vec<Result<Answer, CallFailure>> {
    match agg.mode {
        AggregateMode::Parallel => {
            let each = agg.calls.iter().enumerate();
            join_all(each.map(|(i, c)| one(gw, c, i, &requests[i], deadline, calls))).await
        }
        AggregateMode::Sequential => {
            let mut out = Vec::with_capacity(agg.calls.len());
            for (i, c) in agg.calls.iter().enumerate() {
                let r = one(gw, c, i, &requests[i], deadline, calls).await;
                let required_failed = r.is_err() && c.config.required;
                out.push(r);
                if required_failed {
                    break;
                }
            }
            out
        }
    }
}

/// The response body, one JSON object keyed by call name (failed optional calls give their
/// fallback and are named in the second value), or the failure of a required call.
fn json_body<'a>(
    agg: &'a Aggregate,
    results: Vec<Result<Answer, CallFailure>>,
    deadline: &Deadline,
) -> Result<(BytesMut, Vec<&'a str>), ProxyError> {
    let mut body = BytesMut::with_capacity(1024);
    body.put_u8(b'{');
    let mut degraded: Vec<&str> = Vec::new();
    for (i, (call, result)) in agg.calls.iter().zip(results).enumerate() {
        let value: Bytes = match result {
            Ok(v) => v.0,
            Err(failure) if call.config.required => {
                return Err(failure.into_proxy_error(&call.name, deadline.budget()));
            }
            Err(_) => {
                degraded.push(&call.name);
                Bytes::copy_from_slice(call.config.fallback.as_bytes())
            }
        };
        if i > 0 {
            body.put_u8(b',');
        }
        let name = serde_json::Value::String(call.name.to_string()).to_string();
        body.put_slice(name.as_bytes());
        body.put_u8(b':');
        body.put_slice(&value);
    }
    body.put_u8(b'}');
    Ok((body, degraded))
}

/// Writes the aggregate response: `200`, JSON, `x-hopline-degraded` naming the calls
/// served from their fallback.
async fn respond<S: Sink>(
    sink: &mut S,
    request_id: &str,
    body: &[u8],
    degraded: &[&str],
) -> Result<(), ProxyError> {
    let mut headers = Headers::new();
    headers.push("content-type", "application/json");
    let id = Bytes::copy_from_slice(request_id.as_bytes());
    headers.push("x-request-id", id);
    if !degraded.is_empty() {
        headers.push("x-hopline-degraded", degraded.join(","));
    }
    let start = ResponseStart {
        status: 200,
        reason: Bytes::from_static(b"OK"),
        headers,
        body: BodySize::Known(body.len() as u64),
    };
    // Every client protocol carries a known-length body; should one not, nothing was sent.
    sink.start(start)
        .map_err(|e| ProxyError::NotImplemented { what: e.0 })?;
    // The sink drops the body of a response to HEAD (one would corrupt the next response).
    sink.data(body);
    sink.finish();
    sink.flush().await
}

/// One call: bounded by `min(its timeout, time left)`; its JSON body or why not.
async fn one(
    gw: &Gateway,
    call: &Call,
    i: usize,
    fwd: &Forward,
    deadline: &Deadline,
    calls: &CallsCell,
) -> Result<Answer, CallFailure> {
    let started = Instant::now();
    let result = if deadline.expired(started) {
        Err(CallFailure::NotStarted("deadline spent"))
    } else {
        calls.update(i, |r| r.state = CallState::Running);
        let d = deadline.narrowed(started, call.config.timeout);
        // Records attempts, status and time also when this future is dropped mid-call
        // (client gone): the log then says what the upstream really saw.
        let running = RunningCall {
            calls,
            i,
            started,
            progress: ProgressCell::default(),
        };
        attempt(gw, call, fwd, &d, &running.progress).await
    };
    calls.update(i, |r| {
        r.state = CallState::Done;
        r.duration = started.elapsed();
        if let Err(e) = &result {
            r.cause = Some(hopline_core::error::cause_chain(e));
            if let CallFailure::Proxy(p) = e {
                r.phase = p.upstream_phase();
            }
            r.fallback = !call.config.required;
        }
    });
    if result.is_err() && !call.config.required {
        if let Some((fallback, answered)) = call.shape.clash() {
            let up = &gw.upstreams[call.upstream].name;
            let detail = format!(
                "its fallback is {fallback} but {up} answered {answered}: clients get another shape when it falls back; give fallback the answer's shape"
            );
            gw.log.announce(
                "call",
                &[("call", &call.name), ("upstream", up)],
                "fallback_shape",
                &detail,
                format_args!("aggregate call {}: {detail}", call.name),
            );
        }
    }
    result
}

async fn attempt(
    gw: &Gateway,
    call: &Call,
    fwd: &Forward,
    deadline: &Deadline,
    progress: &ProgressCell,
) -> Result<Answer, CallFailure> {
    let hop = Hop::new(gw, call.upstream, fwd, deadline, progress);
    let up = hop.up;
    // A call has no body.
    let opened = open(&hop, &mut RequestBody::full(Bytes::new()))
        .await
        .map_err(CallFailure::Proxy)?;
    let endpoint = opened.reporter();
    let (status, body, grant) = collect(&hop, opened, call.config.max_body_bytes)
        .await
        .inspect_err(|e| endpoint.failed(e))
        .map_err(CallFailure::Proxy)?;
    let upstream = up.name.clone();
    if !(200..300).contains(&status) {
        return Err(CallFailure::Status { upstream, status });
    }
    // Checked to be JSON without building it: a tree of a 4 MiB body would take many
    // times its size.
    serde_json::from_slice::<serde::de::IgnoredAny>(&body)
        .map_err(|source| CallFailure::NotJson { upstream, source })?;
    call.shape.answered(&body);
    Ok((body, grant))
}

/// The request a call sends: its method and path (placeholders filled), the client's query
/// if asked, `host`, `x-request-id` and the forwarded headers.
fn call_request(
    gw: &Gateway,
    call: &Call,
    head: &crate::front::Request,
    (request_id, trace): (&str, &crate::observe::trace::TraceCx),
) -> Result<Forward, PlaceholderError> {
    let c = &call.config;
    let query = head.query();
    let mut path = fill(&c.path, query, &head.headers).map_err(|value| PlaceholderError {
        call: call.name.clone(),
        value,
    })?;
    if let (true, Some(q)) = (c.forward_query, query) {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(q);
    }
    let mut out = BytesMut::with_capacity(256);
    put_request_line(&mut out, c.method.as_bytes(), path.as_bytes());
    let host = gw.upstreams[call.upstream].default_host();
    put_header(&mut out, b"host", host.as_bytes());
    put_header(&mut out, b"x-request-id", request_id.as_bytes());
    put_header(&mut out, b"accept", b"application/json");
    for name in &c.forward_headers {
        // A call's trace headers are its own (sent per attempt), whatever is forwarded.
        if crate::exchange::forward::is_trace_header(name.as_bytes()) {
            continue;
        }
        for v in head.headers.get_all(name) {
            put_header(&mut out, name.as_bytes(), v);
        }
    }
    // A call has no body.
    put_framing(&mut out, request_framing(c.method.as_bytes(), 0));
    Ok(Forward {
        head: out,
        chunked: false,
        idempotent: matches!(
            c.method.as_str(),
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"
        ),
        is_head: c.method == "HEAD",
        grpc: false,
        upgrade: false,
        margin: gw.config.deadline.margin,
        trace: Some(trace.clone()),
        call: Some(call.name.clone()),
    })
}

/// Replaces `{query.NAME}` and `{header.NAME}` (missing values become empty). Each value
/// is decoded once and percent-encoded as one path segment, so `/`, `%2F`, `?` or `#`
/// cannot change the path; a value that is `.` or `..` is refused (`Err(value)`), since
/// upstreams resolve dot-segments even when encoded.
fn fill(template: &str, query: Option<&str>, headers: &Headers) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return Ok(out);
        };
        let value: Option<Vec<u8>> = match after[..close].split_once('.') {
            Some(("query", name)) => query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|kv| {
                    kv.split_once('=')
                        .filter(|(k, _)| *k == name)
                        .map(|(_, v)| v)
                })
                .map(|v| percent_decode(v.as_bytes())),
            Some(("header", name)) => headers.get(name).map(<[u8]>::to_vec),
            _ => None,
        };
        if let Some(v) = value {
            if v == b"." || v == b".." {
                return Err(String::from_utf8_lossy(&v).into_owned());
            }
            percent_encode(&mut out, &v);
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Decodes `%XX` escapes (and `+` as a space, as query strings use it); invalid escapes
/// stay as they are.
fn percent_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match v[i] {
            b'%' if i + 2 < v.len() => match (hex(v[i + 1]), hex(v[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn percent_encode(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
}

/// Polls every future in this task until all are done: no spawned work can outlive the
/// request, and dropping the result future drops every call.
pub(crate) async fn join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (f, slot) in pending.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => all = false,
                }
            }
        }
        if all {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn placeholders_are_filled_and_encoded() {
        let mut raw = BytesMut::from(
            "GET /b?uid=42&x=1&p=a%2Fb&d=..&e=%2E%2E HTTP/1.1\r\nHost: h\r\nX-User: a b/c\r\n\r\n",
        );
        let head = hopline_h1::head::parse_request(&mut raw, hopline_h1::HeadLimits::new(4096))
            .expect("ok")
            .expect("head");
        let q = head.query();
        assert_eq!(
            fill("/coupons/{query.uid}?u={header.x-user}", q, &head.headers),
            Ok("/coupons/42?u=a%20b%2Fc".to_string())
        );
        assert_eq!(
            fill("/c/{query.missing}", q, &head.headers),
            Ok("/c/".to_string())
        );
        // `%2F` stays inside the segment, encoded; dot-segments are refused.
        assert_eq!(
            fill("/c/{query.p}", q, &head.headers),
            Ok("/c/a%2Fb".to_string())
        );
        assert_eq!(
            fill("/c/{query.d}", q, &head.headers),
            Err("..".to_string())
        );
        assert_eq!(
            fill("/c/{query.e}", q, &head.headers),
            Err("..".to_string())
        );
        assert_eq!(percent_decode(b"%zz%4"), b"%zz%4");
    }
}
