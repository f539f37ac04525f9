//! The rules behind `hopline check`: a static audit of a config's timeout budget, of the
//! chain in front of it, of keep-alive ordering and of network zones.
//!
//! Every mistake of the incident was visible in configuration; each rule here names one,
//! with the numbers that break it and what to change.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use hopline_core::config::{
    AggregateMode, Config, EgressConfig, PathMatch, RouteAction, UpstreamConfig, Zone,
};
use hopline_core::time::Human;
use toml_edit::{ImDocument, Item, TableLike};

use crate::source::Location;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Will misbehave in production: `check` exits 1.
    Error,
    /// Probably wrong.
    Warning,
    /// Worth knowing (e.g. a timeout the deadline always cuts first).
    Note,
}

impl Severity {
    /// `error`, `warning` or `note`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        }
    }
}

/// One finding of the audit.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Severity.
    pub severity: Severity,
    /// Rule id, e.g. `front-timeout`.
    pub rule: &'static str,
    /// What is wrong, with the numbers.
    pub message: String,
    /// What to change.
    pub help: String,
    /// The dotted key it is about.
    pub key: String,
    /// Where that key is in the file.
    pub span: Option<Range<usize>>,
}

/// Name resolution for the zone rule: `host:port` → addresses, or why not.
pub type Resolver<'a> = &'a dyn Fn(&str) -> Result<Vec<IpAddr>, String>;

/// Resolves with the system resolver, giving up after `limit`.
pub fn system_resolver(limit: Duration) -> impl Fn(&str) -> Result<Vec<IpAddr>, String> {
    move |endpoint: &str| {
        if let Ok(addr) = endpoint.parse::<SocketAddr>() {
            return Ok(vec![addr.ip()]);
        }
        let (tx, rx) = mpsc::channel();
        let ep = endpoint.to_string();
        // The lookup runs on its own thread so a hung resolver cannot hang the audit.
        std::thread::spawn(move || {
            let r = ep
                .to_socket_addrs()
                .map(|a| a.map(|s| s.ip()).collect::<Vec<_>>());
            let _ = tx.send(r);
        });
        match rx.recv_timeout(limit) {
            Ok(Ok(ips)) if !ips.is_empty() => Ok(ips),
            Ok(Ok(_)) => Err("no addresses".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}", Human(limit))),
        }
    }
}

/// True for addresses that leave the private network: not loopback, private, link-local,
/// unique-local, CGNAT or unspecified.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (o[0] == 100 && (64..128).contains(&o[1])))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Finds the span of a key path like `["routes", "1", "timeout"]` in the file; falls back to
/// the nearest parent that exists.
pub fn locate(text: &str, path: &[&str]) -> Option<Range<usize>> {
    let doc = ImDocument::parse(text.to_string()).ok()?;
    let mut table: &dyn TableLike = doc.as_table();
    let mut best = None;
    let mut i = 0;
    while i < path.len() {
        let Some((key, value)) = table.get_key_value(path[i]) else {
            break;
        };
        best = key.span().or_else(|| value.span()).or(best);
        i += 1;
        if let (Item::ArrayOfTables(list), Some(n)) =
            (value, path.get(i).and_then(|p| p.parse::<usize>().ok()))
        {
            let Some(t) = list.get(n) else { break };
            best = t.span().or(best);
            table = t;
            i += 1;
            continue;
        }
        match value.as_table_like() {
            Some(t) => table = t,
            None => break,
        }
    }
    best
}

/// Worst case of one attempt sequence on `u`: every allowed retry after a connect failure,
/// then a connect and a full attempt.
fn upstream_worst(u: &UpstreamConfig) -> Duration {
    u.connect_timeout * (u.max_retries + 1) + u.timeout
}

struct Audit<'a> {
    text: &'a str,
    findings: Vec<Finding>,
}

impl Audit<'_> {
    fn add(
        &mut self,
        severity: Severity,
        rule: &'static str,
        key: &[&str],
        message: String,
        help: String,
    ) {
        let span = locate(self.text, key);
        self.findings.push(Finding {
            severity,
            rule,
            message,
            help,
            key: dotted(key),
            span,
        });
    }
}

