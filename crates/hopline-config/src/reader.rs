//! The walk over a parsed TOML document that builds the typed config and collects problems.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use hopline_core::config::{
    AccessLogSink, AdminConfig, AggregateConfig, AggregateMode, CallConfig, CertKeyPair, Cidr,
    Config, DeadlineConfig, DnsConfig, DnsFamily, EgressConfig, EscapedSlashes, FrontConfig,
    H2Config, HealthConfig, ListenAddr, LoadBalancing, LogConfig, MetricsConfig, OutlierConfig,
    Overload, PathMatch, RetryBudgetConfig, RouteAction, RouteConfig, ServerConfig,
    ServerTlsConfig, SharedEgressConfig, TcpKeepalive, TlsVersion, TracingConfig, UpstreamConfig,
    UpstreamProtocol, UpstreamTlsConfig, Zone,
};

use crate::duration::parse_duration;
use crate::source::{Problem, ProblemKind};
use crate::walk::{Cx, Tbl};

fn listen_addr(
    cx: &mut Cx,
    t: &mut Tbl,
    key: &'static str,
    default: Option<ListenAddr>,
) -> Option<ListenAddr> {
    let Some((s, span)) = t.str(cx, key) else {
        if default.is_none() && !t.has(key) {
            cx.report(t.span(), t.key_path(key), ProblemKind::Missing);
        }
        return default;
    };
    match parse_listen(s) {
        Some(a) => Some(a),
        None => {
            cx.report(
                span,
                t.key_path(key),
                ProblemKind::Invalid(format!(
                    "{s:?} is not host:port (an IP address or a host name, e.g. \"0.0.0.0:8080\", \"[::]:8080\", \"localhost:8080\")"
                )),
            );
            default
        }
    }
}

