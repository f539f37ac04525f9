//! Upstreams: endpoints chosen by the upstream's `lb`, pooled keep-alive connections,
//! bounded connects.
//!
//! A connection is owned by exactly one request while in use. Nothing runs in the
//! background for it: if the request's future is dropped (client gone), the socket is
//! dropped with it and the upstream sees its connection closed at once. Only connections
//! whose response was read to the end cleanly go back to the pool.

// The upstreams' own parts, below the exchange layer: endpoints and their pools, DNS
// discovery, health checks, the shared egress budget.
pub(crate) mod discovery;
pub(crate) mod endpoint;
mod error;
pub(crate) mod health;
pub mod shared;

pub use error::UpstreamBuildError;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use hopline_core::config::{DnsConfig, UpstreamConfig, UpstreamProtocol, Zone};
use hopline_core::{Overflow, Phase, ProxyError, TimeoutSource, UpstreamError, UpstreamErrorKind};

use crate::body::{write_h1, RequestBody, Upload};
use crate::clock::Deadline;
use hopline_h1::{BodyDecoder, BodyError, HeadError, ResponseHead};
use std::pin::pin;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::{InFlight, InFlightGuard, RateLimit, RetryBudget};
use crate::observe::metrics::Metrics;
use crate::stream::{Stream, UpstreamStream};
use crate::upstream::endpoint::{
    Endpoint, EndpointGuard, EndpointSet, H2Conn, H2Stream, IdleConn, NoEndpoint,
};
use crate::upstream::shared::{SharedEgress, SharedSlot};
use discovery::Names;

/// Told of each step a new connection reaches (`TLS handshake`, the HTTP/2 handshake), so
/// a request cut off while connecting can say which step it was waiting in.
pub(crate) type PhaseNote<'a> = &'a (dyn Fn(Phase) + Sync);

/// Limits shared by every egress upstream (one NAT gateway in front of all of them).
#[derive(Debug, Default)]
pub struct Egress {
    /// `[egress] max_in_flight` (this gateway's own; `None` when `shared`).
    pub in_flight: Option<Arc<InFlight>>,
    /// `[egress] max_new_connections_per_sec` (this gateway's own; `None` when `shared`).
    pub new_connections: Option<Arc<RateLimit>>,
    /// `[egress] shared`: both limits cluster-wide, through Redis.
    pub shared: Option<Arc<SharedEgress>>,
}

/// An egress call's in-flight slot, given back when dropped.
#[derive(Debug)]
pub enum EgressSlot {
    /// One of this gateway's own `[egress] max_in_flight`.
    Local(InFlightGuard),
    /// One held from the shared scope.
    Shared(SharedSlot),
}

impl Egress {
    /// An in-flight slot for an egress call, waiting for one of `[egress] max_in_flight`'s
    /// in its queue (at most `max_pending` waiting, until `until`, refused at once when the
    /// expected wait is beyond it; `max_pending` 0: no wait) when they are all taken.
    pub async fn slot_within(
        &self,
        since: Instant,
        max_pending: usize,
        until: Instant,
    ) -> Result<Option<EgressSlot>, Overflow> {
        let (Some(limit), None) = (&self.in_flight, &self.shared) else {
            return self.slot();
        };
        if let Some(guard) = limit.take_now(since) {
            return Ok(Some(EgressSlot::Local(guard)));
        }
        if max_pending == 0 {
            return Err(Overflow::EgressInFlight {
                limit: limit.limit(),
            });
        }
        match Box::pin(limit.acquire(Instant::now(), max_pending, until)).await {
            Ok(guard) => Ok(Some(EgressSlot::Local(guard))),
            Err(why) => Err(Overflow::EgressQueued {
                limit: limit.limit(),
                why,
            }),
        }
    }

