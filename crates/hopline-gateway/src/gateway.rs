//! The gateway's runtime state built from a validated config: routes, upstreams, limits, log.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hopline_core::config::{AggregateMode, CallConfig, Config, PathMatch, RouteAction};

use crate::access_log::{AccessLog, AccessRecord};
use crate::limits::{InFlight, RateLimit};
use crate::metrics::Metrics;
use crate::upstream::{Egress, ResolveError, Upstream};

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
}

/// Why the gateway could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An endpoint did not resolve.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The access log could not be opened.
    #[error("cannot open access log")]
    AccessLog(#[source] io::Error),
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
    /// The access log.
    pub log: Arc<AccessLog>,
    /// Metrics (shared across reloads).
    pub metrics: Arc<Metrics>,
    ids: RequestIds,
    draining: Arc<AtomicBool>,
}

impl Gateway {
    /// Builds the runtime state: resolves endpoints, opens the access log.
    pub fn new(config: Config) -> Result<Gateway, BuildError> {
        let log = AccessLog::open(&config.log).map_err(BuildError::AccessLog)?;
        Self::build(
            config,
            Arc::new(log),
            Arc::new(Metrics::new()),
            Arc::new(AtomicBool::new(false)),
        )
    }

    /// A gateway for a reloaded config: new routes, upstreams and pools; the same access
    /// log, metrics and draining state. (`[log]` and `listen` changes need a restart.)
    pub fn reloaded(&self, config: Config) -> Result<Gateway, BuildError> {
        Self::build(
            config,
            self.log.clone(),
            self.metrics.clone(),
            self.draining.clone(),
        )
    }

    fn build(
        config: Config,
        log: Arc<AccessLog>,
        metrics: Arc<Metrics>,
        draining: Arc<AtomicBool>,
    ) -> Result<Gateway, BuildError> {
        let rb = &config.retry_budget;
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u.clone(), rb.ratio, rb.min_per_sec))
            .collect::<Result<Vec<_>, _>>()?;
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
                }
            })
            .collect();
        let egress = Egress {
            in_flight: config
                .egress
                .as_ref()
                .and_then(|e| e.max_in_flight)
                .map(InFlight::new),
            new_connections: config
                .egress
                .as_ref()
                .and_then(|e| e.max_new_connections_per_sec)
                .map(RateLimit::new),
        };
        Ok(Gateway {
            config,
            routes,
            upstreams,
            egress,
            log,
            metrics,
            ids: RequestIds::new(),
            draining,
        })
    }

    /// Writes the access log line of a finished request and counts it in the metrics.
    pub fn record(&self, rec: &AccessRecord) {
        self.metrics.record(rec);
        self.log.write(rec);
    }

    /// Calls in flight per upstream, for the metrics gauge.
    pub fn in_flight(&self) -> Vec<(String, usize)> {
        self.upstreams
            .iter()
            .map(|u| (u.name.to_string(), u.in_flight.current()))
            .collect()
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
        let mut id = String::with_capacity(24);
        push_hex(&mut id, mixed, 16);
        push_hex(&mut id, u64::from(n as u32), 8);
        id
    }
}

/// Appends the low `digits` hex digits of `v`, zero-padded (as `{:0digits$x}` would).
fn push_hex(out: &mut String, v: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((v >> (4 * i)) & 0xf) as usize]));
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
        let mut s = String::new();
        push_hex(&mut s, 0xabc, 8);
        assert_eq!(s, format!("{:08x}", 0xabc));
    }
}
