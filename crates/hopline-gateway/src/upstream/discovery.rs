//! DNS discovery: an endpoint written `name:port` stands for every address the name
//! resolves to, re-resolved in the background as the records' TTL says (within `[dns]
//! min_ttl..=max_ttl`). A failed resolution keeps the last good addresses, is logged and
//! counted, and is retried after `min_ttl`; an upstream with no address yet answers 503
//! `UH` naming the name and the failure.
//!
//! Resolution runs on tasks of the gateway's runtime (hickory-resolver), never blocking
//! a worker thread. A task holds only a weak reference to its upstream's endpoints and
//! ends when they are dropped (the upstream was removed or its endpoints changed).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioResolver;
use hopline_core::config::{Cidr, DnsConfig, DnsFamily};
use hopline_core::time::Human;
use tokio::sync::watch;

use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::upstream::endpoint::{Endpoint, EndpointSet};

/// A configured entry that is a name: `host:port`.
#[derive(Debug, Clone)]
pub struct Name {
    /// As configured, `coupon.svc:8080`.
    pub target: Arc<str>,
    /// The host part.
    pub host: String,
    /// The port.
    pub port: u16,
}

/// Splits a configured endpoint into an address (an IP literal) or a [`Name`].
pub(crate) fn classify(entry: &str) -> Result<SocketAddr, Name> {
    if let Ok(a) = entry.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = entry.rsplit_once(':').unwrap_or((entry, "0"));
    let port = port.parse().unwrap_or(0);
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, port)),
        Err(_) => Err(Name {
            target: entry.into(),
            host: host.to_string(),
            port,
        }),
    }
}

/// How the names of one upstream stand.
#[derive(Debug, Default)]
struct Status {
    /// The last failure: what, and when it was tried.
    failure: Option<(String, Instant)>,
    /// Tried at least once.
    tried: bool,
}

/// The names of one upstream and how their resolution stands.
#[derive(Debug)]
pub struct Names {
    names: Vec<Name>,
    status: Mutex<Vec<Status>>,
    /// Every name tried at least once.
    settled: watch::Sender<bool>,
}

impl Names {
    /// Tracks `names` (none tried yet).
    pub fn new(names: Vec<Name>) -> Arc<Self> {
        let status = names.iter().map(|_| Status::default()).collect();
        let settled = watch::Sender::new(names.is_empty());
        Arc::new(Names {
            names,
            status: Mutex::new(status),
            settled,
        })
    }

    /// There are names to resolve.
    pub fn any(&self) -> bool {
        !self.names.is_empty()
    }

    /// Resolves once every name has been tried (or `limit` passed).
    pub async fn settled(&self, limit: Duration) {
        let mut rx = self.settled.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|s| *s)).await;
    }

    fn record(&self, i: usize, failure: Option<String>) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status[i].tried = true;
        status[i].failure = failure.map(|f| (f, Instant::now()));
        if status.iter().all(|s| s.tried) {
            self.settled.send_replace(true);
        }
    }

    /// Why the upstream has no address: each name and its last failure.
    pub fn no_address(&self) -> String {
        let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let parts: Vec<String> = self
            .names
            .iter()
            .zip(status.iter())
            .map(|(n, s)| match &s.failure {
                Some((what, at)) => format!(
                    "no address for {}: {what} (last tried {} ago)",
                    n.host,
                    Human(round_ms(at.elapsed()))
                ),
                None if s.tried => format!("no address for {}: no records", n.host),
                None => format!("no address for {} yet: resolving", n.host),
            })
            .collect();
        if parts.is_empty() {
            "no endpoints".into()
        } else {
            parts.join("; ")
        }
    }

    /// The names as `/endpoints` shows them.
    pub fn describe(&self) -> serde_json::Value {
        let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        self.names
            .iter()
            .zip(status.iter())
            .map(|(n, s)| {
                serde_json::json!({
                    "name": &*n.target,
                    "resolved": s.tried && s.failure.is_none(),
                    "last_error": s.failure.as_ref().map(|(w, _)| w.clone()),
                    "last_error_ago_ms": s.failure.as_ref().map(|(_, at)| at.elapsed().as_millis() as u64),
                })
            })
            .collect()
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// A resolver for `[dns]`.
pub(crate) fn resolver(config: &DnsConfig) -> Result<TokioResolver, NetError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if config.nameservers.is_empty() {
        TokioResolver::builder(provider)?
    } else {
        let servers = config
            .nameservers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
    };
    let o: &mut ResolverOpts = builder.options_mut();
    o.timeout = config.timeout;
    o.attempts = 1;
    o.ip_strategy = match config.family {
        DnsFamily::V4Preferred => LookupIpStrategy::Ipv4thenIpv6,
        DnsFamily::All => LookupIpStrategy::Ipv4AndIpv6,
        DnsFamily::V4 => LookupIpStrategy::Ipv4Only,
        DnsFamily::V6 => LookupIpStrategy::Ipv6Only,
    };
    o.use_hosts_file = ResolveHosts::Always;
    o.positive_max_ttl = Some(config.max_ttl);
    o.negative_max_ttl = Some(config.min_ttl);
    o.cache_size = 256;
    builder.build()
}

