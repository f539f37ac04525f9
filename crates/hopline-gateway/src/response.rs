//! Locally generated responses: the one place where a failure becomes what the client sees.

use bytes::{BufMut, Bytes, BytesMut};
use hopline_core::policy::Decision;
use hopline_core::{Flag, Overflow, ProxyError};
use hopline_h1::head::{reason_phrase, Headers};
use hopline_h1::write::{end_head, put_content_length, put_status_line};
use std::time::Duration;

/// What a locally generated error response says about its request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorContext<'a> {
    /// hopline's own id of the request (the one in the access log).
    pub request_id: &'a str,
    /// The `x-request-id` the request travels under (the client's, or `request_id`).
    pub trace_id: &'a str,
    /// Put the full cause in the body (`server.expose_cause`), not only the short reason.
    pub expose_cause: bool,
    /// This is a response to `HEAD`: the head says how long the body would be, but no
    /// body follows.
    pub head_only: bool,
    /// The request is gRPC: HTTP/2 answers it trailers-only, with `grpc-status`.
    pub grpc: bool,
}

/// The `grpc-message` for `err` answered with `flag`: the short reason (the full cause
/// with `expose_cause`), flag and request id, percent-encoded as gRPC requires.
pub(crate) fn grpc_message(err: &ProxyError, flag: Flag, cx: &ErrorContext<'_>) -> String {
    let reason = if cx.expose_cause {
        err.cause()
    } else {
        err.short_reason()
    };
    let text = format!(
        "{reason} (flag {}, request id {})",
        flag.code(),
        cx.request_id
    );
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A locally generated error response, before any protocol framing.
#[derive(Debug)]
pub(crate) struct ErrorResponse {
    /// The status (per docs/errors.md).
    pub status: u16,
    /// `content-type`, `x-hopline-flags`, `x-request-id`, and `allow` for a 405.
    pub headers: Headers,
    /// Status, short reason, flag and request id, as text.
    pub body: String,
}

/// The response for `err` as the failure policy decided (`d`: its status and flag, per
/// docs/errors.md): `x-hopline-flags`, `x-request-id`, and a short text body: status,
/// short reason, flag and request id (the full cause, with addresses and OS errors, only
/// with `expose_cause`).
pub(crate) fn error_parts(err: &ProxyError, d: &Decision, cx: &ErrorContext<'_>) -> ErrorResponse {
    let reason = if cx.expose_cause {
        err.cause()
    } else {
        err.short_reason()
    };
    let body = format!(
        "{} {}: {reason} (flag {}, request id {})\n",
        d.status,
        reason_phrase(d.status),
        d.flag.code(),
        cx.request_id
    );
    let mut headers = Headers::new();
    headers.push("content-type", "text/plain; charset=utf-8");
    headers.push("x-hopline-flags", d.flag.code());
    if !cx.trace_id.is_empty() {
        headers.push(
            "x-request-id",
            Bytes::copy_from_slice(cx.trace_id.as_bytes()),
        );
    }
    match err {
        ProxyError::MethodNotAllowed { allow, .. } => {
            headers.push("allow", Bytes::copy_from_slice(allow.as_bytes()));
        }
        e => {
            if let Some(after) = retry_after(e) {
                retry_after_field(&mut headers, after);
            }
        }
    }
    ErrorResponse {
        status: d.status,
        headers,
        body,
    }
}

/// The HTTP/1 bytes of the response for `err` ([`error_parts`]), with `connection:
/// close` unless the decision keeps the connection; the body left out for a response to
/// `HEAD`.
pub(crate) fn error_response(err: &ProxyError, d: &Decision, cx: &ErrorContext<'_>) -> BytesMut {
    let r = error_parts(err, d, cx);
    let close = !d.keep;
    let mut out = BytesMut::with_capacity(256 + r.body.len());
    put_status_line(&mut out, r.status, reason_phrase(r.status).as_bytes());
    r.headers.write_to(&mut out);
    // Every error status has content (none is 1xx, 204 or 304).
    put_content_length(&mut out, r.body.len() as u64);
    end_head(&mut out, close);
    if !cx.head_only {
        out.put_slice(r.body.as_bytes());
    }
    out
}

/// `100 Continue`, sent before reading a body the client is holding back.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// When a client refused by hopline's own limits may ask again: for no usable endpoint,
/// the earliest readmission; for a full limit, the queue's expected wait, else 1 s.
pub(crate) fn retry_after(err: &ProxyError) -> Option<Duration> {
    match err {
        ProxyError::NoEndpoint { retry_after, .. } => Some(*retry_after),
        ProxyError::Overflow(Overflow::Queued { why, .. } | Overflow::EgressQueued { why, .. }) => {
            Some(why.retry_after())
        }
        ProxyError::Overflow(_) => Some(Duration::from_secs(1)),
        _ => None,
    }
}

/// `retry-after`: whole seconds (RFC 9110 §10.2.3), rounded up, at least 1.
fn retry_after_field(headers: &mut Headers, after: Duration) {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    headers.push("retry-after", secs.max(1).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_says_short_reason_unless_cause_is_exposed() {
        let err = ProxyError::Upstream(hopline_core::UpstreamError {
            upstream: "coupon".into(),
            endpoint: "10.1.2.3:9001".parse().expect("addr"),
            zone: hopline_core::config::Zone::Egress,
            elapsed: std::time::Duration::from_millis(3),
            kind: hopline_core::UpstreamErrorKind::Reset {
                phase: hopline_core::Phase::ResponseHeaders,
                source: std::io::Error::from_raw_os_error(104),
            },
        });
        let d = hopline_core::policy::Decision {
            status: 502,
            flag: Flag::UpstreamConnectionTermination,
            respond: true,
            keep: true,
            linger: false,
        };
        let mut cx = ErrorContext {
            request_id: "abc",
            trace_id: "abc",
            expose_cause: false,
            head_only: false,
            grpc: false,
        };
        let short = String::from_utf8(error_response(&err, &d, &cx).to_vec()).expect("utf8");
        assert!(
            short.ends_with("upstream coupon reset the connection (flag UC, request id abc)\n"),
            "{short}"
        );
        assert!(
            !short.contains("10.1.2.3") && !short.contains("os error"),
            "{short}"
        );
        cx.expose_cause = true;
        let full = String::from_utf8(error_response(&err, &d, &cx).to_vec()).expect("utf8");
        assert!(
            full.contains("10.1.2.3:9001") && full.contains("os error 104"),
            "{full}"
        );
        cx.head_only = true;
        let head = String::from_utf8(error_response(&err, &d, &cx).to_vec()).expect("utf8");
        assert!(
            head.ends_with("\r\n\r\n") && head.contains("content-length: "),
            "{head}"
        );
    }
}
