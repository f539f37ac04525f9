//! Every way a request can fail, classified once: kind, side, phase, status and flag.
//!
//! [`ProxyError::disposition`] is the single place that maps a failure to the status and
//! flag of DESIGN.md §3; `Display` prints this level and `source()` reaches the original
//! OS error, so `ECONNRESET` survives all the way to the access log.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Zone;
use crate::flag::Flag;
use crate::time::Human;

/// Which side of the gateway a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The client (or the front proxy) talking to us.
    Downstream,
    /// A service we call.
    Upstream,
    /// The gateway itself (limits, routing, shutdown).
    Internal,
}

/// The phase of an upstream exchange in which something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Establishing the TCP connection.
    Connect,
    /// The TLS handshake on a new upstream connection.
    Tls,
    /// Writing the request head and body.
    Request,
    /// Waiting for and reading the response head.
    ResponseHeaders,
    /// Reading the response body.
    ResponseBody,
    /// Waiting in an upstream's queue for one of its `max_in_flight` slots.
    Queue,
}

impl Phase {
    /// The label used in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Tls => "TLS handshake",
            Phase::Request => "request",
            Phase::ResponseHeaders => "response headers",
            Phase::ResponseBody => "response body",
            Phase::Queue => "queue",
        }
    }
}

impl Phase {
    /// The machine-readable label of the access log's `phase` field: `connect`, `tls`,
    /// `request`, `response_headers`, `response_body`.
    pub const fn label(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Request => "request",
            Phase::ResponseHeaders => "response_headers",
            Phase::ResponseBody => "response_body",
            Phase::Queue => "queue",
        }
    }
}

