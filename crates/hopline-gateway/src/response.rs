//! Locally generated responses: the one place where a failure becomes what the client sees.

use bytes::{BufMut, BytesMut};
use hopline_core::ProxyError;
use hopline_h1::head::{put_content_length, put_header, put_status_line, reason_phrase};

/// Renders the response for `err`: status and flag per DESIGN.md §3, `x-hopline-flags`,
/// `x-request-id`, and a short text body carrying the cause.
pub fn error_response(err: &ProxyError, request_id: &str, close: bool) -> BytesMut {
    let d = err.disposition();
    let body = format!(
        "{} {}: {}\n",
        d.status,
        reason_phrase(d.status),
        err.cause()
    );
    let mut out = BytesMut::with_capacity(256 + body.len());
    put_status_line(&mut out, d.status, reason_phrase(d.status).as_bytes());
    put_header(&mut out, b"content-type", b"text/plain; charset=utf-8");
    put_header(&mut out, b"x-hopline-flags", d.flag.code().as_bytes());
    if !request_id.is_empty() {
        put_header(&mut out, b"x-request-id", request_id.as_bytes());
    }
    put_content_length(&mut out, body.len() as u64);
    if close {
        put_header(&mut out, b"connection", b"close");
    }
    out.put_slice(b"\r\n");
    out.put_slice(body.as_bytes());
    out
}

/// `100 Continue`, sent before reading a body the client is holding back.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
