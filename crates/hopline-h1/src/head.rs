//! Message heads: parsing with `httparse`, header access, framing rules, serialization.

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};

use crate::body::BodyLength;

/// Most header fields accepted in one message.
pub const MAX_HEADERS: usize = 128;

/// HTTP version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

/// Why a head could not be parsed or framed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The head is larger than the limit.
    #[error("head larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// More than [`MAX_HEADERS`] header fields.
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// Not valid HTTP/1.x syntax.
    #[error("invalid HTTP/1.x syntax")]
    Syntax(#[source] httparse::Error),
    /// Both `Content-Length` and `Transfer-Encoding` were sent (request smuggling risk).
    #[error("both content-length and transfer-encoding present")]
    AmbiguousLength,
    /// `Content-Length` is not a number, or several differ.
    #[error("invalid content-length")]
    BadContentLength,
    /// A `Transfer-Encoding` other than a final `chunked`.
    #[error("unsupported transfer-encoding")]
    UnsupportedTransferEncoding,
}

/// Header fields in received order; names compare case-insensitively.
///
/// Parsed fields are offsets into the received head (one shared buffer for the whole
/// list, no per-field reference count); fields pushed later own their bytes.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    /// The received head that `Field::At` offsets point into (empty for built lists).
    head: Bytes,
    fields: Vec<Field>,
}

#[derive(Debug, Clone)]
enum Field {
    /// `(start, len)` of the name and of the value within `Headers::head`.
    At { name: Span, value: Span },
    /// A field added after parsing.
    Owned(Bytes, Bytes),
}

fn at(head: &[u8], (off, n): Span) -> &[u8] {
    &head[off..off + n]
}

fn name_of<'a>(head: &'a [u8], f: &'a Field) -> &'a [u8] {
    match f {
        Field::At { name, .. } => at(head, *name),
        Field::Owned(n, _) => n,
    }
}

fn value_of<'a>(head: &'a [u8], f: &'a Field) -> &'a [u8] {
    match f {
        Field::At { value, .. } => at(head, *value),
        Field::Owned(_, v) => v,
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Headers::default()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Every value of `name`.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// True when `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Appends a field.
    pub fn push(&mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.fields.push(Field::Owned(name.into(), value.into()));
    }

    /// Removes every field named `name`.
    pub fn remove(&mut self, name: &str) {
        self.retain(|n| !n.eq_ignore_ascii_case(name.as_bytes()));
    }

    /// Keeps only the fields for which `keep(name)` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        let head = &self.head;
        self.fields.retain(|f| keep(name_of(head, f)));
    }

    /// All fields in order, as `(name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|f| (name_of(&self.head, f), value_of(&self.head, f)))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// True when a comma-separated header `name` lists `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
        })
    }

    /// Writes every field as `name: value\r\n`.
    pub fn write_to(&self, out: &mut BytesMut) {
        for (n, v) in self.iter() {
            put_header(out, n, v);
        }
    }
}

/// A request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method token, e.g. `GET`.
    pub method: Bytes,
    /// The request target as sent, e.g. `/api/benefits?uid=1`.
    pub target: Bytes,
    /// The version.
    pub version: Version,
    /// Header fields.
    pub headers: Headers,
}

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Reason phrase as sent.
    pub reason: Bytes,
    /// The version.
    pub version: Version,
    /// Header fields.
    pub headers: Headers,
}

impl RequestHead {
    /// The method as text (always ASCII: httparse only accepts token characters).
    pub fn method_str(&self) -> &str {
        std::str::from_utf8(&self.method).unwrap_or("")
    }

    /// The target as text (lossy only for bytes httparse would not accept anyway).
    pub fn target_str(&self) -> &str {
        std::str::from_utf8(&self.target).unwrap_or("")
    }

    /// The path part of the target, without the query string.
    pub fn path(&self) -> &str {
        let t = self.target_str();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// True when the client wants the connection kept open after this exchange.
    pub fn keep_alive(&self) -> bool {
        keep_alive(self.version, &self.headers)
    }

    /// How the request body is framed (RFC 9112 §6.3 for requests).
    pub fn body_length(&self) -> Result<BodyLength, ParseError> {
        match framing(&self.headers)? {
            Framing::Chunked => Ok(BodyLength::Chunked),
            Framing::Length(0) | Framing::None => Ok(BodyLength::Empty),
            Framing::Length(n) => Ok(BodyLength::Length(n)),
            // A request with a non-chunked transfer coding cannot be delimited.
            Framing::OtherCoding => Err(ParseError::UnsupportedTransferEncoding),
        }
    }

    /// True for methods RFC 9110 defines as idempotent.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            &self.method[..],
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        )
    }
}