impl ProxyError {
    /// The phase of the upstream exchange this failure happened in, when it is one.
    pub fn upstream_phase(&self) -> Option<Phase> {
        match self {
            ProxyError::Upstream(e) => Some(e.kind.phase()),
            ProxyError::Overflow(
                Overflow::Queued {
                    why: QueueRefusal::Expired { .. },
                    ..
                }
                | Overflow::EgressQueued {
                    why: QueueRefusal::Expired { .. },
                    ..
                },
            ) => Some(Phase::Queue),
            _ => None,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which limit ended an upstream wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeoutSource {
    /// The request's deadline.
    Deadline,
    /// The upstream's per-attempt `timeout`.
    AttemptTimeout,
    /// The upstream's `connect_timeout`.
    ConnectTimeout,
    /// An aggregate call's own `timeout`.
    CallTimeout,
    /// The request's deadline, set by the caller's own budget (`grpc-timeout`,
    /// `x-envoy-expected-rq-timeout-ms`): the caller's limit, not the endpoint's failure
    /// unless the endpoint's peers answer well within it.
    CallerBudget,
}

impl TimeoutSource {
    /// The config name of the limit.
    pub const fn as_str(self) -> &'static str {
        match self {
            TimeoutSource::Deadline => "request deadline",
            TimeoutSource::AttemptTimeout => "upstream timeout",
            TimeoutSource::ConnectTimeout => "connect_timeout",
            TimeoutSource::CallTimeout => "call timeout",
            TimeoutSource::CallerBudget => "caller budget",
        }
    }
}

/// A failed upstream exchange, with where it went and how long it ran.
#[derive(Debug)]
pub struct UpstreamError {
    /// The upstream's configured name.
    pub upstream: Arc<str>,
    /// The endpoint the attempt went to.
    pub endpoint: SocketAddr,
    /// The upstream's zone.
    pub zone: Zone,
    /// Time from the start of this attempt to the failure.
    pub elapsed: Duration,
    /// What went wrong.
    pub kind: UpstreamErrorKind,
}

/// What went wrong in an upstream exchange. Each timeout has its own variant.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamErrorKind {
    /// The TCP connection was not established in time.
    #[error("connect timed out after {} ({})", Human(*limit), source_limit.as_str())]
    ConnectTimeout {
        /// The limit that fired.
        limit: Duration,
        /// Which limit it was (the connect timeout or the deadline).
        source_limit: TimeoutSource,
    },
    /// The endpoint refused the connection.
    #[error("connect error")]
    ConnectRefused(#[source] io::Error),
    /// The connection could not be made for another reason (unreachable, no route, ...).
    #[error("connect error")]
    ConnectFailed(#[source] io::Error),
    /// The TLS handshake did not finish in time.
    #[error("TLS handshake timed out after {} ({})", Human(*limit), source_limit.as_str())]
    TlsTimeout {
        /// The limit that fired.
        limit: Duration,
        /// Which limit it was (the connect timeout or the deadline).
        source_limit: TimeoutSource,
    },
    /// The TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(#[source] Box<TlsFailure>),
    /// A wait after connecting timed out.
    #[error("{phase} timed out after {} ({})", Human(*limit), source_limit.as_str())]
    Timeout {
        /// The phase that was waiting.
        phase: Phase,
        /// The limit that fired.
        limit: Duration,
        /// Which limit it was.
        source_limit: TimeoutSource,
    },
    /// The connection was reset (or aborted) by the peer.
    #[error("connection reset during {phase}")]
    Reset {
        /// The phase in progress.
        phase: Phase,
        /// The OS error, e.g. `ECONNRESET`.
        source: io::Error,
    },
    /// The upstream closed the connection before the response was complete.
    #[error("connection closed by upstream during {phase}")]
    Closed {
        /// The phase in progress.
        phase: Phase,
    },
    /// The upstream sent bytes that are not a valid HTTP/1.1 response.
    #[error("protocol error during {phase}")]
    Protocol {
        /// The phase in progress.
        phase: Phase,
        /// The parse error.
        source: Box<dyn StdError + Send + Sync>,
    },
    /// Another I/O error.
    #[error("I/O error during {phase}")]
    Io {
        /// The phase in progress.
        phase: Phase,
        /// The OS error.
        source: io::Error,
    },
}

impl UpstreamErrorKind {
    /// Classifies an I/O error seen in `phase` after the connection was established.
    pub fn from_io(phase: Phase, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => UpstreamErrorKind::Reset { phase, source },
            io::ErrorKind::UnexpectedEof => UpstreamErrorKind::Closed { phase },
            _ => UpstreamErrorKind::Io { phase, source },
        }
    }

    /// Classifies an error returned by `connect()`.
    pub fn from_connect(source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::ConnectionRefused => UpstreamErrorKind::ConnectRefused(source),
            _ => UpstreamErrorKind::ConnectFailed(source),
        }
    }

    /// The phase the failure happened in.
    pub fn phase(&self) -> Phase {
        match self {
            UpstreamErrorKind::ConnectTimeout { .. }
            | UpstreamErrorKind::ConnectRefused(_)
            | UpstreamErrorKind::ConnectFailed(_) => Phase::Connect,
            UpstreamErrorKind::TlsTimeout { .. } | UpstreamErrorKind::Tls(_) => Phase::Tls,
            UpstreamErrorKind::Timeout { phase, .. }
            | UpstreamErrorKind::Reset { phase, .. }
            | UpstreamErrorKind::Closed { phase }
            | UpstreamErrorKind::Protocol { phase, .. }
            | UpstreamErrorKind::Io { phase, .. } => *phase,
        }
    }

    /// The limit a timeout ran into; none for a failure that is not a timeout.
    pub fn timeout_source(&self) -> Option<TimeoutSource> {
        match self {
            UpstreamErrorKind::ConnectTimeout { source_limit, .. }
            | UpstreamErrorKind::TlsTimeout { source_limit, .. }
            | UpstreamErrorKind::Timeout { source_limit, .. } => Some(*source_limit),
            _ => None,
        }
    }

    /// True for failures that happened before any byte of the request left us, so a
    /// retry cannot duplicate work on the upstream.
    pub fn before_request_sent(&self) -> bool {
        matches!(self.phase(), Phase::Connect | Phase::Tls)
    }
}

/// Why a TLS handshake with an upstream failed: what an operator acts on, from the
/// certificate the upstream presented where there was one.
#[derive(Debug, thiserror::Error)]
pub enum TlsFailure {
    /// The certificate's validity ended.
    #[error("certificate expired on {not_after} (subject {subject})")]
    CertExpired {
        /// The certificate's `notAfter`, as a UTC date (`2026-10-01`).
        not_after: String,
        /// The certificate's subject, e.g. `CN=pay.example`.
        subject: String,
    },
    /// The certificate's validity has not begun.
    #[error("certificate not valid before {not_before} (subject {subject})")]
    CertNotYetValid {
        /// The certificate's `notBefore`, as a UTC date.
        not_before: String,
        /// The certificate's subject.
        subject: String,
    },
    /// The certificate does not name the server we asked for.
    #[error("certificate not valid for name {name:?} (subject {subject})")]
    WrongName {
        /// The name verified (the SNI, or the endpoint's IP).
        name: String,
        /// The certificate's subject.
        subject: String,
    },
    /// The certificate chain does not lead to a trusted CA.
    #[error("unknown issuer (subject {subject})")]
    UnknownIssuer {
        /// The certificate's subject.
        subject: String,
    },
    /// The certificate is unusable for another reason (bad encoding, revoked, wrong use).
    #[error("invalid certificate")]
    BadCertificate(#[source] Box<dyn StdError + Send + Sync>),
    /// The upstream aborted the handshake with an alert (e.g. it requires a client
    /// certificate, or shares no protocol version or cipher with us).
    #[error("upstream refused the handshake")]
    PeerAlert(#[source] Box<dyn StdError + Send + Sync>),
    /// The handshake broke the protocol (not TLS, corrupt message).
    #[error("handshake failed")]
    Handshake(#[source] Box<dyn StdError + Send + Sync>),
    /// The connection failed during the handshake.
    #[error("connection lost during the handshake")]
    Io(#[source] io::Error),
}

impl TlsFailure {
    /// The `reason` label of the handshake-failure metrics.
    pub const fn reason(&self) -> &'static str {
        match self {
            TlsFailure::CertExpired { .. } => "cert_expired",
            TlsFailure::CertNotYetValid { .. } => "cert_not_yet_valid",
            TlsFailure::WrongName { .. } => "cert_wrong_name",
            TlsFailure::UnknownIssuer { .. } => "unknown_issuer",
            TlsFailure::BadCertificate(_) => "bad_certificate",
            TlsFailure::PeerAlert(_) => "peer_alert",
            TlsFailure::Handshake(_) => "protocol",
            TlsFailure::Io(_) => "io",
        }
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "upstream {} {} ({}): {}",
            self.upstream,
            self.endpoint,
            self.zone.as_str(),
            self.kind
        )?;
        if !matches!(
            self.kind,
            UpstreamErrorKind::ConnectTimeout { .. }
                | UpstreamErrorKind::TlsTimeout { .. }
                | UpstreamErrorKind::Timeout { .. }
        ) {
            write!(f, " after {}", Human(self.elapsed))?;
        }
        Ok(())
    }
}

impl StdError for UpstreamError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.kind)
    }
}

