//! The request an upstream receives: rendered once from the client's request, whatever
//! protocol carried it, and sent as HTTP/1.1 by every attempt.

use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, BytesMut};
use hopline_h1::head::{strip_hop_by_hop, Headers};
use hopline_h1::write::{put_framing, put_header, put_request_line, request_framing, Framing};

use crate::exchange::attempt::Forward;
use crate::front::Request;
use crate::gateway::Gateway;
use crate::observe::trace::TraceCx;

/// Renders the upstream request head: origin-form target, hop-by-hop fields removed,
/// `x-request-id` and `x-forwarded-for` set (every received `x-forwarded-for` merged, then
/// the client's address), the body re-framed: `content-length` when its `length` is known,
/// else chunked.
pub(crate) fn forward(
    gw: &Gateway,
    req: &mut Request,
    length: Option<u64>,
    (request_id, trace): (&str, &TraceCx),
    (peer, trusted): (SocketAddr, bool),
    (upstream, upgrade): (usize, bool),
) -> Forward {
    let mut out = BytesMut::with_capacity(512);
    put_request_line(&mut out, &req.method, &req.origin);
    strip_hop_by_hop(&mut req.headers);
    let mut has_forwarded_for = false;
    let mut has_host = false;
    req.headers
        .write_where(&mut out, |n| match ForwardRule::of(n) {
            ForwardRule::ForwardedFor => {
                has_forwarded_for = true;
                false
            }
            ForwardRule::Replaced => false,
            // An untrusted client's say on where it came from, or on what hopline says.
            ForwardRule::FromTrusted => trusted,
            ForwardRule::Host => {
                has_host = true;
                true
            }
            ForwardRule::Kept => true,
        });
    if !has_host {
        let host = gw.upstreams[upstream].default_host();
        put_header(&mut out, b"host", host.as_bytes());
    }
    put_header(&mut out, b"x-request-id", request_id.as_bytes());
    // From an untrusted peer the received x-forwarded-for is dropped: the peer is the
    // client as far as anyone behind hopline can know.
    put_forwarded_for(
        &mut out,
        (has_forwarded_for && trusted).then_some(&req.headers),
        peer.ip(),
    );
    if upgrade {
        // Hop-by-hop, so removed above; an upgrade the route allows is asked for again.
        put_header(&mut out, b"connection", b"upgrade");
        put_header(&mut out, b"upgrade", b"websocket");
    }
    let method = &req.method[..];
    // A body of no declared length (chunked from an HTTP/1 client, an HTTP/2 stream
    // without content-length) is sent chunk-encoded as it arrives.
    let chunked = length.is_none();
    match length {
        Some(n) => put_framing(&mut out, request_framing(method, n)),
        None => put_framing(&mut out, Framing::Coded(b"chunked")),
    }
    Forward {
        head: out,
        chunked,
        idempotent: req.is_idempotent(),
        is_head: method == b"HEAD",
        grpc: req.is_grpc(),
        upgrade,
        margin: gw.config.deadline.margin,
        trace: Some(trace.clone()),
        call: None,
    }
}

/// What becomes of a received field (hop-by-hop ones already removed) in the upstream head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForwardRule {
    /// Sent as received.
    Kept,
    /// `host`: sent as received, and none added.
    Host,
    /// `x-forwarded-for`: merged into the one the gateway writes (from trusted peers).
    ForwardedFor,
    /// `forwarded`, `x-real-ip`, `x-forwarded-proto`, `x-forwarded-host`, `proxy-status`
    /// and `x-hopline-*`: sent only when the peer is in `server.trusted_proxies`.
    FromTrusted,
    /// The deadline headers (each attempt carries its own budget), `expect` (the gateway
    /// has read the body), `x-request-id` and the trace headers (the gateway writes them).
    Replaced,
}

impl ForwardRule {
    fn of(name: &[u8]) -> ForwardRule {
        if name.len() > 10 && name[..10].eq_ignore_ascii_case(b"x-hopline-") {
            return ForwardRule::FromTrusted;
        }
        // The length and first byte pick the one name a field could be (the trace
        // headers are 10 and 11), so each field costs one or two comparisons.
        let (candidate, rule): (&[u8], _) = match name.len() {
            4 => (b"host", ForwardRule::Host),
            6 => (b"expect", ForwardRule::Replaced),
            9 if name[0].eq_ignore_ascii_case(&b'f') => (b"forwarded", ForwardRule::FromTrusted),
            9 => (b"x-real-ip", ForwardRule::FromTrusted),
            10 | 11 if is_trace_header(name) => return ForwardRule::Replaced,
            12 if name[0].eq_ignore_ascii_case(&b'g') => (b"grpc-timeout", ForwardRule::Replaced),
            12 if name[0].eq_ignore_ascii_case(&b'p') => {
                (b"proxy-status", ForwardRule::FromTrusted)
            }
            12 => (b"x-request-id", ForwardRule::Replaced),
            15 => (b"x-forwarded-for", ForwardRule::ForwardedFor),
            16 => (b"x-forwarded-host", ForwardRule::FromTrusted),
            17 => (b"x-forwarded-proto", ForwardRule::FromTrusted),
            30 => (b"x-envoy-expected-rq-timeout-ms", ForwardRule::Replaced),
            _ => return ForwardRule::Kept,
        };
        if candidate.eq_ignore_ascii_case(name) {
            rule
        } else {
            ForwardRule::Kept
        }
    }
}