    /// An in-flight slot for an egress call (`None` when egress calls are not limited),
    /// or the overflow that refuses it.
    pub fn slot(&self) -> Result<Option<EgressSlot>, Overflow> {
        if let Some(shared) = &self.shared {
            return match shared.acquire() {
                Ok(slot) => Ok(slot.map(EgressSlot::Shared)),
                Err(refusal) => Err(Overflow::EgressShared {
                    scope: shared.scope().into(),
                    refusal,
                }),
            };
        }
        match &self.in_flight {
            Some(limit) => match limit.try_acquire() {
                Some(guard) => Ok(Some(EgressSlot::Local(guard))),
                None => Err(Overflow::EgressInFlight {
                    limit: limit.limit(),
                }),
            },
            None => Ok(None),
        }
    }

    /// A new-connection token for `upstream` (egress): now, or (the local rate) the
    /// instant the next one is promised, when that comes by `until`; else the overflow that
    /// refuses it.
    fn take_new_connection(
        &self,
        upstream: &Arc<str>,
        until: Instant,
    ) -> Result<Option<Instant>, Overflow> {
        if let Some(shared) = &self.shared {
            return shared.take_connection().map(|()| None).map_err(|refusal| {
                Overflow::EgressShared {
                    scope: shared.scope().into(),
                    refusal,
                }
            });
        }
        match &self.new_connections {
            Some(rate) => match rate.reserve(until) {
                Some(at) => Ok(Some(at)),
                None => Err(Overflow::EgressConnectionRate {
                    upstream: upstream.clone(),
                    limit: rate.rate(),
                }),
            },
            None => Ok(None),
        }
    }
}

/// One configured upstream with its pools and limits.
#[derive(Debug)]
pub struct Upstream {
    /// Name from the config.
    pub name: Arc<str>,
    /// Its settings.
    pub config: UpstreamConfig,
    /// Calls in flight.
    pub in_flight: Arc<InFlight>,
    /// Retry budget.
    pub budget: Arc<RetryBudget>,
    /// The endpoints and their standing.
    pub endpoints: Arc<EndpointSet>,
    /// The names among the configured endpoints, and how their resolution stands.
    pub names: Arc<Names>,
    next: AtomicUsize,
    /// TLS client settings, when the upstream speaks TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The `[dns]` settings its names are resolved with.
    dns: DnsConfig,
    /// In process tests: connections are opened on this in-memory network, not TCP.
    #[cfg(test)]
    pub(crate) memory: Option<Arc<crate::testkit::MemoryNet>>,
}

/// A transport just opened, before TLS.
enum Dialed {
    Tcp(TcpStream),
    #[cfg(test)]
    Memory(tokio::io::DuplexStream),
}

/// A connection to an upstream endpoint, owned by one request at a time.
#[derive(Debug)]
pub struct ClientConn {
    stream: UpstreamStream,
    buf: BytesMut,
    endpoint: Arc<Endpoint>,
    /// The endpoint address.
    pub addr: SocketAddr,
    /// True when taken from the pool (it may have been closed by the upstream meanwhile).
    pub reused: bool,
    /// How long it had been idle in the pool (pooled connections).
    pub idle: Option<Duration>,
    /// Some response byte arrived on this exchange (an interim 1xx counts).
    received: bool,
}

/// How sending a request while reading its response head failed.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// Writing the request failed, and no response head could be read after it.
    Send(io::Error),
    /// Reading the response head failed.
    Read(HeadError),
    /// The client's side of a streamed body failed (too large, too slow, gone): the
    /// exchange was abandoned and the request is answered with this error.
    Client(ProxyError),
}

/// What every upstream is built with besides its own settings.
#[derive(Debug, Clone)]
pub struct UpstreamContext {
    /// `[retry_budget] ratio`.
    pub ratio: f64,
    /// `[retry_budget] min_per_sec`.
    pub min_per_sec: u32,
    /// `[dns]`.
    pub dns: DnsConfig,
    /// `[metrics] per_endpoint`.
    pub per_endpoint_metrics: bool,
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// The access log (endpoint events are written to it).
    pub log: Arc<crate::observe::access_log::AccessLog>,
}