/// `IP:port`, `[IPv6]:port` or `name:port`, where a name is dot-separated labels of
/// letters, digits and hyphens.
fn parse_listen(s: &str) -> Option<ListenAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a.into());
    }
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    // All digits and dots is a malformed IP, not a name.
    let name_ok = dns_name(host) && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    name_ok.then(|| ListenAddr {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// A list of CIDRs (`server.trusted_proxies`, `upstreams.N.deny_addresses`), each wrong
/// one reported with its place.
fn cidr_list(cx: &mut Cx, t: &mut Tbl, key: &'static str) -> Option<Vec<Cidr>> {
    let list = t.str_list(cx, key)?;
    let mut out = Vec::with_capacity(list.len());
    for (i, (text, span)) in list.into_iter().enumerate() {
        match Cidr::parse(text) {
            Ok(c) => out.push(c),
            Err(e) => cx.report(
                span,
                format!("{}[{i}]", t.key_path(key)),
                ProblemKind::Invalid(e.to_string()),
            ),
        }
    }
    Some(out)
}

/// `tcp_keepalive`: `true` (the default: 30 s idle, probes 10 s apart, 3 of them), `false`,
/// or `{ idle = "30s", interval = "10s", count = 3 }` (keys left out take the defaults).
fn tcp_keepalive(cx: &mut Cx, t: &mut Tbl) -> Option<TcpKeepalive> {
    let d = TcpKeepalive::default();
    if !t.has("tcp_keepalive") {
        return Some(d);
    }
    if t.peek_bool("tcp_keepalive").is_some() {
        return t.bool(cx, "tcp_keepalive", true).then_some(d);
    }
    let mut k = t.sub(cx, "tcp_keepalive")?;
    let ka = TcpKeepalive {
        idle: k.duration(cx, "idle", d.idle),
        interval: k.duration(cx, "interval", d.interval),
        count: k.uint(cx, "count", u64::from(d.count), 1, 100) as u32,
    };
    k.finish(cx);
    Some(ka)
}

fn server(cx: &mut Cx, mut t: Tbl) -> ServerConfig {
    let d = ServerConfig::default();
    let s = ServerConfig {
        listen: listen_addr(cx, &mut t, "listen", Some(d.listen.clone())).unwrap_or(d.listen),
        header_read_timeout: t.duration(cx, "header_read_timeout", d.header_read_timeout),
        body_read_timeout: t.duration(cx, "body_read_timeout", d.body_read_timeout),
        write_timeout: t.duration(cx, "write_timeout", d.write_timeout),
        idle_timeout: t.duration(cx, "idle_timeout", d.idle_timeout),
        drain_timeout: t.duration(cx, "drain_timeout", d.drain_timeout),
        max_connections: t.uint(
            cx,
            "max_connections",
            d.max_connections as u64,
            1,
            10_000_000,
        ) as usize,
        backlog: t.uint(cx, "backlog", u64::from(d.backlog), 1, 65_535) as u32,
        max_header_bytes: t.uint(
            cx,
            "max_header_bytes",
            d.max_header_bytes as u64,
            1024,
            16 << 20,
        ) as usize,
        max_body_bytes: t.uint(cx, "max_body_bytes", d.max_body_bytes as u64, 0, 1 << 40) as usize,
        max_buffered_bytes: t.uint(
            cx,
            "max_buffered_bytes",
            d.max_buffered_bytes as u64,
            1 << 20,
            1 << 40,
        ) as usize,
        min_recv_rate: t.byte_rate(cx, "min_recv_rate", d.min_recv_rate),
        min_send_rate: t.byte_rate(cx, "min_send_rate", d.min_send_rate),
        min_send_rate_window: t.duration(cx, "min_send_rate_window", d.min_send_rate_window),
        max_request_line_bytes: t.uint(
            cx,
            "max_request_line_bytes",
            d.max_request_line_bytes as u64,
            256,
            16 << 20,
        ) as usize,
        expose_cause: t.bool(cx, "expose_cause", d.expose_cause),
        overload: t.choice(
            cx,
            "overload",
            ("pause", Overload::Pause),
            &[("close", Overload::Close)],
        ),
        drain_idle_grace: t.duration(cx, "drain_idle_grace", d.drain_idle_grace),
        tls: t.sub(cx, "tls").and_then(|t| server_tls(cx, t)),
        h2c: t.bool(cx, "h2c", d.h2c),
        h2: t
            .sub(cx, "h2")
            .map(|t| server_h2(cx, t))
            .unwrap_or_default(),
        escaped_slashes: t.choice(
            cx,
            "escaped_slashes",
            ("reject", EscapedSlashes::Reject),
            &[
                ("keep", EscapedSlashes::Keep),
                ("decode", EscapedSlashes::Decode),
            ],
        ),
        merge_slashes: t.bool(cx, "merge_slashes", d.merge_slashes),
        trusted_proxies: cidr_list(cx, &mut t, "trusted_proxies").unwrap_or(d.trusted_proxies),
        tcp_keepalive: tcp_keepalive(cx, &mut t),
    };
    t.finish(cx);
    s
}

/// `[server.h2]`: `enabled` and the flood limits.
fn server_h2(cx: &mut Cx, mut t: Tbl) -> H2Config {
    let d = H2Config::default();
    let h2 = H2Config {
        enabled: t.bool(cx, "enabled", d.enabled),
        max_concurrent_streams: t.uint(
            cx,
            "max_concurrent_streams",
            u64::from(d.max_concurrent_streams),
            1,
            10_000,
        ) as u32,
        max_header_list_bytes: t
            .opt_uint(cx, "max_header_list_bytes", 1024, 16 << 20)
            .map(|n| n as u32),
        max_pending_accept_reset_streams: t.uint(
            cx,
            "max_pending_accept_reset_streams",
            d.max_pending_accept_reset_streams as u64,
            0,
            100_000,
        ) as usize,
        max_local_error_reset_streams: t.uint(
            cx,
            "max_local_error_reset_streams",
            d.max_local_error_reset_streams as u64,
            0,
            1_000_000,
        ) as usize,
    };
    t.finish(cx);
    h2
}

/// `[server.tls]`: `listen`, the default `cert`/`key`, `[[server.tls.certs]]` selected by
/// SNI, `min_version`.
fn server_tls(cx: &mut Cx, mut t: Tbl) -> Option<ServerTlsConfig> {
    let listen = listen_addr(cx, &mut t, "listen", None);
    let mut certs = Vec::new();
    let cert = t.str(cx, "cert").map(|(c, _)| PathBuf::from(c));
    let key = t.str(cx, "key").map(|(k, _)| PathBuf::from(k));
    match (cert, key) {
        (Some(cert), Some(key)) => certs.push(CertKeyPair {
            cert,
            key,
            server_names: Vec::new(),
        }),
        (None, None) => {}
        (Some(_), None) => cx.report(t.span(), t.key_path("key"), ProblemKind::Missing),
        (None, Some(_)) => cx.report(t.span(), t.key_path("cert"), ProblemKind::Missing),
    }
    let present = t.has("certs");
    for mut c in t.array(cx, "certs") {
        let cert = c.req_str(cx, "cert").map(|(c, _)| PathBuf::from(c));
        let key = c.req_str(cx, "key").map(|(k, _)| PathBuf::from(k));
        let mut names = Vec::new();
        let empty = "needs at least one name (the default certificate is [server.tls] cert/key)";
        for (i, (n, span)) in c
            .required_list(cx, "server_names", empty)
            .into_iter()
            .enumerate()
        {
            if valid_server_name(n) {
                names.push(n.to_ascii_lowercase());
            } else {
                cx.report(
                    span,
                    format!("{}[{i}]", c.key_path("server_names")),
                    ProblemKind::Invalid(format!(
                        "{n:?} is not a DNS name (a leading \"*.\" matches one label)"
                    )),
                );
            }
        }
        c.finish(cx);
        if let (Some(cert), Some(key)) = (cert, key) {
            certs.push(CertKeyPair {
                cert,
                key,
                server_names: names,
            });
        }
    }
    if certs.is_empty() && !present && !t.has("cert") {
        cx.report(t.span(), t.key_path("cert"), ProblemKind::Missing);
    }
    let min_version = t.choice(
        cx,
        "min_version",
        ("1.2", TlsVersion::Tls12),
        &[("1.3", TlsVersion::Tls13)],
    );
    t.finish(cx);
    Some(ServerTlsConfig {
        listen: listen?,
        certs,
        min_version,
    })
}

/// A DNS name: dot-separated labels of 1–63 letters, digits and inner hyphens.
fn dns_name(n: &str) -> bool {
    n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A DNS name for SNI matching; the first label may be `*`.
fn valid_server_name(n: &str) -> bool {
    dns_name(n.strip_prefix("*.").unwrap_or(n))
}

fn log(cx: &mut Cx, mut t: Tbl) -> LogConfig {
    let access = match t.str(cx, "access") {
        None | Some(("stdout", _)) => AccessLogSink::Stdout,
        Some(("off", _)) => AccessLogSink::Off,
        Some(("", span)) => {
            cx.report(
                span,
                t.key_path("access"),
                ProblemKind::Invalid("use \"stdout\", \"off\" or a file path".into()),
            );
            AccessLogSink::Stdout
        }
        Some((path, _)) => AccessLogSink::File(PathBuf::from(path)),
    };
    let tls_errors = t.bool(cx, "tls_errors", false);
    let redact_query = match t.str_list(cx, "redact_query") {
        None => LogConfig::default().redact_query,
        Some(list) => {
            let mut names = Vec::with_capacity(list.len());
            for (i, (name, span)) in list.into_iter().enumerate() {
                if name.is_empty() || name.contains(['&', '=']) {
                    cx.report(
                        span,
                        format!("log.redact_query[{i}]"),
                        ProblemKind::Invalid(format!(
                            "{name:?} is not a query name (non-empty, without '&' or '=')"
                        )),
                    );
                } else {
                    names.push(name.to_ascii_lowercase().into_boxed_str());
                }
            }
            names
        }
    };
    t.finish(cx);
    LogConfig {
        access,
        tls_errors,
        redact_query,
    }
}

fn upstream(cx: &mut Cx, name: &str, mut t: Tbl) -> UpstreamConfig {
    let d = UpstreamConfig::with_defaults(name, Vec::new());
    let mut endpoints = Vec::new();
    // Endpoints written https:// and without a scheme.
    let mut schemes = (0, 0);
    let empty = "needs at least one \"host:port\"";
    for (i, (ep, span)) in t
        .required_list(cx, "endpoints", empty)
        .into_iter()
        .enumerate()
    {
        let (https, ep) = match ep.strip_prefix("https://") {
            Some(rest) => (true, rest.strip_suffix('/').unwrap_or(rest)),
            None => (false, ep),
        };
        // https:// without a port means 443.
        let ep = if https && (ep.ends_with(']') || !ep.contains(':')) {
            format!("{ep}:443")
        } else {
            ep.to_string()
        };
        let ok = ep.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if https {
            schemes.0 += 1;
        } else {
            schemes.1 += 1;
        }
        if ok {
            endpoints.push(ep);
        } else {
            cx.report(
                span,
                format!("{}[{i}]", t.key_path("endpoints")),
                ProblemKind::Invalid(format!("{ep:?} is not host:port")),
            );
        }
    }
    let zone = t.choice(
        cx,
        "zone",
        ("internal", Zone::Internal),
        &[("egress", Zone::Egress)],
    );
    let protocol = t.choice(
        cx,
        "protocol",
        ("http/1.1", UpstreamProtocol::Http1),
        &[("h2", UpstreamProtocol::H2)],
    );
    let lb = t.choice(
        cx,
        "lb",
        ("least_request", LoadBalancing::LeastRequest),
        &[
            ("round_robin", LoadBalancing::RoundRobin),
            ("random", LoadBalancing::Random),
        ],
    );
    let u = UpstreamConfig {
        name: name.to_string(),
        endpoints,
        zone,
        connect_timeout: t.duration(cx, "connect_timeout", d.connect_timeout),
        timeout: t.duration(cx, "timeout", d.timeout),
        max_in_flight: t.uint(cx, "max_in_flight", d.max_in_flight as u64, 1, 1_000_000) as usize,
        max_pending: t.uint(cx, "max_pending", d.max_pending as u64, 0, 1_000_000) as usize,
        max_connecting: t.uint(cx, "max_connecting", d.max_connecting as u64, 1, 100_000) as usize,
        pool_idle_timeout: t.duration(cx, "pool_idle_timeout", d.pool_idle_timeout),
        pool_max_idle: t.uint(cx, "pool_max_idle", d.pool_max_idle as u64, 0, 1_000_000) as usize,
        max_response_header_bytes: t.uint(
            cx,
            "max_response_header_bytes",
            d.max_response_header_bytes as u64,
            1024,
            16 * 1024 * 1024,
        ) as usize,
        server_idle_timeout: t.opt_duration(cx, "server_idle_timeout"),
        max_retries: t.uint(cx, "max_retries", u64::from(d.max_retries), 0, 10) as u32,
        tls: upstream_tls(cx, &mut t, schemes, protocol),
        protocol,
        lb,
        outlier: t
            .sub(cx, "outlier")
            .map(|t| outlier(cx, t))
            .unwrap_or_default(),
        health: t.sub(cx, "health").and_then(|t| health(cx, t)),
        panic_threshold: t.uint(cx, "panic_threshold", u64::from(d.panic_threshold), 0, 100) as u8,
        deny_addresses: cidr_list(cx, &mut t, "deny_addresses")
            .unwrap_or_else(|| UpstreamConfig::default_denied(zone)),
        retry_buffer_bytes: t.uint(
            cx,
            "retry_buffer_bytes",
            d.retry_buffer_bytes as u64,
            0,
            16 << 20,
        ) as usize,
        tcp_keepalive: tcp_keepalive(cx, &mut t),
        tcp_user_timeout: t.opt_duration(cx, "tcp_user_timeout"),
    };
    t.finish(cx);
    u
}

fn outlier(cx: &mut Cx, mut t: Tbl) -> OutlierConfig {
    let d = OutlierConfig::default();
    let o = OutlierConfig {
        enabled: t.bool(cx, "enabled", d.enabled),
        consecutive_failures: t.uint(
            cx,
            "consecutive_failures",
            u64::from(d.consecutive_failures),
            1,
            1_000_000,
        ) as u32,
        base_ejection: t.duration(cx, "base_ejection", d.base_ejection),
        max_ejection: t.duration(cx, "max_ejection", d.max_ejection),
        max_ejection_percent: t.uint(
            cx,
            "max_ejection_percent",
            u64::from(d.max_ejection_percent),
            0,
            100,
        ) as u8,
        slow_start: t.opt_duration(cx, "slow_start").unwrap_or(d.slow_start),
    };
    if o.max_ejection < o.base_ejection {
        cx.report(
            t.value_span("max_ejection"),
            t.key_path("max_ejection"),
            ProblemKind::Conflict("max_ejection is shorter than base_ejection".into()),
        );
    }
    t.finish(cx);
    o
}

fn health(cx: &mut Cx, mut t: Tbl) -> Option<HealthConfig> {
    let path = t.req_str(cx, "path").and_then(|(p, span)| {
        if p.starts_with('/') && !p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            Some(p)
        } else {
            cx.report(
                span,
                t.key_path("path"),
                ProblemKind::Invalid("must start with / and hold no spaces".into()),
            );
            None
        }
    });
    let d = HealthConfig::with_path(path.unwrap_or("/"));
    let h = HealthConfig {
        interval: t.duration(cx, "interval", d.interval),
        timeout: t.duration(cx, "timeout", d.timeout),
        healthy_threshold: t.uint(
            cx,
            "healthy_threshold",
            u64::from(d.healthy_threshold),
            1,
            100,
        ) as u32,
        unhealthy_threshold: t.uint(
            cx,
            "unhealthy_threshold",
            u64::from(d.unhealthy_threshold),
            1,
            100,
        ) as u32,
        expect_status: t
            .uint_list(cx, "expect_status", 100, 599)
            .map_or(d.expect_status.clone(), |l| {
                l.into_iter().map(|n| n as u16).collect()
            }),
        ..d
    };
    t.finish(cx);
    path.map(|_| h)
}

/// `[egress] shared` and its companions; the companions are problems without it.
fn shared_egress(cx: &mut Cx, t: &mut Tbl) -> Option<SharedEgressConfig> {
    let companions = [
        "scope",
        "password_env",
        "ca",
        "expected_replicas",
        "fallback_after",
    ];
    let Some((url, span)) = t.str(cx, "shared") else {
        for key in companions {
            if t.has(key) {
                cx.report(
                    t.value_span(key),
                    t.key_path(key),
                    ProblemKind::Conflict(format!("egress.{key} needs egress.shared")),
                );
            }
        }
        t.allow(&companions);
        return None;
    };
    if let Err(why) = redis_url(url) {
        cx.report(span, t.key_path("shared"), ProblemKind::Invalid(why));
    }
    let scope = match t.req_str(cx, "scope") {
        Some((s, _)) if scope_name(s) => s.to_string(),
        Some((_, span)) => {
            cx.report(
                span,
                t.key_path("scope"),
                ProblemKind::Invalid(
                    "1 to 64 letters, digits, '-', '_' or '.' (it names Redis keys)".into(),
                ),
            );
            String::new()
        }
        None => String::new(),
    };
    let password_env = match t.str(cx, "password_env") {
        None => SharedEgressConfig::PASSWORD_ENV.to_string(),
        Some((v, _)) if !v.is_empty() && !v.contains(['=', '\0']) => v.to_string(),
        Some((_, span)) => {
            cx.report(
                span,
                t.key_path("password_env"),
                ProblemKind::Invalid("an environment variable name".into()),
            );
            SharedEgressConfig::PASSWORD_ENV.to_string()
        }
    };
    let ca = t.str(cx, "ca").map(|(p, _)| PathBuf::from(p));
    if ca.is_some() && !url.starts_with("rediss://") {
        cx.report(
            t.value_span("ca"),
            t.key_path("ca"),
            ProblemKind::Conflict("egress.ca is for a rediss:// (TLS) shared store".into()),
        );
    }
    Some(SharedEgressConfig {
        url: url.to_string(),
        scope,
        password_env,
        ca,
        expected_replicas: t
            .opt_uint(cx, "expected_replicas", 1, 10_000)
            .map(|n| n as u32),
        fallback_after: t.duration(cx, "fallback_after", SharedEgressConfig::FALLBACK_AFTER),
    })
}

/// Checks a `redis://host:port[/db]` or `rediss://…` URL; a password in it is refused
/// (it belongs in the environment, not in a file under version control).
fn redis_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .ok_or("use redis://host:port[/db] or rediss://host:port[/db]")?;
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    let host =
        match authority.rsplit_once('@') {
            Some((user, _)) if user.contains(':') => return Err(
                "no password in the URL: put it in the environment variable named by password_env"
                    .into(),
            ),
            Some((_, host)) => host,
            None => authority,
        };
    if host.is_empty() || host.contains(['?', '#', ' ']) {
        return Err("needs a host: redis://host:port[/db]".into());
    }
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(format!("database {db:?} is not a number"));
    }
    Ok(())
}

