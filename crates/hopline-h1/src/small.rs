//! The one small request/response server behind hopline's control APIs (the gateway's
//! admin API, the chaos proxy's Toxiproxy API): whole bodies, keep-alive, every wait and
//! every buffer bounded. Not for proxying.
//!
//! What it refuses before a handler sees a request, the same for both APIs:
//! - a connection over [`Limits::max_connections`]: answered 503 and closed at once;
//! - a head not whole within [`Limits::head_timeout`] (from accept, or from the first
//!   byte of a later request), a body not whole within [`Limits::body_timeout`]: closed;
//!   an answer the client does not take within [`Limits::write_timeout`]: closed;
//! - a head that does not parse: 400; a body over [`Limits::max_body`]: 413, closed;
//! - a `Host` that is a name other than `localhost` or one of
//!   [`Limits::allowed_hosts`]: 403. DNS rebinding (a page on `evil.example` whose name
//!   then resolves to 127.0.0.1 or a pod address) reaches the API with its own name in
//!   `Host`; IP literals — what kubelet probes, Prometheus and `curl 127.0.0.1` send —
//!   are always allowed, since rebinding needs a name;
//! - any `Origin`: 403 (the APIs have no pages of their own, so every origin is another
//!   site's).
//!
//! Accept errors (`EMFILE`) back off instead of spinning.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};

use crate::head::RequestHead;
use crate::io::HeadError;
use crate::write::put_response;
use crate::{read_body_chunk, read_request_head, wait_first_byte, BodyDecoder, HeadLimits};

/// The largest request head.
const MAX_HEAD: usize = 64 * 1024;
/// The wait after an accept error (a full descriptor table) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What one API server allows a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; one more is answered 503 and closed. Default 64.
    pub max_connections: usize,
    /// Time for a whole request head, from accept (first request) or from its first byte.
    /// Default 5 s.
    pub head_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request. Default 10 s.
    pub idle_timeout: Duration,
    /// Time for a whole request body. Default 10 s.
    pub body_timeout: Duration,
    /// Time for the client to take a whole answer. Default 10 s.
    pub write_timeout: Duration,
    /// The largest request body; a larger one is answered 413. Default 64 KiB.
    pub max_body: usize,
    /// Host names (beyond IP literals and `localhost`) the API answers to, compared
    /// without case and port.
    pub allowed_hosts: Vec<String>,
    /// Where the operator adds a name (`admin.allowed_hosts`, `--api-allowed-host`),
    /// said in the 403.
    pub hosts_setting: &'static str,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            head_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_body: 64 * 1024,
            allowed_hosts: Vec::new(),
            hosts_setting: "the allowed host names",
        }
    }
}

impl Limits {
    /// Whether a request with this `Host` value is answered: an IP literal (with or
    /// without a port, IPv6 in brackets), `localhost`, or a listed name. A request
    /// without `Host` (HTTP/1.0) names no site and is answered too.
    pub fn host_allowed(&self, host: Option<&[u8]>) -> bool {
        let Some(host) = host else { return true };
        let Ok(host) = std::str::from_utf8(host) else {
            return false;
        };
        if host.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = match host.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((ip, rest)) if rest.is_empty() || rest.starts_with(':') => ip,
                _ => return false,
            },
            None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        name.parse::<IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self
                .allowed_hosts
                .iter()
                .any(|a| a.strip_suffix('.').unwrap_or(a).eq_ignore_ascii_case(name))
    }
}

/// An API answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `content-type` (sent only with a body).
    pub content_type: &'static str,
    /// More header fields.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: String,
}

impl Reply {
    /// A reply with a body of `content_type` and no extra fields.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn text(status: u16, body: impl Into<String>) -> Self {
        Reply::new(status, "text/plain", body)
    }
}

/// Serves `listener` until `shutdown` resolves, answering each request with `handler`
/// (which may wait, e.g. for a listener to close, before it answers) within `limits`.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
    handler: F,
) where
    F: Fn(RequestHead, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send,
{
    let handler = Arc::new(handler);
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
            Some(_) = conns.join_next() => continue,
        };
        let mut s = match accepted {
            Ok((s, _)) => s,
            Err(_) => {
                // EMFILE and friends: the error repeats until a descriptor frees up.
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: a short answer if the socket takes it now, never a wait.
            let mut out = BytesMut::new();
            let body = b"too many connections to this API\n";
            put_response(
                &mut out,
                503,
                [("content-type", "text/plain")],
                body,
                true,
                false,
            );
            let _ = s.try_write(&out);
            continue;
        };
        let (h, limits) = (handler.clone(), limits.clone());
        conns.spawn(async move {
            connection(&mut s, &limits, h.as_ref()).await;
            drop(slot);
        });
    }
    conns.abort_all();
}

