//! Prometheus metrics, updated from the same finished record that becomes the access log
//! line — so counters and log agree exactly. Labels are closed sets: route, upstream and
//! call names come from the config, statuses and flags from closed enums; never raw paths.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::limits::BufferKind;
use crate::observe::access_log::AccessRecord;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: String,
    flag: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamOutcome {
    upstream: String,
    zone: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamZone {
    upstream: String,
    zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DegradedLabels {
    route: String,
    call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamReason {
    upstream: String,
    zone: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    listener: String,
    upstream: String,
    subject: String,
}

/// One configured certificate's expiry, for `hopline_tls_cert_not_after_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    /// The TLS listener's address (server certificates), else empty.
    pub listener: String,
    /// The upstream (client certificates), else empty.
    pub upstream: String,
    /// The certificate's subject.
    pub subject: String,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamResult {
    upstream: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamState {
    upstream: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    upstream: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointOutcome {
    upstream: String,
    endpoint: String,
    outcome: &'static str,
}

/// An upstream's endpoints as sampled at a scrape.
#[derive(Debug, Clone, Default)]
pub struct EndpointSample {
    /// The upstream.
    pub upstream: String,
    /// Endpoints by state: usable, ejected, unhealthy.
    pub usable: i64,
    /// Ejected by outlier detection.
    pub ejected: i64,
    /// Failing health checks.
    pub unhealthy: i64,
    /// Balancing over all endpoints (too few usable).
    pub panic: bool,
    /// `(endpoint, in flight)` when `metrics.per_endpoint` is on.
    pub per_endpoint: Vec<(String, i64)>,
}

/// The series about endpoints: their standing, DNS and health checks.
#[derive(Debug, Default)]
struct EndpointFamilies {
    ejections: Family<UpstreamLabel, Counter>,
    states: Family<UpstreamState, Gauge>,
    panic: Family<UpstreamLabel, Gauge>,
    dns: Family<UpstreamResult, Counter>,
    health: Family<UpstreamResult, Counter>,
    requests: Family<EndpointOutcome, Counter>,
    in_flight: Family<EndpointLabel, Gauge>,
}

impl EndpointFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "upstream_endpoint_ejections",
            "Endpoints ejected by outlier detection, by upstream",
            self.ejections.clone(),
        );
        registry.register(
            "upstream_endpoints",
            "Endpoints by upstream and state (usable, ejected, unhealthy)",
            self.states.clone(),
        );
        registry.register(
            "upstream_panic_mode",
            "1 while an upstream balances over all endpoints because fewer than panic_threshold are usable",
            self.panic.clone(),
        );
        registry.register(
            "dns_resolutions",
            "Resolutions of endpoint names, by upstream and result (ok, failed)",
            self.dns.clone(),
        );
        registry.register(
            "health_checks",
            "Active health checks, by upstream and result (passed, failed)",
            self.health.clone(),
        );
        registry.register(
            "endpoint_requests",
            "Attempts by endpoint and outcome (success, failure); only with metrics.per_endpoint",
            self.requests.clone(),
        );
        registry.register(
            "endpoint_in_flight",
            "Requests in flight by endpoint; only with metrics.per_endpoint",
            self.in_flight.clone(),
        );
    }

    fn sample(&self, samples: &[EndpointSample]) {
        self.in_flight.clear();
        for s in samples {
            for (state, n) in [
                ("usable", s.usable),
                ("ejected", s.ejected),
                ("unhealthy", s.unhealthy),
            ] {
                self.states
                    .get_or_create(&UpstreamState {
                        upstream: s.upstream.clone(),
                        state,
                    })
                    .set(n);
            }
            self.panic
                .get_or_create(&UpstreamLabel {
                    upstream: s.upstream.clone(),
                })
                .set(i64::from(s.panic));
            for (endpoint, n) in &s.per_endpoint {
                self.in_flight
                    .get_or_create(&EndpointLabel {
                        upstream: s.upstream.clone(),
                        endpoint: endpoint.clone(),
                    })
                    .set(*n);
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLimit {
    scope: String,
    limit: &'static str,
}

/// The series about shared egress scopes (`[egress] shared`).
#[derive(Debug)]
struct EgressFamilies {
    budget: Family<ScopeLimit, Gauge>,
    local_share: Family<ScopeLimit, Gauge>,
    local: Family<ScopeLabel, Gauge>,
    tokens_on_hand: Family<ScopeLabel, Gauge>,
    slots: Family<ScopeLimit, Gauge>,
    tokens_leased: Family<ScopeLabel, Counter>,
    fallbacks: Family<ScopeLabel, Counter>,
    lease_failures: Family<ScopeLabel, Counter>,
    lease_duration: Family<ScopeLabel, Histogram, fn() -> Histogram>,
}

impl Default for EgressFamilies {
    fn default() -> Self {
        EgressFamilies {
            budget: Family::default(),
            local_share: Family::default(),
            local: Family::default(),
            tokens_on_hand: Family::default(),
            slots: Family::default(),
            tokens_leased: Family::default(),
            fallbacks: Family::default(),
            lease_failures: Family::default(),
            lease_duration: Family::new_with_constructor(lease_histogram as fn() -> Histogram),
        }
    }
}

/// Lease calls take well under a millisecond on a LAN: buckets from 50 µs.
fn lease_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 14))
}

impl EgressFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "egress_shared_budget",
            "A shared egress scope's cluster-wide budget, by limit (new_connections_per_sec, in_flight)",
            self.budget.clone(),
        );
        registry.register(
            "egress_shared_local_share",
            "This gateway's share of a scope's budget when Redis is unreachable (budget / expected_replicas)",
            self.local_share.clone(),
        );
        registry.register(
            "egress_shared_local",
            "1 while this gateway runs on its local share because Redis is unreachable",
            self.local.clone(),
        );
        registry.register(
            "egress_shared_tokens_on_hand",
            "New-connection tokens this gateway has leased and not used yet",
            self.tokens_on_hand.clone(),
        );
        registry.register(
            "egress_shared_slots",
            "In-flight slots of a scope this gateway holds (state=held: in use plus spare) and uses (state=in_use)",
            self.slots.clone(),
        );
        registry.register(
            "egress_shared_tokens_leased",
            "New-connection tokens leased from a scope (its rate is this gateway's share of the cluster's)",
            self.tokens_leased.clone(),
        );
        registry.register(
            "egress_shared_fallbacks",
            "Switches from a scope's cluster-wide budget to the local share",
            self.fallbacks.clone(),
        );
        registry.register(
            "egress_shared_lease_failures",
            "Lease calls to Redis that failed or took longer than fallback_after",
            self.lease_failures.clone(),
        );
        registry.register(
            "egress_shared_lease_duration_seconds",
            "Lease calls to Redis that were answered, round trip",
            self.lease_duration.clone(),
        );
    }

    fn sample(&self, samples: &[SharedSample]) {
        for s in samples {
            let label = ScopeLabel {
                scope: s.scope.clone(),
            };
            let limit = |limit| ScopeLimit {
                scope: s.scope.clone(),
                limit,
            };
            for (name, budget, local) in [
                (
                    "new_connections_per_sec",
                    s.rate_budget as i64,
                    s.local_rate as i64,
                ),
                (
                    "in_flight",
                    s.in_flight_budget as i64,
                    s.local_in_flight as i64,
                ),
            ] {
                if budget > 0 {
                    self.budget.get_or_create(&limit(name)).set(budget);
                    self.local_share.get_or_create(&limit(name)).set(local);
                }
            }
            self.local.get_or_create(&label).set(i64::from(s.local));
            self.tokens_on_hand
                .get_or_create(&label)
                .set(i64::from(s.tokens_on_hand));
            self.slots
                .get_or_create(&limit("held"))
                .set(s.slots_held as i64);
            self.slots
                .get_or_create(&limit("in_use"))
                .set(s.slots_used as i64);
        }
    }
}