fn dotted(path: &[&str]) -> String {
    let mut out = String::new();
    for p in path {
        if p.parse::<usize>().is_ok() {
            out.push_str(&format!("[{p}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(p);
        }
    }
    out
}

fn secs(d: Duration) -> String {
    Human(d).to_string()
}

/// Audits `config` (read from `text`), resolving endpoint names with `resolve`.
pub fn audit(config: &Config, text: &str, resolve: Resolver) -> Vec<Finding> {
    let mut a = Audit {
        text,
        findings: Vec::new(),
    };
    let margin = config.deadline.margin;
    for (ri, r) in config.routes.iter().enumerate() {
        let idx = ri.to_string();
        let deadline = r.timeout.min(config.deadline.max);
        if r.timeout > config.deadline.max {
            a.add(
                Severity::Note,
                "deadline-max",
                &["routes", &idx, "timeout"],
                format!(
                    "route {} timeout {} is capped by deadline.max {}",
                    r.name,
                    secs(r.timeout),
                    secs(config.deadline.max)
                ),
                "lower the route timeout or raise deadline.max so the file says what runs".into(),
            );
        }
        // A route an earlier one always matches first can never be reached.
        if let Some(earlier) = config.routes[..ri]
            .iter()
            .find(|e| shadows(&e.path, &r.path))
        {
            let key = match r.path {
                PathMatch::Exact(_) => "path",
                PathMatch::Prefix(_) => "path_prefix",
            };
            a.add(
                Severity::Warning,
                "route-shadowed",
                &["routes", &idx, key],
                format!(
                    "route {} can never match: every path it matches is matched first by route {}",
                    r.name, earlier.name
                ),
                format!(
                    "move route {} above route {}, or narrow route {}",
                    r.name, earlier.name, earlier.name
                ),
            );
        }
        // Rule 2: the front proxy must not give up first.
        if let Some(front) = config.front.as_ref().and_then(|f| f.timeout) {
            if deadline + margin >= front {
                a.add(Severity::Error, "front-timeout", &["routes", &idx, "timeout"],
                    format!("route {} deadline {} + margin {} = {} is not below front.timeout {}: the front proxy answers 504 before hopline can report the cause",
                        r.name, secs(deadline), secs(margin), secs(deadline + margin), secs(front)),
                    format!("set this route's timeout below {}", secs(front.saturating_sub(margin))));
            }
        }
        // Rule 1: the budget of the route's upstream work.
        match &r.action {
            RouteAction::Proxy { upstream } => {
                let Some(u) = config.upstream(upstream) else {
                    continue;
                };
                // Only a timeout written in the file is worth a note: the defaults (5 s
                // attempt, 3 s deadline) are meant to leave the deadline in charge.
                let written = locate_exact(text, &["upstreams", upstream, "timeout"]).is_some();
                if written && u.timeout >= deadline {
                    a.add(Severity::Note, "timeout-cut-by-deadline", &["upstreams", upstream, "timeout"],
                        format!("upstream {} timeout {} can never fire on route {}: its deadline {} cuts first", u.name, secs(u.timeout), r.name, secs(deadline)),
                        "the deadline bounds the call anyway; lower the timeout if a single attempt should give up sooner".into());
                }
            }
            RouteAction::Aggregate(agg) => {
                let worst: Vec<(String, Duration)> = agg
                    .calls
                    .iter()
                    .filter_map(|c| {
                        let u = config.upstream(&c.upstream)?;
                        let w = upstream_worst(u);
                        Some((c.name.clone(), c.timeout.map_or(w, |t| t.min(w))))
                    })
                    .collect();
                match agg.mode {
                    AggregateMode::Sequential => {
                        let total: Duration = worst.iter().map(|(_, d)| *d).sum();
                        if total > deadline {
                            let sum = worst
                                .iter()
                                .map(|(n, d)| format!("{n} {}", secs(*d)))
                                .collect::<Vec<_>>()
                                .join(" + ");
                            let mut elapsed = Duration::ZERO;
                            let mut never = Vec::new();
                            for (n, d) in &worst {
                                if elapsed >= deadline {
                                    never.push(n.clone());
                                }
                                elapsed += *d;
                            }
                            let tail = if never.is_empty() {
                                "the last calls may not start".to_string()
                            } else {
                                format!(
                                    "{} can never run when earlier calls use their whole budget",
                                    never.join(", ")
                                )
                            };
                            a.add(Severity::Warning, "sequential-budget", &["routes", &idx, "aggregate", "mode"],
                                format!("route {}: {sum} = {} > deadline {}: {tail}", r.name, secs(total), secs(deadline)),
                                "use aggregate.mode = \"parallel\", or give each call a timeout so their sum fits the deadline".into());
                        }
                    }
                    AggregateMode::Parallel => {
                        for (ci, (n, d)) in worst.iter().enumerate() {
                            if *d > deadline {
                                a.add(Severity::Note, "timeout-cut-by-deadline", &["routes", &idx, "aggregate", "calls", &ci.to_string()],
                                    format!("route {} call {n}: worst case {} is cut by the deadline {}", r.name, secs(*d), secs(deadline)),
                                    "set the call's timeout below the deadline so its fallback is served in time".into());
                            }
                        }
                    }
                }
            }
        }
    }
    // Rule 3: keep-alive ordering.
    let s = &config.server;
    if let Some(front_idle) = config.front.as_ref().and_then(|f| f.idle_timeout) {
        if s.idle_timeout <= front_idle {
            a.add(Severity::Error, "front-idle", &["server", "idle_timeout"],
                format!("server.idle_timeout {} is not above front.idle_timeout {}: the front proxy will reuse connections hopline has just closed (\"connection reset by peer\")", secs(s.idle_timeout), secs(front_idle)),
                format!("set server.idle_timeout above {}, e.g. {}", secs(front_idle), secs(front_idle + Duration::from_secs(15))));
        }
    }
    for u in &config.upstreams {
        if let Some(server_idle) = u.server_idle_timeout {
            if u.pool_idle_timeout >= server_idle {
                a.add(Severity::Error, "upstream-idle", &["upstreams", &u.name, "pool_idle_timeout"],
                    format!("upstream {}: pool_idle_timeout {} is not below its server_idle_timeout {}: hopline would reuse connections the upstream has closed", u.name, secs(u.pool_idle_timeout), secs(server_idle)),
                    format!("set pool_idle_timeout below {}", secs(server_idle)));
            }
        }
    }
    // A NAT that forgets idle flows: a pooled egress connection must either be kept alive
    // by TCP keepalive probes sent before the NAT forgets it, or not be kept that long.
    let nat_idle = config.egress.as_ref().and_then(|e| e.nat_idle_timeout);
    for u in config.upstreams.iter().filter(|u| u.zone == Zone::Egress) {
        let Some(nat) = nat_idle else { break };
        match u.tcp_keepalive {
            None if u.pool_idle_timeout > nat => {
                a.add(Severity::Warning, "nat-idle", &["upstreams", &u.name, "tcp_keepalive"],
                    format!("upstream {} (egress): pooled connections stay idle up to pool_idle_timeout {} with tcp_keepalive off, but the NAT forgets an idle flow after egress.nat_idle_timeout {}: the next reuse meets a reset or silence", u.name, secs(u.pool_idle_timeout), secs(nat)),
                    format!("turn tcp_keepalive on, or set pool_idle_timeout below {}", secs(nat)));
            }
            Some(k) if k.gives_up_after() >= nat => {
                a.add(Severity::Warning, "nat-idle", &["upstreams", &u.name, "tcp_keepalive"],
                    format!("upstream {} (egress): tcp_keepalive's idle + interval x count is {}, not below egress.nat_idle_timeout {}: the NAT can forget a pooled connection before keepalive has kept it or found it gone", u.name, secs(k.gives_up_after()), secs(nat)),
                    format!("set tcp_keepalive.idle (and interval x count) so the sum is below {}", secs(nat)));
            }
            _ => {}
        }
    }
    // Rule 4: server timeouts.
    for (key, value, absurd) in [
        (
            "header_read_timeout",
            s.header_read_timeout,
            Duration::from_secs(60),
        ),
        (
            "body_read_timeout",
            s.body_read_timeout,
            Duration::from_secs(600),
        ),
        ("write_timeout", s.write_timeout, Duration::from_secs(600)),
        ("idle_timeout", s.idle_timeout, Duration::from_secs(3600)),
    ] {
        // A timeout left to its default is not a finding: the defaults are the reviewed values.
        if locate_exact(text, &["server", key]).is_none() {
            continue;
        } else if value > absurd {
            a.add(Severity::Warning, "server-timeout-absurd", &["server", key],
                format!("server.{key} {} is above {}: slow or idle clients can hold connections that long", secs(value), secs(absurd)),
                format!("lower server.{key}"));
        }
    }
    // Listen addresses given as host names are resolved by `serve` at start; one that
    // does not resolve stops it, so it stops `check` too.
    let listens = std::iter::once((&config.server.listen, ["server", "listen"])).chain(
        config
            .admin
            .iter()
            .map(|a| (&a.listen, ["admin", "listen"])),
    );
    for (l, key) in listens {
        if l.ip().is_some() {
            continue;
        }
        if let Err(why) = resolve(&l.to_string()) {
            a.add(
                Severity::Error,
                "resolve-failed",
                &key,
                format!(
                    "{} {l} does not resolve: {why}; hopline serve would not start",
                    key.join(".")
                ),
                "use an IP address, or fix the name or this machine's resolver".into(),
            );
        }
    }
    // Rule 5: zones.
    let egress_limited = config
        .egress
        .as_ref()
        .is_some_and(|e| e.max_in_flight.is_some() || e.max_new_connections_per_sec.is_some());
    for u in &config.upstreams {
        for (ei, ep) in u.endpoints.iter().enumerate() {
            match resolve(ep) {
                Ok(ips) if u.zone == Zone::Internal => {
                    if let Some(ip) = ips.iter().find(|ip| is_public(**ip)) {
                        a.add(Severity::Warning, "internal-public-address", &["upstreams", &u.name, "endpoints"],
                            format!("internal upstream {} endpoint {ep} resolves to public address {ip}: its traffic leaves through the egress/NAT path", u.name),
                            "use the service's private address or internal name, or declare zone = \"egress\" so the egress limits apply".into());
                    }
                }
                Ok(_) => {}
                // `serve` starts anyway: it keeps resolving the name in the background
                // and answers 503 `UH` for this upstream while it has no address.
                Err(why) => a.add(
                    Severity::Warning,
                    "resolve-failed",
                    &["upstreams", &u.name, "endpoints"],
                    format!(
                        "upstream {} endpoint {} (#{ei}) does not resolve now: {why}; hopline serve answers 503 UH for it until it does",
                        u.name, ep
                    ),
                    "fix the name, or check this machine's resolver (or [dns] nameservers)".into(),
                ),
            }
        }
        endpoint_rules(&mut a, u);
        match u.zone {
            Zone::Internal => {}
            Zone::Egress if !egress_limited => {
                a.add(Severity::Warning, "egress-unlimited", &["upstreams", &u.name, "zone"],
                    format!("egress upstream {} has no shared [egress] limits: one surge can exhaust the NAT gateway for every egress call", u.name),
                    "add [egress] max_in_flight and max_new_connections_per_sec sized to the NAT (divided by the replica count)".into());
            }
            Zone::Egress => {}
        }
    }
    if let Some(e) = &config.egress {
        egress_rules(&mut a, e);
    }
    tls_rules(&mut a, config, SystemTime::now(), resolve);
    a.findings
        .sort_by_key(|f| (f.span.as_ref().map_or(0, |s| s.start), f.severity));
    a.findings
}

/// A certificate expiring within this long is a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// Outlier detection and health checks: settings that defeat their purpose.
/// Rule 7: the shared egress budget and the NAT it stands for.
fn egress_rules(a: &mut Audit<'_>, e: &EgressConfig) {
    if let Some(s) = &e.shared {
        if e.max_in_flight.is_none() && e.max_new_connections_per_sec.is_none() {
            a.add(Severity::Warning, "shared-without-budget", &["egress", "shared"],
                format!("[egress] shared = \"{}\" has no budget to share: scope {} limits nothing", s.url, s.scope),
                "set [egress] max_new_connections_per_sec and max_in_flight to the NAT's budget for the whole scope".into());
        } else if s.expected_replicas.is_none() {
            a.add(Severity::Warning, "shared-replicas-unset", &["egress", "shared"],
                format!("[egress] shared without expected_replicas: when Redis is unreachable, every gateway of scope {} takes the whole budget, and together they exceed it", s.scope),
                "set [egress] expected_replicas to the number of gateways sharing the scope (each then falls back to budget / expected_replicas)".into());
        }
    }
    if let (Some(nat), Some(rate)) = (e.nat_limit, e.max_new_connections_per_sec) {
        if rate > nat {
            let whose = match &e.shared {
                Some(s) => format!("scope {}'s cluster-wide budget", s.scope),
                None => "this gateway's budget alone".into(),
            };
            a.add(Severity::Note, "egress-over-nat-limit", &["egress", "max_new_connections_per_sec"],
                format!("[egress] max_new_connections_per_sec {rate} ({whose}) is above the NAT's documented {nat}/s: the NAT, not hopline, will refuse the excess, slowly (SYN retries)"),
                format!("lower it to {nat} or less{}", if e.shared.is_some() { "" } else { ", divided by the replica count (or share it: [egress] shared)" }));
        }
    }
}

fn endpoint_rules(a: &mut Audit<'_>, u: &UpstreamConfig) {
    if u.zone == Zone::Egress && u.endpoints.len() == 1 && u.health.is_none() {
        a.add(Severity::Note, "egress-single-endpoint", &["upstreams", &u.name, "endpoints"],
            format!("egress upstream {} has one endpoint and no health checks: when it fails, every request waits for its failure before the 503/504", u.name),
            format!("add [upstreams.{}.health] so a dead endpoint is answered 503 UH at once, or list more endpoints", u.name));
    }
    if u.outlier.enabled
        && u.outlier.max_ejection_percent == 100
        && locate_exact(
            a.text,
            &["upstreams", &u.name, "outlier", "max_ejection_percent"],
        )
        .is_some()
    {
        a.add(Severity::Warning, "ejection-unbounded", &["upstreams", &u.name, "outlier", "max_ejection_percent"],
            format!("upstream {}: max_ejection_percent = 100 lets outlier detection eject every endpoint: one shared failure (a bad deploy, a slow database) empties the upstream", u.name),
            "keep it at 50 or lower, so the healthiest half keeps serving".into());
    }
    if let Some(h) = &u.health {
        if h.timeout >= h.interval {
            a.add(Severity::Error, "health-timeout-not-below-interval", &["upstreams", &u.name, "health", "timeout"],
                format!("upstream {}: health check timeout {} is not below its interval {}: checks of a slow endpoint overlap and pile up", u.name, secs(h.timeout), secs(h.interval)),
                "make health.timeout shorter than health.interval".into());
        }
    }
}

/// A private key file that others than its owner may read or write (`mode & 0o077`): a
/// warning, with the `chmod` that fixes it. `cert_key` is the certificate's key path; the
/// finding names the key's (`…cert` → `…key`, `client_cert` → `client_key`).
fn key_mode(a: &mut Audit, cert_key: &[&str], keyfile: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(keyfile) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return;
    }
    let mut path: Vec<&str> = cert_key.to_vec();
    if let Some(last) = path.last_mut() {
        *last = match *last {
            "client_cert" => "client_key",
            _ => "key",
        };
    }
    a.add(
        Severity::Warning,
        "tls-key-readable",
        &path,
        format!(
            "private key {} has mode {mode:04o}: users other than its owner can read it",
            keyfile.display()
        ),
        format!("chmod 600 {}", keyfile.display()),
    );
}

/// TLS: certificates expired or expiring, keys that do not match, files that do not parse
/// (serve would not start), `insecure_skip_verify`, egress calls in plain text.
fn tls_rules(a: &mut Audit, config: &Config, now: SystemTime, resolve: Resolver) {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let pair = |a: &mut Audit, key: &[&str], cert: &std::path::Path, keyfile: &std::path::Path| {
        match hopline_tls::files::certified_key(cert, keyfile) {
            Err(e @ hopline_tls::TlsFileError::KeyMismatch { .. }) => a.add(
                Severity::Error,
                "tls-key-mismatch",
                key,
                hopline_core::error::cause_chain(&e),
                "point key at the private key this certificate was issued for".into(),
            ),
            Err(e) => a.add(
                Severity::Error,
                "tls-file-invalid",
                key,
                format!(
                    "{}; hopline serve would not start",
                    hopline_core::error::cause_chain(&e)
                ),
                "fix the path, the file's permissions or its PEM content".into(),
            ),
            Ok(_) => {
                expiry(a, key, cert, now);
                key_mode(a, key, keyfile);
            }
        }
    };
    if let Some(t) = &config.server.tls {
        // The default certificate is [server.tls] cert/key (listed first), the others
        // [[server.tls.certs]] in file order.
        let first = usize::from(t.default_cert().is_some());
        for (i, c) in t.certs.iter().enumerate() {
            if c.server_names.is_empty() {
                pair(a, &["server", "tls", "cert"], &c.cert, &c.key);
            } else {
                let n = (i - first).to_string();
                pair(a, &["server", "tls", "certs", &n, "cert"], &c.cert, &c.key);
            }
        }
    }
    for u in &config.upstreams {
        let Some(t) = &u.tls else {
            // Plain text to loopback (a local egress proxy that originates TLS, a lab) does
            // not cross the network.
            let off_host = u
                .endpoints
                .iter()
                .any(|ep| resolve(ep).is_ok_and(|ips| ips.iter().any(|ip| !ip.is_loopback())));
            if u.zone == Zone::Egress && off_host {
                a.add(Severity::Note, "egress-plaintext", &["upstreams", &u.name, "endpoints"],
                    format!("egress upstream {} is called over plain HTTP: its traffic crosses the NAT and the internet unencrypted", u.name),
                    "write its endpoints as https://host:port (or set tls = true)".into());
            }
            continue;
        };
        if let Some(ca) = &t.ca {
            if let Err(e) = hopline_tls::files::roots(ca) {
                a.add(
                    Severity::Error,
                    "tls-file-invalid",
                    &["upstreams", &u.name, "ca"],
                    format!(
                        "{}; hopline serve would not start",
                        hopline_core::error::cause_chain(&e)
                    ),
                    "point ca at a PEM bundle of CA certificates".into(),
                );
            }
        }
        if let (Some(cert), Some(key)) = (&t.client_cert, &t.client_key) {
            pair(a, &["upstreams", &u.name, "client_cert"], cert, key);
        }
        if t.insecure_skip_verify {
            let (severity, why) = if u.zone == Zone::Egress {
                (Severity::Error, "an egress upstream crosses the internet: anyone on the path can impersonate it")
            } else {
                (
                    Severity::Warning,
                    "any certificate is accepted, so the upstream is not authenticated",
                )
            };
            a.add(
                severity,
                "tls-insecure-skip-verify",
                &["upstreams", &u.name, "insecure_skip_verify"],
                format!("upstream {}: insecure_skip_verify = true: {why}", u.name),
                "remove it and set ca to the CA that issued the upstream's certificate".into(),
            );
        }
    }
    let shared_ca = config
        .egress
        .as_ref()
        .and_then(|e| e.shared.as_ref())
        .and_then(|s| s.ca.as_ref());
    if let Some(ca) = shared_ca {
        if let Err(e) = hopline_tls::files::roots(ca) {
            a.add(
                Severity::Error,
                "tls-file-invalid",
                &["egress", "ca"],
                format!(
                    "{}; hopline serve would not start",
                    hopline_core::error::cause_chain(&e)
                ),
                "point ca at a PEM bundle of the CA certificates that signed Redis's".into(),
            );
        }
    }
}

/// Expired (error) or expiring within [`EXPIRY_WARNING`] (warning) leaf certificate.
fn expiry(a: &mut Audit, key: &[&str], cert: &std::path::Path, now: i64) {
    let Ok(info) = hopline_tls::files::leaf_info(cert) else {
        return;
    };
    let left = info.not_after - now;
    if left <= 0 {
        a.add(
            Severity::Error,
            "tls-cert-expired",
            key,
            format!(
                "certificate {} ({}) expired on {}",
                cert.display(),
                info.subject,
                info.not_after_date
            ),
            "renew it; clients refuse an expired certificate".into(),
        );
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        a.add(
            Severity::Warning,
            "tls-cert-expiring",
            key,
            format!(
                "certificate {} ({}) expires on {}, in {} days",
                cert.display(),
                info.subject,
                info.not_after_date,
                left / 86_400
            ),
            "renew it, then reload (SIGHUP) — connections are kept".into(),
        );
    }
}

/// True when every path `later` matches is matched by `earlier` (routes match first-wins).
fn shadows(earlier: &PathMatch, later: &PathMatch) -> bool {
    match (earlier, later) {
        (PathMatch::Exact(e), PathMatch::Exact(l)) => e == l,
        (PathMatch::Prefix(e), PathMatch::Exact(l) | PathMatch::Prefix(l)) => {
            l.starts_with(e.as_str())
        }
        (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
    }
}

fn locate_exact(text: &str, path: &[&str]) -> Option<()> {
    let doc = ImDocument::parse(text.to_string()).ok()?;
    let mut item: &Item = doc.as_item();
    for p in path {
        item = item.as_table_like()?.get(p)?;
    }
    Some(())
}

/// Renders findings as compiler-style diagnostics with snippets (miette).
pub fn render_text(findings: &[Finding], path: &str, text: &str) -> String {
    use miette::{
        GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource, Report,
    };
    let handler =
        GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor()).with_width(100);
    let mut out = String::new();
    for f in findings {
        let severity = match f.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
            Severity::Note => miette::Severity::Advice,
        };
        let mut d = MietteDiagnostic::new(f.message.clone())
            .with_code(f.rule)
            .with_severity(severity)
            .with_help(f.help.clone());
        if let Some(span) = &f.span {
            let loc = Location::of(text, span.start);
            d = d.with_label(LabeledSpan::at(
                span.clone(),
                format!("{} ({}:{}:{})", f.key, path, loc.line, loc.column),
            ));
        }
        let report = Report::new(d).with_source_code(NamedSource::new(path, text.to_string()));
        let _ = handler.render_report(&mut out, report.as_ref());
        out.push('\n');
    }
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    out.push_str(&format!(
        "{path}: {} error(s), {} warning(s), {} note(s)\n",
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Note)
    ));
    out
}