/// Which gateway limit was full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overflow {
    /// An upstream's `max_in_flight`.
    UpstreamInFlight {
        /// The upstream.
        upstream: Arc<str>,
        /// Its limit.
        limit: usize,
    },
    /// An endpoint's `max_connecting` connects were in progress for all of
    /// `min(connect_timeout, time left)`, and no pooled connection came back meanwhile.
    Connecting {
        /// The upstream.
        upstream: Arc<str>,
        /// The endpoint.
        endpoint: std::net::SocketAddr,
        /// `max_connecting`.
        limit: usize,
        /// How long the request waited.
        waited: Duration,
        /// The wait ended because `connect_timeout` passed with no connection coming back
        /// to the endpoint (`false`: the deadline ended it).
        stalled: bool,
    },
    /// The shared `[egress] max_in_flight`.
    EgressInFlight {
        /// The limit.
        limit: usize,
    },
    /// The shared `[egress] max_in_flight`, with no place for the request in its queue in
    /// time (the calling upstream's `max_pending` bounds it).
    EgressQueued {
        /// The limit.
        limit: usize,
        /// Why the queue gave it no slot.
        why: QueueRefusal,
    },
    /// The shared `[egress] max_new_connections_per_sec`.
    EgressConnectionRate {
        /// The upstream that wanted a connection.
        upstream: Arc<str>,
        /// The limit, per second.
        limit: u32,
    },
    /// An upstream's `max_in_flight`, with no place for the request in its queue in time.
    Queued {
        /// The upstream.
        upstream: Arc<str>,
        /// Its `max_in_flight`.
        limit: usize,
        /// Why the queue gave it no slot.
        why: QueueRefusal,
    },
    /// A cluster-wide egress budget (`[egress] shared`).
    EgressShared {
        /// The scope (`[egress] scope`).
        scope: Arc<str>,
        /// Which budget refused, and why.
        refusal: SharedRefusal,
    },
}