/// Handles of the series a request touches, kept so that counting a request is a lookup by
/// name with no label allocation (the families still own and export every series).
#[derive(Debug, Default)]
struct Hot {
    routes: Named<RouteSeries>,
    /// Per upstream name, its series by zone.
    upstreams: Named<Vec<UpstreamSeries>>,
}

/// Values by name: one hash lookup when the name is known, an insert the first time.
#[derive(Debug)]
struct Named<V> {
    index: HashMap<Box<str>, usize, NameHash>,
    values: Vec<V>,
}

impl<V> Default for Named<V> {
    fn default() -> Self {
        Named {
            index: HashMap::default(),
            values: Vec::new(),
        }
    }
}

impl<V> Named<V> {
    fn get_or_make(&mut self, name: &str, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.values.push(make());
                self.index.insert(name.into(), self.values.len() - 1);
                self.values.len() - 1
            }
        };
        &mut self.values[i]
    }
}

/// The element of `items` for which `is` holds, pushed by `make` the first time (for the
/// few statuses, flags, zones and outcomes one route or upstream sees).
fn find_or_push<T>(
    items: &mut Vec<T>,
    is: impl Fn(&T) -> bool,
    make: impl FnOnce() -> T,
) -> &mut T {
    let i = match items.iter().position(is) {
        Some(i) => i,
        None => {
            items.push(make());
            items.len() - 1
        }
    };
    &mut items[i]
}