/// A scope names Redis keys: short, and nothing that needs quoting.
fn scope_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn dns(cx: &mut Cx, mut t: Tbl) -> DnsConfig {
    let d = DnsConfig::default();
    let mut nameservers = Vec::new();
    for (i, (ns, span)) in t
        .str_list(cx, "nameservers")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let addr = ns.parse::<SocketAddr>().ok().or_else(|| {
            ns.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| (ip, 53).into())
        });
        match addr {
            Some(a) => nameservers.push(a),
            None => cx.report(
                span,
                format!("{}[{i}]", t.key_path("nameservers")),
                ProblemKind::Invalid(format!("{ns:?} is not an IP address or ip:port")),
            ),
        }
    }
    let c = DnsConfig {
        nameservers,
        min_ttl: t.duration(cx, "min_ttl", d.min_ttl),
        max_ttl: t.duration(cx, "max_ttl", d.max_ttl),
        timeout: t.duration(cx, "timeout", d.timeout),
        max_addresses_per_name: t.uint(
            cx,
            "max_addresses_per_name",
            d.max_addresses_per_name as u64,
            1,
            4096,
        ) as usize,
        family: t.choice(
            cx,
            "family",
            ("v4_preferred", DnsFamily::V4Preferred),
            &[
                ("all", DnsFamily::All),
                ("v4", DnsFamily::V4),
                ("v6", DnsFamily::V6),
            ],
        ),
    };
    if c.max_ttl < c.min_ttl {
        cx.report(
            t.value_span("max_ttl"),
            t.key_path("max_ttl"),
            ProblemKind::Conflict("max_ttl is shorter than min_ttl".into()),
        );
    }
    t.finish(cx);
    c
}