/// Renders findings as a JSON array for CI.
pub fn render_json(findings: &[Finding], path: &str, text: &str) -> String {
    let list: Vec<serde_json::Value> = findings
        .iter()
        .map(|f| {
            let loc = f.span.as_ref().map(|s| Location::of(text, s.start));
            serde_json::json!({
                "severity": f.severity.as_str(),
                "rule": f.rule,
                "message": f.message,
                "help": f.help,
                "key": f.key,
                "file": path,
                "line": loc.map(|l| l.line),
                "column": loc.map(|l| l.column),
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// A config that could not be loaded, in the shape of [`render_json`]'s findings, so a
/// script reading `check --format json` gets JSON whatever happened.
pub fn render_load_error_json(err: &crate::LoadError, path: &str) -> String {
    let list: Vec<serde_json::Value> = match err {
        crate::LoadError::Invalid(c) => c
            .problems
            .iter()
            .map(|p| {
                serde_json::json!({
                    "severity": "error",
                    "rule": "invalid-config",
                    "message": p.kind.to_string(),
                    "help": null,
                    // A syntax error is the file's, not a key's.
                    "key": (!p.key.is_empty()).then_some(&p.key),
                    "file": path,
                    "line": p.location.line,
                    "column": p.location.column,
                })
            })
            .collect(),
        crate::LoadError::Read { source, .. } => vec![serde_json::json!({
            "severity": "error",
            "rule": "unreadable",
            "message": format!("{err}: {source}"),
            "help": null,
            "key": null,
            "file": path,
            "line": null,
            "column": null,
        })],
    };
    serde_json::Value::Array(list).to_string()
}
