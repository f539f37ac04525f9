//! Message heads: parsing with `httparse`, header access, framing rules, serialization.

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};

use crate::body::BodyLength;
use crate::write::put_header;

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

/// Longest request line accepted by default (`server.max_request_line_bytes`).
pub const DEFAULT_MAX_REQUEST_LINE: usize = 8 * 1024;

/// Size limits applied while a request head is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// The whole head, request line included (→ 431).
    pub max_head: usize,
    /// The request line alone (→ 414).
    pub max_request_line: usize,
}

impl HeadLimits {
    /// `max_head` for the head, [`DEFAULT_MAX_REQUEST_LINE`] for the request line.
    pub fn new(max_head: usize) -> Self {
        HeadLimits {
            max_head,
            max_request_line: DEFAULT_MAX_REQUEST_LINE.min(max_head),
        }
    }
}

/// Why a head could not be parsed or framed.
///
/// Every variant but [`ParseError::UnsupportedTransferEncoding`] (501) and the size limits
/// (414, 431) is a malformed message (400): the connection is closed after the answer.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The head is larger than the limit.
    #[error("head larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request line is longer than the limit.
    #[error("request line longer than {limit} bytes")]
    RequestLineTooLong {
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
    /// `Content-Length` is not `1*DIGIT`, or several differ.
    #[error("invalid content-length")]
    BadContentLength,
    /// `Transfer-Encoding` is not a valid list of codings (empty, junk, `chunked` twice or
    /// not last in a request).
    #[error("invalid transfer-encoding: {0}")]
    BadTransferEncoding(&'static str),
    /// A well-formed transfer coding hopline does not implement (anything but `chunked`).
    #[error("unsupported transfer-encoding")]
    UnsupportedTransferEncoding,
    /// `Transfer-Encoding` on an HTTP/1.0 message (its framing cannot be trusted).
    #[error("transfer-encoding in an HTTP/1.0 message")]
    TransferEncodingHttp10,
    /// An HTTP/1.1 request without `Host`.
    #[error("missing host header")]
    MissingHost,
    /// More than one `Host` field.
    #[error("more than one host header")]
    DuplicateHost,
    /// A `Host` value that is not a valid authority.
    #[error("invalid host header")]
    BadHost,
    /// `Host` differs from the authority of an absolute-form target.
    #[error("host header differs from the request target's authority")]
    HostMismatch,
    /// A request target that is not origin-form, absolute-form (`http`/`https`), `*` for
    /// `OPTIONS`, or authority-form for `CONNECT`.
    #[error("invalid request target")]
    BadTarget,
    /// A complete request head that breaks one of the rules above; its request line is
    /// kept so the rejection can be logged with it.
    #[error("{error}")]
    Rejected {
        /// The method as sent.
        method: Bytes,
        /// The target as sent.
        target: Bytes,
        /// The rule it breaks.
        error: Box<ParseError>,
    },
}

impl ParseError {
    /// The rule broken, without the request line of [`ParseError::Rejected`].
    pub fn rule(&self) -> &ParseError {
        match self {
            ParseError::Rejected { error, .. } => error,
            other => other,
        }
    }
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
        self.write_where(out, |_| true);
    }

    /// Writes as `name: value\r\n` every field for which `keep(name)` is true, in order.
    ///
    /// Received fields that already lie in the head exactly so (one space after the colon,
    /// CRLF after the value) and back to back are copied as one run, so a head forwarded
    /// unchanged costs one copy rather than four per field; the bytes written are the same.
    pub fn write_where(&self, out: &mut BytesMut, mut keep: impl FnMut(&[u8]) -> bool) {
        let head = &self.head[..];
        // The run of verbatim fields not yet written: (start, end) in `head`.
        let mut run = (0, 0);
        for f in &self.fields {
            let name = name_of(head, f);
            if !keep(name) {
                continue;
            }
            match verbatim(head, f) {
                Some((start, end)) if start == run.1 && run.1 > run.0 => run.1 = end,
                Some(span) => {
                    out.put_slice(&head[run.0..run.1]);
                    run = span;
                }
                None => {
                    out.put_slice(&head[run.0..run.1]);
                    run = (0, 0);
                    put_header(out, name, value_of(head, f));
                }
            }
        }
        out.put_slice(&head[run.0..run.1]);
    }
}

