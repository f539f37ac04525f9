//! Validated configuration: the typed structs the gateway runs on.
//!
//! Built by `hopline-config` from TOML; every value here has already been checked, and
//! every default is documented on its field.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The whole gateway configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The listener and its server timeouts.
    pub server: ServerConfig,
    /// Where access log lines go.
    pub log: LogConfig,
    /// What sits in front of the gateway (used by `hopline check`).
    pub front: Option<FrontConfig>,
    /// Request deadline settings.
    pub deadline: DeadlineConfig,
    /// The admin listener, if any.
    pub admin: Option<AdminConfig>,
    /// Retry budget shared by all upstreams' retries.
    pub retry_budget: RetryBudgetConfig,
    /// Limits shared by all `egress` upstreams (one NAT gateway).
    pub egress: Option<EgressConfig>,
    /// Upstreams, in file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes, in file order (first match wins).
    pub routes: Vec<RouteConfig>,
    /// `[dns]`: how endpoint names are resolved.
    pub dns: DnsConfig,
    /// `[metrics]`: optional metric labels.
    pub metrics: MetricsConfig,
    /// `[tracing]`: OTLP span export, when set.
    pub tracing: Option<TracingConfig>,
}

/// `[tracing]`: spans of sampled requests exported over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP traces URL: `http://host:port/v1/traces` or `https://…`.
    pub otlp_endpoint: String,
    /// `https://`: the collector is spoken to over TLS, verified against `ca` (a PEM
    /// bundle) or the system roots.
    pub tls: bool,
    /// `tracing.ca`: the CAs a TLS collector is verified against. Default: the system's.
    pub ca: Option<PathBuf>,
    /// The host, port and path of `otlp_endpoint`.
    pub host: String,
    /// See `host`.
    pub port: u16,
    /// See `host`.
    pub path: String,
    /// Share of new traces recorded (no caller, a caller that did not decide, or a caller
    /// outside `server.trusted_proxies`, whose sampled flag is ignored); a trusted caller's
    /// sampled flag is followed. Default 1.0.
    pub sample_ratio: f64,
    /// Sampled requests per second per worker thread, at most (trusted callers' included);
    /// beyond it a request is recorded as unsampled and counted. Default 100.
    pub max_sampled_per_sec: u32,
    /// `service.name` of the spans. Default `hopline`.
    pub service_name: String,
}

/// `[dns]`: endpoint names are resolved in the background and re-resolved as their
/// records' TTL says, within `min_ttl..=max_ttl`.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// Name servers (`ip:port`). Default: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Shortest time between two resolutions of a name (also the retry interval after a
    /// failure). Default 5 s.
    pub min_ttl: Duration,
    /// Longest time an answer is used before asking again. Default 5 min.
    pub max_ttl: Duration,
    /// One query's time limit. Default 2 s.
    pub timeout: Duration,
    /// Which addresses of a name are used. Default `v4_preferred`.
    pub family: DnsFamily,
    /// Addresses of one name used at most (the first, in address order). Default 64.
    pub max_addresses_per_name: usize,
}

/// `[dns] family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsFamily {
    /// `"v4_preferred"`: the IPv4 addresses, or the IPv6 ones when there are none.
    #[default]
    V4Preferred,
    /// `"all"`: IPv4 and IPv6 addresses.
    All,
    /// `"v4"`: IPv4 addresses only.
    V4,
    /// `"v6"`: IPv6 addresses only.
    V6,
}

impl DnsFamily {
    /// As written in the config.
    pub const fn as_str(self) -> &'static str {
        match self {
            DnsFamily::V4Preferred => "v4_preferred",
            DnsFamily::All => "all",
            DnsFamily::V4 => "v4",
            DnsFamily::V6 => "v6",
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
            family: DnsFamily::V4Preferred,
            max_addresses_per_name: 64,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricsConfig {
    /// Per-endpoint series (an `endpoint` label). Default false: endpoint sets change, so
    /// by default labels stay a closed set.
    pub per_endpoint: bool,
}

/// `[upstreams.NAME.outlier]`: passive outlier detection (on by default).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// `enabled`. Default true.
    pub enabled: bool,
    /// Gateway failures in a row (connect failure, reset, timeout, 502/503/504) that eject
    /// an endpoint. Default 5.
    pub consecutive_failures: u32,
    /// An ejection lasts this times the endpoint's number of ejections. Default 30 s.
    pub base_ejection: Duration,
    /// The longest ejection. Default 5 min.
    pub max_ejection: Duration,
    /// Never more than this share of the endpoints ejected at once. Default 50 (%).
    pub max_ejection_percent: u8,
    /// An endpoint back after an ejection or failed health checks gets a share of the
    /// least-request pick that ramps up from a tenth to all of it over this long, so it is
    /// not handed a full share at once. Default zero: off.
    pub slow_start: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            enabled: true,
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
            slow_start: Duration::ZERO,
        }
    }
}