/// A fast hash for the maps above, whose keys are route and upstream names from the config
/// (never client input, so SipHash's flooding resistance buys nothing there).
#[derive(Debug, Default, Clone, Copy)]
struct NameHash;

impl std::hash::BuildHasher for NameHash {
    type Hasher = NameHasher;
    fn build_hasher(&self) -> NameHasher {
        NameHasher(0)
    }
}

/// FxHash-style: rotate, xor, multiply per 8-byte word.
#[derive(Debug)]
struct NameHasher(u64);

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug)]
struct RouteSeries {
    duration: Histogram,
    cancelled: Option<Counter>,
    requests: Vec<(u16, &'static str, Counter)>,
}

impl RouteSeries {
    fn requests(
        &mut self,
        family: &Family<RequestLabels, Counter>,
        route: &str,
        status: u16,
        flag: &'static str,
    ) -> &Counter {
        let (_, _, counter) = find_or_push(
            &mut self.requests,
            |(s, f, _)| *s == status && *f == flag,
            || {
                let c = family.get_or_create(&RequestLabels {
                    route: route.to_string(),
                    status: status.to_string(),
                    flag: flag.to_string(),
                });
                (status, flag, c.clone())
            },
        );
        counter
    }
}

#[derive(Debug)]
struct UpstreamSeries {
    zone: &'static str,
    duration: Histogram,
    outcomes: Vec<(&'static str, Counter)>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// One open client connection in `hopline_downstream_connections`; dropping it closes it.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All of the gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    upstream_requests: Family<UpstreamOutcome, Counter>,
    upstream_duration: Family<UpstreamZone, Histogram, fn() -> Histogram>,
    upstream_in_flight: Family<UpstreamLabel, Gauge>,
    downstream_connections: Gauge,
    degraded: Family<DegradedLabels, Counter>,
    cancelled: Family<RouteLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
    tracing_spans: Family<ResultLabel, Counter>,
    tracing_unsampled: Counter,
    /// The exporter's counts at the last scrape (exported, dropped, failed, unsampled).
    tracing_seen: Mutex<[u64; 4]>,
    h2_premature_resets: Counter,
    buffer_refused: Family<KindLabel, Counter>,
    queue: Family<QueueLabel, Counter>,
    queue_duration: Family<UpstreamLabel, Histogram, fn() -> Histogram>,
    buffered: Gauge,
    buffer_budget: Gauge,
    access_log_dropped: Counter,
    /// The access log's dropped count at the last scrape.
    access_log_seen: AtomicU64,
    refused: Counter,
    tls_errors: Family<ReasonLabel, Counter>,
    tls_handshake: Histogram,
    upstream_tls_errors: Family<UpstreamReason, Counter>,
    upstream_tls_handshake: Family<UpstreamZone, Histogram, fn() -> Histogram>,
    cert_not_after: Family<CertLabels, Gauge>,
    connections: AtomicI64,
    hot: Mutex<Hot>,
    endpoints: EndpointFamilies,
    egress: EgressFamilies,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `hopline_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hopline");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        let upstream_requests = Family::<UpstreamOutcome, Counter>::default();
        let upstream_duration =
            Family::<UpstreamZone, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        let upstream_in_flight = Family::<UpstreamLabel, Gauge>::default();
        let downstream_connections = Gauge::default();
        let degraded = Family::<DegradedLabels, Counter>::default();
        let cancelled = Family::<RouteLabel, Counter>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let tracing_spans = Family::<ResultLabel, Counter>::default();
        registry.register(
            "tracing_spans",
            "Spans of sampled requests by result: exported, dropped (the export queue was full), failed (the collector refused them or could not be reached)",
            tracing_spans.clone(),
        );
        let tracing_unsampled = Counter::default();
        registry.register(
            "tracing_unsampled",
            "Requests that would have been sampled, recorded as unsampled: their worker had sampled tracing.max_sampled_per_sec in that second",
            tracing_unsampled.clone(),
        );
        let h2_premature_resets = Counter::default();
        registry.register(
            "h2_premature_resets",
            "HTTP/2 streams the client reset within 1 s of their being accepted; over half of at least 100 on a connection ends it with GOAWAY ENHANCE_YOUR_CALM",
            h2_premature_resets.clone(),
        );
        let buffer_refused = Family::<KindLabel, Counter>::default();
        for kind in BufferKind::ALL {
            let _ = buffer_refused.get_or_create(&KindLabel {
                kind: kind.as_str(),
            });
        }
        registry.register(
            "buffer_budget_refused",
            "Requests refused (503 OM) because server.max_buffered_bytes could not hold their buffer, by kind: request_body, replay, aggregate, h2_data",
            buffer_refused.clone(),
        );
        let queue = Family::<QueueLabel, Counter>::default();
        registry.register(
            "upstream_queue",
            "Requests that found an upstream's max_in_flight full, by outcome: served (got a slot), full (max_pending already waiting), expected_wait (would not get one within its deadline: refused at once), expired (waited until its deadline), client_gone",
            queue.clone(),
        );
        let queue_duration =
            Family::<UpstreamLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        registry.register(
            "upstream_queue_duration_seconds",
            "How long requests served from an upstream's queue waited for their slot",
            queue_duration.clone(),
        );
        let buffered = Gauge::default();
        registry.register(
            "buffered_bytes",
            "Bytes held now in buffers that draw from server.max_buffered_bytes",
            buffered.clone(),
        );
        let buffer_budget = Gauge::default();
        registry.register(
            "buffer_budget_bytes",
            "server.max_buffered_bytes",
            buffer_budget.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the output (stdout, the file) did not keep up and the writer's queue was full; requests = access log lines + these",
            access_log_dropped.clone(),
        );
        registry.register(
            "requests",
            "Requests by route, status and flag (one per access log line)",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request duration by route",
            request_duration.clone(),
        );
        registry.register(
            "upstream_requests",
            "Upstream calls by upstream, zone and outcome",
            upstream_requests.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Upstream call duration",
            upstream_duration.clone(),
        );
        registry.register(
            "upstream_in_flight",
            "Upstream calls in flight",
            upstream_in_flight.clone(),
        );
        registry.register(
            "downstream_connections",
            "Open client connections",
            downstream_connections.clone(),
        );
        registry.register(
            "degraded",
            "Aggregate calls served from their fallback",
            degraded.clone(),
        );
        registry.register(
            "cancelled",
            "Requests whose client left before the response (499)",
            cancelled.clone(),
        );
        registry.register("config_reload", "Config reloads by result", reloads.clone());
        let refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because max_connections was reached (server.overload = \"close\")",
            refused.clone(),
        );
        let tls_errors = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "tls_handshake_errors",
            "Client TLS handshakes that failed, by reason (timeout, plain_http, protocol, io, ...)",
            tls_errors.clone(),
        );
        let tls_handshake = latency_histogram();
        registry.register(
            "tls_handshake_duration_seconds",
            "Client TLS handshake duration, from accept",
            tls_handshake.clone(),
        );
        let upstream_tls_errors = Family::<UpstreamReason, Counter>::default();
        registry.register(
            "upstream_tls_handshake_errors",
            "Upstream TLS handshakes that failed, by upstream, zone and reason (timeout, cert_expired, cert_wrong_name, unknown_issuer, ...)",
            upstream_tls_errors.clone(),
        );
        let upstream_tls_handshake =
            Family::<UpstreamZone, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        registry.register(
            "upstream_tls_handshake_duration_seconds",
            "Upstream TLS handshake duration (after the TCP connect)",
            upstream_tls_handshake.clone(),
        );
        let cert_not_after = Family::<CertLabels, Gauge>::default();
        registry.register(
            "tls_cert_not_after_seconds",
            "Expiry (notAfter, Unix seconds) of every configured certificate: the listener's (listener label) and upstream client certificates (upstream label)",
            cert_not_after.clone(),
        );
        let endpoints = EndpointFamilies::default();
        endpoints.register(&mut registry);
        let egress = EgressFamilies::default();
        egress.register(&mut registry);
        Metrics {
            endpoints,
            egress,
            registry,
            tls_errors,
            tls_handshake,
            upstream_tls_errors,
            upstream_tls_handshake,
            cert_not_after,
            requests,
            request_duration,
            upstream_requests,
            upstream_duration,
            upstream_in_flight,
            downstream_connections,
            degraded,
            cancelled,
            reloads,
            tracing_spans,
            tracing_unsampled,
            tracing_seen: Mutex::new([0; 4]),
            h2_premature_resets,
            buffer_refused,
            queue,
            queue_duration,
            buffered,
            buffer_budget,
            access_log_dropped,
            access_log_seen: AtomicU64::new(0),
            refused,
            connections: AtomicI64::new(0),
            hot: Mutex::new(Hot::default()),
        }
    }

    /// Counts one finished request, from its access log record.
    pub fn record(&self, rec: &AccessRecord) {
        let flag = rec.flags.first().copied().unwrap_or("");
        let secs = rec.duration.as_secs_f64();
        let mut hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
        let route_name = rec
            .route
            .as_deref()
            .unwrap_or(crate::observe::access_log::NO_ROUTE);
        let route = self.route_series(&mut hot, route_name);
        route
            .requests(&self.requests, route_name, rec.status, flag)
            .inc();
        route.duration.observe(secs);
        if rec.status == 499 {
            route
                .cancelled
                .get_or_insert_with(|| {
                    self.cancelled
                        .get_or_create(&RouteLabel {
                            route: route_name.to_string(),
                        })
                        .clone()
                })
                .inc();
        }
        if rec.calls.is_empty() {
            if let (Some(up), Some(zone)) = (&rec.upstream, rec.zone) {
                if rec.attempts > 0 || !flag.is_empty() {
                    let outcome = outcome(rec.upstream_status, flag, rec.status == 499);
                    self.upstream(&mut hot, up, zone, outcome, secs);
                }
            }
        }
        for c in &rec.calls {
            if c.fallback {
                self.degraded
                    .get_or_create(&DegradedLabels {
                        route: route_name.to_string(),
                        call: c.name.to_string(),
                    })
                    .inc();
            }
            if c.attempts > 0 {
                let cancelled =
                    rec.status == 499 && c.state != crate::observe::access_log::CallState::Done;
                let failure = if c.status.is_none() && c.cause.is_some() {
                    "failed"
                } else {
                    ""
                };
                self.upstream(
                    &mut hot,
                    &c.upstream,
                    c.zone,
                    outcome(c.status, failure, cancelled),
                    c.duration.as_secs_f64(),
                );
            }
        }
    }

    fn route_series<'h>(&self, hot: &'h mut Hot, route: &str) -> &'h mut RouteSeries {
        hot.routes.get_or_make(route, || RouteSeries {
            duration: self
                .request_duration
                .get_or_create(&RouteLabel {
                    route: route.to_string(),
                })
                .clone(),
            cancelled: None,
            requests: Vec::new(),
        })
    }

    fn upstream(
        &self,
        hot: &mut Hot,
        upstream: &str,
        zone: &'static str,
        outcome: &'static str,
        secs: f64,
    ) {
        let zones = hot.upstreams.get_or_make(upstream, Vec::new);
        let series = find_or_push(
            zones,
            |z| z.zone == zone,
            || UpstreamSeries {
                zone,
                duration: self
                    .upstream_duration
                    .get_or_create(&UpstreamZone {
                        upstream: upstream.to_string(),
                        zone: zone.to_string(),
                    })
                    .clone(),
                outcomes: Vec::new(),
            },
        );
        let (_, counter) = find_or_push(
            &mut series.outcomes,
            |(o, _)| *o == outcome,
            || {
                let c = self.upstream_requests.get_or_create(&UpstreamOutcome {
                    upstream: upstream.to_string(),
                    zone: zone.to_string(),
                    outcome: outcome.to_string(),
                });
                (outcome, c.clone())
            },
        );
        counter.inc();
        series.duration.observe(secs);
    }

    /// Counts a config reload.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    /// Counts one open client connection until the guard is dropped (also when its task
    /// panics or is aborted), so the gauge cannot leak.
    pub fn open_connection(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            metrics: self.clone(),
        }
    }

    /// Counts a connection refused because `max_connections` was reached.
    pub fn connection_refused(&self) {
        self.refused.inc();
    }

    /// Counts a failed client TLS handshake.
    pub fn tls_handshake_failed(&self, reason: &str) {
        self.tls_errors
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Observes a completed client TLS handshake.
    pub fn tls_handshake_done(&self, took: std::time::Duration) {
        self.tls_handshake.observe(took.as_secs_f64());
    }

    /// Counts a failed upstream TLS handshake.
    pub fn upstream_tls_failed(&self, upstream: &str, zone: &str, reason: &str) {
        self.upstream_tls_errors
            .get_or_create(&UpstreamReason {
                upstream: upstream.to_string(),
                zone: zone.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Observes a completed upstream TLS handshake.
    pub fn upstream_tls_done(&self, upstream: &str, zone: &str, took: std::time::Duration) {
        self.upstream_tls_handshake
            .get_or_create(&UpstreamZone {
                upstream: upstream.to_string(),
                zone: zone.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Replaces the certificate expiry gauges with `certs` (at start and every reload).
    pub fn set_certificates(&self, certs: &[CertExpiry]) {
        self.cert_not_after.clear();
        for c in certs {
            self.cert_not_after
                .get_or_create(&CertLabels {
                    listener: c.listener.clone(),
                    upstream: c.upstream.clone(),
                    subject: c.subject.clone(),
                })
                .set(c.not_after);
        }
    }

    /// Open client connections now.
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts an ejection from `upstream`.
    pub fn endpoint_ejected(&self, upstream: &str) {
        self.endpoints
            .ejections
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_string(),
            })
            .inc();
    }

    /// Counts a resolution of one of `upstream`'s names.
    pub fn dns_resolution(&self, upstream: &str, ok: bool) {
        self.endpoints
            .dns
            .get_or_create(&UpstreamResult {
                upstream: upstream.to_string(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// Counts an active health check of one of `upstream`'s endpoints.
    pub fn health_check(&self, upstream: &str, passed: bool) {
        self.endpoints
            .health
            .get_or_create(&UpstreamResult {
                upstream: upstream.to_string(),
                result: if passed { "passed" } else { "failed" },
            })
            .inc();
    }

    /// Removes an endpoint's series (`metrics.per_endpoint`) when it leaves its upstream
    /// (DNS no longer names it): a name that churns addresses must not grow the scrape.
    pub fn forget_endpoint(&self, upstream: &str, endpoint: SocketAddr) {
        for outcome in ["success", "failure"] {
            self.endpoints.requests.remove(&EndpointOutcome {
                upstream: upstream.to_string(),
                endpoint: endpoint.to_string(),
                outcome,
            });
        }
        self.endpoints.in_flight.remove(&EndpointLabel {
            upstream: upstream.to_string(),
            endpoint: endpoint.to_string(),
        });
    }

    /// Counts an attempt's outcome on an endpoint (`metrics.per_endpoint`).
    pub fn endpoint_outcome(&self, upstream: &str, endpoint: SocketAddr, outcome: &'static str) {
        self.endpoints
            .requests
            .get_or_create(&EndpointOutcome {
                upstream: upstream.to_string(),
                endpoint: endpoint.to_string(),
                outcome,
            })
            .inc();
    }

    /// Brings `hopline_tracing_spans_total` and `hopline_tracing_unsampled_total` up to the
    /// exporter's counts.
    pub fn sample_tracing(&self, stats: &crate::observe::otlp::ExportStats) {
        let now = [
            stats.exported.load(Ordering::Relaxed),
            stats.dropped.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
            stats.unsampled.load(Ordering::Relaxed),
        ];
        let mut seen = self.tracing_seen.lock().unwrap_or_else(|p| p.into_inner());
        for (i, result) in ["exported", "dropped", "failed"].into_iter().enumerate() {
            let label = ResultLabel {
                result: result.into(),
            };
            self.tracing_spans
                .get_or_create(&label)
                .inc_by(now[i].saturating_sub(seen[i]));
        }
        self.tracing_unsampled
            .inc_by(now[3].saturating_sub(seen[3]));
        *seen = now;
    }

    /// Counts an HTTP/2 stream the client reset soon after it was accepted.
    pub fn count_h2_premature_reset(&self) {
        self.h2_premature_resets.inc();
    }

    /// Counts a request refused because `server.max_buffered_bytes` could not hold its
    /// buffer of `kind`.
    pub fn count_buffer_refused(&self, kind: BufferKind) {
        self.buffer_refused
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts a request that found `upstream`'s `max_in_flight` full, by what became of it.
    pub fn count_queue(&self, upstream: &str, outcome: &'static str) {
        self.queue
            .get_or_create(&QueueLabel {
                upstream: upstream.to_string(),
                outcome,
            })
            .inc();
    }

    /// Notes how long a request served from `upstream`'s queue waited.
    pub fn queue_waited(&self, upstream: &str, waited: std::time::Duration) {
        self.queue_duration
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_string(),
            })
            .observe(waited.as_secs_f64());
    }

    /// Sets the buffer budget's gauges (read at each scrape).
    pub fn sample_buffers(&self, used: usize, limit: usize) {
        self.buffered.set(i64::try_from(used).unwrap_or(i64::MAX));
        self.buffer_budget
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// Brings `hopline_access_log_dropped_total` up to the access log's count (read at
    /// each scrape, so the log's writer counts with one atomic, not a metric).
    pub fn sample_access_log(&self, dropped: u64) {
        let seen = self.access_log_seen.swap(dropped, Ordering::Relaxed);
        self.access_log_dropped.inc_by(dropped.saturating_sub(seen));
    }

    /// Counts a switch of `scope` to its local share.
    pub fn count_egress_fallback(&self, scope: &str) {
        let label = ScopeLabel {
            scope: scope.into(),
        };
        self.egress.fallbacks.get_or_create(&label).inc();
    }

    /// Records a lease call to `scope`'s Redis: its round trip when answered, else a
    /// failure; and the tokens it granted.
    pub fn record_egress_lease(&self, scope: &str, took: Option<std::time::Duration>, tokens: u32) {
        let label = ScopeLabel {
            scope: scope.into(),
        };
        match took {
            Some(t) => self
                .egress
                .lease_duration
                .get_or_create(&label)
                .observe(t.as_secs_f64()),
            None => {
                self.egress.lease_failures.get_or_create(&label).inc();
            }
        }
        if tokens > 0 {
            self.egress
                .tokens_leased
                .get_or_create(&label)
                .inc_by(u64::from(tokens));
        }
    }

    /// The text exposition, with gauges sampled now. `in_flight` lists (upstream, calls);
    /// `endpoints` each upstream's endpoints; `shared` the shared egress scope, if any.
    pub fn encode(
        &self,
        in_flight: &[(String, usize)],
        endpoints: &[EndpointSample],
        shared: &[SharedSample],
    ) -> String {
        self.endpoints.sample(endpoints);
        self.egress.sample(shared);
        self.downstream_connections
            .set(self.connections.load(Ordering::Relaxed));
        for (up, n) in in_flight {
            self.upstream_in_flight
                .get_or_create(&UpstreamLabel {
                    upstream: up.clone(),
                })
                .set(*n as i64);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        to_prometheus_text(&out)
    }
}

/// Content type of [`Metrics::encode`]'s output.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Turns OpenMetrics text into the classic Prometheus text format (0.0.4) that every
/// scraper and `promtool check metrics` accept: counter families are named with their
/// `_total` suffix in `HELP`/`TYPE`, and there is no `# EOF`.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: Vec<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 64);
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let name = rest.split(' ').next().unwrap_or("");
                if counters.contains(&name) {
                    out.push_str(kind);
                    out.push_str(name);
                    out.push_str("_total");
                    out.push_str(&rest[name.len()..]);
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `2xx`..`5xx` when the upstream answered, the failure's flag when it did not,
/// `cancelled` when the client left first.
fn outcome(status: Option<u16>, flag: &'static str, cancelled: bool) -> &'static str {
    const CLASSES: [&str; 10] = [
        "0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
    ];
    match (status, cancelled) {
        (_, true) => "cancelled",
        (Some(s), false) => CLASSES[usize::from(s / 100).min(9)],
        (None, false) if !flag.is_empty() => flag,
        (None, false) => "failed",
    }
}

/// This gateway's part in a shared scope, as `/metrics` and `/config` show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedSample {
    /// The scope.
    pub scope: String,
    /// The scope's new connections per second (0: not limited).
    pub rate_budget: u32,
    /// The scope's in-flight slots (0: not limited).
    pub in_flight_budget: usize,
    /// True while the local share is in force (Redis unreachable).
    pub local: bool,
    /// Connection tokens on hand.
    pub tokens_on_hand: u32,
    /// Connection tokens leased since start.
    pub tokens_leased: u64,
    /// In-flight slots held from the scope (in use plus spare).
    pub slots_held: usize,
    /// In-flight slots in use.
    pub slots_used: usize,
    /// The local shares that apply when Redis is unreachable.
    pub local_rate: u32,
    /// See `local_rate`.
    pub local_in_flight: usize,
    /// Switches to the local share since start.
    pub fallbacks: u64,
    /// Lease calls that failed or were too slow.
    pub lease_failures: u64,
}