/// Why a request got no slot from an upstream's queue (`max_pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRefusal {
    /// `max_pending` requests already wait.
    Full {
        /// `max_pending`.
        max_pending: usize,
    },
    /// Its expected wait (its place × the slots' hold time ÷ the limit, plus one hold
    /// time) is beyond the time it has left: refused at once rather than at its deadline.
    ExpectedWait {
        /// The expected wait.
        expected: Duration,
        /// The time it had left.
        left: Duration,
    },
    /// It waited until its deadline.
    Expired {
        /// How long it waited.
        waited: Duration,
    },
}

impl QueueRefusal {
    /// When asking again may find a slot: the expected wait, else one second.
    pub fn retry_after(&self) -> Duration {
        match self {
            QueueRefusal::ExpectedWait { expected, .. } => *expected,
            _ => Duration::from_secs(1),
        }
    }
}

/// Which part of a shared egress scope's budget refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedRefusal {
    /// The scope's new-connection rate is used up across the cluster.
    ClusterRate(u32),
    /// The scope's in-flight slots are all held across the cluster.
    ClusterInFlight(usize),
    /// Redis has not answered the lease this gateway asked for yet.
    AwaitingLease,
    /// Redis is unreachable and this gateway's local share of the rate is used up.
    LocalRate(u32),
    /// Redis is unreachable and this gateway's local share of in-flight slots is taken.
    LocalInFlight(usize),
}

impl fmt::Display for SharedRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharedRefusal::ClusterRate(r) => write!(f, "cluster new-connection rate {r}/s reached"),
            SharedRefusal::ClusterInFlight(n) => write!(f, "cluster in-flight limit {n} reached"),
            SharedRefusal::AwaitingLease => f.write_str("no lease from Redis yet"),
            SharedRefusal::LocalRate(r) => write!(
                f,
                "local share of the new-connection rate {r}/s reached (Redis unreachable)"
            ),
            SharedRefusal::LocalInFlight(n) => write!(
                f,
                "local share of the in-flight limit {n} reached (Redis unreachable)"
            ),
        }
    }
}