/// `[upstreams.NAME.health]`: active HTTP health checks of every endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// The path asked with `GET`.
    pub path: String,
    /// Time between two checks of an endpoint (jittered by up to 10 %). Default 5 s.
    pub interval: Duration,
    /// One check's time limit. Default 1 s.
    pub timeout: Duration,
    /// Passed checks in a row that make an unhealthy endpoint healthy. Default 2.
    pub healthy_threshold: u32,
    /// Failed checks in a row that make a healthy endpoint unhealthy. Default 3.
    pub unhealthy_threshold: u32,
    /// Statuses that pass. Default `[200]`.
    pub expect_status: Vec<u16>,
}

impl HealthConfig {
    /// The defaults, checking `path`.
    pub fn with_path(path: &str) -> Self {
        HealthConfig {
            path: path.to_string(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            expect_status: vec![200],
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Listen address: an IP or a host name, and a port. A host name binds every address
    /// it resolves to. Default `127.0.0.1:8080`.
    pub listen: ListenAddr,
    /// Time to receive a whole request head, from accept (first request) or from the first
    /// byte (later requests). Default 5 s. Answered with 408 `RT`.
    pub header_read_timeout: Duration,
    /// Time to receive the whole request body after its head. Default 30 s. 408 `RT`.
    pub body_read_timeout: Duration,
    /// Longest a single write to the client may block. Default 30 s; the connection is closed.
    pub write_timeout: Duration,
    /// Keep-alive idle time between requests. Default 75 s (must exceed the front's).
    pub idle_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish. Default 10 s.
    pub drain_timeout: Duration,
    /// Open client connections at most; beyond it, accepting pauses. Default 10000.
    pub max_connections: usize,
    /// The listen backlog: connections the kernel completes and queues before hopline
    /// accepts them. Default 4096 (the kernel caps it at `net.core.somaxconn`). A short
    /// queue drops the SYNs of a burst, and each dropped SYN costs the client a 1 s
    /// retransmission.
    pub backlog: u32,
    /// Largest request head in bytes. Default 65536; larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body in bytes (bodies are streamed to the upstream as they arrive;
    /// one that passes this is cut). Default 16 MiB; larger gets 413.
    pub max_body_bytes: usize,
    /// The process-wide budget for bytes held in buffers that grow with what a client or
    /// an upstream sends (bodies read whole, replay buffers, aggregate call bodies, HTTP/2
    /// request data not yet passed on). Default 256 MiB; a request that cannot get its share
    /// gets 503 `OM`.
    pub max_buffered_bytes: usize,
    /// A request body sender slower than this (bytes/s, averaged over 10 s of waiting on
    /// it after a 5 s grace) is cut with 408 `RT`. Default 1 KiB/s; 0 turns it off.
    pub min_recv_rate: u64,
    /// A client that reads a response slower than this (bytes/s, averaged over
    /// `min_send_rate_window`) is cut with `WT`, its slots released. Default 1 KiB/s; 0
    /// turns it off.
    pub min_send_rate: u64,
    /// The window `min_send_rate` is averaged over. Default 30 s.
    pub min_send_rate_window: Duration,
    /// Longest request line in bytes. Default 8192; longer gets 414.
    pub max_request_line_bytes: usize,
    /// Put the full cause (upstream addresses, OS errors) in error response bodies, not
    /// only in the log. Default false: responses carry status, flag, request id and a
    /// short reason. Turn on for internal gateways only.
    pub expose_cause: bool,
    /// What to do with connections beyond `max_connections`. Default [`Overload::Pause`].
    pub overload: Overload,
    /// While draining, how long an idle keep-alive connection may stay idle before it is
    /// closed (a request already on its way still gets served). Default 1 s.
    pub drain_idle_grace: Duration,
    /// `[server.tls]`: a second listener that terminates TLS. Default none.
    pub tls: Option<ServerTlsConfig>,
    /// `server.h2c`: the plain listener also takes HTTP/2 with prior knowledge (a
    /// connection that opens with the HTTP/2 preface). Default false.
    pub h2c: bool,
    /// `[server.h2]`: HTTP/2 on the listeners and its flood defences.
    pub h2: H2Config,
    /// What becomes of `%2F` / `%5C` in a request path. Default [`EscapedSlashes::Reject`].
    pub escaped_slashes: EscapedSlashes,
    /// `//` in a request path becomes `/` before routing. Default false (as Envoy).
    pub merge_slashes: bool,
    /// Peers whose forwarding and deadline headers are believed (a peer is trusted when
    /// its socket address is in one of these). Default loopback: `127.0.0.0/8`, `::1/128`.
    pub trusted_proxies: Vec<Cidr>,
    /// TCP keepalive on client connections. Default on (30 s, 10 s, 3); `false`: off.
    pub tcp_keepalive: Option<TcpKeepalive>,
}

impl ServerConfig {
    /// True when `ip` is in `trusted_proxies`.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

/// An address range, `10.0.0.0/8` or `fd00::/8` (a bare address is its own /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("{0:?} is not an IP address (expected e.g. \"10.0.0.0/8\" or \"fd00::/8\")")]
    Address(String),
    /// The prefix length is not a number up to 32 (IPv4) or 128 (IPv6).
    #[error("prefix /{0} is not 0..=32 for IPv4 or 0..=128 for IPv6")]
    Prefix(String),
    /// Bits are set past the prefix (`10.1.0.0/8`): a typo more often than not.
    #[error("{0} has bits set past its prefix; write the network address (e.g. {1})")]
    HostBits(String, String),
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Address(a.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| CidrError::Prefix(p.to_string()))?
        };
        let c = Cidr { addr, prefix };
        let network = c.network();
        if network != addr {
            return Err(CidrError::HostBits(
                s.to_string(),
                format!("{network}/{prefix}"),
            ));
        }
        Ok(c)
    }

    fn bits(ip: IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    fn mask(&self, width: u8) -> u128 {
        let host = u32::from(width - self.prefix);
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        all.checked_shl(host).map_or(0, |m| m & all)
    }

    fn network(&self) -> IpAddr {
        let (bits, width) = Self::bits(self.addr);
        let n = bits & self.mask(width);
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(n as u32)),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(n)),
        }
    }

    /// The first range of `list` that holds `ip`, or the IPv4 address an IPv6 one carries
    /// (IPv4-mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`): a name cannot reach a denied
    /// IPv4 address by answering with its IPv6 spelling.
    pub fn deny(list: &[Cidr], ip: IpAddr) -> Option<&Cidr> {
        // `contains` already reads an IPv4-mapped address as its IPv4 one; NAT64 is read
        // here.
        let nat64 = match ip {
            IpAddr::V6(v6) if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => Some(IpAddr::V4(
                std::net::Ipv4Addr::from((u128::from(v6) as u32).to_be_bytes()),
            )),
            _ => None,
        };
        list.iter()
            .find(|c| c.contains(ip) || nat64.is_some_and(|v4| c.contains(v4)))
    }

    /// True when `ip` is in the range; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is
    /// matched as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (want, width) = Self::bits(self.addr);
        let (got, got_width) = Self::bits(ip);
        width == got_width && got & self.mask(width) == want
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `server.escaped_slashes`: what becomes of an encoded slash (`%2F`) or backslash (`%5C`)
/// in a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request (400 `DPE`): the gateway and the upstream would disagree on
    /// where the path's segments are.
    #[default]
    Reject,
    /// Keep it encoded (upper-cased), as one character of its segment.
    Keep,
    /// Decode it to `/` before dot segments are removed.
    Decode,
}