/// Where a received field lies in `head` as exactly `name: value\r\n` (what
/// [`put_header`] would write), as (start, end); `None` for fields written otherwise or
/// added after parsing.
fn verbatim(head: &[u8], f: &Field) -> Option<(usize, usize)> {
    let Field::At {
        name: (n, n_len),
        value: (v, v_len),
    } = *f
    else {
        return None;
    };
    let colon = n + n_len;
    let end = v + v_len;
    let exact = n_len > 0
        && v == colon + 2
        && head.get(colon..v) == Some(b": ")
        && head.get(end..end + 2) == Some(b"\r\n");
    exact.then_some((n, end + 2))
}

/// A request head, validated: its framing, `Host` and target obey RFC 9112.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method token, e.g. `GET`.
    pub method: Bytes,
    /// The request target as sent, e.g. `/api/benefits?uid=1` or `http://h/a?b`.
    pub target: Bytes,
    /// Offset in `target` where the origin-form part (path and query) starts: 0 for
    /// origin-form targets, after the authority for absolute-form ones.
    origin_at: usize,
    /// How the body is framed, decided once at parse time.
    length: BodyLength,
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

    /// The target in origin form: path and query (`/a?b` for `http://h/a?b`).
    pub fn origin_form(&self) -> &[u8] {
        match self.target.get(self.origin_at..) {
            Some(o) if !o.is_empty() => o,
            _ if self.origin_at > 0 => b"/",
            _ => &self.target,
        }
    }

    /// [`RequestHead::origin_form`] as shared bytes (no copy for an origin-form target).
    pub fn origin_bytes(&self) -> Bytes {
        match self.target.get(self.origin_at..) {
            Some(o) if !o.is_empty() => self.target.slice(self.origin_at..),
            _ if self.origin_at > 0 => Bytes::from_static(b"/"),
            _ => self.target.clone(),
        }
    }

    /// The origin-form target as text.
    pub fn origin_str(&self) -> &str {
        std::str::from_utf8(self.origin_form()).unwrap_or("")
    }

    /// The path part of the target, without the query string (and without the scheme and
    /// authority of an absolute-form target).
    pub fn path(&self) -> &str {
        let t = self.origin_str();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The query string, if any (without the `?`).
    pub fn query(&self) -> Option<&str> {
        self.origin_str().split_once('?').map(|(_, q)| q)
    }

    /// True when the client wants the connection kept open after this exchange.
    pub fn keep_alive(&self) -> bool {
        keep_alive(self.version, &self.headers)
    }

    /// How the request body is framed (RFC 9112 §6.3 for requests), as validated when the
    /// head was parsed.
    pub fn body_length(&self) -> BodyLength {
        self.length
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
    ///
    /// Errors for ambiguous or malformed framing: `Content-Length` with
    /// `Transfer-Encoding`, differing or non-numeric lengths, `chunked` applied twice,
    /// `Transfer-Encoding` in an HTTP/1.0 response. A final coding other than `chunked`
    /// makes the body close-delimited ([`BodyLength::UntilClose`]).
    pub fn body_length(&self, request_was_head: bool) -> Result<BodyLength, ParseError> {
        self.framing(request_was_head).map(|f| f.length)
    }

    /// [`ResponseHead::body_length`] and whether the body carries transfer codings besides
    /// `chunked` (`gzip, chunked`, or a final non-chunked coding) — then the
    /// `Transfer-Encoding` field must be forwarded as received, and only to HTTP/1.1
    /// clients — read in one pass over the fields.
    pub fn framing(&self, request_was_head: bool) -> Result<ResponseFraming, ParseError> {
        if (100..200).contains(&self.status) || self.status == 204 {
            return Ok(ResponseFraming {
                length: BodyLength::Empty,
                other_codings: false,
                declared: None,
            });
        }
        let f = framing(self.version, &self.headers)?;
        // After HEAD, and on a 304, the fields describe the body a GET would get: their
        // syntax is checked like any other's (one 1*DIGIT value, never with
        // Transfer-Encoding), and no body is read.
        if request_was_head || self.status == 304 {
            return Ok(ResponseFraming {
                length: BodyLength::Empty,
                other_codings: false,
                declared: match f {
                    Framing::Length(n) => Some(n),
                    _ => None,
                },
            });
        }
        let length = match f {
            Framing::Chunked { .. } => BodyLength::Chunked,
            Framing::Length(0) => BodyLength::Empty,
            Framing::Length(n) => BodyLength::Length(n),
            Framing::None | Framing::OtherCoding { .. } => BodyLength::UntilClose,
        };
        let other_codings = matches!(
            f,
            Framing::Chunked { others: true } | Framing::OtherCoding { .. }
        );
        Ok(ResponseFraming {
            length,
            other_codings,
            declared: None,
        })
    }

    /// True when the connection may be reused after this response.
    pub fn keep_alive(&self) -> bool {
        keep_alive(self.version, &self.headers)
    }
}

/// How a response body is delimited, as [`ResponseHead::framing`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFraming {
    /// How the body is delimited.
    pub length: BodyLength,
    /// Transfer codings other than `chunked` are applied (forward `Transfer-Encoding`).
    pub other_codings: bool,
    /// After `HEAD` or on a 304: the `Content-Length` the fields declare (validated), for
    /// the client; no body follows.
    pub declared: Option<u64>,
}

