//! The gateway's runtime state built from a validated config: routes, upstreams, limits, log.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hopline_core::config::{
    AccessLogSink, AggregateMode, CallConfig, Config, PathMatch, RouteAction,
};

use crate::build_error::BuildError;
use crate::limits::{BufferBudget, InFlight, RateLimit};
use crate::observe::access_log::{AccessLog, AccessRecord};
use crate::observe::metrics::Metrics;
use crate::upstream::shared::SharedEgress;
use crate::upstream::{Egress, Upstream, UpstreamContext};

/// A route ready to match.
#[derive(Debug)]
pub struct Route {
    /// Name (logs, metrics).
    pub name: Arc<str>,
    /// Path match.
    pub path: PathMatch,
    /// What it does.
    pub action: Action,
    /// Route deadline.
    pub timeout: Duration,
    /// `methods`, if configured.
    pub methods: Option<Vec<String>>,
    /// The `Allow` value of a 405 from this route.
    pub allow: String,
    /// WebSocket upgrades allowed, with the tunnel's idle timeout.
    pub websocket: Option<Duration>,
    /// The body is read whole before the upstream is called (`request_buffering`).
    pub request_buffering: bool,
    /// `body_read_timeout`: the route's, else the server's.
    pub body_read_timeout: Duration,
}

impl Route {
    /// True when the route serves `method`: the configured list, else every method for a
    /// proxy route and `GET`/`HEAD` for an aggregate one.
    pub fn allows(&self, method: &[u8]) -> bool {
        match (&self.methods, &self.action) {
            (Some(list), _) => list.iter().any(|m| m.as_bytes() == method),
            (None, Action::Aggregate(_)) => matches!(method, b"GET" | b"HEAD"),
            (None, Action::Proxy { .. }) => true,
        }
    }
}

/// A route's action, with upstream names resolved to indexes into [`Gateway::upstreams`].
#[derive(Debug)]
pub enum Action {
    /// Proxy to one upstream.
    Proxy {
        /// Upstream index.
        upstream: usize,
    },
    /// Fan out to several calls.
    Aggregate(Aggregate),
}

/// A ready-to-run aggregate route.
#[derive(Debug)]
pub struct Aggregate {
    /// Parallel or sequential.
    pub mode: AggregateMode,
    /// The calls.
    pub calls: Vec<Call>,
}

/// One call of an aggregate route.
#[derive(Debug)]
pub struct Call {
    /// Result key.
    pub name: Arc<str>,
    /// Upstream index.
    pub upstream: usize,
    /// Its config (path template, method, headers, fallback, timeout).
    pub config: CallConfig,
    /// The JSON kind of its fallback, and of the upstream's last answer (a clash is said
    /// once: a client would see another shape when the call falls back).
    pub shape: crate::shape::Shape,
}

/// A setting a reload could not put in force (it needs a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotApplied {
    /// The config key, e.g. `server.listen`.
    pub key: &'static str,
    /// The value in the reloaded file.
    pub wanted: String,
    /// The value still in force.
    pub in_force: String,
}