impl EscapedSlashes {
    /// `reject`, `keep` or `decode`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EscapedSlashes::Reject => "reject",
            EscapedSlashes::Keep => "keep",
            EscapedSlashes::Decode => "decode",
        }
    }
}

/// `[server.h2]`: HTTP/2 to clients (ALPN `h2` on the TLS listener, and h2c with prior
/// knowledge when `server.h2c` is on) and the limits that defend against floods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Config {
    /// Offer `h2` by ALPN on the TLS listener. Default true.
    pub enabled: bool,
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    /// Default 100.
    pub max_concurrent_streams: u32,
    /// Largest decoded header list of one request (SETTINGS_MAX_HEADER_LIST_SIZE); a
    /// larger one, CONTINUATION floods included, is refused. Default `max_header_bytes`.
    pub max_header_list_bytes: Option<u32>,
    /// Streams the client opened and reset before hopline accepted them, at most, before
    /// the connection is closed with GOAWAY ENHANCE_YOUR_CALM (Rapid Reset,
    /// CVE-2023-44487). Default 20.
    pub max_pending_accept_reset_streams: usize,
    /// Streams hopline had to reset because the client broke the protocol, at most,
    /// before the connection is closed with GOAWAY ENHANCE_YOUR_CALM. Default 1024.
    pub max_local_error_reset_streams: usize,
}