impl ResponseHead {
    /// How the response body is framed, given the request method (RFC 9112 §6.3).
    pub fn body_length(&self, request_was_head: bool) -> Result<BodyLength, ParseError> {
        if request_was_head
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            return Ok(BodyLength::Empty);
        }
        match framing(&self.headers)? {
            Framing::Chunked => Ok(BodyLength::Chunked),
            Framing::Length(0) => Ok(BodyLength::Empty),
            Framing::Length(n) => Ok(BodyLength::Length(n)),
            Framing::None | Framing::OtherCoding => Ok(BodyLength::UntilClose),
        }
    }

    /// True when the connection may be reused after this response.
    pub fn keep_alive(&self) -> bool {
        keep_alive(self.version, &self.headers)
    }
}

enum Framing {
    None,
    Length(u64),
    Chunked,
    OtherCoding,
}

fn framing(headers: &Headers) -> Result<Framing, ParseError> {
    let mut te_last: Option<Bytes> = None;
    let mut length: Option<u64> = None;
    for (name, value) in headers.iter() {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in value.split(|&b| b == b',') {
                let c = trim(coding);
                if !c.is_empty() {
                    te_last = Some(Bytes::copy_from_slice(c));
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                let n = parse_decimal(trim(part)).ok_or(ParseError::BadContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(ParseError::BadContentLength);
                }
                length = Some(n);
            }
        }
    }
    match (te_last, length) {
        (Some(_), Some(_)) => Err(ParseError::AmbiguousLength),
        (Some(te), None) if te.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
        (Some(_), None) => Ok(Framing::OtherCoding),
        (None, Some(n)) => Ok(Framing::Length(n)),
        (None, None) => Ok(Framing::None),
    }
}