/// What an operator reads for a failed resolution: `NXDOMAIN`, `no A/AAAA records`,
/// `timed out`, or the resolver's own words.
fn failure_text(e: &NetError) -> String {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(n)) if n.response_code == ResponseCode::NXDomain => {
            "NXDOMAIN".into()
        }
        NetError::Dns(DnsError::NoRecordsFound(n)) if n.response_code == ResponseCode::NoError => {
            "no A/AAAA records".into()
        }
        NetError::Dns(DnsError::NoRecordsFound(n)) => n.response_code.to_string(),
        NetError::Timeout => "timed out".into(),
        e => e.to_string(),
    }
}

/// Where the watchers of a name say what they found: metrics and event lines.
pub(crate) struct Said<'a> {
    /// The gateway's metrics.
    pub(crate) metrics: &'a Arc<Metrics>,
    /// The access log (its `dns` event lines).
    pub(crate) log: &'a Arc<AccessLog>,
}

/// Builds the endpoint for an address a name resolved to.
pub(crate) type MakeEndpoint = Arc<dyn Fn(SocketAddr, &Name) -> Endpoint + Send + Sync>;

/// Starts one task per name of `names` that keeps `set` up to date; `make` builds an
/// endpoint for an address of a name.
pub(crate) fn spawn(
    resolver: TokioResolver,
    config: &DnsConfig,
    names: &Arc<Names>,
    set: &Arc<EndpointSet>,
    deny: &[Cidr],
    said: Said<'_>,
    make: MakeEndpoint,
) {
    let Said { metrics, log } = said;
    let deny: Arc<[Cidr]> = deny.into();
    for i in 0..names.names.len() {
        let watcher = Watcher {
            resolver: resolver.clone(),
            names: names.clone(),
            i,
            set: Arc::downgrade(set),
            metrics: metrics.clone(),
            log: log.clone(),
            deny: deny.clone(),
            max_addresses: config.max_addresses_per_name,
            min_ttl: config.min_ttl,
            max_ttl: config.max_ttl,
            make: make.clone(),
        };
        tokio::spawn(watcher.run());
    }
}

struct Watcher {
    resolver: TokioResolver,
    names: Arc<Names>,
    i: usize,
    set: Weak<EndpointSet>,
    metrics: Arc<Metrics>,
    log: Arc<AccessLog>,
    /// `deny_addresses`: resolved addresses not to use.
    deny: Arc<[Cidr]>,
    /// `dns.max_addresses_per_name`.
    max_addresses: usize,
    min_ttl: Duration,
    max_ttl: Duration,
    make: MakeEndpoint,
}