impl Default for H2Config {
    fn default() -> Self {
        H2Config {
            enabled: true,
            max_concurrent_streams: 100,
            max_header_list_bytes: None,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
        }
    }
}

/// `server.overload`: what happens to connections beyond `max_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// Stop accepting until a connection closes; new ones wait in the kernel's backlog.
    Pause,
    /// Accept and close at once, so clients fail fast instead of waiting.
    Close,
}

impl Overload {
    /// `pause` or `close`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Overload::Pause => "pause",
            Overload::Close => "close",
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `log.access`: where access log lines go. Default stdout.
    pub access: AccessLogSink,
    /// `log.tls_errors`: write an access-log line (`"tls_error"`) for every failed client
    /// TLS handshake. Default false: failures are only counted in
    /// `hopline_tls_handshake_errors_total`, so a scanner cannot flood the log.
    pub tls_errors: bool,
    /// `log.redact_query`: query names (lower-case, matched case-insensitively once
    /// decoded) whose values the access log writes as `REDACTED`. Default
    /// [`DEFAULT_REDACT_QUERY`].
    pub redact_query: Vec<Box<str>>,
}

/// The query names whose values the access log redacts unless `log.redact_query` says
/// otherwise: bearer tokens, OAuth codes and secrets, signatures, API keys, S3 presigning.
pub const DEFAULT_REDACT_QUERY: &[&str] = &[
    "access_token",
    "token",
    "code",
    "password",
    "secret",
    "sig",
    "signature",
    "key",
    "api_key",
    "apikey",
    "client_secret",
    "refresh_token",
    "id_token",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            access: AccessLogSink::default(),
            tls_errors: false,
            redact_query: DEFAULT_REDACT_QUERY.iter().map(|&n| n.into()).collect(),
        }
    }
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLogSink {
    /// One JSON line per request on stdout (default).
    #[default]
    Stdout,
    /// One JSON line per request appended to a file.
    File(PathBuf),
    /// No access log.
    Off,
}

/// `[front]`: the proxy in front of the gateway, as far as `check` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontConfig {
    /// The front proxy's upstream (read) timeout.
    pub timeout: Option<Duration>,
    /// The front proxy's keep-alive idle timeout towards us.
    pub idle_timeout: Option<Duration>,
}

/// `[deadline]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineConfig {
    /// Deadline of routes that set no `timeout`. Default 3 s.
    pub default: Duration,
    /// Cap on every deadline. Default 30 s.
    pub max: Duration,
    /// Subtracted from the caller's remaining time, and from ours when sent upstream.
    /// Default 5 ms.
    pub margin: Duration,
    /// The shortest budget a caller may give (`grpc-timeout` from anyone,
    /// `x-envoy-expected-rq-timeout-ms` from trusted peers); a shorter one is answered 504
    /// at once, before any upstream call. Default 10 ms; zero refuses none.
    pub min_caller: Duration,
}

/// `[server.tls]`: the TLS listener and its certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsConfig {
    /// Where TLS connections are accepted (host name or IP, and port).
    pub listen: ListenAddr,
    /// Certificates; the one without `server_names` (the `[server.tls]` `cert`/`key`) is
    /// the default, served when the client's SNI matches no other. At least one.
    pub certs: Vec<CertKeyPair>,
    /// Lowest protocol version accepted. Default TLS 1.2.
    pub min_version: TlsVersion,
}

impl ServerTlsConfig {
    /// The default certificate (served without a matching SNI), if any.
    pub fn default_cert(&self) -> Option<&CertKeyPair> {
        self.certs.iter().find(|c| c.server_names.is_empty())
    }
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyPair {
    /// PEM file: the leaf certificate first, then its chain.
    pub cert: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// SNI names this certificate is served for (`*.example.com` matches one label);
    /// empty for the default certificate.
    pub server_names: Vec<String>,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[default]
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    /// As written in the config and the access log: `"1.2"`, `"1.3"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }
}

/// `[upstreams.X]` TLS settings: hopline originates TLS to every endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTlsConfig {
    /// Server name sent (SNI) and verified. Default: each endpoint's host name (an IP
    /// endpoint sends no SNI and is verified against the certificate's IP addresses).
    pub sni: Option<String>,
    /// PEM bundle of trusted CAs. Default: the system roots, with the Mozilla roots
    /// (webpki-roots) when the system has none.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS; with `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate. For tests only: `hopline check` flags it (an error
    /// on egress upstreams).
    pub insecure_skip_verify: bool,
    /// ALPN protocols offered. Default `["http/1.1"]`.
    pub alpn: Vec<String>,
}

