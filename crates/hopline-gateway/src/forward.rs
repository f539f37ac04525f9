//! The request an upstream receives: rendered once from the client's request, whatever
//! protocol carried it, and sent as HTTP/1.1 by every attempt.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use hopline_core::text::push_ip;
use hopline_h1::client::put_request_line;
use hopline_h1::head::{put_content_length, put_header, strip_hop_by_hop};

use crate::gateway::Gateway;
use crate::proxy::Forward;
use crate::request::Request;
use crate::trace::TraceCx;

/// Renders the upstream request head: origin-form target, hop-by-hop fields removed,
/// `x-request-id` and `x-forwarded-for` set (every received `x-forwarded-for` merged, then
/// the client's address), the body re-framed with `content-length`.
pub(crate) fn forward(
    gw: &Gateway,
    req: &mut Request,
    body: Bytes,
    (request_id, trace): (&str, &TraceCx),
    peer: SocketAddr,
    (upstream, upgrade): (usize, bool),
) -> Forward {
    let mut out = BytesMut::with_capacity(512);
    put_request_line(&mut out, &req.method, &req.origin);
    strip_hop_by_hop(&mut req.headers);
    // Room for received values and the client's address without growing (an IPv4
    // address pushed into an empty Vec reallocated twice on every request).
    let mut forwarded_for: Vec<u8> = Vec::with_capacity(64);
    let mut has_host = false;
    for (n, value) in req.headers.iter() {
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
            || is_trace_header(n)
        {
            continue;
        }
        has_host |= n.eq_ignore_ascii_case(b"host");
        put_header(&mut out, n, value);
    }
    if !has_host {
        let host = gw.upstreams[upstream].default_host();
        put_header(&mut out, b"host", host.as_bytes());
    }
    put_header(&mut out, b"x-request-id", request_id.as_bytes());
    if !forwarded_for.is_empty() {
        forwarded_for.extend_from_slice(b", ");
    }
    push_ip(&mut forwarded_for, peer.ip());
    put_header(&mut out, b"x-forwarded-for", &forwarded_for);
    if upgrade {
        // Hop-by-hop, so removed above; an upgrade the route allows is asked for again.
        put_header(&mut out, b"connection", b"upgrade");
        put_header(&mut out, b"upgrade", b"websocket");
    }
    let method = &req.method[..];
    if !body.is_empty() || matches!(method, b"POST" | b"PUT" | b"PATCH") {
        put_content_length(&mut out, body.len() as u64);
    }
    Forward {
        head: out,
        body,
        idempotent: req.is_idempotent(),
        is_head: method == b"HEAD",
        grpc: req.is_grpc(),
        upgrade,
        margin: gw.config.deadline.margin,
        trace: Some(trace.clone()),
        call: None,
    }
}

/// `traceparent` and `tracestate`: each attempt sends its own.
pub(crate) fn is_trace_header(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"traceparent") || name.eq_ignore_ascii_case(b"tracestate")
}