/// Why a request did not get an upstream's answer. Converted to a response in one place.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request head did not arrive within `header_read_timeout`.
    #[error("request headers not received within header_read_timeout {}", Human(*limit))]
    HeaderReadTimeout {
        /// The configured limit.
        limit: Duration,
    },
    /// The request body did not arrive within `body_read_timeout` (or, streamed to an
    /// upstream, within the request's deadline).
    #[error("request body not received within {setting} {} ({received} bytes received)", Human(*limit))]
    BodyReadTimeout {
        /// The limit that ran out.
        limit: Duration,
        /// Which one: `body_read_timeout`, or `the request deadline`.
        setting: &'static str,
        /// Bytes of body received before the limit.
        received: u64,
    },
    /// The request body arrived slower than `server.min_recv_rate` (a trickling sender).
    #[error("request body arrived at {got} bytes in {} of waiting, below min_recv_rate {rate} bytes/s ({received} bytes received)", Human(*window))]
    BodyTooSlow {
        /// `min_recv_rate`, bytes per second.
        rate: u64,
        /// The window the rate was measured over (time spent waiting on the client).
        window: Duration,
        /// Bytes received in that window.
        got: u64,
        /// Bytes of body received in all.
        received: u64,
    },
    /// The process-wide budget for buffered bytes (`server.max_buffered_bytes`) could not
    /// hold what this request needed.
    #[error("server.max_buffered_bytes {limit} reached (a {kind} buffer)")]
    BufferBudget {
        /// What the buffer was for (`request_body`, `replay`, `aggregate`, `h2_data`).
        kind: &'static str,
        /// The configured budget.
        limit: usize,
    },
    /// The request is malformed or ambiguous.
    #[error("malformed request")]
    Malformed(#[source] Box<dyn StdError + Send + Sync>),
    /// The request head is larger than `max_header_bytes`.
    #[error("request headers larger than max_header_bytes {limit}")]
    HeadersTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The request line is longer than `max_request_line_bytes`.
    #[error("request line longer than max_request_line_bytes {limit}")]
    UriTooLong {
        /// The configured limit.
        limit: usize,
    },
    /// The route does not serve this method.
    #[error("method not allowed on route {route} (allowed: {allow})")]
    MethodNotAllowed {
        /// The route.
        route: Arc<str>,
        /// The `Allow` value, e.g. `GET, HEAD`.
        allow: String,
    },
    /// The client stopped reading: a write blocked longer than `write_timeout`.
    #[error("client did not read for {} (write_timeout)", Human(*limit))]
    ClientWriteTimeout {
        /// The configured limit.
        limit: Duration,
    },
    /// The client read the response slower than `server.min_send_rate` (a slow reader).
    #[error("client read {got} bytes in {} of waiting on it, below min_send_rate {rate} bytes/s ({sent} bytes sent)", Human(*window))]
    ClientTooSlow {
        /// `min_send_rate`, bytes per second.
        rate: u64,
        /// The window the rate was measured over (time spent waiting for the client to read).
        window: Duration,
        /// Bytes it took in that window.
        got: u64,
        /// Response bytes sent in all.
        sent: u64,
    },
    /// The request body is larger than `max_body_bytes`.
    #[error("request body larger than max_body_bytes {limit}")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The request uses a feature the gateway does not proxy (e.g. `CONNECT`, upgrades).
    #[error("not implemented: {what}")]
    NotImplemented {
        /// What was asked for.
        what: &'static str,
    },
    /// The client closed its connection before the response was complete.
    #[error("client closed the connection after {}{}", Human(*elapsed), waiting_on.as_deref().map(|w| format!(" while waiting on {w}")).unwrap_or_default())]
    ClientGone {
        /// Time since the request arrived.
        elapsed: Duration,
        /// What the request was waiting on, e.g. `upstream coupon 127.0.0.1:9001 (egress) response headers`.
        waiting_on: Option<String>,
        /// How the client went away.
        #[source]
        source: io::Error,
    },
    /// No route matched.
    #[error("no route for path")]
    NoRoute,
    /// A concurrency or connection-rate limit was full; the request failed fast.
    #[error("{}", overflow_text(.0))]
    Overflow(Overflow),
    /// No endpoint of the upstream could take the request (none resolved, or every one
    /// ejected or failing health checks): answered at once, never after a timeout.
    #[error("upstream {upstream}: {detail}")]
    NoEndpoint {
        /// The upstream.
        upstream: Arc<str>,
        /// Why none is usable, e.g. `no address for coupon.svc: NXDOMAIN (last tried 2s ago)`.
        detail: String,
        /// When asking again may find one (the answer's `Retry-After`, whole seconds, at
        /// least 1): the first ejection's end, the health checks' time to pass one again,
        /// or the next resolution.
        retry_after: Duration,
    },
    /// The deadline was spent before an upstream call could start.
    #[error("deadline {} spent before the upstream call could start", Human(*budget))]
    DeadlineSpent {
        /// The request's whole budget.
        budget: Duration,
    },
    /// The caller's own budget was shorter than `deadline.min_caller`: answered at once,
    /// before any upstream call (and without spending a retry token).
    #[error(
        "the caller's budget {} is below deadline.min_caller {}; answered before any upstream call",
        Human(*budget),
        Human(*min)
    )]
    CallerBudgetTooShort {
        /// The budget the caller gave (`grpc-timeout` or `x-envoy-expected-rq-timeout-ms`).
        budget: Duration,
        /// `deadline.min_caller`.
        min: Duration,
    },
    /// An upstream exchange failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A required aggregate call answered something unusable (non-2xx, not JSON).
    #[error("required call {call} failed: {detail}")]
    BadCallResponse {
        /// The call.
        call: String,
        /// What it answered.
        detail: String,
    },
    /// The gateway was shutting down and `drain_timeout` ran out.
    #[error("gateway shutting down: drain_timeout {} elapsed with the request in flight", Human(*drain))]
    Shutdown {
        /// The configured drain period.
        drain: Duration,
    },
}

