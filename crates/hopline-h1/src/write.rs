//! Every HTTP/1.1 head hopline writes — the gateway's responses and upstream requests, the
//! admin and chaos APIs, the mock, health checks, the OTLP exporter, the drill's load —
//! is written here, one writer per role:
//!
//! - a **response head**: [`put_status_line`], fields, [`put_framing`], [`end_head`]; or a
//!   whole small answer with [`put_response`];
//! - a **request head**: [`put_request_line`], fields, [`put_framing`], [`end_head`]; or a
//!   whole request with [`put_request`];
//! - the body's framing (`content-length` or `transfer-encoding`) one way,
//!   [`put_framing`], with the rules of when there is none ([`response_framing`],
//!   [`request_framing`]).
//!
//! Field names are written as given (lowercase by convention); values are the caller's,
//! already checked (received heads were parsed strictly, configured values validated).

use bytes::{BufMut, BytesMut};

/// How a message says where its body ends, written by [`put_framing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing<'a> {
    /// `content-length: N`.
    Length(u64),
    /// `content-length` with a received value as it was (a response to `HEAD` declares
    /// the length of a body it does not carry).
    Declared(&'a [u8]),
    /// `transfer-encoding: CODINGS` (`chunked`, or codings ending in it).
    Coded(&'a [u8]),
    /// No framing field: there is no body (1xx, 204, 304, a request without one), the body
    /// ends when the connection closes (HTTP/1.0), or a relayed head's own fields say it.
    Unstated,
}

/// Writes `name: value\r\n`.
pub fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Writes `HTTP/1.1 STATUS REASON\r\n`.
pub fn put_status_line(out: &mut BytesMut, status: u16, reason: &[u8]) {
    out.reserve(reason.len() + 15);
    out.put_slice(b"HTTP/1.1 ");
    put_decimal(out, u64::from(status));
    out.put_u8(b' ');
    out.put_slice(reason);
    out.put_slice(b"\r\n");
}

/// Writes `METHOD TARGET HTTP/1.1\r\n`.
pub fn put_request_line(out: &mut BytesMut, method: &[u8], target: &[u8]) {
    out.reserve(method.len() + target.len() + 12);
    out.put_slice(method);
    out.put_u8(b' ');
    out.put_slice(target);
    out.put_slice(b" HTTP/1.1\r\n");
}

/// Writes the body's framing field, if it has one: the only place `content-length` and
/// `transfer-encoding` are written.
pub fn put_framing(out: &mut BytesMut, framing: Framing<'_>) {
    match framing {
        Framing::Length(n) => put_content_length(out, n),
        Framing::Declared(v) => put_header(out, b"content-length", v),
        Framing::Coded(codings) => put_header(out, b"transfer-encoding", codings),
        Framing::Unstated => {}
    }
}

/// Ends a head: `connection: close` when `close`, then the blank line.
pub fn end_head(out: &mut BytesMut, close: bool) {
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
}

/// The framing of a response of `status` with a body of `len` bytes: none for 1xx, 204 and
/// 304 (RFC 9110 §8.6: they have no content), `content-length` otherwise.
pub fn response_framing(status: u16, len: u64) -> Framing<'static> {
    if has_content(status) {
        Framing::Length(len)
    } else {
        Framing::Unstated
    }
}

/// Whether a response of `status` has content: not 1xx, 204 or 304 (RFC 9110 §6.4.1).
fn has_content(status: u16) -> bool {
    status >= 200 && status != 204 && status != 304
}

/// The framing of a request of `method` with a body of `len` bytes: `content-length` when
/// there is a body or the method usually has one (`POST`, `PUT`, `PATCH`: some servers
/// answer 411 without it), none otherwise.
pub fn request_framing(method: &[u8], len: u64) -> Framing<'static> {
    if len > 0 || matches!(method, b"POST" | b"PUT" | b"PATCH") {
        Framing::Length(len)
    } else {
        Framing::Unstated
    }
}