/// A listen address as written: host (an IP address or a name) and port. Resolved when
/// the listener is bound, so the config stays free of I/O.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenAddr {
    /// An IP address (IPv6 without brackets) or a host name.
    pub host: String,
    /// The port; 0 lets the system pick one.
    pub port: u16,
}

impl ListenAddr {
    /// The address itself when `host` is an IP address (no resolution needed).
    pub fn ip(&self) -> Option<SocketAddr> {
        self.host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> Self {
        ListenAddr {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Listen address of the admin API (an IP or a host name, and a port).
    pub listen: ListenAddr,
    /// Connections open at once; one more is answered 503 and closed. Default 64.
    pub max_connections: usize,
    /// Host names (beyond IP literals and `localhost`) the admin API answers to; a
    /// request naming another is answered 403 (DNS rebinding). Default none.
    pub allowed_hosts: Vec<String>,
}

impl AdminConfig {
    /// The default `max_connections`.
    pub const MAX_CONNECTIONS: usize = 64;
}

/// `[retry_budget]`: retries allowed on top of first attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries as a fraction of requests. Default 0.2.
    pub ratio: f64,
    /// Retries always allowed per second, whatever the ratio. Default 10.
    pub min_per_sec: u32,
}

/// `[egress]`: shared by every `zone = "egress"` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    /// In-flight egress calls at most. Beyond: 503 `UO` at once.
    pub max_in_flight: Option<usize>,
    /// New egress connections per second at most. Beyond: 503 `UO` at once.
    pub max_new_connections_per_sec: Option<u32>,
    /// Makes both limits cluster-wide: shared through Redis by every gateway with the
    /// same scope.
    pub shared: Option<SharedEgressConfig>,
    /// New connections per second the NAT gateway is documented to allow (for `check`).
    pub nat_limit: Option<u32>,
    /// How long the NAT keeps an idle flow (AWS NAT gateway: 350 s), for `check`'s
    /// `nat-idle` rule. Default unset.
    pub nat_idle_timeout: Option<Duration>,
}

/// TCP keepalive on a socket: after `idle` without traffic, `count` probes `interval`
/// apart; a peer (or a NAT) that answers none has the connection reset. Keeps a NAT's or a
/// conntrack table's entry of an idle pooled connection alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Idle time before the first probe. Default 30 s.
    pub idle: Duration,
    /// Time between probes. Default 10 s.
    pub interval: Duration,
    /// Probes unanswered before the connection is dropped. Default 3.
    pub count: u32,
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        TcpKeepalive {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            count: 3,
        }
    }
}

impl TcpKeepalive {
    /// How long an idle connection whose peer is gone lives: `idle + interval × count`.
    pub fn gives_up_after(&self) -> Duration {
        self.idle + self.interval * self.count
    }
}

/// `[egress] shared = "redis://…"` and its companions: cluster-wide egress budgets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEgressConfig {
    /// `redis://host:port[/db]` or `rediss://…` (TLS); never with a password.
    pub url: String,
    /// Gateways with the same scope share one budget.
    pub scope: String,
    /// The environment variable holding the Redis password. Default
    /// `HOPLINE_REDIS_PASSWORD`.
    pub password_env: String,
    /// A PEM file of the CA that signed Redis's certificate (`rediss://` with a private
    /// CA); the system's roots otherwise.
    pub ca: Option<PathBuf>,
    /// Gateways expected to share the scope: when Redis cannot be reached, each takes
    /// `budget / expected_replicas` locally. Unset: the whole budget (and `check` warns).
    pub expected_replicas: Option<u32>,
    /// How long Redis may take to answer before this gateway falls back to its local
    /// share. Default 20 ms.
    pub fallback_after: Duration,
}

impl SharedEgressConfig {
    /// The default `password_env`.
    pub const PASSWORD_ENV: &'static str = "HOPLINE_REDIS_PASSWORD";
    /// The default `fallback_after`.
    pub const FALLBACK_AFTER: Duration = Duration::from_millis(20);
}