fn overflow_text(o: &Overflow) -> String {
    match o {
        Overflow::UpstreamInFlight { upstream, limit } => {
            format!("upstream {upstream}: max_in_flight {limit} reached")
        }
        Overflow::EgressInFlight { limit } => format!("egress max_in_flight {limit} reached"),
        Overflow::EgressQueued { limit, why } => match why {
            QueueRefusal::Full { max_pending } => format!(
                "egress max_in_flight {limit} reached and its queue (max_pending {max_pending}) full"
            ),
            QueueRefusal::ExpectedWait { expected, left } => format!(
                "egress max_in_flight {limit} reached; the expected wait in its queue, {}, is beyond the {} left",
                Human(*expected),
                Human(*left)
            ),
            QueueRefusal::Expired { waited } => format!(
                "waited {} in the egress queue for one of max_in_flight {limit} slots until the deadline",
                Human(*waited)
            ),
        },
        Overflow::Connecting {
            upstream,
            endpoint,
            limit,
            waited,
            stalled: true,
        } => format!(
            "upstream {upstream} {endpoint}: max_connecting {limit} connects in progress for {} and no pooled connection came back",
            Human(*waited)
        ),
        Overflow::Connecting {
            upstream,
            endpoint,
            limit,
            waited,
            stalled: false,
        } => format!(
            "upstream {upstream} {endpoint}: max_connecting {limit} connects in progress; waited {} for a connection until the deadline",
            Human(*waited)
        ),
        Overflow::EgressConnectionRate { upstream, limit } => {
            format!("upstream {upstream} (egress): max_new_connections_per_sec {limit} reached")
        }
        Overflow::EgressShared { scope, refusal } => format!("egress scope {scope}: {refusal}"),
        Overflow::Queued { upstream, limit, why } => match why {
            QueueRefusal::Full { max_pending } => format!(
                "upstream {upstream}: max_in_flight {limit} reached and its queue (max_pending {max_pending}) full"
            ),
            QueueRefusal::ExpectedWait { expected, left } => format!(
                "upstream {upstream}: max_in_flight {limit} reached; the expected wait in its queue, {}, is beyond the {} left",
                Human(*expected),
                Human(*left)
            ),
            QueueRefusal::Expired { waited } => format!(
                "upstream {upstream}: waited {} in its queue for one of max_in_flight {limit} slots until the deadline",
                Human(*waited)
            ),
        },
    }
}

/// The outcome of a failure as the client and the log see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disposition {
    /// The HTTP status (499 is logged only: the client is gone).
    pub status: u16,
    /// The flag.
    pub flag: Flag,
    /// Who failed.
    pub side: Side,
}

impl ProxyError {
    /// The status, flag and side of this failure: the table of DESIGN.md §3, in one place.
    pub fn disposition(&self) -> Disposition {
        use Flag::*;
        let (status, flag, side) = match self {
            ProxyError::HeaderReadTimeout { .. }
            | ProxyError::BodyReadTimeout { .. }
            | ProxyError::BodyTooSlow { .. } => (408, RequestTimeout, Side::Downstream),
            ProxyError::BufferBudget { .. } => (503, Overload, Side::Internal),
            ProxyError::Malformed(_) => (400, DownstreamProtocolError, Side::Downstream),
            ProxyError::HeadersTooLarge { .. } => (431, DownstreamProtocolError, Side::Downstream),
            ProxyError::UriTooLong { .. } => (414, DownstreamProtocolError, Side::Downstream),
            ProxyError::MethodNotAllowed { .. } => (405, DownstreamProtocolError, Side::Downstream),
            // Logged with the status that was being sent; 408 only names the class.
            ProxyError::ClientWriteTimeout { .. } | ProxyError::ClientTooSlow { .. } => {
                (408, WriteTimeout, Side::Downstream)
            }
            ProxyError::BodyTooLarge { .. } => (413, DownstreamProtocolError, Side::Downstream),
            ProxyError::NotImplemented { .. } => (501, DownstreamProtocolError, Side::Downstream),
            ProxyError::ClientGone { .. } => {
                (499, DownstreamConnectionTermination, Side::Downstream)
            }
            ProxyError::NoRoute => (404, NoRoute, Side::Internal),
            ProxyError::Overflow(_) => (503, UpstreamOverflow, Side::Internal),
            ProxyError::NoEndpoint { .. } => (503, NoHealthyUpstream, Side::Upstream),
            ProxyError::DeadlineSpent { .. } => (504, UpstreamTimeout, Side::Internal),
            ProxyError::CallerBudgetTooShort { .. } => (504, UpstreamTimeout, Side::Downstream),
            ProxyError::Shutdown { .. } => (503, Shutdown, Side::Internal),
            ProxyError::BadCallResponse { .. } => (502, UpstreamProtocolError, Side::Upstream),
            ProxyError::Upstream(e) => {
                let (status, flag) = match &e.kind {
                    UpstreamErrorKind::ConnectTimeout { .. }
                    | UpstreamErrorKind::TlsTimeout { .. } => (504, UpstreamConnectFailure),
                    UpstreamErrorKind::Tls(_) => (502, UpstreamConnectFailure),
                    UpstreamErrorKind::ConnectRefused(_) | UpstreamErrorKind::ConnectFailed(_) => {
                        (502, UpstreamConnectFailure)
                    }
                    UpstreamErrorKind::Timeout { .. } => (504, UpstreamTimeout),
                    UpstreamErrorKind::Reset { .. }
                    | UpstreamErrorKind::Closed { .. }
                    | UpstreamErrorKind::Io { .. } => (502, UpstreamConnectionTermination),
                    UpstreamErrorKind::Protocol { .. } => (502, UpstreamProtocolError),
                };
                (status, flag, Side::Upstream)
            }
        };
        Disposition { status, flag, side }
    }