/// What became of reading one request.
enum Read {
    /// A whole request.
    Request(RequestHead, Vec<u8>),
    /// Answer this, then close.
    Refuse(Reply),
    /// Close without a word (timeout, EOF, a reset).
    Close,
}

async fn connection<F, Fut>(s: &mut TcpStream, limits: &Limits, handler: &F)
where
    F: Fn(RequestHead, Vec<u8>) -> Fut,
    Fut: Future<Output = Reply>,
{
    let mut buf = BytesMut::with_capacity(4096);
    let mut first = true;
    loop {
        let (reply, keep_alive, head_only) = match read(s, &mut buf, limits, first).await {
            Read::Close => return,
            Read::Refuse(reply) => (reply, false, false),
            Read::Request(head, body) => {
                let keep_alive = head.keep_alive();
                let head_only = &head.method[..] == b"HEAD";
                match refusal(&head, limits) {
                    Some(reply) => (reply, keep_alive, head_only),
                    None => (handler(head, body).await, keep_alive, head_only),
                }
            }
        };
        first = false;
        let mut out = BytesMut::new();
        let content_type = (!reply.body.is_empty()).then_some(("content-type", reply.content_type));
        let fields = content_type
            .into_iter()
            .chain(reply.headers.iter().map(|(n, v)| (*n, v.as_str())));
        put_response(
            &mut out,
            reply.status,
            fields,
            reply.body.as_bytes(),
            !keep_alive,
            head_only,
        );
        match timeout(limits.write_timeout, s.write_all(&out)).await {
            Ok(Ok(())) if keep_alive => {}
            _ => return,
        }
    }
}

/// Reads one request within the limits.
async fn read(s: &mut TcpStream, buf: &mut BytesMut, limits: &Limits, first: bool) -> Read {
    // The first request's head is timed from accept: a connection that sends nothing
    // holds its slot for head_timeout, not idle_timeout.
    let idle = if first {
        limits.head_timeout
    } else {
        limits.idle_timeout
    };
    if wait_first_byte(s, buf, idle).await.is_err() {
        return Read::Close;
    }
    let until = Instant::now() + limits.head_timeout;
    let head = match read_request_head(
        s,
        buf,
        HeadLimits::new(MAX_HEAD),
        until,
        limits.head_timeout,
    )
    .await
    {
        Ok(head) => head,
        Err(HeadError::Parse(e)) => {
            return Read::Refuse(Reply::text(400, format!("bad request: {e}\n")))
        }
        Err(_) => return Read::Close,
    };
    let too_big = || {
        Read::Refuse(Reply::text(
            413,
            format!("request body over {} bytes\n", limits.max_body),
        ))
    };
    let length = head.body_length();
    if matches!(length, crate::BodyLength::Length(n) if n > limits.max_body as u64) {
        return too_big();
    }
    let mut decoder = BodyDecoder::new(length);
    let mut body = Vec::new();
    let until = Instant::now() + limits.body_timeout;
    loop {
        match timeout_at(until, read_body_chunk(s, buf, &mut decoder)).await {
            Ok(Ok(Some(p))) if body.len() + p.len() <= limits.max_body => {
                body.extend_from_slice(&p)
            }
            Ok(Ok(Some(_))) => return too_big(),
            Ok(Ok(None)) => return Read::Request(head, body),
            Ok(Err(_)) | Err(_) => return Read::Close,
        }
    }
}

/// The 403 for a request the API does not answer: a name it was not told about in `Host`,
/// or any `Origin`.
fn refusal(head: &RequestHead, limits: &Limits) -> Option<Reply> {
    let host = head.headers.get("host");
    if !limits.host_allowed(host) {
        let name = String::from_utf8_lossy(host.unwrap_or_default());
        return Some(Reply::text(
            403,
            format!(
                "forbidden: Host {name} is not a name this API answers to (an IP address, localhost, or a name in {})\n",
                limits.hosts_setting
            ),
        ));
    }
    if head.headers.contains("origin") {
        return Some(Reply::text(
            403,
            "forbidden: requests from web pages are not allowed\n",
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_and_localhost_are_always_allowed_names_only_when_listed() {
        let l = Limits {
            allowed_hosts: vec!["hopline-admin.svc".into()],
            ..Limits::default()
        };
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9901",
            "10.1.2.3:9901",
            "[::1]:9901",
            "[fe80::1]",
            "::1",
            "localhost",
            "LOCALHOST:9901",
            "localhost.",
            "hopline-admin.svc",
            "Hopline-Admin.SVC:9901",
        ] {
            assert!(l.host_allowed(Some(ok.as_bytes())), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9901",
            "127.0.0.1.nip.io",
            "localhost.evil.example",
            "[::1",
            "[::1]x",
            "",
        ] {
            assert!(!l.host_allowed(Some(bad.as_bytes())), "{bad}");
        }
        assert!(!l.host_allowed(Some(b"\xff")));
        assert!(l.host_allowed(None), "HTTP/1.0 without Host names no site");
    }
}