/// How a message is framed, from its `Content-Length` and `Transfer-Encoding` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    /// `chunked` is the final coding; `others` when codings precede it.
    Chunked {
        others: bool,
    },
    /// Transfer codings whose last is not `chunked`; `chunked_inside` when `chunked`
    /// appears earlier.
    OtherCoding {
        chunked_inside: bool,
    },
}

/// Reads the framing fields with the grammar of RFC 9112 §6, positively: a
/// `Transfer-Encoding` list is `1#transfer-coding` (a token, optional `;` parameters), a
/// `Content-Length` is `1*DIGIT` (a list of equal values counts as one value).
fn framing(version: Version, headers: &Headers) -> Result<Framing, ParseError> {
    let mut te_seen = false;
    let mut codings = 0usize;
    let mut chunked = 0usize;
    let mut last_chunked = false;
    let mut length: Option<u64> = None;
    for (name, value) in headers.iter() {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_seen = true;
            for element in value.split(|&b| b == b',') {
                let is_chunked = transfer_coding(trim(element))?;
                codings += 1;
                chunked += usize::from(is_chunked);
                last_chunked = is_chunked;
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
    if !te_seen {
        return Ok(length.map_or(Framing::None, Framing::Length));
    }
    if version == Version::Http10 {
        return Err(ParseError::TransferEncodingHttp10);
    }
    if length.is_some() {
        return Err(ParseError::AmbiguousLength);
    }
    if chunked > 1 {
        return Err(ParseError::BadTransferEncoding(
            "chunked applied more than once",
        ));
    }
    Ok(if last_chunked {
        Framing::Chunked {
            others: codings > 1,
        }
    } else {
        Framing::OtherCoding {
            chunked_inside: chunked > 0,
        }
    })
}

/// One `transfer-coding` element: a token, then optional `;` parameters. True for
/// `chunked` (which takes no parameters).
fn transfer_coding(element: &[u8]) -> Result<bool, ParseError> {
    let (name, params) = match element.iter().position(|&b| b == b';') {
        Some(i) => (trim(&element[..i]), Some(&element[i + 1..])),
        None => (element, None),
    };
    if name.is_empty() {
        return Err(ParseError::BadTransferEncoding("empty coding"));
    }
    if !name.iter().all(|&b| is_tchar(b)) {
        return Err(ParseError::BadTransferEncoding("coding is not a token"));
    }
    let is_chunked = name.eq_ignore_ascii_case(b"chunked");
    if let Some(params) = params {
        if is_chunked {
            return Err(ParseError::BadTransferEncoding(
                "chunked takes no parameters",
            ));
        }
        for param in params.split(|&b| b == b';') {
            let Some(eq) = param.iter().position(|&b| b == b'=') else {
                return Err(ParseError::BadTransferEncoding("parameter without value"));
            };
            let (k, v) = (trim(&param[..eq]), trim(&param[eq + 1..]));
            let quoted = v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"';
            let token = !v.is_empty() && v.iter().all(|&b| is_tchar(b));
            if k.is_empty() || !k.iter().all(|&b| is_tchar(b)) || !(quoted || token) {
                return Err(ParseError::BadTransferEncoding("invalid parameter"));
            }
        }
    }
    Ok(is_chunked)
}

/// `tchar` of RFC 9110 §5.6.2: the characters of a token.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Characters of `host [ ":" port ]`: reg-name, IP literal, percent-encoding.
fn is_authority_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b)
}