impl UpstreamContext {
    /// The context of `config`'s upstreams.
    pub fn of(
        config: &hopline_core::config::Config,
        metrics: Arc<Metrics>,
        log: Arc<crate::observe::access_log::AccessLog>,
    ) -> Self {
        UpstreamContext {
            ratio: config.retry_budget.ratio,
            min_per_sec: config.retry_budget.min_per_sec,
            dns: config.dns.clone(),
            per_endpoint_metrics: config.metrics.per_endpoint,
            metrics,
            log,
        }
    }
}

impl Upstream {
    /// Builds the upstream: its IP endpoints at once; its names resolved in the
    /// background (inside a Tokio runtime), and its health checks started if configured.
    pub fn new(config: UpstreamConfig, cx: &UpstreamContext) -> Result<Self, UpstreamBuildError> {
        let tls = Self::tls(&config)?;
        let (endpoints, names) = Self::members(&config, &tls, cx)?;
        Ok(Upstream {
            name: config.name.as_str().into(),
            in_flight: InFlight::new(config.max_in_flight),
            budget: Arc::new(RetryBudget::new(cx.ratio, cx.min_per_sec)),
            endpoints,
            names,
            next: AtomicUsize::new(0),
            tls,
            dns: cx.dns.clone(),
            #[cfg(test)]
            memory: None,
            config,
        })
    }

    fn tls(
        config: &UpstreamConfig,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, UpstreamBuildError> {
        config
            .tls
            .as_ref()
            .map(|t| {
                hopline_tls::client::client_config(t).map_err(|source| UpstreamBuildError::Tls {
                    upstream: config.name.clone(),
                    source,
                })
            })
            .transpose()
    }

    /// The endpoint set (IP endpoints now, names as they resolve) and its background
    /// tasks: DNS watchers and health checks, which end when the set is dropped.
    fn members(
        config: &UpstreamConfig,
        tls: &Option<Arc<rustls::ClientConfig>>,
        cx: &UpstreamContext,
    ) -> Result<(Arc<EndpointSet>, Arc<Names>), UpstreamBuildError> {
        let server_name = {
            let sni = config.tls.as_ref().map(|t| t.sni.clone());
            move |target: &str, addr: SocketAddr| {
                let sni = sni.as_ref()?;
                let name = match sni {
                    Some(n) => ServerName::try_from(n.clone()),
                    None => ServerName::try_from(host_of(target).to_string()),
                };
                // The reader only lets DNS names and IPs through; an endpoint that is
                // neither gets its address verified.
                Some(name.unwrap_or(ServerName::IpAddress(addr.ip().into())))
            }
        };
        let mut initial = Vec::new();
        let mut names = Vec::new();
        for entry in &config.endpoints {
            match discovery::classify(entry) {
                Ok(addr) => initial.push(Arc::new(Endpoint::new(
                    addr,
                    entry.as_str().into(),
                    server_name(entry, addr),
                ))),
                Err(name) => names.push(name),
            }
        }
        let set = Arc::new(EndpointSet::new(
            config.name.as_str().into(),
            config.outlier.clone(),
            config.panic_threshold,
            initial,
            cx.metrics.clone(),
            cx.per_endpoint_metrics,
            cx.log.clone(),
        ));
        let names = Names::new(names);
        // Outside a runtime (tools, benches) nothing runs in the background.
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok((set, names));
        }
        if names.any() {
            let resolver =
                discovery::resolver(&cx.dns).map_err(|source| UpstreamBuildError::Dns {
                    upstream: config.name.clone(),
                    source,
                })?;
            let make = Arc::new(move |addr: SocketAddr, name: &discovery::Name| {
                Endpoint::new(addr, name.target.clone(), server_name(&name.target, addr))
            });
            discovery::spawn(
                resolver,
                &cx.dns,
                &names,
                &set,
                &config.deny_addresses,
                discovery::Said {
                    metrics: &cx.metrics,
                    log: &cx.log,
                },
                make,
            );
        }
        if let Some(h) = &config.health {
            let checker = health::Checker {
                config: h.clone(),
                tls: tls.clone(),
                h2: config.protocol == UpstreamProtocol::H2,
                max_header_list: u32::try_from(config.max_response_header_bytes)
                    .unwrap_or(u32::MAX),
                host: config.endpoints.first().cloned().unwrap_or_default(),
                metrics: cx.metrics.clone(),
            };
            health::spawn(checker, &set);
        }
        Ok((set, names))
    }