/// An upstream's TLS keys: `tls`, `sni`, `ca`, `client_cert`, `client_key`,
/// `insecure_skip_verify`, `alpn`. `schemes` counts endpoints written with and without
/// `https://`.
fn upstream_tls(
    cx: &mut Cx,
    t: &mut Tbl,
    schemes: (usize, usize),
    protocol: UpstreamProtocol,
) -> Option<UpstreamTlsConfig> {
    let explicit = t.has("tls").then(|| t.bool(cx, "tls", false));
    if schemes.0 > 0 && schemes.1 > 0 {
        cx.report(
            t.value_span("endpoints"),
            t.key_path("endpoints"),
            ProblemKind::Conflict(
                "mixes https:// endpoints with plain ones; one upstream speaks one protocol".into(),
            ),
        );
    }
    if schemes.0 > 0 && explicit == Some(false) {
        cx.report(
            t.value_span("tls"),
            t.key_path("tls"),
            ProblemKind::Conflict("tls = false with https:// endpoints".into()),
        );
    }
    let on = explicit.unwrap_or(schemes.0 > 0);
    let sni = t.str(cx, "sni").and_then(|(n, span)| {
        if valid_server_name(n) && !n.starts_with("*.") {
            Some(n.to_ascii_lowercase())
        } else {
            cx.report(
                span,
                t.key_path("sni"),
                ProblemKind::Invalid(format!("{n:?} is not a DNS name")),
            );
            None
        }
    });
    let path =
        |cx: &mut Cx, t: &mut Tbl, k: &'static str| t.str(cx, k).map(|(p, _)| PathBuf::from(p));
    let ca = path(cx, t, "ca");
    let client_cert = path(cx, t, "client_cert");
    let client_key = path(cx, t, "client_key");
    if client_cert.is_some() != client_key.is_some() {
        let missing = if client_cert.is_some() {
            "client_key"
        } else {
            "client_cert"
        };
        cx.report(t.span(), t.key_path(missing), ProblemKind::Missing);
    }
    let insecure_skip_verify = t.bool(cx, "insecure_skip_verify", false);
    let speaks = protocol.as_str();
    let alpn = match t.str_list(cx, "alpn") {
        None => vec![speaks.to_string()],
        Some(list) => list
            .into_iter()
            .filter_map(|(p, span)| {
                if p == speaks {
                    Some(p.to_string())
                } else {
                    let what = format!("{p:?}: this upstream's protocol is {speaks:?}");
                    cx.report(span, t.key_path("alpn"), ProblemKind::Invalid(what));
                    None
                }
            })
            .collect(),
    };
    let set: Vec<&str> = [
        ("sni", sni.is_some()),
        ("ca", ca.is_some()),
        ("client_cert", client_cert.is_some()),
        ("client_key", client_key.is_some()),
        ("insecure_skip_verify", t.has("insecure_skip_verify")),
        ("alpn", t.has("alpn")),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.then_some(k))
    .collect();
    if !on {
        if let Some(k) = set.first() {
            cx.report(
                t.value_span(k),
                t.key_path(k),
                ProblemKind::Conflict("a TLS setting, but TLS is off: add tls = true or write the endpoints as https://host:port".into()),
            );
        }
        return None;
    }
    Some(UpstreamTlsConfig {
        sni,
        ca,
        client_cert,
        client_key,
        insecure_skip_verify,
        alpn,
    })
}