/// Validates a parsed request (RFC 9112 §3.2, §6, §7): target form, `Host`, framing.
/// Returns the body framing and where the origin-form part of the target starts.
fn validate_request(
    method: &[u8],
    target: &[u8],
    version: Version,
    headers: &Headers,
) -> Result<(BodyLength, usize), ParseError> {
    let length = match framing(version, headers)? {
        Framing::Chunked { others: false } => BodyLength::Chunked,
        Framing::Chunked { others: true } => return Err(ParseError::UnsupportedTransferEncoding),
        // `chunked` not last: the body length cannot be determined (RFC 9112 §6.3).
        Framing::OtherCoding {
            chunked_inside: true,
        } => {
            return Err(ParseError::BadTransferEncoding(
                "chunked is not the final coding",
            ))
        }
        Framing::OtherCoding {
            chunked_inside: false,
        } => return Err(ParseError::UnsupportedTransferEncoding),
        Framing::Length(0) | Framing::None => BodyLength::Empty,
        Framing::Length(n) => BodyLength::Length(n),
    };
    let (authority, origin_at) = target_form(method, target)?;
    check_host(authority, headers, version == Version::Http11)?;
    Ok((length, origin_at))
}

/// The `Host` rules (RFC 9112 §3.2), for HTTP/1 and for HTTP/2 requests alike (with
/// `:authority` as the target's authority): at most one `host`, a valid authority, equal
/// to `authority` when there is one; none at all only when not `required`.
pub fn check_host(
    authority: Option<&[u8]>,
    headers: &Headers,
    required: bool,
) -> Result<(), ParseError> {
    let mut hosts = headers.get_all("host");
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ParseError::DuplicateHost);
    }
    match host {
        None if required => Err(ParseError::MissingHost),
        None => Ok(()),
        Some(h) => {
            let h = trim(h);
            if !h.iter().all(|&b| is_authority_char(b)) {
                return Err(ParseError::BadHost);
            }
            if authority.is_some_and(|a| !a.eq_ignore_ascii_case(h)) {
                return Err(ParseError::HostMismatch);
            }
            Ok(())
        }
    }
}