    /// This upstream under a reloaded `config`, keeping what outlives a config: the
    /// in-flight counter (its new limit applies to new calls), the retry budget (saved
    /// tokens kept), and the endpoints with their pools, standing and background tasks
    /// unless what they are built from changed (endpoints, TLS, outlier, health, DNS
    /// settings): then they are built anew and the old ones let go.
    pub fn reloaded(
        &self,
        config: UpstreamConfig,
        cx: &UpstreamContext,
    ) -> Result<Self, UpstreamBuildError> {
        // TLS files are re-read on every reload (rotated certificates apply to new
        // connections).
        let tls = Self::tls(&config)?;
        let old = &self.config;
        let same = config.endpoints == old.endpoints
            && config.tls == old.tls
            && config.outlier == old.outlier
            && config.health == old.health
            && config.panic_threshold == old.panic_threshold
            && config.protocol == old.protocol
            && config.deny_addresses == old.deny_addresses
            && cx.dns == self.dns;
        let (endpoints, names) = if same {
            (self.endpoints.clone(), self.names.clone())
        } else {
            let (endpoints, names) = Self::members(&config, &tls, cx)?;
            // The old endpoints' series go with them (those the new set has start again).
            for ep in self.endpoints.list().iter() {
                cx.metrics.forget_endpoint(&self.name, ep.addr);
            }
            (endpoints, names)
        };
        self.in_flight.set_limit(config.max_in_flight);
        self.budget.set_params(cx.ratio, cx.min_per_sec);
        Ok(Upstream {
            name: self.name.clone(),
            in_flight: self.in_flight.clone(),
            budget: self.budget.clone(),
            endpoints,
            names,
            next: AtomicUsize::new(self.next.load(Ordering::Relaxed)),
            tls,
            dns: cx.dns.clone(),
            #[cfg(test)]
            memory: self.memory.clone(),
            config,
        })
    }

    /// The zone.
    pub fn zone(&self) -> Zone {
        self.config.zone
    }

    /// The `host` a request to this upstream carries when the client sent none: its first
    /// endpoint as configured.
    pub fn default_host(&self) -> &str {
        self.config.endpoints.first().map_or("", String::as_str)
    }

    /// The upstream speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Chooses the endpoint of an attempt by the upstream's `lb` among the usable ones,
    /// avoiding `avoid` (the endpoint a retried attempt just failed on) when another
    /// exists, and counts the request on it; 503 `UH` at once when none is usable.
    pub fn pick(&self, avoid: Option<SocketAddr>) -> Result<EndpointGuard, ProxyError> {
        let draw = self.next.fetch_add(1, Ordering::Relaxed);
        self.endpoints
            .pick(self.config.lb, draw, avoid)
            .map_err(|why| ProxyError::NoEndpoint {
                upstream: self.name.clone(),
                detail: match why {
                    NoEndpoint::Empty => self.names.no_address(),
                    NoEndpoint::NoneUsable => self.endpoints.none_usable(),
                },
                retry_after: self.retry_after(why),
            })
    }