/// Keeps the settings only a restart can change (the bound listeners, the connection
/// slots, the log) at their values in force, and lists those the new config wanted to change.
fn pin_restart_only(old: &Config, new: &mut Config) -> Vec<NotApplied> {
    let mut out = Vec::new();
    let mut note = |key: &'static str, wanted: String, in_force: String| {
        if wanted != in_force {
            out.push(NotApplied {
                key,
                wanted,
                in_force,
            });
        }
    };
    let admin = |c: &Config| {
        c.admin.as_ref().map_or("off".into(), |a| {
            format!(
                "{} (max_connections {}, allowed_hosts {:?})",
                a.listen, a.max_connections, a.allowed_hosts
            )
        })
    };
    let log = |c: &Config| match &c.log.access {
        AccessLogSink::Stdout => "stdout".to_string(),
        AccessLogSink::Off => "off".to_string(),
        AccessLogSink::File(p) => p.display().to_string(),
    };
    let tls_listen = |c: &Config| {
        c.server
            .tls
            .as_ref()
            .map_or("off".into(), |t| t.listen.to_string())
    };
    note(
        "server.listen",
        new.server.listen.to_string(),
        old.server.listen.to_string(),
    );
    note(
        "server.max_connections",
        new.server.max_connections.to_string(),
        old.server.max_connections.to_string(),
    );
    note(
        "server.backlog",
        new.server.backlog.to_string(),
        old.server.backlog.to_string(),
    );
    note("admin.listen", admin(new), admin(old));
    note("log.access", log(new), log(old));
    note("server.tls.listen", tls_listen(new), tls_listen(old));
    let shared = |c: &Config| {
        c.egress
            .as_ref()
            .and_then(|e| e.shared.as_ref())
            .map_or("off".into(), |s| format!("{} scope {}", s.url, s.scope))
    };
    note("egress.shared", shared(new), shared(old));
    let tracing = |c: &Config| {
        c.tracing.as_ref().map_or("off".into(), |t| {
            format!(
                "{} ratio {} service {}",
                t.otlp_endpoint, t.sample_ratio, t.service_name
            )
        })
    };
    note("tracing", tracing(new), tracing(old));
    new.tracing = old.tracing.clone();
    // The store and scope stay; the budgets, expected_replicas and fallback_after apply.
    let kept = old.egress.as_ref().and_then(|e| e.shared.clone());
    match (&mut new.egress, kept) {
        (Some(n), Some(mut o)) => {
            if let Some(w) = &n.shared {
                o.expected_replicas = w.expected_replicas;
                o.fallback_after = w.fallback_after;
            }
            n.shared = Some(o);
        }
        (Some(n), None) => n.shared = None,
        (n @ None, Some(o)) => {
            *n = Some(hopline_core::config::EgressConfig {
                max_in_flight: None,
                max_new_connections_per_sec: None,
                shared: Some(o),
                nat_limit: None,
                nat_idle_timeout: None,
            })
        }
        (None, None) => {}
    }
    new.server.listen = old.server.listen.clone();
    new.server.max_connections = old.server.max_connections;
    new.server.backlog = old.server.backlog;
    new.admin = old.admin.clone();
    new.log.access = old.log.access.clone();
    // The TLS listener is bound once: without one, new certificates have nowhere to go;
    // with one, a config that drops [server.tls] keeps the old settings.
    match (&mut new.server.tls, &old.server.tls) {
        (Some(n), Some(o)) => n.listen = o.listen.clone(),
        (n, o) => *n = o.clone(),
    }
    out
}

/// Every configured certificate (the listener's and upstreams' client certificates) with
/// its subject and expiry, for `hopline_tls_cert_not_after_seconds`. A file that cannot be
/// read is left out here: building the TLS settings reports it.
fn certificates(config: &Config) -> Vec<crate::observe::metrics::CertExpiry> {
    let mut out = Vec::new();
    let mut add = |listener: String, upstream: String, path: &std::path::Path| {
        if let Ok(info) = hopline_tls::files::leaf_info(path) {
            out.push(crate::observe::metrics::CertExpiry {
                listener,
                upstream,
                subject: info.subject,
                not_after: info.not_after,
            });
        }
    };
    if let Some(t) = &config.server.tls {
        for c in &t.certs {
            add(t.listen.to_string(), String::new(), &c.cert);
        }
    }
    for u in &config.upstreams {
        if let Some(cert) = u.tls.as_ref().and_then(|t| t.client_cert.as_ref()) {
            add(String::new(), u.name.clone(), cert);
        }
    }
    out
}