    /// A short reason for the response body, safe to show on the internet: names the
    /// upstream and what failed, never addresses or OS errors (those are in the log).
    pub fn short_reason(&self) -> String {
        match self {
            ProxyError::HeaderReadTimeout { .. } => "request headers not received in time".into(),
            ProxyError::BodyReadTimeout { .. } => "request body not received in time".into(),
            ProxyError::BodyTooSlow { .. } => "request body arrived too slowly".into(),
            ProxyError::BufferBudget { .. } => "the gateway is out of buffer space".into(),
            // Parse errors describe the request the client sent: nothing internal.
            ProxyError::Malformed(e) => format!("malformed request: {e}"),
            ProxyError::HeadersTooLarge { .. } => "request headers too large".into(),
            ProxyError::UriTooLong { .. } => "request line too long".into(),
            ProxyError::MethodNotAllowed { allow, .. } => {
                format!("method not allowed (allowed: {allow})")
            }
            ProxyError::ClientWriteTimeout { .. } => "client did not read".into(),
            ProxyError::ClientTooSlow { .. } => "client read too slowly".into(),
            ProxyError::BodyTooLarge { .. } => "request body too large".into(),
            ProxyError::NotImplemented { what } => format!("not implemented: {what}"),
            ProxyError::ClientGone { .. } => "client closed the connection".into(),
            ProxyError::NoRoute => "no route".into(),
            ProxyError::Overflow(Overflow::UpstreamInFlight { upstream, .. }) => {
                format!("upstream {upstream} is at its concurrency limit")
            }
            ProxyError::Overflow(Overflow::Connecting { upstream, .. }) => {
                format!("upstream {upstream} is at its concurrency limit")
            }
            ProxyError::Overflow(
                Overflow::EgressInFlight { .. } | Overflow::EgressQueued { .. },
            ) => "egress concurrency limit reached".into(),
            ProxyError::Overflow(Overflow::EgressConnectionRate { upstream, .. }) => {
                format!("upstream {upstream}: egress connection rate limit reached")
            }
            ProxyError::Overflow(Overflow::EgressShared { .. }) => "egress limit reached".into(),
            ProxyError::Overflow(Overflow::Queued { upstream, .. }) => {
                format!("upstream {upstream} is at its concurrency limit")
            }
            ProxyError::NoEndpoint { upstream, .. } => {
                format!("upstream {upstream} has no usable endpoint")
            }
            ProxyError::DeadlineSpent { .. } => "request deadline spent".into(),
            ProxyError::CallerBudgetTooShort { .. } => "the caller's budget is too short".into(),
            ProxyError::Upstream(e) => {
                let what = match &e.kind {
                    UpstreamErrorKind::ConnectTimeout { .. } => "connect timed out",
                    UpstreamErrorKind::ConnectRefused(_) => "refused the connection",
                    UpstreamErrorKind::ConnectFailed(_) => "could not be reached",
                    UpstreamErrorKind::TlsTimeout { .. } => "TLS handshake timed out",
                    UpstreamErrorKind::Tls(_) => "TLS handshake failed",
                    UpstreamErrorKind::Timeout { .. } => "timed out",
                    UpstreamErrorKind::Reset { .. } => "reset the connection",
                    UpstreamErrorKind::Closed { .. } => "closed the connection",
                    UpstreamErrorKind::Protocol { .. } => "sent an invalid response",
                    UpstreamErrorKind::Io { .. } => "connection failed",
                };
                format!("upstream {} {what}", e.upstream)
            }
            ProxyError::BadCallResponse { call, .. } => {
                format!("required call {call} failed")
            }
            ProxyError::Shutdown { .. } => "gateway shutting down".into(),
        }
    }