/// Writes a whole response whose body is in memory: the status line with its reason
/// phrase, `fields`, the framing [`response_framing`] gives, `connection: close` when
/// `close`, the blank line and the body (left out when `head_only`: a response to `HEAD`).
pub fn put_response<N, V>(
    out: &mut BytesMut,
    status: u16,
    fields: impl IntoIterator<Item = (N, V)>,
    body: &[u8],
    close: bool,
    head_only: bool,
) where
    N: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    out.reserve(160 + body.len());
    put_status_line(out, status, crate::head::reason_phrase(status).as_bytes());
    for (name, value) in fields {
        put_header(out, name.as_ref(), value.as_ref());
    }
    put_framing(out, response_framing(status, body.len() as u64));
    end_head(out, close);
    if !head_only && has_content(status) {
        out.put_slice(body);
    }
}

/// Writes a whole request: the request line, `fields`, the framing [`request_framing`]
/// gives, the blank line and the body.
pub fn put_request<N, V>(
    out: &mut BytesMut,
    method: &[u8],
    target: &[u8],
    fields: impl IntoIterator<Item = (N, V)>,
    body: &[u8],
) where
    N: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    out.reserve(256 + body.len());
    put_request_line(out, method, target);
    for (name, value) in fields {
        put_header(out, name.as_ref(), value.as_ref());
    }
    put_framing(out, request_framing(method, body.len() as u64));
    end_head(out, false);
    out.put_slice(body);
}

/// Writes `content-length: N\r\n`.
pub fn put_content_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    put_decimal(out, n);
    out.put_slice(b"\r\n");
}

/// Writes a decimal number without allocating.
pub fn put_decimal(out: &mut BytesMut, n: u64) {
    out.put_slice(hopline_core::text::decimal(n, &mut [0; 20]));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &BytesMut) -> &str {
        std::str::from_utf8(b).expect("ascii")
    }

    #[test]
    fn a_whole_response_is_framed_by_its_status() {
        let mut out = BytesMut::new();
        put_response(
            &mut out,
            200,
            [("content-type", "text/plain")],
            b"hi",
            false,
            false,
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nhi"
        );
        let mut out = BytesMut::new();
        put_response(&mut out, 204, None::<(&str, &str)>, b"", true, false);
        assert_eq!(
            text(&out),
            "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
        );
        let mut out = BytesMut::new();
        put_response(&mut out, 404, None::<(&str, &str)>, b"gone", false, true);
        assert_eq!(
            text(&out),
            "HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\n",
            "a response to HEAD keeps the length and leaves the body out"
        );
    }

    #[test]
    fn a_whole_request_says_its_length_when_it_has_a_body_or_its_method_usually_does() {
        let mut out = BytesMut::new();
        put_request(&mut out, b"GET", b"/x", [("host", "h")], b"");
        assert_eq!(text(&out), "GET /x HTTP/1.1\r\nhost: h\r\n\r\n");
        let mut out = BytesMut::new();
        put_request(&mut out, b"POST", b"/x", [("host", "h")], b"");
        assert_eq!(
            text(&out),
            "POST /x HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n"
        );
        let mut out = BytesMut::new();
        put_request(
            &mut out,
            b"DELETE",
            b"/x",
            [(b"host".as_slice(), b"h".as_slice())],
            b"{}",
        );
        assert_eq!(
            text(&out),
            "DELETE /x HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn framing_is_written_one_way() {
        let mut out = BytesMut::new();
        put_framing(&mut out, Framing::Length(12));
        put_framing(&mut out, Framing::Declared(b"7"));
        put_framing(&mut out, Framing::Coded(b"gzip, chunked"));
        put_framing(&mut out, Framing::Unstated);
        assert_eq!(
            text(&out),
            "content-length: 12\r\ncontent-length: 7\r\ntransfer-encoding: gzip, chunked\r\n"
        );
    }

    #[test]
    fn decimal_writer() {
        let mut out = BytesMut::new();
        put_decimal(&mut out, 0);
        put_decimal(&mut out, 18446744073709551615);
        assert_eq!(&out[..], b"018446744073709551615");
    }
}