fn route(
    cx: &mut Cx,
    mut t: Tbl,
    default_timeout: Duration,
    upstreams: &[UpstreamConfig],
) -> Option<RouteConfig> {
    let name = t.req_str(cx, "name").map(|(s, _)| s.to_string());
    let exact = t.str(cx, "path");
    let prefix = t.str(cx, "path_prefix");
    let path = match (exact, prefix) {
        (Some(_), Some((_, span))) => {
            cx.report(
                span,
                t.key_path("path_prefix"),
                ProblemKind::Conflict("set either path or path_prefix, not both".into()),
            );
            None
        }
        (Some((p, span)), None) | (None, Some((p, span))) if !p.starts_with('/') => {
            cx.report(
                span,
                t.key_path(if t.has("path") { "path" } else { "path_prefix" }),
                ProblemKind::Invalid("must start with '/'".into()),
            );
            None
        }
        (Some((p, _)), None) => Some(PathMatch::Exact(p.to_string())),
        (None, Some((p, _))) => Some(PathMatch::Prefix(p.to_string())),
        (None, None) => {
            if !t.has("path") && !t.has("path_prefix") {
                cx.report(t.span(), t.key_path("path"), ProblemKind::Missing);
            }
            None
        }
    };
    let action = if t.has("aggregate") {
        if t.has("upstream") {
            let _ = t.str(cx, "upstream");
            cx.report(
                t.value_span("upstream"),
                t.key_path("upstream"),
                ProblemKind::Conflict("a route has either upstream or aggregate, not both".into()),
            );
            None
        } else {
            t.sub(cx, "aggregate")
                .and_then(|a| aggregate(cx, a, upstreams))
                .map(RouteAction::Aggregate)
        }
    } else {
        t.req_str(cx, "upstream")
            .and_then(|(u, span)| known_upstream(cx, &t, "upstream", u, span, upstreams))
            .map(|upstream| RouteAction::Proxy { upstream })
    };
    let timeout = t.duration(cx, "timeout", default_timeout);
    let methods = methods(cx, &mut t);
    let websocket = websocket(cx, &mut t);
    let request_buffering = t.bool(cx, "request_buffering", false);
    let body_read_timeout = t.opt_duration(cx, "body_read_timeout");
    t.finish(cx);
    Some(RouteConfig {
        name: name?,
        path: path?,
        action: action?,
        timeout,
        methods,
        websocket,
        request_buffering,
        body_read_timeout,
    })
}

/// `websocket = true` and `websocket_idle_timeout` (proxy routes only).
fn websocket(cx: &mut Cx, t: &mut Tbl) -> Option<Duration> {
    let on = t.bool(cx, "websocket", false);
    let idle = t.opt_duration(cx, "websocket_idle_timeout");
    if on && t.has("aggregate") {
        let what = "websocket routes proxy to one upstream, not aggregate".into();
        cx.report(
            t.value_span("websocket"),
            t.key_path("websocket"),
            ProblemKind::Conflict(what),
        );
    }
    if !on && idle.is_some() {
        let what = "websocket_idle_timeout needs websocket = true".into();
        let key = t.key_path("websocket_idle_timeout");
        cx.report(
            t.value_span("websocket_idle_timeout"),
            key,
            ProblemKind::Conflict(what),
        );
    }
    on.then(|| idle.unwrap_or(Duration::from_secs(60)))
}

/// `methods = ["GET", ...]`: non-empty, each a method token (upper case by convention, so
/// a lower-case entry is a mistake worth naming).
fn methods(cx: &mut Cx, t: &mut Tbl) -> Option<Vec<String>> {
    let list = t.str_list(cx, "methods")?;
    if list.is_empty() {
        cx.report(
            t.value_span("methods"),
            t.key_path("methods"),
            ProblemKind::Invalid("needs at least one method, e.g. [\"GET\"]".into()),
        );
        return None;
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, (m, span)) in list.into_iter().enumerate() {
        if m.is_empty()
            || !m
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
        {
            cx.report(
                span,
                format!("{}[{i}]", t.key_path("methods")),
                ProblemKind::Invalid(format!("{m:?} is not an upper-case method token")),
            );
        } else {
            out.push(m.to_string());
        }
    }
    Some(out)
}

fn known_upstream(
    cx: &mut Cx,
    t: &Tbl,
    key: &str,
    name: &str,
    span: Option<Range<usize>>,
    upstreams: &[UpstreamConfig],
) -> Option<String> {
    if upstreams.iter().any(|x| x.name == name) {
        Some(name.to_string())
    } else {
        cx.report(
            span,
            t.key_path(key),
            ProblemKind::UnknownUpstream(name.to_string()),
        );
        None
    }
}

fn aggregate(cx: &mut Cx, mut t: Tbl, upstreams: &[UpstreamConfig]) -> Option<AggregateConfig> {
    let mode = t.choice(
        cx,
        "mode",
        ("parallel", AggregateMode::Parallel),
        &[("sequential", AggregateMode::Sequential)],
    );
    let present = t.has("calls");
    let tables = t.array(cx, "calls");
    if tables.is_empty() && !present {
        cx.report(t.span(), t.key_path("calls"), ProblemKind::Missing);
    }
    let mut calls: Vec<CallConfig> = Vec::new();
    let mut ok = true;
    for mut c in tables {
        let name = c.req_str(cx, "name").map(|(n, _)| n.to_string());
        if let Some(n) = &name {
            if calls.iter().any(|x| &x.name == n) {
                cx.report(
                    c.value_span("name"),
                    c.key_path("name"),
                    ProblemKind::Duplicate(n.clone()),
                );
            }
        }
        let upstream = c
            .req_str(cx, "upstream")
            .and_then(|(u, span)| known_upstream(cx, &c, "upstream", u, span, upstreams));
        let h2 = upstreams
            .iter()
            .any(|x| Some(&x.name) == upstream.as_ref() && x.protocol == UpstreamProtocol::H2);
        if h2 {
            let what = "aggregate calls go to HTTP/1.1 upstreams; this one speaks h2".into();
            cx.report(
                c.value_span("upstream"),
                c.key_path("upstream"),
                ProblemKind::Invalid(what),
            );
        }
        let path = c
            .req_str(cx, "path")
            .and_then(|(p, span)| match check_template(p) {
                Ok(()) => Some(p.to_string()),
                Err(why) => {
                    cx.report(span, c.key_path("path"), ProblemKind::Invalid(why));
                    None
                }
            });
        let method = match c.str(cx, "method") {
            None => "GET".to_string(),
            Some((m, span)) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
                let _ = span;
                m.to_string()
            }
            Some((m, span)) => {
                cx.report(
                    span,
                    c.key_path("method"),
                    ProblemKind::Invalid(format!("{m:?} is not an upper-case HTTP method")),
                );
                "GET".to_string()
            }
        };
        let forward_query = c.bool(cx, "forward_query", false);
        let forward_headers = c
            .str_list(cx, "forward_headers")
            .unwrap_or_default()
            .into_iter()
            .map(|(h, _)| h.to_ascii_lowercase())
            .collect();
        let fallback = c.json(cx, "fallback").unwrap_or_else(|| "null".to_string());
        let required = c.bool(cx, "required", false);
        let timeout = c.opt_duration(cx, "timeout");
        let max_body_bytes = c.uint(cx, "max_body_bytes", 4 << 20, 1, 1 << 30) as usize;
        c.finish(cx);
        match (name, upstream, path) {
            (Some(name), Some(upstream), Some(path)) => calls.push(CallConfig {
                name,
                upstream,
                path,
                method,
                forward_query,
                forward_headers,
                fallback,
                required,
                timeout,
                max_body_bytes,
            }),
            _ => ok = false,
        }
    }
    t.finish(cx);
    (ok && !calls.is_empty()).then_some(AggregateConfig { mode, calls })
}