    /// The full cause: this error's message followed by every source, e.g.
    /// `upstream coupon 127.0.0.1:9001 (internal): connection reset during response headers
    /// after 3ms: Connection reset by peer (os error 104)`.
    pub fn cause(&self) -> String {
        cause_chain(self)
    }
}

/// Joins an error's message with all of its sources, skipping any source whose text the
/// message already holds (an [`UpstreamError`] prints its kind inline, so the kind is not
/// repeated: `connect error after 180us: Connection refused (os error 111)`).
pub fn cause_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        src = e.source();
    }
    out
}

/// A failure of upstream `coupon` at 127.0.0.1:9001 (egress), 12 ms in, for tests.
#[cfg(test)]
pub(crate) fn upstream(kind: UpstreamErrorKind) -> ProxyError {
    ProxyError::Upstream(UpstreamError {
        upstream: "coupon".into(),
        endpoint: "127.0.0.1:9001".parse().expect("addr"),
        zone: Zone::Egress,
        elapsed: Duration::from_millis(12),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_timeout_cause_names_upstream_endpoint_zone_phase() {
        let e = upstream(UpstreamErrorKind::ConnectTimeout {
            limit: Duration::from_millis(250),
            source_limit: TimeoutSource::ConnectTimeout,
        });
        assert_eq!(
            e.cause(),
            "upstream coupon 127.0.0.1:9001 (egress): connect timed out after 250ms (connect_timeout)"
        );
        assert_eq!(e.disposition().status, 504);
        assert_eq!(e.disposition().flag, Flag::UpstreamConnectFailure);
    }

    #[test]
    fn reset_keeps_the_os_error_in_the_chain() {
        let os = io::Error::from_raw_os_error(104);
        let e = upstream(UpstreamErrorKind::from_io(Phase::ResponseHeaders, os));
        let cause = e.cause();
        assert!(
            cause.contains("connection reset during response headers after 12ms"),
            "{cause}"
        );
        assert!(cause.contains("os error 104"), "{cause}");
        assert_eq!(cause.matches("connection reset").count(), 1, "{cause}");
        assert_eq!(e.disposition().status, 502);
        assert_eq!(e.disposition().flag.code(), "UC");
        let ProxyError::Upstream(u) = &e else {
            unreachable!()
        };
        let src = u.source().and_then(|k| k.source()).expect("io source");
        let io = src.downcast_ref::<io::Error>().expect("io::Error");
        assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn every_row_of_the_status_table() {
        let cases: Vec<(ProxyError, u16, &str)> = vec![
            (
                upstream(UpstreamErrorKind::Timeout {
                    phase: Phase::ResponseHeaders,
                    limit: Duration::from_secs(1),
                    source_limit: TimeoutSource::Deadline,
                }),
                504,
                "UT",
            ),
            (
                upstream(UpstreamErrorKind::from_connect(io::Error::from(
                    io::ErrorKind::ConnectionRefused,
                ))),
                502,
                "UF",
            ),
            (
                upstream(UpstreamErrorKind::Closed {
                    phase: Phase::ResponseHeaders,
                }),
                502,
                "UC",
            ),
            (
                upstream(UpstreamErrorKind::Protocol {
                    phase: Phase::ResponseHeaders,
                    source: "bad status line".into(),
                }),
                502,
                "UPE",
            ),
            (
                ProxyError::ClientGone {
                    elapsed: Duration::from_millis(5),
                    waiting_on: None,
                    source: io::Error::from(io::ErrorKind::UnexpectedEof),
                },
                499,
                "DC",
            ),
            (
                ProxyError::HeaderReadTimeout {
                    limit: Duration::from_secs(5),
                },
                408,
                "RT",
            ),
            (
                ProxyError::Malformed("content-length with transfer-encoding".into()),
                400,
                "DPE",
            ),
            (ProxyError::NoRoute, 404, "NR"),
            (
                ProxyError::Overflow(Overflow::UpstreamInFlight {
                    upstream: "x".into(),
                    limit: 1,
                }),
                503,
                "UO",
            ),
        ];
        for (err, status, flag) in cases {
            let d = err.disposition();
            assert_eq!((d.status, d.flag.code()), (status, flag), "{err}");
        }
    }
}