    /// When an upstream with no usable endpoint may have one again: the first ejection's
    /// end or the health checks' time to pass an endpoint again, whichever is sooner; a
    /// name's next resolution (`dns.min_ttl` after a failure) when none resolved.
    fn retry_after(&self, why: NoEndpoint) -> Duration {
        match why {
            NoEndpoint::Empty => self.dns.min_ttl,
            NoEndpoint::NoneUsable => {
                let healthy = self
                    .config
                    .health
                    .as_ref()
                    .map(|h| h.interval * h.healthy_threshold);
                let returns = self.endpoints.soonest_return();
                match (healthy, returns) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b).unwrap_or(Duration::from_secs(1)),
                }
            }
        }
    }

    /// Takes the most recently used live idle connection to endpoint `i`, if any (`now`
    /// is the caller's clock reading, saving one).
    ///
    /// Connections idle longer than `pool_idle_timeout`, and connections the upstream has
    /// already closed (a non-blocking read sees EOF or data), are dropped here.
    pub fn checkout(&self, ep: &Arc<Endpoint>, now: Instant) -> Option<ClientConn> {
        loop {
            let idle = ep.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if now.duration_since(idle.since) >= self.config.pool_idle_timeout {
                continue;
            }
            let mut stream = idle.stream;
            if stream.quiet() {
                return Some(ClientConn {
                    stream,
                    buf: BytesMut::with_capacity(8 * 1024),
                    endpoint: ep.clone(),
                    addr: ep.addr,
                    reused: true,
                    idle: Some(now.duration_since(idle.since)),
                    received: false,
                });
            }
        }
    }

    /// Returns a connection whose exchange ended cleanly to its endpoint's pool.
    pub fn checkin(&self, conn: ClientConn) {
        let ep = &conn.endpoint;
        if !conn.buf.is_empty() || self.config.pool_max_idle == 0 || ep.removed() {
            return;
        }
        let mut idle = ep.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.config.pool_max_idle {
            idle.remove(0);
        }
        idle.push(IdleConn {
            stream: conn.stream,
            since: Instant::now(),
        });
        drop(idle);
        if ep.note_progress() {
            ep.returned.notify_one();
        }
    }

    /// A stream on an HTTP/2 connection to `ep`: on an open connection below
    /// the upstream's concurrency limit, else on a new one (connect, TLS with ALPN `h2`,
    /// and the HTTP/2 handshake, all within `min(connect_timeout, time left)`).
    /// Connections idle longer than `pool_idle_timeout` are let go here.
    pub async fn h2_sender(
        &self,
        ep: &Arc<Endpoint>,
        deadline: &Deadline,
        egress: &Egress,
        metrics: &Metrics,
        note: PhaseNote<'_>,
    ) -> Result<H2Stream, ProxyError> {
        if let Some(send) = self.h2_ready(ep) {
            return Ok(send);
        }
        // Waiting for another request's connect counts as connecting.
        let waited = Instant::now();
        let (until, by_deadline) = deadline.bound(waited, self.config.connect_timeout);
        let opening = ep.h2_opening.lock();
        let Ok(_opening) = tokio::time::timeout_at(until, opening).await else {
            let (limit, source_limit) = self.connect_limit(deadline, by_deadline);
            let kind = UpstreamErrorKind::ConnectTimeout {
                limit,
                source_limit,
            };
            return Err(self.error(ep.addr, waited, kind));
        };
        // Another request may have opened one meanwhile.
        if let Some(send) = self.h2_ready(ep) {
            return Ok(send);
        }
        let conn = self.connect(ep, deadline, egress, metrics, note).await?;
        // The HTTP/2 handshake is part of connecting (its failures are connect failures).
        note(Phase::Connect);
        let addr = conn.addr;
        let start = Instant::now();
        let (until, by_deadline) = deadline.bound(start, self.config.connect_timeout);
        let max_list = u32::try_from(self.config.max_response_header_bytes).unwrap_or(u32::MAX);
        let handshake = h2::client::Builder::new()
            .initial_max_send_streams(ep.h2_streams.load(Ordering::Relaxed))
            .max_header_list_size(max_list)
            .handshake::<_, Bytes>(conn.stream);
        let (send, driver) = match tokio::time::timeout_at(until, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                let kind = UpstreamErrorKind::Protocol {
                    phase: Phase::Connect,
                    source: Box::new(e),
                };
                return Err(self.error(addr, start, kind));
            }
            Err(_) => {
                let (limit, source_limit) = self.connect_limit(deadline, by_deadline);
                let kind = UpstreamErrorKind::ConnectTimeout {
                    limit,
                    source_limit,
                };
                return Err(self.error(addr, start, kind));
            }
        };
        // Ends when the upstream closes, or once every handle and stream is dropped.
        tokio::spawn(async move {
            let _ = driver.await;
        });
        let mut conns = ep.h2.lock().unwrap_or_else(|p| p.into_inner());
        let conn = H2Conn {
            send,
            since: Instant::now(),
            active: Arc::new(AtomicUsize::new(0)),
        };
        let stream = H2Stream::on(&conn);
        conns.push(conn);
        Ok(stream)
    }

    /// A stream on an open HTTP/2 connection to `ep` below the upstream's
    /// concurrency limit, if there is one.
    fn h2_ready(&self, ep: &Endpoint) -> Option<H2Stream> {
        let now = Instant::now();
        let idle_limit = self.config.pool_idle_timeout;
        let mut conns = ep.h2.lock().unwrap_or_else(|p| p.into_inner());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // Broken (GOAWAY, closed), or idle too long with no stream open: let it go.
        conns.retain_mut(|c| {
            let idle =
                c.active.load(Ordering::Relaxed) == 0 && now.duration_since(c.since) >= idle_limit;
            !idle && matches!(c.send.poll_ready(&mut cx), std::task::Poll::Ready(Ok(())))
        });
        // The oldest connection has most likely had the upstream's SETTINGS.
        if let Some(c) = conns.first() {
            let limit = c.send.current_max_send_streams();
            ep.h2_streams.store(limit, Ordering::Relaxed);
        }
        let c = conns
            .iter_mut()
            .find(|c| c.active.load(Ordering::Relaxed) < c.send.current_max_send_streams())?;
        c.since = now;
        Some(H2Stream::on(c))
    }

    /// Opens a new connection to `ep`: the TCP connect, then (TLS upstreams) the
    /// handshake, each bounded by `min(connect_timeout, time left)`; `note` is told when
    /// the handshake starts.
    pub async fn connect(
        &self,
        ep: &Arc<Endpoint>,
        deadline: &Deadline,
        egress: &Egress,
        metrics: &Metrics,
        note: PhaseNote<'_>,
    ) -> Result<ClientConn, ProxyError> {
        let addr = ep.addr;
        let start = Instant::now();
        let fail = |kind| self.error(addr, start, kind);
        let (until, by_deadline) = deadline.bound(start, self.config.connect_timeout);
        // A new egress connection waits for the NAT's rate within the connect budget.
        if let Some(at) = self.take_new_connection(egress, until)? {
            tokio::time::sleep_until(at).await;
        }
        let raw = match tokio::time::timeout_at(until, self.dial(addr)).await {
            Err(_) => {
                let (limit, source_limit) = self.connect_limit(deadline, by_deadline);
                return Err(fail(UpstreamErrorKind::ConnectTimeout {
                    limit,
                    source_limit,
                }));
            }
            Ok(Err(e)) => return Err(fail(UpstreamErrorKind::from_connect(e))),
            Ok(Ok(raw)) => raw,
        };
        let tls = match (&self.tls, &ep.server_name) {
            (Some(tls), Some(name)) => {
                note(Phase::Tls);
                Some((tls, name))
            }
            _ => None,
        };
        let stream = match (raw, tls) {
            (Dialed::Tcp(tcp), None) => Stream::Plain(tcp),
            (Dialed::Tcp(tcp), Some((tls, name))) => {
                let shake = self.handshake(tls, name, tcp, deadline, metrics).await;
                Stream::Tls(Box::new(shake.map_err(fail)?))
            }
            #[cfg(test)]
            (Dialed::Memory(m), None) => Stream::Memory(Box::new(m)),
            #[cfg(test)]
            (Dialed::Memory(m), Some((tls, name))) => {
                let shake = self.handshake(tls, name, m, deadline, metrics).await;
                Stream::Memory(Box::new(shake.map_err(fail)?))
            }
        };
        Ok(ClientConn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            endpoint: ep.clone(),
            addr,
            reused: false,
            idle: None,
            received: false,
        })
    }

    /// Opens the transport to `addr`: TCP (with `TCP_NODELAY`), or in process tests the
    /// in-memory network the upstream was given.
    async fn dial(&self, addr: SocketAddr) -> io::Result<Dialed> {
        #[cfg(test)]
        if let Some(net) = &self.memory {
            return net.connect(addr).await.map(Dialed::Memory);
        }
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let c = &self.config;
        crate::stream::set_keepalive(&tcp, c.tcp_keepalive.as_ref(), c.tcp_user_timeout);
        Ok(Dialed::Tcp(tcp))
    }

    /// A new egress connection takes a token from the shared rate limit (the NAT's): at
    /// once, or the instant to wait for one that comes by `until`; else `UO`.
    fn take_new_connection(
        &self,
        egress: &Egress,
        until: Instant,
    ) -> Result<Option<Instant>, ProxyError> {
        match self.zone() {
            Zone::Egress => egress
                .take_new_connection(&self.name, until)
                .map(|at| at.filter(|at| *at > Instant::now()))
                .map_err(ProxyError::Overflow),
            Zone::Internal => Ok(None),
        }
    }

    /// The limit a connect or handshake ran into, and where it came from.
    fn connect_limit(&self, deadline: &Deadline, by_deadline: bool) -> (Duration, TimeoutSource) {
        let limit = if by_deadline {
            deadline.budget()
        } else {
            self.config.connect_timeout
        };
        let source_limit = deadline.limit_source(by_deadline, TimeoutSource::ConnectTimeout);
        (limit, source_limit)
    }

    /// The TLS handshake on a new connection, under its own `min(connect_timeout, time
    /// left)`; a failure says what was wrong with the upstream's certificate.
    async fn handshake<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        name: &ServerName<'static>,
        io: T,
        deadline: &Deadline,
        metrics: &Metrics,
    ) -> Result<tokio_rustls::client::TlsStream<T>, UpstreamErrorKind> {
        let zone = self.zone().as_str();
        let shaking = Instant::now();
        let (until, by_deadline) = deadline.bound(shaking, self.config.connect_timeout);
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let handshake = connector.connect(name.clone(), io);
        match tokio::time::timeout_at(until, handshake).await {
            Err(_) => {
                metrics.upstream_tls_failed(&self.name, zone, "timeout");
                let (limit, source_limit) = self.connect_limit(deadline, by_deadline);
                Err(UpstreamErrorKind::TlsTimeout {
                    limit,
                    source_limit,
                })
            }
            Ok(Err(e)) => {
                let failure = hopline_tls::client::classify(e);
                metrics.upstream_tls_failed(&self.name, zone, failure.reason());
                Err(UpstreamErrorKind::Tls(Box::new(failure)))
            }
            Ok(Ok(s)) => {
                metrics.upstream_tls_done(&self.name, zone, shaking.elapsed());
                Ok(s)
            }
        }
    }

    /// An [`UpstreamError`] for this upstream.
    pub fn error(&self, addr: SocketAddr, started: Instant, kind: UpstreamErrorKind) -> ProxyError {
        ProxyError::Upstream(UpstreamError {
            upstream: self.name.clone(),
            endpoint: addr,
            zone: self.zone(),
            elapsed: started.elapsed(),
            kind,
        })
    }
}