/// Network zone of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Zone {
    /// Inside our network.
    Internal,
    /// Leaves through a shared egress (NAT) gateway.
    Egress,
}

impl Zone {
    /// `internal` or `egress`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Zone::Internal => "internal",
            Zone::Egress => "egress",
        }
    }
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// The table name.
    pub name: String,
    /// `host:port` endpoints; a host name stands for every address it resolves to.
    pub endpoints: Vec<String>,
    /// Zone. Default `internal`.
    pub zone: Zone,
    /// Connect timeout (capped by the time left). Default 1 s.
    pub connect_timeout: Duration,
    /// Per-attempt timeout, from sending the request to the end of the response body
    /// (capped by the time left). Default 5 s.
    pub timeout: Duration,
    /// In-flight calls at most. Default 1024; beyond, a request waits in the queue.
    pub max_in_flight: usize,
    /// Requests that may wait for one of `max_in_flight`'s slots, in order, each as long
    /// as its deadline allows. Default 1024 (Envoy's `max_pending_requests`); 0: none wait
    /// (503 `UO` at once, the behaviour before the queue).
    pub max_pending: usize,
    /// Connects (and TLS handshakes) in progress per endpoint at most: a request that finds
    /// no idle pooled connection and no free connect waits for whichever comes first, a
    /// connection another request returns or a connect slot, within `min(connect_timeout,
    /// time left)`. Default 64: a burst never opens more than this many connections to an
    /// endpoint at once (a SYN flood of its listen queue).
    pub max_connecting: usize,
    /// How long an idle pooled connection is kept. Default 30 s.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per endpoint. Default 128.
    pub pool_max_idle: usize,
    /// The largest response head accepted (HTTP/1 head, HTTP/2 decoded header list),
    /// health checks included; beyond it 502 `UPE`. Default 65536.
    pub max_response_header_bytes: usize,
    /// The upstream's own keep-alive idle timeout, if known (for `check`).
    pub server_idle_timeout: Option<Duration>,
    /// Retries after a safe failure. Default 2.
    pub max_retries: u32,
    /// `tls = true` (or `https://` endpoints): TLS to every endpoint. Default none.
    pub tls: Option<UpstreamTlsConfig>,
    /// `protocol`: what hopline speaks to this upstream. Default HTTP/1.1.
    pub protocol: UpstreamProtocol,
    /// `lb`: how an endpoint is chosen for each attempt. Default least request.
    pub lb: LoadBalancing,
    /// `[upstreams.NAME.outlier]`.
    pub outlier: OutlierConfig,
    /// `[upstreams.NAME.health]`, if any.
    pub health: Option<HealthConfig>,
    /// When fewer than this share (%) of the endpoints are usable, balance over all of
    /// them (panic mode). Default 50.
    pub panic_threshold: u8,
    /// Addresses a **name** in `endpoints` may not resolve to (IP literals written in
    /// `endpoints` are never checked): a resolved address in one of these ranges is not
    /// used, and an upstream left with none answers 503 `UH` naming it. Default for
    /// `zone = "egress"`: [`EGRESS_DENIED`]; for `internal`: none.
    pub deny_addresses: Vec<Cidr>,
    /// Bytes of a streamed request body kept so that a request whose pooled connection
    /// turned out stale can be sent again on a new one. Default 64 KiB; a request that
    /// sent more is not resent.
    pub retry_buffer_bytes: usize,
    /// TCP keepalive on upstream connections (pooled ones included). Default on (30 s,
    /// 10 s, 3); `false`: off.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the kernel
    /// drops the connection. Default unset (the kernel's).
    pub tcp_user_timeout: Option<Duration>,
}

/// `upstreams.NAME.lb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalancing {
    /// `"least_request"`: of two endpoints drawn at random, the one with fewer requests
    /// in flight (power of two choices, Envoy's default).
    #[default]
    LeastRequest,
    /// `"round_robin"`: each endpoint in turn.
    RoundRobin,
    /// `"random"`: uniformly at random.
    Random,
}

impl LoadBalancing {
    /// As written in the config.
    pub const fn as_str(self) -> &'static str {
        match self {
            LoadBalancing::LeastRequest => "least_request",
            LoadBalancing::RoundRobin => "round_robin",
            LoadBalancing::Random => "random",
        }
    }
}

/// `upstreams.NAME.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// `"http/1.1"`: pooled keep-alive connections, one request at a time on each.
    #[default]
    Http1,
    /// `"h2"`: HTTP/2 (prior knowledge on plain TCP, ALPN `h2` over TLS), requests
    /// multiplexed on one connection per endpoint; needed for gRPC.
    H2,
}