impl Watcher {
    async fn run(self) {
        let name = &self.names.names[self.i];
        loop {
            let result = self.resolver.lookup_ip(name.host.as_str()).await;
            let Some(set) = self.set.upgrade() else {
                return;
            };
            let wait = match result {
                Ok(found) => self.resolved(&set, name, &found),
                Err(e) => {
                    let what = failure_text(&e);
                    self.metrics.dns_resolution(&set.upstream, false);
                    let kept = set
                        .list()
                        .iter()
                        .filter(|e| *e.target == *name.target)
                        .count();
                    let detail = format!(
                        "{what}; keeping {kept} known address(es), retrying in {}",
                        Human(self.min_ttl)
                    );
                    self.log.announce(
                        "dns",
                        &[("upstream", &set.upstream), ("name", &name.host)],
                        "failed",
                        &detail,
                        format_args!(
                            "upstream {}: cannot resolve {}: {detail}",
                            set.upstream, name.host
                        ),
                    );
                    self.names.record(self.i, Some(what));
                    self.min_ttl
                }
            };
            drop(set);
            tokio::time::sleep(wait).await;
        }
    }

    /// A name resolved: its allowed addresses (at most `max_addresses`) become the
    /// endpoints of its target, what changed and what was denied is said; returns when to
    /// ask again.
    fn resolved(
        &self,
        set: &EndpointSet,
        name: &Name,
        found: &hickory_resolver::lookup_ip::LookupIp,
    ) -> Duration {
        let mut addrs: Vec<SocketAddr> = found
            .iter()
            .map(|ip| SocketAddr::new(ip, name.port))
            .collect();
        addrs.sort();
        addrs.dedup();
        let (denied, mut addrs): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs
            .into_iter()
            .partition(|a| Cidr::deny(&self.deny, a.ip()).is_some());
        addrs.truncate(self.max_addresses);
        // The resolver's `valid_until` is on the std clock: now is read on
        // tokio's and handed over (the same instant outside paused tests).
        let ttl = found
            .valid_until()
            .checked_duration_since(Instant::now().into_std())
            .unwrap_or_default();
        if !denied.is_empty() {
            let ips: Vec<String> = denied.iter().map(|a| a.ip().to_string()).collect();
            let detail = format!("{} denied by deny_addresses", ips.join(", "));
            let kept = if addrs.is_empty() {
                "nothing left to use; the last allowed addresses are kept"
            } else {
                "the others are used"
            };
            self.log.announce(
                "dns",
                &[("upstream", &set.upstream), ("name", &name.host)],
                "denied",
                &detail,
                format_args!(
                    "upstream {}: {} resolves to {detail}: {kept}",
                    set.upstream, name.host
                ),
            );
            if addrs.is_empty() {
                // Like a failed resolution: what was allowed stays, and an
                // upstream with nothing answers 503 UH naming the address.
                self.metrics.dns_resolution(&set.upstream, false);
                self.names.record(self.i, Some(detail));
                return self.min_ttl;
            }
        }
        self.metrics.dns_resolution(&set.upstream, true);
        self.names.record(self.i, None);
        let (added, removed) = set.replace_target(&name.target, &addrs, |a| (self.make)(a, name));
        for gone in &removed {
            self.metrics.forget_endpoint(&set.upstream, *gone);
        }
        if !added.is_empty() || !removed.is_empty() {
            let detail = format!(
                "{} (added {}, removed {})",
                list(&addrs),
                list(&added),
                list(&removed)
            );
            self.log.announce(
                "dns",
                &[("upstream", &set.upstream), ("name", &name.host)],
                "resolved",
                &detail,
                format_args!(
                    "upstream {}: {} resolves to {detail}",
                    set.upstream, name.host
                ),
            );
        }
        ttl.clamp(self.min_ttl, self.max_ttl)
    }
}

fn list(addrs: &[SocketAddr]) -> String {
    if addrs.is_empty() {
        return "none".into();
    }
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