impl ClientConn {
    /// The connection and the bytes already read past the response head (an upgraded
    /// connection's first bytes).
    pub fn into_parts(self) -> (UpstreamStream, BytesMut) {
        (self.stream, self.buf)
    }

    /// Writes `wire` and then `body` (streamed, chunk-encoded when `chunked`) while
    /// already reading the response head, and returns the head.
    ///
    /// An upstream may answer before it has read the whole request (413, 401 for an upload
    /// it refuses): its answer is passed on rather than waited past. `sent` says whether
    /// the whole request went out; when it did not, the connection must not be reused.
    /// A failed write is reported only if no response head can be read after it.
    /// `on_sent` runs once the whole request is out (the exchange now waits on the
    /// upstream's answer). A head over `max_head` bytes is a parse error.
    pub(crate) async fn exchange_head(
        &mut self,
        (wire, max_head): (&[u8], usize),
        body: Option<(&mut RequestBody<'_>, bool)>,
        sent: &mut bool,
        on_sent: impl FnOnce(),
    ) -> Result<ResponseHead, ExchangeError> {
        let mut on_sent = Some(on_sent);
        let (mut rd, mut wr) = self.stream.split();
        let mut send = pin!(async move {
            wr.write_all(wire).await.map_err(Upload::Upstream)?;
            match body {
                // Boxed: a streamed upload's state (body reads, their timers) would
                // otherwise enlarge, and be copied with, every request's exchange.
                Some((body, chunked)) => Box::pin(write_h1(body, &mut wr, chunked)).await,
                None => Ok(()),
            }
        });
        let mut send_error = None;
        let mut read = pin!(hopline_h1::read_response_head_noting(
            &mut rd,
            &mut self.buf,
            max_head,
            &mut self.received,
        ));
        loop {
            tokio::select! {
                biased;
                r = &mut send, if !*sent && send_error.is_none() => match r {
                    Ok(()) => {
                        *sent = true;
                        if let Some(f) = on_sent.take() {
                            f();
                        }
                    }
                    Err(Upload::Upstream(e)) => send_error = Some(e),
                    Err(Upload::Client(e)) => return Err(ExchangeError::Client(e)),
                },
                head = &mut read => {
                    return match (head, send_error) {
                        (Ok(head), _) => Ok(head),
                        (Err(_), Some(e)) => Err(ExchangeError::Send(e)),
                        (Err(e), None) => Err(ExchangeError::Read(e)),
                    }
                }
            }
        }
    }

    /// True when no response byte has been received on this exchange.
    pub fn nothing_received(&self) -> bool {
        !self.received && self.buf.is_empty()
    }

    /// Decodes body bytes already buffered, without waiting.
    pub fn buffered_body(
        &mut self,
        decoder: &mut BodyDecoder,
    ) -> Result<hopline_h1::Decoded, BodyError> {
        decoder.decode(&mut self.buf)
    }

    /// Reads what the upstream has already sent, without waiting: false when nothing
    /// came (or the read failed or hit EOF: the next [`ClientConn::read_body`] says so).
    pub async fn read_ready(&mut self) -> bool {
        matches!(
            hopline_h1::io::fill_ready(&mut self.stream, &mut self.buf).await,
            Some(Ok(n)) if n > 0
        )
    }

    /// Reads the next piece of the response body.
    pub async fn read_body(
        &mut self,
        decoder: &mut BodyDecoder,
    ) -> Result<Option<Bytes>, BodyError> {
        hopline_h1::read_body_chunk(&mut self.stream, &mut self.buf, decoder).await
    }
}

/// The host part of a `host:port` endpoint, without IPv6 brackets.
fn host_of(endpoint: &str) -> &str {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// How long `d` is in whole milliseconds, at least 1 (for the deadline header).
pub(crate) fn millis_at_least_one(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}