impl UpstreamProtocol {
    /// As written in the config, and offered by ALPN.
    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http/1.1",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// `path = "/x"`: the path (without query) equals it.
    Exact(String),
    /// `path_prefix = "/x/"`: the path starts with it.
    Prefix(String),
}

impl PathMatch {
    /// True when `path` (without query string) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// `[[routes]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Route name (logs, metrics).
    pub name: String,
    /// Path match.
    pub path: PathMatch,
    /// What the route does.
    pub action: RouteAction,
    /// Route deadline. Default `deadline.default`.
    pub timeout: Duration,
    /// Methods the route serves (others get 405 with `Allow`). Default: every method for
    /// proxy routes, `GET` and `HEAD` for aggregate routes.
    pub methods: Option<Vec<String>>,
    /// `websocket = true` (proxy routes): HTTP/1.1 `Upgrade: websocket` requests are
    /// forwarded and, once the upstream answers 101, tunnelled; the value is
    /// `websocket_idle_timeout` (default 60 s), after which a silent tunnel is closed.
    pub websocket: Option<Duration>,
    /// `request_buffering = true`: the request body is read whole (drawing from
    /// `server.max_buffered_bytes`) before the upstream is called, as nginx's
    /// `proxy_request_buffering`. Default false: streamed as it arrives.
    pub request_buffering: bool,
    /// The route's own `body_read_timeout` (for routes that take large uploads). Default:
    /// `server.body_read_timeout`.
    pub body_read_timeout: Option<Duration>,
}

impl RouteConfig {
    /// The methods for the `Allow` field of a 405, e.g. `GET, HEAD`.
    pub fn allow_header(&self) -> String {
        match &self.methods {
            Some(list) => list.join(", "),
            None => "GET, HEAD".to_string(),
        }
    }
}

/// What a route does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// `upstream = "NAME"`: proxy to it.
    Proxy {
        /// Upstream name (validated to exist).
        upstream: String,
    },
    /// `aggregate.*`: fan out to several calls and answer one JSON object.
    Aggregate(AggregateConfig),
}

/// `aggregate.mode` and `[[routes.aggregate.calls]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateConfig {
    /// Parallel (default) or sequential.
    pub mode: AggregateMode,
    /// The calls, in order.
    pub calls: Vec<CallConfig>,
}

/// How an aggregate route runs its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateMode {
    /// All at once; the route takes as long as the slowest call.
    Parallel,
    /// One after another, each with `min(its timeout, time left)`.
    Sequential,
}

impl AggregateMode {
    /// `parallel` or `sequential`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AggregateMode::Parallel => "parallel",
            AggregateMode::Sequential => "sequential",
        }
    }
}

/// One call of an aggregate route.
#[derive(Debug, Clone, PartialEq)]
pub struct CallConfig {
    /// Key of its result in the response object.
    pub name: String,
    /// Upstream name (validated to exist).
    pub upstream: String,
    /// Path, with `{query.NAME}` / `{header.NAME}` placeholders (validated).
    pub path: String,
    /// Method. Default `GET`.
    pub method: String,
    /// Append the client's query string. Default false.
    pub forward_query: bool,
    /// Client headers copied to the call.
    pub forward_headers: Vec<String>,
    /// JSON text served when the call fails. Default `null`.
    pub fallback: String,
    /// A failure fails the whole request instead of falling back. Default false.
    pub required: bool,
    /// The call's own timeout, capped by the time left. Default: the time left.
    pub timeout: Option<Duration>,
    /// The largest response body the call takes (read whole, drawing from
    /// `server.max_buffered_bytes`). Default 4 MiB; larger is the call's failure.
    pub max_body_bytes: usize,
}

impl RouteConfig {
    /// The upstreams this route calls.
    pub fn upstreams(&self) -> Vec<&str> {
        match &self.action {
            RouteAction::Proxy { upstream } => vec![upstream.as_str()],
            RouteAction::Aggregate(a) => a.calls.iter().map(|c| c.upstream.as_str()).collect(),
        }
    }
}