/// Everything a request needs, shared by all connections.
#[derive(Debug)]
pub struct Gateway {
    /// The config this state was built from.
    pub config: Config,
    /// Routes in match order.
    pub routes: Vec<Route>,
    /// Upstreams in config order.
    pub upstreams: Vec<Upstream>,
    /// Shared egress limits.
    pub egress: Egress,
    /// `[tracing]`: the span exporter (kept across reloads).
    pub exporter: Option<Arc<crate::observe::otlp::Exporter>>,
    /// The access log.
    pub log: Arc<AccessLog>,
    /// Metrics (shared across reloads).
    pub metrics: Arc<Metrics>,
    /// The TLS listener's handshake settings (certificates re-read on every reload).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `server.max_buffered_bytes`: what every growing buffer draws from (kept across
    /// reloads, its limit set from the new config).
    pub buffers: Arc<BufferBudget>,
    ids: RequestIds,
    draining: Arc<AtomicBool>,
}

impl Gateway {
    /// Builds the runtime state: resolves endpoints, opens the access log.
    pub fn new(config: Config) -> Result<Gateway, BuildError> {
        let config_budget = config.server.max_buffered_bytes;
        let log = Arc::new(AccessLog::open(&config.log.access).map_err(BuildError::AccessLog)?);
        let metrics = Arc::new(Metrics::new());
        let cx = UpstreamContext::of(&config, metrics.clone(), log.clone());
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u.clone(), &cx))
            .collect::<Result<Vec<_>, _>>()?;
        let egress = match config.egress.as_ref() {
            Some(e) => match &e.shared {
                Some(shared) => Egress {
                    shared: Some(
                        SharedEgress::start(e, shared, log.clone(), metrics.clone())
                            .map_err(BuildError::SharedEgress)?,
                    ),
                    ..Egress::default()
                },
                None => Egress {
                    in_flight: e.max_in_flight.map(InFlight::new),
                    new_connections: e
                        .max_new_connections_per_sec
                        .map(|r| Arc::new(RateLimit::new(r))),
                    shared: None,
                },
            },
            None => Egress::default(),
        };
        let exporter = config
            .tracing
            .as_ref()
            .map(|t| crate::observe::otlp::Exporter::start(t, log.clone()).map(Arc::new))
            .transpose()
            .map_err(BuildError::Tracing)?;
        Self::assemble(
            config,
            upstreams,
            (egress, exporter),
            log,
            metrics,
            (
                Arc::new(AtomicBool::new(false)),
                BufferBudget::new(config_budget),
            ),
        )
    }

    /// A gateway for a reloaded config: new routes; the same access log, metrics and
    /// draining state; and, by upstream name, the state that outlives a config (in-flight
    /// counters, retry budgets, pools, the egress limits — changed limits apply to new
    /// acquisitions). Settings a reload cannot change are kept as they are and listed in
    /// the returned [`NotApplied`]s, so the new gateway's config says what is in force.
    pub fn reloaded(&self, mut config: Config) -> Result<(Gateway, Vec<NotApplied>), BuildError> {
        let not_applied = pin_restart_only(&self.config, &mut config);
        let cx = UpstreamContext::of(&config, self.metrics.clone(), self.log.clone());
        let upstreams = config
            .upstreams
            .iter()
            .map(
                |u| match self.upstreams.iter().find(|o| *o.name == *u.name) {
                    Some(o) => o.reloaded(u.clone(), &cx),
                    None => Upstream::new(u.clone(), &cx),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        // `shared` and `scope` are pinned: a scope keeps its store and its holding. The
        // limits outlive the config; their new values apply once the gateway is built.
        let egress = match (config.egress.as_ref(), &self.egress.shared) {
            (_, Some(shared)) => Egress {
                shared: Some(shared.clone()),
                ..Egress::default()
            },
            (egress, None) => Egress {
                in_flight: egress.and_then(|e| e.max_in_flight).map(|limit| {
                    self.egress
                        .in_flight
                        .clone()
                        .unwrap_or_else(|| InFlight::new(limit))
                }),
                new_connections: egress
                    .and_then(|e| e.max_new_connections_per_sec)
                    .map(|rate| {
                        self.egress
                            .new_connections
                            .clone()
                            .unwrap_or_else(|| Arc::new(RateLimit::new(rate)))
                    }),
                shared: None,
            },
        };
        let gw = Self::assemble(
            config,
            upstreams,
            (egress, self.exporter.clone()),
            self.log.clone(),
            self.metrics.clone(),
            (self.draining.clone(), self.buffers.clone()),
        )?;
        gw.buffers.set_limit(gw.config.server.max_buffered_bytes);
        gw.apply_egress_limits();
        Ok((gw, not_applied))
    }

    /// Sets the egress limits carried over from the previous config to this one's values
    /// (they apply to new acquisitions; slots taken stay taken until released).
    fn apply_egress_limits(&self) {
        let Some(e) = &self.config.egress else { return };
        if let (Some(l), Some(limit)) = (&self.egress.in_flight, e.max_in_flight) {
            l.set_limit(limit);
        }
        if let (Some(r), Some(rate)) = (&self.egress.new_connections, e.max_new_connections_per_sec)
        {
            r.set_rate(rate);
        }
        if let (Some(shared), Some(s)) = (&self.egress.shared, &e.shared) {
            shared.set_budgets(e, s);
        }
    }

    fn assemble(
        config: Config,
        upstreams: Vec<Upstream>,
        (egress, exporter): (Egress, Option<Arc<crate::observe::otlp::Exporter>>),
        log: Arc<AccessLog>,
        metrics: Arc<Metrics>,
        (draining, buffers): (Arc<AtomicBool>, Arc<BufferBudget>),
    ) -> Result<Gateway, BuildError> {
        let tls = match &config.server.tls {
            Some(t) => {
                let h2 = config.server.h2.enabled;
                let built = hopline_tls::server::server_config(t, h2);
                Some(built.map_err(BuildError::ServerTls)?)
            }
            None => None,
        };
        metrics.set_certificates(&certificates(&config));
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let index =
                    |name: &str| upstreams.iter().position(|u| *u.name == *name).unwrap_or(0);
                let action = match &r.action {
                    RouteAction::Proxy { upstream } => Action::Proxy {
                        upstream: index(upstream),
                    },
                    RouteAction::Aggregate(a) => Action::Aggregate(Aggregate {
                        mode: a.mode,
                        calls: a
                            .calls
                            .iter()
                            .map(|c| Call {
                                name: c.name.as_str().into(),
                                upstream: index(&c.upstream),
                                shape: crate::shape::Shape::of_fallback(&c.fallback),
                                config: c.clone(),
                            })
                            .collect(),
                    }),
                };
                Route {
                    name: r.name.as_str().into(),
                    path: r.path.clone(),
                    action,
                    timeout: r.timeout,
                    methods: r.methods.clone(),
                    allow: r.allow_header(),
                    websocket: r.websocket,
                    request_buffering: r.request_buffering,
                    body_read_timeout: r
                        .body_read_timeout
                        .unwrap_or(config.server.body_read_timeout),
                }
            })
            .collect();
        Ok(Gateway {
            config,
            routes,
            upstreams,
            egress,
            exporter,
            log,
            metrics,
            tls,
            ids: RequestIds::new(),
            draining,
            buffers,
        })
    }

    /// Writes the access log line of a finished request and counts it in the metrics.
    pub fn record(&self, rec: &AccessRecord) {
        self.metrics.record(rec);
        self.log.write(rec);
        if let Some(e) = &self.exporter {
            e.record(rec);
        }
    }

    /// Calls in flight per upstream, for the metrics gauge.
    pub fn in_flight(&self) -> Vec<(String, usize)> {
        self.upstreams
            .iter()
            .map(|u| (u.name.to_string(), u.in_flight.current()))
            .collect()
    }

    /// Each upstream's endpoints as the metrics show them.
    pub fn endpoint_samples(&self) -> Vec<crate::observe::metrics::EndpointSample> {
        use crate::upstream::endpoint::State;
        self.upstreams
            .iter()
            .map(|u| {
                let states = u.endpoints.states();
                let count = |st: State| states.iter().filter(|(_, s)| *s == st).count() as i64;
                crate::observe::metrics::EndpointSample {
                    upstream: u.name.to_string(),
                    usable: count(State::Usable),
                    ejected: count(State::Ejected),
                    unhealthy: count(State::Unhealthy),
                    panic: u.endpoints.in_panic(),
                    per_endpoint: if self.config.metrics.per_endpoint {
                        states
                            .iter()
                            .map(|(e, _)| (e.addr.to_string(), e.in_flight() as i64))
                            .collect()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect()
    }

    /// Waits until every upstream's names have been resolved once (or failed), at most
    /// `limit`: so the first requests after a start or reload find their addresses.
    pub async fn settled(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        for u in &self.upstreams {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            u.names.settled(left).await;
        }
        if let Some(shared) = &self.egress.shared {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            shared.settled(left).await;
        }
    }

    /// The shared egress scope as `/metrics` samples it (none without `[egress] shared`).
    pub fn shared_samples(&self) -> Vec<crate::upstream::shared::SharedSample> {
        self.egress.shared.iter().map(|s| s.sample()).collect()
    }

    /// Every upstream's endpoints as `/endpoints` shows them.
    pub fn endpoints_view(&self) -> serde_json::Value {
        let ups: serde_json::Map<String, serde_json::Value> = self
            .upstreams
            .iter()
            .map(|u| {
                let eps: Vec<_> = u
                    .endpoints
                    .states()
                    .iter()
                    .map(|(e, st)| u.endpoints.describe(e, *st))
                    .collect();
                let view = serde_json::json!({
                    "lb": u.config.lb.as_str(),
                    "panic_mode": u.endpoints.in_panic(),
                    "names": u.names.describe(),
                    "endpoints": eps,
                });
                (u.name.to_string(), view)
            })
            .collect();
        serde_json::json!({ "upstreams": ups })
    }

    /// The first route matching `path`.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.path.matches(path))
    }

    /// True once the gateway is draining: responses close their connections.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// A new unique request id (for requests that arrive without `x-request-id`).
    pub fn next_request_id(&self) -> String {
        self.ids.next()
    }
}

#[derive(Debug)]
struct RequestIds {
    seed: u64,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let seed = RandomState::new().hash_one(std::process::id());
        RequestIds {
            seed,
            counter: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Mixing with an odd constant spreads sequential counters over the whole id space.
        let mixed = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ self.seed;
        let mut id = [0; 24];
        put_hex(&mut id[..16], mixed);
        put_hex(&mut id[16..], u64::from(n as u32));
        // Hex digits only, so always valid UTF-8.
        std::str::from_utf8(&id)
            .map(String::from)
            .unwrap_or_default()
    }
}

/// Fills `out` with the low `out.len()` hex digits of `v`, most significant first.
fn put_hex(out: &mut [u8], mut v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for d in out.iter_mut().rev() {
        *d = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// The gateway in force: swapped atomically by a reload; each request takes the one
/// current when it starts and keeps it to the end.
#[derive(Debug)]
pub struct Current(std::sync::RwLock<Arc<Gateway>>);

impl Current {
    /// Starts with `gw`.
    pub fn new(gw: Gateway) -> Arc<Current> {
        Arc::new(Current(std::sync::RwLock::new(Arc::new(gw))))
    }

    /// The gateway in force now.
    pub fn load(&self) -> Arc<Gateway> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `gw` in force for new requests.
    pub fn store(&self, gw: Gateway) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(gw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_24_hex_digits_and_unique() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
        assert!(b.ends_with("00000002"), "{b}");
        let mut s = [0; 8];
        put_hex(&mut s, 0xabc);
        assert_eq!(&s, format!("{:08x}", 0xabc).as_bytes());
    }
}