/// Checks a call path: starts with '/', placeholders are `{query.NAME}` or `{header.NAME}`.
fn check_template(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("must start with '/'".into());
    }
    let mut rest = p;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("unclosed '{' in path")?;
        let inner = &after[..close];
        let ok = inner
            .split_once('.')
            .is_some_and(|(kind, name)| matches!(kind, "query" | "header") && !name.is_empty());
        if !ok {
            return Err(format!(
                "placeholder {{{inner}}} must be {{query.NAME}} or {{header.NAME}}"
            ));
        }
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err("unmatched '}' in path".into());
    }
    Ok(())
}

/// Builds the config, or returns every problem found.
pub(crate) fn read(text: &str) -> Result<Config, Vec<Problem>> {
    let mut cx = Cx::new(text);
    let Some(doc) = cx.parse(text) else {
        return Err(cx.finish().err().unwrap_or_default());
    };
    let mut root = Tbl::root(&doc);

    let server = root
        .sub(&mut cx, "server")
        .map(|t| server(&mut cx, t))
        .unwrap_or_default();
    let log = root
        .sub(&mut cx, "log")
        .map(|t| log(&mut cx, t))
        .unwrap_or_default();
    let front = root.sub(&mut cx, "front").map(|mut t| {
        let f = FrontConfig {
            timeout: t.opt_duration(&mut cx, "timeout"),
            idle_timeout: t.opt_duration(&mut cx, "idle_timeout"),
        };
        t.finish(&mut cx);
        f
    });
    let deadline = root
        .sub(&mut cx, "deadline")
        .map(|mut t| {
            let d = DeadlineConfig::default();
            // Zero is a valid margin and a valid min_caller (none kept back, none refused).
            let mut zero_ok = |key: &'static str, default: Duration| {
                t.str(&mut cx, key)
                    .and_then(|(s, span)| match parse_duration(s) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            cx.report(span, t.key_path(key), e.into());
                            None
                        }
                    })
                    .unwrap_or(default)
            };
            let margin = zero_ok("margin", d.margin);
            let min_caller = zero_ok("min_caller", d.min_caller);
            let c = DeadlineConfig {
                default: t.duration(&mut cx, "default", d.default),
                max: t.duration(&mut cx, "max", d.max),
                margin,
                min_caller,
            };
            if c.default > c.max {
                cx.report(
                    t.value_span("default"),
                    t.key_path("default"),
                    ProblemKind::Conflict("deadline.default is larger than deadline.max".into()),
                );
            }
            t.finish(&mut cx);
            c
        })
        .unwrap_or_default();
    let admin = root.sub(&mut cx, "admin").and_then(|mut t| {
        let max_connections = t.uint(
            &mut cx,
            "max_connections",
            AdminConfig::MAX_CONNECTIONS as u64,
            1,
            100_000,
        ) as usize;
        let allowed_hosts = t
            .str_list(&mut cx, "allowed_hosts")
            .map(|l| l.into_iter().map(|(s, _)| s.to_string()).collect())
            .unwrap_or_default();
        let a = listen_addr(&mut cx, &mut t, "listen", None).map(|listen| AdminConfig {
            listen,
            max_connections,
            allowed_hosts,
        });
        t.finish(&mut cx);
        a
    });
    let retry_budget = root
        .sub(&mut cx, "retry_budget")
        .map(|mut t| {
            let d = RetryBudgetConfig::default();
            let r = RetryBudgetConfig {
                ratio: t.float(&mut cx, "ratio", d.ratio, 0.0, 1.0),
                min_per_sec: t.uint(
                    &mut cx,
                    "min_per_sec",
                    u64::from(d.min_per_sec),
                    0,
                    1_000_000,
                ) as u32,
            };
            t.finish(&mut cx);
            r
        })
        .unwrap_or_default();
    let egress = root.sub(&mut cx, "egress").map(|mut t| {
        let e = EgressConfig {
            max_in_flight: t
                .opt_uint(&mut cx, "max_in_flight", 1, 10_000_000)
                .map(|n| n as usize),
            max_new_connections_per_sec: t
                .opt_uint(&mut cx, "max_new_connections_per_sec", 1, 10_000_000)
                .map(|n| n as u32),
            shared: shared_egress(&mut cx, &mut t),
            nat_limit: t
                .opt_uint(&mut cx, "nat_limit", 1, 10_000_000)
                .map(|n| n as u32),
            nat_idle_timeout: t.opt_duration(&mut cx, "nat_idle_timeout"),
        };
        t.finish(&mut cx);
        e
    });
    let dns = root
        .sub(&mut cx, "dns")
        .map(|t| dns(&mut cx, t))
        .unwrap_or_default();
    let metrics = root
        .sub(&mut cx, "metrics")
        .map(|mut t| {
            let m = MetricsConfig {
                per_endpoint: t.bool(&mut cx, "per_endpoint", false),
            };
            t.finish(&mut cx);
            m
        })
        .unwrap_or_default();
    let tracing = root.sub(&mut cx, "tracing").and_then(|mut t| {
        let endpoint = t.req_str(&mut cx, "otlp_endpoint");
        let parsed = endpoint.and_then(|(url, span)| match otlp_url(url) {
            Ok(parts) => Some((url, parts)),
            Err(why) => {
                cx.report(span, t.key_path("otlp_endpoint"), ProblemKind::Invalid(why));
                None
            }
        });
        match t.str(&mut cx, "protocol") {
            None | Some(("http/protobuf", _)) => {}
            Some((_, span)) => cx.report(
                span,
                t.key_path("protocol"),
                ProblemKind::Invalid("\"http/protobuf\" is the one protocol spoken".into()),
            ),
        }
        let sample_ratio = t.float(&mut cx, "sample_ratio", 1.0, 0.0, 1.0);
        let max_sampled_per_sec = t.uint(&mut cx, "max_sampled_per_sec", 100, 1, 1_000_000) as u32;
        let service_name = t
            .str(&mut cx, "service_name")
            .map_or("hopline", |(s, _)| s)
            .to_string();
        let ca = t.str(&mut cx, "ca");
        if let (Some((_, span)), Some((_, (false, ..)))) = (&ca, &parsed) {
            cx.report(
                span.clone(),
                t.key_path("ca"),
                ProblemKind::Invalid("ca is for an https:// otlp_endpoint".into()),
            );
        }
        let ca = ca.map(|(p, _)| PathBuf::from(p));
        t.finish(&mut cx);
        parsed.map(|(url, (tls, host, port, path))| TracingConfig {
            otlp_endpoint: url.to_string(),
            tls,
            ca,
            host,
            port,
            path,
            sample_ratio,
            max_sampled_per_sec,
            service_name,
        })
    });
    let upstreams: Vec<UpstreamConfig> = root
        .entries(&mut cx, "upstreams")
        .into_iter()
        .map(|(name, t)| upstream(&mut cx, name, t))
        .collect();

    let route_tables = root.array(&mut cx, "routes");
    let mut routes: Vec<RouteConfig> = Vec::new();
    for t in route_tables {
        let span = t.value_span("name");
        let path = t.key_path("name");
        if let Some(r) = route(&mut cx, t, deadline.default, &upstreams) {
            if routes.iter().any(|x| x.name == r.name) {
                cx.report(span, path, ProblemKind::Duplicate(r.name.clone()));
            }
            routes.push(r);
        }
    }
    root.finish(&mut cx);
    cx.finish()?;
    Ok(Config {
        server,
        log,
        front,
        deadline,
        admin,
        retry_budget,
        egress,
        upstreams,
        routes,
        dns,
        metrics,
        tracing,
    })
}