impl Config {
    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ListenAddr::from(SocketAddr::from(([127, 0, 0, 1], 8080))),
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            drain_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            backlog: 4096,
            max_header_bytes: 65_536,
            max_body_bytes: 16 << 20,
            max_buffered_bytes: 256 << 20,
            min_recv_rate: 1024,
            min_send_rate: 1024,
            min_send_rate_window: Duration::from_secs(30),
            max_request_line_bytes: 8192,
            expose_cause: false,
            overload: Overload::Pause,
            drain_idle_grace: Duration::from_secs(1),
            tls: None,
            h2c: false,
            escaped_slashes: EscapedSlashes::Reject,
            merge_slashes: false,
            trusted_proxies: vec![
                Cidr {
                    addr: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
                    prefix: 8,
                },
                Cidr {
                    addr: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                    prefix: 128,
                },
            ],
            h2: H2Config::default(),
            tcp_keepalive: Some(TcpKeepalive::default()),
        }
    }
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        DeadlineConfig {
            default: Duration::from_secs(3),
            max: Duration::from_secs(30),
            margin: Duration::from_millis(5),
            min_caller: Duration::from_millis(10),
        }
    }
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: 0.2,
            min_per_sec: 10,
        }
    }
}

/// `upstreams.N.deny_addresses`' default for `zone = "egress"`: loopback, "this network",
/// link-local (cloud metadata at 169.254.169.254), private, shared address space (carrier
/// NAT; Alibaba Cloud's metadata at 100.100.100.200) and unique-local ranges.
pub const EGRESS_DENIED: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "169.254.0.0/16",
    "fe80::/10",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

impl UpstreamConfig {
    /// The default `deny_addresses` of an upstream in `zone`.
    pub fn default_denied(zone: Zone) -> Vec<Cidr> {
        match zone {
            Zone::Egress => EGRESS_DENIED
                .iter()
                .filter_map(|c| Cidr::parse(c).ok())
                .collect(),
            Zone::Internal => Vec::new(),
        }
    }

    /// An upstream with every default and the given endpoints.
    pub fn with_defaults(name: &str, endpoints: Vec<String>) -> Self {
        UpstreamConfig {
            name: name.to_string(),
            endpoints,
            zone: Zone::Internal,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            max_in_flight: 1024,
            max_pending: 1024,
            max_connecting: 64,
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle: 128,
            max_response_header_bytes: 65536,
            server_idle_timeout: None,
            max_retries: 2,
            tls: None,
            protocol: UpstreamProtocol::Http1,
            lb: LoadBalancing::LeastRequest,
            outlier: OutlierConfig::default(),
            health: None,
            panic_threshold: 50,
            deny_addresses: Vec::new(),
            retry_buffer_bytes: 64 << 10,
            tcp_keepalive: Some(TcpKeepalive::default()),
            tcp_user_timeout: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_egress_default_denies_what_an_ssrf_wants_also_in_ipv6_spelling() {
        let deny = UpstreamConfig::default_denied(Zone::Egress);
        for bad in [
            "127.0.0.1",
            "169.254.169.254",
            "100.100.100.200",
            "10.0.0.7",
            "172.31.255.255",
            "192.168.1.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
        ] {
            assert!(Cidr::deny(&deny, ip(bad)).is_some(), "{bad}");
        }
        for good in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "64:ff9b::5db8:d822",
            "172.32.0.1",
        ] {
            assert!(Cidr::deny(&deny, ip(good)).is_none(), "{good}");
        }
        assert!(UpstreamConfig::default_denied(Zone::Internal).is_empty());
    }

    #[test]
    fn cidrs_parse_and_contain_what_they_say() {
        let lan = Cidr::parse("10.0.0.0/8").expect("cidr");
        assert!(lan.contains(ip("10.255.1.2")) && !lan.contains(ip("11.0.0.1")));
        assert!(lan.contains(ip("::ffff:10.0.0.9")), "IPv4-mapped");
        assert!(!lan.contains(ip("fd00::1")));
        let v6 = Cidr::parse("fd00::/8").expect("cidr");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let one = Cidr::parse("192.0.2.7").expect("bare");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        assert!(Cidr::parse("0.0.0.0/0")
            .expect("all")
            .contains(ip("8.8.8.8")));
        assert!(Cidr::parse("::/0")
            .expect("all")
            .contains(ip("2001:db8::1")));
        assert_eq!(
            Cidr::parse("10.1.0.0/8"),
            Err(CidrError::HostBits(
                "10.1.0.0/8".into(),
                "10.0.0.0/8".into()
            ))
        );
        assert!(matches!(
            Cidr::parse("10.0.0.0/33"),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(Cidr::parse("ten/8"), Err(CidrError::Address(_))));
        let d = ServerConfig::default();
        assert!(d.trusts(ip("127.0.0.1")) && d.trusts(ip("::1")) && !d.trusts(ip("10.0.0.1")));
    }
}