/// The authority of an absolute-form (or `CONNECT` authority-form) target, and where the
/// target's origin-form part starts.
fn target_form<'a>(
    method: &[u8],
    target: &'a [u8],
) -> Result<(Option<&'a [u8]>, usize), ParseError> {
    match target.first() {
        Some(b'/') => Ok((None, 0)),
        Some(b'*') if target.len() == 1 && method == b"OPTIONS" => Ok((None, 0)),
        _ if method == b"CONNECT" => {
            if !target.is_empty() && target.iter().all(|&b| is_authority_char(b)) {
                Ok((Some(target), target.len()))
            } else {
                Err(ParseError::BadTarget)
            }
        }
        _ => {
            let scheme = [&b"http://"[..], b"https://"]
                .into_iter()
                .find(|s| {
                    target
                        .get(..s.len())
                        .is_some_and(|t| t.eq_ignore_ascii_case(s))
                })
                .ok_or(ParseError::BadTarget)?;
            let rest = &target[scheme.len()..];
            let end = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            let authority = &rest[..end];
            if authority.is_empty() || !authority.iter().all(|&b| is_authority_char(b)) {
                return Err(ParseError::BadTarget);
            }
            Ok((Some(authority), scheme.len() + end))
        }
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
    // Every such name is 2 to 19 bytes long and starts with one of these letters.
    if !(2..=19).contains(&name.len())
        || !matches!(
            name[0].to_ascii_lowercase(),
            b'c' | b'k' | b'p' | b't' | b'u'
        )
    {
        return false;
    }
    const HOP: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        // Credentials for this proxy, never for the next hop.
        b"proxy-authorization",
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

/// Where a parsed slice lies in the buffer it was parsed from: (offset, length).
type Span = (usize, usize);

/// Where `s` lies in the buffer of `len` bytes starting at address `base`. httparse returns
/// slices of the buffer, except that a reason phrase that is not UTF-8 comes back as a
/// static `""` elsewhere in memory: anything outside the buffer is the empty span at 0
/// (found by fuzzing: subtracting the addresses used to panic).
fn span_of(base: usize, len: usize, s: &[u8]) -> Span {
    let at = (s.as_ptr() as usize).wrapping_sub(base);
    if at <= len && s.len() <= len - at {
        (at, s.len())
    } else {
        (0, 0)
    }
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

/// Splits the head's `len` bytes off `buf` (zero-copy); `fields` are spans into them.
fn split_head(buf: &mut BytesMut, len: usize, fields: Vec<Field>) -> (Bytes, Headers) {
    let bytes = buf.split_to(len).freeze();
    let headers = Headers {
        head: bytes.clone(),
        fields,
    };
    (bytes, headers)
}

/// The parsed fields as spans of the head's first `len` bytes (at `base`), in the list
/// the head keeps (built once, with room for the fields a proxy adds).
fn field_spans(base: usize, len: usize, parsed: &[httparse::Header<'_>]) -> Vec<Field> {
    let mut list = Vec::with_capacity(parsed.len() + 4);
    list.extend(parsed.iter().map(|h| Field::At {
        name: span_of(base, len, h.name.as_bytes()),
        value: span_of(base, len, h.value),
    }));
    list
}

fn version_of(minor: Option<u8>) -> Version {
    if minor == Some(0) {
        Version::Http10
    } else {
        Version::Http11
    }
}

/// Parses and validates a request head from the front of `buf`. On success the head's
/// bytes are split off `buf` (zero-copy: fields are slices of them); `Ok(None)` means more
/// bytes are needed.
///
/// Beyond httparse's syntax (token methods and field names, no whitespace before the
/// colon, no obs-fold, no control characters in values), the head must obey RFC 9112:
/// see [`ParseError`] for every rule.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: HeadLimits,
) -> Result<Option<RequestHead>, ParseError> {
    check_request_line(buf, limits.max_request_line)?;
    // Uninitialised slots: zeroing 128 of them would cost more than parsing a typical head.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(buf, &mut fields);
    let Some(len) = head_len(parsed, buf.len(), limits.max_head)? else {
        return Ok(None);
    };
    let base = buf.as_ptr() as usize;
    let method = span_of(base, len, req.method.unwrap_or_default().as_bytes());
    let target = span_of(base, len, req.path.unwrap_or_default().as_bytes());
    let version = version_of(req.version);
    let spans = field_spans(base, len, req.headers);
    let (bytes, headers) = split_head(buf, len, spans);
    let slice = |(off, n): Span| bytes.slice(off..off + n);
    let (method, target) = (slice(method), slice(target));
    let (length, origin_at) =
        validate_request(&method, &target, version, &headers).map_err(|e| {
            ParseError::Rejected {
                method: method.clone(),
                target: target.clone(),
                error: Box::new(e),
            }
        })?;
    Ok(Some(RequestHead {
        method,
        target,
        origin_at,
        length,
        version,
        headers,
    }))
}

/// Fails once the request line (after the empty lines a client may send first) is
/// longer than `max`, complete or not.
fn check_request_line(buf: &[u8], max: usize) -> Result<(), ParseError> {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let len = match line.iter().position(|&b| b == b'\n') {
        Some(end) => end - usize::from(end > 0 && line[end - 1] == b'\r'),
        // Not complete yet: too long once more than `max` bytes (and a CR) are in.
        None => line.len().saturating_sub(1),
    };
    if len > max {
        return Err(ParseError::RequestLineTooLong { limit: max });
    }
    Ok(())
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
    let reason = res.reason.map(|r| span_of(base, len, r.as_bytes()));
    let version = version_of(res.version);
    let spans = field_spans(base, len, res.headers);
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
        parse_request(&mut b, HeadLimits::new(8192))
    }

    #[test]
    fn parses_head_and_leaves_body_bytes() {
        let mut b = BytesMut::from("GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\nrest");
        let h = parse_request(&mut b, HeadLimits::new(8192))
            .expect("ok")
            .expect("complete");
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
            parse_request(&mut b, HeadLimits::new(64)),
            Err(ParseError::TooLarge { limit: 64 })
        ));
    }

    fn req_err(raw: &str) -> ParseError {
        match req(raw) {
            Err(ParseError::Rejected { error, .. }) => *error,
            Err(e) => e,
            other => panic!("{raw:?} was accepted: {other:?}"),
        }
    }

    #[test]
    fn framing_rules() {
        let h = req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert_eq!(h.body_length(), BodyLength::Length(5));
        let h = req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ChUnKeD\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert_eq!(h.body_length(), BodyLength::Chunked);
        let h = req("GET / HTTP/1.0\r\n\r\n").expect("ok").expect("c");
        assert!(!h.keep_alive());
        assert_eq!(h.body_length(), BodyLength::Empty);
    }

    #[test]
    fn ambiguous_or_malformed_framing_is_rejected() {
        type Expect = fn(&ParseError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("Content-Length: 5\r\nTransfer-Encoding: chunked", |e| {
                matches!(e, ParseError::AmbiguousLength)
            }),
            ("Content-Length: 5\r\nContent-Length: 6", |e| {
                matches!(e, ParseError::BadContentLength)
            }),
            ("Content-Length: +5", |e| {
                matches!(e, ParseError::BadContentLength)
            }),
            ("Content-Length: 0x5", |e| {
                matches!(e, ParseError::BadContentLength)
            }),
            ("Content-Length: ", |e| {
                matches!(e, ParseError::BadContentLength)
            }),
            ("Content-Length: 99999999999999999999", |e| {
                matches!(e, ParseError::BadContentLength)
            }),
            ("Transfer-Encoding: chunked, chunked", |e| {
                matches!(e, ParseError::BadTransferEncoding(_))
            }),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                |e| matches!(e, ParseError::BadTransferEncoding(_)),
            ),
            ("Transfer-Encoding: ,", |e| {
                matches!(e, ParseError::BadTransferEncoding(_))
            }),
            ("Transfer-Encoding: ", |e| {
                matches!(e, ParseError::BadTransferEncoding(_))
            }),
            ("Transfer-Encoding: chunked, gzip", |e| {
                matches!(e, ParseError::BadTransferEncoding(_))
            }),
            ("Transfer-Encoding: \"chunked\"", |e| {
                matches!(e, ParseError::BadTransferEncoding(_))
            }),
            ("Transfer-Encoding: chunked;x=1", |e| {
                matches!(e, ParseError::BadTransferEncoding(_))
            }),
            ("Transfer-Encoding: gzip, chunked", |e| {
                matches!(e, ParseError::UnsupportedTransferEncoding)
            }),
            ("Transfer-Encoding: gzip", |e| {
                matches!(e, ParseError::UnsupportedTransferEncoding)
            }),
        ];
        for (fields, expected) in cases {
            let raw = format!("POST / HTTP/1.1\r\nHost: h\r\n{fields}\r\n\r\n");
            let e = req_err(&raw);
            assert!(expected(&e), "{fields:?}: {e:?}");
        }
        let e = req_err("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(e, ParseError::TransferEncodingHttp10), "{e:?}");
    }

    #[test]
    fn host_and_target_rules() {
        assert!(matches!(
            req_err("GET / HTTP/1.1\r\n\r\n"),
            ParseError::MissingHost
        ));
        assert!(matches!(
            req_err("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
            ParseError::DuplicateHost
        ));
        assert!(matches!(
            req_err("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
            ParseError::BadHost
        ));
        assert!(matches!(
            req_err("GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n"),
            ParseError::HostMismatch
        ));
        assert!(matches!(
            req_err("GET x HTTP/1.1\r\nHost: a\r\n\r\n"),
            ParseError::BadTarget
        ));
        assert!(matches!(
            req_err("GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
            ParseError::BadTarget
        ));
        assert!(matches!(
            req_err("GET http://u@a/ HTTP/1.1\r\nHost: u@a\r\n\r\n"),
            ParseError::BadTarget
        ));
        let h = req("GET HTTP://A:80/p/q?x=1 HTTP/1.1\r\nHost: a:80\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert_eq!((h.path(), h.query()), ("/p/q", Some("x=1")));
        assert_eq!(h.origin_form(), b"/p/q?x=1");
        let h = req("GET http://a HTTP/1.1\r\nHost: a\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert_eq!(h.origin_form(), b"/");
        let h = req("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
            .expect("ok")
            .expect("c");
        assert_eq!(h.path(), "*");
        // HTTP/1.0 needs no Host.
        assert!(req("GET / HTTP/1.0\r\n\r\n").expect("ok").is_some());
    }

    #[test]
    fn request_line_limit_applies_before_the_line_is_complete() {
        let limits = HeadLimits {
            max_head: 64 * 1024,
            max_request_line: 100,
        };
        let mut b = BytesMut::from(format!("GET /{} HTTP/1.1\r\n", "a".repeat(200)).as_str());
        assert!(matches!(
            parse_request(&mut b, limits),
            Err(ParseError::RequestLineTooLong { limit: 100 })
        ));
        let mut b = BytesMut::from(format!("GET /{}", "a".repeat(200)).as_str());
        assert!(matches!(
            parse_request(&mut b, limits),
            Err(ParseError::RequestLineTooLong { .. })
        ));
        let mut b =
            BytesMut::from(format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(80)).as_str());
        assert!(parse_request(&mut b, limits).expect("ok").is_some());
    }

    #[test]
    fn a_reason_phrase_that_is_not_utf8_parses_with_an_empty_reason() {
        // Found by the response_head fuzz target: this panicked.
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\x95\x95\r\ncontent-length: 2\r\n\r\nok"[..]);
        let r = parse_response(&mut b, 8192).expect("ok").expect("complete");
        assert_eq!((r.status, &r.reason[..]), (200, &b""[..]));
        assert_eq!(r.headers.get("content-length"), Some(&b"2"[..]));
        assert_eq!(&b[..], b"ok");
    }

    #[test]
    fn response_framing_rules() {
        let resp = |raw: &str| {
            let mut b = BytesMut::from(raw);
            parse_response(&mut b, 8192).expect("ok").expect("c")
        };
        let r = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(r.body_length(false).expect("len"), BodyLength::UntilClose);
        assert!(r.framing(false).expect("framing").other_codings);
        let r = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(r.body_length(false).expect("len"), BodyLength::Chunked);
        assert!(r.framing(false).expect("framing").other_codings);
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: two\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(resp(bad).body_length(false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_listed_fields_are_stripped() {
        let mut h = req("GET / HTTP/1.0\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Keep: 2\r\nContent-Length: 0\r\n\r\n")
            .expect("ok")
            .expect("c");
        strip_hop_by_hop(&mut h.headers);
        let names: Vec<_> = h.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec![Bytes::from_static(b"X-Keep")]);
    }

    #[test]
    fn every_hop_by_hop_name_is_known_in_any_case_and_near_misses_are_not() {
        const HOP: [&str; 9] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authenticate",
            "proxy-authorization",
        ];
        for name in HOP {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
            assert!(
                is_hop_by_hop(name.to_ascii_uppercase().as_bytes()),
                "{name}"
            );
        }
        for name in [
            "",
            "t",
            "tf",
            "ts",
            "trailers",
            "upgrader",
            "uprade!",
            "connectiom",
            "keep-alivf",
            "kconnection",
            "content-length",
            "host",
            "x-upgrade",
            "proxy-authorizatio",
            "proxy-authorizations",
            "transfer-encodinh",
            "proxy-connectioN-",
        ] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    /// What `write_where` must write: each kept field through `put_header`.
    fn field_by_field(h: &Headers, keep: impl Fn(&[u8]) -> bool) -> BytesMut {
        let mut out = BytesMut::new();
        for (n, v) in h.iter().filter(|(n, _)| keep(n)) {
            put_header(&mut out, n, v);
        }
        out
    }

    #[test]
    fn written_fields_are_the_same_bytes_whether_copied_in_runs_or_one_by_one() {
        let heads = [
            "GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: cg\r\nAccept: */*\r\n\r\n",
            // Not as put_header writes them: no space, two spaces, a tab, trailing space,
            // empty values, LF-only line ends.
            "GET / HTTP/1.1\r\nHost:a\r\nX-A:  b\r\nX-B:\tc\r\nX-C: d \r\nX-D:\r\nX-E: \r\nX-F: f\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\nX-A: b\r\nX-B: c\n\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Gone\r\nX-Gone: 1\r\nX-Kept: 2\r\nTE: trailers\r\nX-Last: 3\r\n\r\n",
        ];
        let keeps: [fn(&[u8]) -> bool; 3] = [
            |_| true,
            |n| !n.eq_ignore_ascii_case(b"x-b") && !n.eq_ignore_ascii_case(b"x-gone"),
            |n| n.len() % 2 == 0,
        ];
        for raw in heads {
            let mut h = req(raw).expect("ok").expect("complete").headers;
            for keep in keeps {
                let mut out = BytesMut::new();
                h.write_where(&mut out, keep);
                assert_eq!(out, field_by_field(&h, keep), "{raw:?}");
            }
            // Fields added after parsing, between and after received ones.
            strip_hop_by_hop(&mut h);
            h.push("x-added", "v");
            let mut out = BytesMut::new();
            h.write_to(&mut out);
            assert_eq!(out, field_by_field(&h, |_| true), "{raw:?}");
        }
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
}