/// `http://host[:port][/path]` (port 4318 and path `/v1/traces` by default).
fn otlp_url(url: &str) -> Result<(bool, String, u16, String), String> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err("use http://host:port/v1/traces or https://… (an OpenTelemetry collector's OTLP/HTTP receiver)".into()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/v1/traces"),
    };
    // `[v6]:port`, `[v6]`, `host:port` or `host`.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, rest) = v6
                .split_once(']')
                .ok_or("an IPv6 host needs its closing ]")?;
            match rest.strip_prefix(':') {
                Some(p) => (h, p),
                None if rest.is_empty() => (h, ""),
                None => return Err(format!("unexpected {rest:?} after the host")),
            }
        }
        None => authority.rsplit_once(':').unwrap_or((authority, "")),
    };
    let port = match port {
        "" => 4318,
        p => p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?,
    };
    if host.is_empty() || host.contains(['@', ' ', '?', '#']) {
        return Err("needs a host: http://host:port/v1/traces".into());
    }
    Ok((tls, host.to_string(), port, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems `text` has, as printed.
    fn problems(text: &str) -> Vec<String> {
        read(text)
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn listen_takes_ips_and_host_names() {
        let host = |s: &str| parse_listen(s).map(|a| a.to_string());
        assert_eq!(host("0.0.0.0:80").as_deref(), Some("0.0.0.0:80"));
        assert_eq!(host("[::1]:8080").as_deref(), Some("[::1]:8080"));
        assert_eq!(host("LocalHost:8080").as_deref(), Some("localhost:8080"));
        assert_eq!(
            host("gw-1.example.com:0").as_deref(),
            Some("gw-1.example.com:0")
        );
        for bad in [
            "nope",
            ":80",
            "host:",
            "host:99999",
            "-a:80",
            "a..b:80",
            "1.2.3:80",
            "a b:80",
            "::1:80",
        ] {
            assert_eq!(host(bad), None, "{bad}");
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = read("[upstreams.a]\nendpoints = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"a\"\n")
            .expect("valid");
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.routes[0].timeout, Duration::from_secs(3));
        assert_eq!(c.upstreams[0].connect_timeout, Duration::from_secs(1));
    }

    #[test]
    fn a_word_outside_its_set_names_the_choices() {
        let text = "[server]\noverload = \"drop\"\n[upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\nlb = \"fastest\"\n";
        let problems = read(text).expect_err("invalid");
        let what: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            what,
            vec![
                "2:12: key `server.overload`: \"drop\" is not \"pause\" or \"close\"",
                "5:6: key `upstreams.a.lb`: \"fastest\" is not \"least_request\", \"round_robin\" or \"random\"",
            ]
        );
    }

    #[test]
    fn shared_egress_is_read_and_its_problems_reported() {
        let ok = read("[egress]\nmax_in_flight = 800\nshared = \"rediss://user@redis.internal:6380/3\"\nscope = \"nat-a\"\nca = \"ca.pem\"\nexpected_replicas = 4\nfallback_after = \"50ms\"\nnat_limit = 900\n")
            .expect("valid");
        let e = ok.egress.expect("egress");
        let s = e.shared.expect("shared");
        assert_eq!(s.scope, "nat-a");
        assert_eq!(s.password_env, SharedEgressConfig::PASSWORD_ENV);
        assert_eq!(s.expected_replicas, Some(4));
        assert_eq!(s.fallback_after, Duration::from_millis(50));
        assert_eq!(e.nat_limit, Some(900));
        let text = "[egress]\nshared = \"redis://app:hunter2@10.0.0.5:6379\"\nscope = \"nat a\"\n\n[dns]\n\n[metrics]\n";
        let what = problems(text);
        assert_eq!(
            what,
            vec![
                "2:10: key `egress.shared`: no password in the URL: put it in the environment variable named by password_env",
                "3:9: key `egress.scope`: 1 to 64 letters, digits, '-', '_' or '.' (it names Redis keys)",
            ]
        );
        let text = "[egress]\nmax_in_flight = 5\nscope = \"a\"\nfallback_after = \"1s\"\n";
        let what = problems(text);
        assert_eq!(
            what,
            vec![
                "3:9: key `egress.scope`: egress.scope needs egress.shared",
                "4:18: key `egress.fallback_after`: egress.fallback_after needs egress.shared",
            ]
        );
        let missing = read("[egress]\nshared = \"redis://r:6379\"\n").expect_err("no scope");
        assert_eq!(missing[0].key, "egress.scope");
        let plain_ca =
            read("[egress]\nshared = \"redis://r:6379\"\nscope = \"s\"\nca = \"x.pem\"\n")
                .expect_err("ca without TLS");
        assert_eq!(plain_ca[0].key, "egress.ca");
        for bad in ["http://r:6379", "redis://", "redis://r:6379/x"] {
            let text = format!("[egress]\nshared = \"{bad}\"\nscope = \"s\"\n");
            let p = read(&text).expect_err(bad);
            assert_eq!(p[0].key, "egress.shared", "{bad}");
        }
    }

    #[test]
    fn tracing_is_read_and_its_problems_reported() {
        let c = read("[tracing]\notlp_endpoint = \"http://otel.internal:4318/v1/traces\"\nsample_ratio = 0.01\n")
            .expect("valid");
        let t = c.tracing.expect("tracing");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("otel.internal", 4318, "/v1/traces")
        );
        assert_eq!((t.sample_ratio, t.service_name.as_str()), (0.01, "hopline"));
        let t = read("[tracing]\notlp_endpoint = \"http://[::1]\"\n")
            .expect("valid")
            .tracing
            .expect("t");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 4318, "/v1/traces")
        );
        let t = read("[tracing]\notlp_endpoint = \"https://otel.example\"\nca = \"ca.pem\"\n")
            .expect("valid")
            .tracing
            .expect("t");
        assert!(t.tls && t.port == 4318 && t.ca.is_some(), "{t:?}");
        let what = problems("[tracing]\notlp_endpoint = \"http://otel\"\nca = \"ca.pem\"\n");
        assert!(what[0].contains("ca is for an https://"), "{what:?}");
        let text = "[tracing]\notlp_endpoint = \"grpc://otel:4318\"\nprotocol = \"grpc\"\nsample_ratio = 2\n";
        let what = problems(text);
        assert_eq!(what.len(), 3, "{what:?}");
        assert!(
            what[0].starts_with("2:17: key `tracing.otlp_endpoint`: use http://"),
            "{what:?}"
        );
        assert!(what[1].contains("`tracing.protocol`"), "{what:?}");
        assert!(what[2].contains("`tracing.sample_ratio`"), "{what:?}");
        assert_eq!(
            read("[tracing]\nsample_ratio = 1\n").expect_err("no endpoint")[0].key,
            "tracing.otlp_endpoint"
        );
    }

    #[test]
    fn all_problems_reported_with_lines_and_keys() {
        let text = "[server]\nlisten = \"nope\"\nheader_read_timeout = \"5\"\ncolour = 1\n\n[upstreams.a]\nendpoints = [\"127.0.0.1\"]\nconnect_timeout = \"0s\"\n\n[[routes]]\nname = \"r\"\npath = \"/x\"\nupstream = \"missing\"\n";
        let problems = read(text).expect_err("invalid");
        let summary: Vec<String> = problems
            .iter()
            .map(|p| format!("{}:{} {}", p.location.line, p.location.column, p.key))
            .collect();
        assert_eq!(
            summary,
            vec![
                "2:10 server.listen",
                "3:23 server.header_read_timeout",
                "4:1 server.colour",
                "7:14 upstreams.a.endpoints[0]",
                "8:19 upstreams.a.connect_timeout",
                "13:12 routes[0].upstream",
            ]
        );
        assert!(matches!(problems[5].kind, ProblemKind::UnknownUpstream(ref u) if u == "missing"));
    }

    #[test]
    fn tls_settings_are_read_and_their_problems_reported() {
        let ok = read("[server.tls]\nlisten = \"[::]:443\"\ncert = \"a.pem\"\nkey = \"a.key\"\nmin_version = \"1.3\"\n[[server.tls.certs]]\nserver_names = [\"*.Example.com\"]\ncert = \"b.pem\"\nkey = \"b.key\"\n[upstreams.pay]\nendpoints = [\"https://pay.example\", \"https://[::1]\"]\nzone = \"egress\"\n")
            .expect("valid");
        let tls = ok.server.tls.expect("tls");
        assert_eq!(tls.listen.to_string(), "[::]:443");
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(tls.certs[1].server_names, vec!["*.example.com"]);
        assert_eq!(
            ok.upstreams[0].endpoints,
            vec!["pay.example:443", "[::1]:443"]
        );
        assert_eq!(
            ok.upstreams[0].tls.as_ref().expect("tls").alpn,
            vec!["http/1.1"]
        );
        let text = "[server.tls]\nlisten = \"127.0.0.1:443\"\ncert = \"a.pem\"\nmin_version = \"1.1\"\n[[server.tls.certs]]\nserver_names = [\"bad name\"]\ncert = \"b.pem\"\nkey = \"b.key\"\n[upstreams.a]\nendpoints = [\"https://a:1\", \"b:2\"]\n[upstreams.b]\nendpoints = [\"b:2\"]\nsni = \"b.example\"\n[upstreams.c]\nendpoints = [\"c:2\"]\ntls = true\nclient_cert = \"c.pem\"\n";
        let problems = read(text).expect_err("invalid");
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "server.tls.key",
            "server.tls.min_version",
            "server.tls.certs[0].server_names[0]",
            "upstreams.a.endpoints",
            "upstreams.b.sni",
            "upstreams.c.client_key",
        ] {
            assert!(keys.contains(&want), "{want} not in {keys:?}");
        }
    }

    #[test]
    fn missing_keys_and_syntax_errors() {
        let p = read("[[routes]]\npath = \"/x\"\n").expect_err("invalid");
        let keys: Vec<_> = p.iter().map(|p| (p.key.as_str(), p.kind.clone())).collect();
        assert!(keys.contains(&("routes[0].name", ProblemKind::Missing)));
        assert!(keys.contains(&("routes[0].upstream", ProblemKind::Missing)));
        let p = read("[server\n").expect_err("invalid");
        assert!(matches!(p[0].kind, ProblemKind::Syntax(_)));
        assert_eq!(p[0].location.line, 1);
    }

    #[test]
    fn a_wrong_type_shows_the_line_written_as_expected() {
        let said = |text: &str| -> Vec<String> {
            read(text)
                .expect_err("invalid")
                .iter()
                .map(|p| format!("{}: {}", p.key, p.kind))
                .collect()
        };
        assert_eq!(
            said("[server]\nlisten = 8080\n"),
            ["server.listen: expected a string, e.g. `listen = \"127.0.0.1:8080\"`"]
        );
        assert_eq!(
            said("[upstreams.a]\nendpoints = \"127.0.0.1:9\"\ntimeout = 2\n"),
            [
                "upstreams.a.endpoints: expected an array of strings, e.g. `endpoints = [\"127.0.0.1:9\"]`",
                "upstreams.a.timeout: expected a duration string, e.g. `timeout = \"2s\"`",
            ]
        );
        assert_eq!(
            said("[server]\nh2c = \"true\"\nmax_connections = \"10\"\nidle_timeout = 1.5\n"),
            [
                "server.h2c: expected true or false, e.g. `h2c = true`",
                "server.max_connections: expected an integer, e.g. `max_connections = 10`",
                "server.idle_timeout: expected a duration string, e.g. `idle_timeout = \"1.5s\"`",
            ]
        );
        // Nothing to guess from: no example.
        assert_eq!(
            said("[server]\nlisten = [1]\n"),
            ["server.listen: expected a string"]
        );
    }

    #[test]
    fn an_unknown_key_names_the_known_one_nearest_in_spelling() {
        let said = |text: &str| -> Vec<String> {
            read(text)
                .expect_err("invalid")
                .iter()
                .map(|p| p.kind.to_string())
                .collect()
        };
        assert_eq!(
            said("[server]\nidle_timout = \"2s\"\n"),
            ["unknown key; did you mean `idle_timeout`?"]
        );
        assert_eq!(
            said("[[route]]\nname = \"r\"\n"),
            ["unknown key; did you mean `routes`?"]
        );
        assert_eq!(
            said("[server]\nlsiten = \"127.0.0.1:1\"\n"),
            ["unknown key; did you mean `listen`?"]
        );
        // Far from every known key: no guess.
        assert_eq!(said("[server]\ncolour = \"red\"\n"), ["unknown key"]);
    }

    #[test]
    fn a_syntax_error_is_the_files_on_one_line() {
        let p = read("[server\n").expect_err("invalid");
        assert_eq!(p[0].key, "");
        let line = p[0].to_string();
        assert!(line.starts_with("1:8: TOML syntax: "), "{line}");
        assert!(!line.contains('\n') && !line.contains("(file)"), "{line}");
    }
}