fn keep_alive(version: Version, headers: &Headers) -> bool {
    match version {
        Version::Http11 => !headers.has_token("connection", "close"),
        Version::Http10 => headers.has_token("connection", "keep-alive"),
    }
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Trims ASCII spaces and tabs.
pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Header names that are hop-by-hop per RFC 9110 §7.6.1 and never forwarded.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    // Every such name is 2 to 18 bytes long and starts with one of these letters.
    if !(2..=18).contains(&name.len())
        || !matches!(
            name[0].to_ascii_lowercase(),
            b'c' | b'k' | b'p' | b't' | b'u'
        )
    {
        return false;
    }
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Removes hop-by-hop fields, the fields named by `Connection`, and the framing fields
/// (`Content-Length`); the sender re-frames the message itself.
pub fn strip_hop_by_hop(headers: &mut Headers) {
    // Fields named by `Connection` go too; `close` and hop-by-hop names need no listing (so
    // the usual `keep-alive` / `close` collect nothing, and an empty Vec allocates nothing).
    let listed: Vec<Bytes> = headers
        .get_all("connection")
        .flat_map(|v| v.split(|&b| b == b',').map(trim))
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !is_hop_by_hop(t))
        .map(Bytes::copy_from_slice)
        .collect();
    headers.retain(|n| {
        !is_hop_by_hop(n)
            && !n.eq_ignore_ascii_case(b"content-length")
            && !listed.iter().any(|l| l.eq_ignore_ascii_case(n))
    });
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
    out.put_slice(b"HTTP/1.1 ");
    put_decimal(out, u64::from(status));
    out.put_u8(b' ');
    out.put_slice(reason);
    out.put_slice(b"\r\n");
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

/// Where a parsed slice lies in the buffer it was parsed from: (offset, length).
type Span = (usize, usize);

fn span_of(base: usize, s: &[u8]) -> Span {
    (s.as_ptr() as usize - base, s.len())
}

/// The head's length once complete, `None` while partial; errors for bad or oversized heads.
fn head_len(
    parsed: Result<httparse::Status<usize>, httparse::Error>,
    buffered: usize,
    max_head: usize,
) -> Result<Option<usize>, ParseError> {
    match parsed {
        Err(httparse::Error::TooManyHeaders) => Err(ParseError::TooManyHeaders),
        Err(e) => Err(ParseError::Syntax(e)),
        Ok(httparse::Status::Partial) if buffered > max_head => {
            Err(ParseError::TooLarge { limit: max_head })
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) if len > max_head => {
            Err(ParseError::TooLarge { limit: max_head })
        }
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
    }
}

/// Splits the head's `len` bytes off `buf` (zero-copy) and builds its header list.
fn split_head(buf: &mut BytesMut, len: usize, fields: Vec<(Span, Span)>) -> (Bytes, Headers) {
    let bytes = buf.split_to(len).freeze();
    let mut list = Vec::with_capacity(fields.len() + 4);
    list.extend(
        fields
            .into_iter()
            .map(|(name, value)| Field::At { name, value }),
    );
    let headers = Headers {
        head: bytes.clone(),
        fields: list,
    };
    (bytes, headers)
}

fn version_of(minor: Option<u8>) -> Version {
    if minor == Some(0) {
        Version::Http10
    } else {
        Version::Http11
    }
}

/// Parses a request head from the front of `buf`. On success the head's bytes are split
/// off `buf` (zero-copy: fields are slices of them); `Ok(None)` means more bytes are needed.
pub fn parse_request(
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<Option<RequestHead>, ParseError> {
    // Uninitialised slots: zeroing 128 of them would cost more than parsing a typical head.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(buf, &mut fields);
    let Some(len) = head_len(parsed, buf.len(), max_head)? else {
        return Ok(None);
    };
    let base = buf.as_ptr() as usize;
    let method = span_of(base, req.method.unwrap_or_default().as_bytes());
    let target = span_of(base, req.path.unwrap_or_default().as_bytes());
    let version = version_of(req.version);
    let spans = req
        .headers
        .iter()
        .map(|h| (span_of(base, h.name.as_bytes()), span_of(base, h.value)))
        .collect();
    let (bytes, headers) = split_head(buf, len, spans);
    let slice = |(off, n): Span| bytes.slice(off..off + n);
    Ok(Some(RequestHead {
        method: slice(method),
        target: slice(target),
        version,
        headers,
    }))
}

/// Parses a response head from the front of `buf` (see [`parse_request`]).
pub fn parse_response(
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<Option<ResponseHead>, ParseError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut fields,
    );
    let Some(len) = head_len(parsed, buf.len(), max_head)? else {
        return Ok(None);
    };
    let base = buf.as_ptr() as usize;
    let status = res.code.unwrap_or(0);
    let reason = res.reason.map(|r| span_of(base, r.as_bytes()));
    let version = version_of(res.version);
    let spans = res
        .headers
        .iter()
        .map(|h| (span_of(base, h.name.as_bytes()), span_of(base, h.value)))
        .collect();
    let (bytes, headers) = split_head(buf, len, spans);
    let reason = reason
        .map(|(off, n)| bytes.slice(off..off + n))
        .unwrap_or_default();
    Ok(Some(ResponseHead {
        status,
        reason,
        version,
        headers,
    }))
}

/// The standard reason phrase for a status code (empty when unknown).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Result<Option<RequestHead>, ParseError> {
        let mut b = BytesMut::from(raw);
        parse_request(&mut b, 8192)
    }

    #[test]
    fn parses_head_and_leaves_body_bytes() {
        let mut b = BytesMut::from("GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\nrest");
        let h = parse_request(&mut b, 8192).expect("ok").expect("complete");
        assert_eq!(h.method_str(), "GET");
        assert_eq!(h.path(), "/a");
        assert_eq!(h.headers.get("x-a"), Some(&b"1"[..]));
        assert_eq!(&b[..], b"rest");
        assert!(h.keep_alive());
    }

    #[test]
    fn partial_and_too_large() {
        assert!(matches!(req("GET / HTTP/1.1\r\nHost"), Ok(None)));
        let mut b =
            BytesMut::from(format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(100)).as_str());
        assert!(matches!(
            parse_request(&mut b, 64),
            Err(ParseError::TooLarge { limit: 64 })
        ));
    }

    #[test]
    fn framing_rules() {
        let h = req("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("ok")
            .expect("complete");
        assert!(matches!(h.body_length(), Err(ParseError::AmbiguousLength)));
        let h = req("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")
            .expect("ok")
            .expect("complete");
        assert!(matches!(h.body_length(), Err(ParseError::BadContentLength)));
        let h = req("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert_eq!(h.body_length().expect("len"), BodyLength::Length(5));
        let h = req("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert_eq!(h.body_length().expect("len"), BodyLength::Chunked);
        let h = req("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert!(h.body_length().is_err());
        let h = req("GET / HTTP/1.0\r\n\r\n").expect("ok").expect("c");
        assert!(!h.keep_alive());
        assert_eq!(h.body_length().expect("len"), BodyLength::Empty);
    }

    #[test]
    fn hop_by_hop_and_connection_listed_fields_are_stripped() {
        let mut h = req("GET / HTTP/1.1\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Keep: 2\r\nContent-Length: 0\r\n\r\n")
            .expect("ok")
            .expect("c");
        strip_hop_by_hop(&mut h.headers);
        let names: Vec<_> = h.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec![Bytes::from_static(b"X-Keep")]);
    }

    #[test]
    fn response_framing() {
        let mut b = BytesMut::from("HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n");
        let r = parse_response(&mut b, 8192).expect("ok").expect("c");
        assert_eq!(r.body_length(false).expect("len"), BodyLength::Empty);
        let mut b = BytesMut::from("HTTP/1.0 200 OK\r\n\r\nbody");
        let r = parse_response(&mut b, 8192).expect("ok").expect("c");
        assert_eq!(r.body_length(false).expect("len"), BodyLength::UntilClose);
        assert_eq!(r.body_length(true).expect("len"), BodyLength::Empty);
        assert!(!r.keep_alive());
    }

    #[test]
    fn decimal_writer() {
        let mut out = BytesMut::new();
        put_decimal(&mut out, 0);
        put_decimal(&mut out, 18446744073709551615);
        assert_eq!(&out[..], b"018446744073709551615");
    }
}