/// Writes `x-forwarded-for`: every received value (from `received`, non-empty ones, in
/// order) and then the client's address, written straight into the head (no buffer of
/// its own).
fn put_forwarded_for(out: &mut BytesMut, received: Option<&Headers>, client: IpAddr) {
    out.put_slice(b"x-forwarded-for: ");
    for (n, value) in received.into_iter().flat_map(|h| h.iter()) {
        let value = hopline_h1::head::trim(value);
        if n.eq_ignore_ascii_case(b"x-forwarded-for") && !value.is_empty() {
            out.put_slice(value);
            out.put_slice(b", ");
        }
    }
    match client {
        IpAddr::V4(v4) => out.put_slice(hopline_core::text::ipv4(v4, &mut [0; 15])),
        IpAddr::V6(v6) => {
            let _ = std::fmt::Write::write_fmt(out, format_args!("{v6}"));
        }
    }
    out.put_slice(b"\r\n");
}

/// `traceparent` and `tracestate`: each attempt sends its own.
pub(crate) fn is_trace_header(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"traceparent") || name.eq_ignore_ascii_case(b"tracestate")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded_for(received: &[(&str, &str)], client: &str) -> String {
        let mut headers = Headers::new();
        for (n, v) in received {
            headers.push(n.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        let mut out = BytesMut::new();
        let ip = client.parse().expect("ip");
        put_forwarded_for(&mut out, (!received.is_empty()).then_some(&headers), ip);
        String::from_utf8(out.to_vec()).expect("utf-8")
    }

    #[test]
    fn each_field_gets_the_rule_its_name_asks_for_in_any_case() {
        let expect = [
            ("Host", ForwardRule::Host),
            ("X-Forwarded-For", ForwardRule::ForwardedFor),
            ("x-envoy-expected-rq-timeout-ms", ForwardRule::Replaced),
            ("GRPC-Timeout", ForwardRule::Replaced),
            ("Expect", ForwardRule::Replaced),
            ("X-Request-ID", ForwardRule::Replaced),
            ("traceparent", ForwardRule::Replaced),
            ("TraceState", ForwardRule::Replaced),
            // Same lengths, other names.
            ("hosT2", ForwardRule::Kept),
            ("hust", ForwardRule::Kept),
            ("accept", ForwardRule::Kept),
            ("x-request-ie", ForwardRule::Kept),
            ("grpc-timeouT", ForwardRule::Replaced),
            ("grpc-encoding", ForwardRule::Kept),
            ("content-type", ForwardRule::Kept),
            ("x-forwarded-by", ForwardRule::Kept),
            ("", ForwardRule::Kept),
            ("Forwarded", ForwardRule::FromTrusted),
            ("X-Real-IP", ForwardRule::FromTrusted),
            ("X-Forwarded-Proto", ForwardRule::FromTrusted),
            ("x-forwarded-host", ForwardRule::FromTrusted),
            ("Proxy-Status", ForwardRule::FromTrusted),
            ("X-Hopline-Degraded", ForwardRule::FromTrusted),
            ("x-hopline-", ForwardRule::Kept),
            ("forwardeD", ForwardRule::FromTrusted),
            ("forwarder", ForwardRule::Kept),
            ("x-real-ix", ForwardRule::Kept),
        ];
        for (name, rule) in expect {
            assert_eq!(ForwardRule::of(name.as_bytes()), rule, "{name}");
        }
    }

    #[test]
    fn forwarded_for_lists_received_values_then_the_client() {
        assert_eq!(
            forwarded_for(&[], "10.0.0.7"),
            "x-forwarded-for: 10.0.0.7\r\n"
        );
        assert_eq!(
            forwarded_for(
                &[
                    ("X-Forwarded-For", " 1.1.1.1 "),
                    ("host", "h"),
                    ("x-forwarded-for", ""),
                    ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
                ],
                "::1"
            ),
            "x-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, ::1\r\n"
        );
        assert_eq!(
            forwarded_for(&[], "2001:db8::1:0:0:1"),
            "x-forwarded-for: 2001:db8::1:0:0:1\r\n"
        );
    }
}
