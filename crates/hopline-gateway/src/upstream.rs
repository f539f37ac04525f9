//! Upstreams: endpoints chosen round robin, pooled keep-alive connections, bounded connects.
//!
//! A connection is owned by exactly one request while in use. Nothing runs in the
//! background for it: if the request's future is dropped (client gone), the socket is
//! dropped with it and the upstream sees its connection closed at once. Only connections
//! whose response was read to the end cleanly go back to the pool.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hopline_core::config::{LoadBalancing, UpstreamConfig, Zone};
use hopline_core::{
    Deadline, DeadlineSource, Overflow, Phase, ProxyError, TimeoutSource, UpstreamError,
    UpstreamErrorKind,
};
use hopline_h1::{BodyDecoder, BodyError, HeadError, ResponseHead};
use std::pin::pin;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::gateway::BuildError;
use crate::limits::{InFlight, RateLimit, RetryBudget};
use crate::metrics::Metrics;
use crate::stream::{Stream, UpstreamStream};

/// Largest upstream response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Limits shared by every egress upstream (one NAT gateway in front of all of them).
#[derive(Debug, Default)]
pub struct Egress {
    /// `[egress] max_in_flight`.
    pub in_flight: Option<Arc<InFlight>>,
    /// `[egress] max_new_connections_per_sec`.
    pub new_connections: Option<Arc<RateLimit>>,
}

/// An upstream endpoint name that did not resolve at start.
#[derive(Debug, thiserror::Error)]
#[error("upstream {upstream}: cannot resolve endpoint {endpoint:?}")]
pub struct ResolveError {
    /// The upstream.
    pub upstream: String,
    /// The endpoint as configured.
    pub endpoint: String,
    /// Why.
    #[source]
    pub source: io::Error,
}

#[derive(Debug)]
struct Endpoint {
    addr: SocketAddr,
    /// The name its certificate is verified against (TLS upstreams).
    server_name: Option<ServerName<'static>>,
    idle: Mutex<Vec<IdleConn>>,
    /// HTTP/2 connections (`protocol = "h2"`), each shared by concurrent requests.
    h2: Mutex<Vec<H2Conn>>,
    /// Held while an HTTP/2 connection is being opened, so requests that find none wait
    /// for that one instead of each opening their own.
    h2_opening: tokio::sync::Mutex<()>,
    /// Requests using this endpoint now (least-request balancing).
    active: AtomicUsize,
}

/// A request's use of an endpoint, counted for least-request balancing until dropped.
#[derive(Debug)]
pub struct EndpointGuard {
    endpoints: Arc<Vec<Endpoint>>,
    i: usize,
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.endpoints[self.i]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// An HTTP/2 connection to an endpoint: a handle that opens streams on it (its frames
/// are driven by a task that ends when the connection does).
#[derive(Debug)]
struct H2Conn {
    send: h2::client::SendRequest<Bytes>,
    since: Instant,
    /// Streams hopline has open on it (against the upstream's concurrency limit).
    active: Arc<AtomicUsize>,
}

/// A stream's place on an HTTP/2 connection: counted against the connection's limit
/// until dropped (when the request is done with the stream).
#[derive(Debug)]
pub struct H2Stream {
    /// Opens the stream.
    pub send: h2::client::SendRequest<Bytes>,
    active: Arc<AtomicUsize>,
}

impl H2Stream {
    fn on(c: &H2Conn) -> H2Stream {
        c.active.fetch_add(1, Ordering::Relaxed);
        H2Stream {
            send: c.send.clone(),
            active: c.active.clone(),
        }
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct IdleConn {
    stream: UpstreamStream,
    since: Instant,
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
    endpoints: Arc<Vec<Endpoint>>,
    next: AtomicUsize,
    /// TLS client settings, when the upstream speaks TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A connection to an upstream endpoint, owned by one request at a time.
#[derive(Debug)]
pub struct ClientConn {
    stream: UpstreamStream,
    buf: BytesMut,
    endpoint: usize,
    /// The endpoint address.
    pub addr: SocketAddr,
    /// True when taken from the pool (it may have been closed by the upstream meanwhile).
    pub reused: bool,
    /// Some response byte arrived on this exchange (an interim 1xx counts).
    received: bool,
}

/// How sending a request while reading its response head failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// Writing the request failed, and no response head could be read after it.
    Send(io::Error),
    /// Reading the response head failed.
    Read(HeadError),
}

impl Upstream {
    /// Builds the upstream: resolves its endpoints once, reads its TLS files.
    pub fn new(config: UpstreamConfig, ratio: f64, min_per_sec: u32) -> Result<Self, BuildError> {
        Ok(Upstream {
            name: config.name.as_str().into(),
            in_flight: InFlight::new(config.max_in_flight),
            budget: Arc::new(RetryBudget::new(ratio, min_per_sec)),
            endpoints: Arc::new(Self::resolve(&config)?),
            next: AtomicUsize::new(0),
            tls: Self::tls(&config)?,
            config,
        })
    }

    fn tls(config: &UpstreamConfig) -> Result<Option<Arc<rustls::ClientConfig>>, BuildError> {
        config
            .tls
            .as_ref()
            .map(|t| {
                hopline_tls::client::client_config(t).map_err(|source| BuildError::UpstreamTls {
                    upstream: config.name.clone(),
                    source,
                })
            })
            .transpose()
    }

    fn resolve(config: &UpstreamConfig) -> Result<Vec<Endpoint>, ResolveError> {
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for ep in &config.endpoints {
            let addr = ep
                .to_socket_addrs()
                .and_then(|mut a| {
                    a.next()
                        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
                })
                .map_err(|source| ResolveError {
                    upstream: config.name.clone(),
                    endpoint: ep.clone(),
                    source,
                })?;
            let server_name = config.tls.as_ref().map(|t| match &t.sni {
                Some(n) => ServerName::try_from(n.clone()),
                None => ServerName::try_from(host_of(ep).to_string()),
            });
            let server_name = match server_name {
                None => None,
                Some(Ok(n)) => Some(n),
                // The reader only lets DNS names and IPs through; an endpoint that is
                // neither gets its address verified.
                Some(Err(_)) => Some(ServerName::IpAddress(addr.ip().into())),
            };
            endpoints.push(Endpoint {
                h2: Mutex::new(Vec::new()),
                h2_opening: tokio::sync::Mutex::new(()),
                active: AtomicUsize::new(0),
                addr,
                server_name,
                idle: Mutex::new(Vec::new()),
            });
        }
        Ok(endpoints)
    }

    /// This upstream under a reloaded `config`, keeping what outlives a config: the
    /// in-flight counter (its new limit applies to new calls), the retry budget (saved
    /// tokens kept), and the endpoints with their idle pools unless the endpoint list
    /// changed (then they are resolved anew and the old pools closed).
    pub fn reloaded(
        &self,
        config: UpstreamConfig,
        ratio: f64,
        min_per_sec: u32,
    ) -> Result<Self, BuildError> {
        // TLS files are re-read on every reload (rotated certificates apply to new
        // connections); pooled connections stay unless the endpoints or TLS settings changed.
        let tls = Self::tls(&config)?;
        let endpoints =
            if config.endpoints == self.config.endpoints && config.tls == self.config.tls {
                self.endpoints.clone()
            } else {
                Arc::new(Self::resolve(&config)?)
            };
        self.in_flight.set_limit(config.max_in_flight);
        self.budget.set_params(ratio, min_per_sec);
        Ok(Upstream {
            name: self.name.clone(),
            in_flight: self.in_flight.clone(),
            budget: self.budget.clone(),
            endpoints,
            next: AtomicUsize::new(self.next.load(Ordering::Relaxed)),
            tls,
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

    /// Chooses the endpoint of an attempt by the upstream's `lb`, avoiding `avoid` (the
    /// endpoint a retried attempt just failed to connect to) when another exists.
    pub fn pick(&self, avoid: Option<usize>) -> usize {
        let n = self.endpoints.len();
        let avoid = avoid.filter(|_| n > 1);
        // Candidates are 0..m, mapped around the avoided index.
        let m = n - usize::from(avoid.is_some());
        let at = |k: usize| match avoid {
            Some(a) if k >= a => k + 1,
            _ => k,
        };
        let draw = self.next.fetch_add(1, Ordering::Relaxed);
        match self.config.lb {
            LoadBalancing::RoundRobin => at(draw % m),
            LoadBalancing::Random => at(mix(draw) as usize % m),
            LoadBalancing::LeastRequest => {
                if m == 1 {
                    return at(0);
                }
                let r = mix(draw);
                let a = r as usize % m;
                // A second candidate, different from the first.
                let b = (a + 1 + (r >> 32) as usize % (m - 1)) % m;
                let (a, b) = (at(a), at(b));
                let load = |i: usize| self.endpoints[i].active.load(Ordering::Relaxed);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        }
    }

    /// Counts a request on endpoint `i` until the guard is dropped.
    pub fn enter(&self, i: usize) -> EndpointGuard {
        self.endpoints[i].active.fetch_add(1, Ordering::Relaxed);
        EndpointGuard {
            endpoints: self.endpoints.clone(),
            i,
        }
    }

    /// The address of endpoint `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.endpoints[i].addr
    }

    /// Takes the most recently used live idle connection to endpoint `i`, if any (`now`
    /// is the caller's clock reading, saving one).
    ///
    /// Connections idle longer than `pool_idle_timeout`, and connections the upstream has
    /// already closed (a non-blocking read sees EOF or data), are dropped here.
    pub fn checkout(&self, i: usize, now: Instant) -> Option<ClientConn> {
        let ep = &self.endpoints[i];
        loop {
            let idle = ep.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
            if now.duration_since(idle.since) >= self.config.pool_idle_timeout {
                continue;
            }
            let mut probe = [0u8; 1];
            match idle.stream.tcp().try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Some(ClientConn {
                        stream: idle.stream,
                        buf: BytesMut::with_capacity(8 * 1024),
                        endpoint: i,
                        addr: ep.addr,
                        reused: true,
                        received: false,
                    })
                }
                _ => continue,
            }
        }
    }

    /// Returns a connection whose exchange ended cleanly to its endpoint's pool.
    pub fn checkin(&self, conn: ClientConn) {
        if !conn.buf.is_empty() || self.config.pool_max_idle == 0 {
            return;
        }
        let ep = &self.endpoints[conn.endpoint];
        let mut idle = ep.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.config.pool_max_idle {
            idle.remove(0);
        }
        idle.push(IdleConn {
            stream: conn.stream,
            since: Instant::now(),
        });
    }

    /// A stream on an HTTP/2 connection to endpoint `i`: on an open connection below
    /// the upstream's concurrency limit, else on a new one (connect, TLS with ALPN `h2`,
    /// and the HTTP/2 handshake, all within `min(connect_timeout, time left)`).
    /// Connections idle longer than `pool_idle_timeout` are let go here.
    pub async fn h2_sender(
        &self,
        i: usize,
        deadline: &Deadline,
        egress: &Egress,
        metrics: &Metrics,
    ) -> Result<H2Stream, ProxyError> {
        if let Some(send) = self.h2_ready(i) {
            return Ok(send);
        }
        // Waiting for another request's connect counts as connecting.
        let waited = Instant::now();
        let (until, by_deadline) = deadline.bound(waited, self.config.connect_timeout);
        let opening = self.endpoints[i].h2_opening.lock();
        let Ok(_opening) = tokio::time::timeout_at(until.into(), opening).await else {
            let (limit, source_limit) = self.connect_limit(deadline, by_deadline);
            let kind = UpstreamErrorKind::ConnectTimeout {
                limit,
                source_limit,
            };
            return Err(self.error(self.endpoints[i].addr, waited, kind));
        };
        // Another request may have opened one meanwhile.
        if let Some(send) = self.h2_ready(i) {
            return Ok(send);
        }
        let conn = self.connect(i, deadline, egress, metrics).await?;
        let addr = conn.addr;
        let start = Instant::now();
        let (until, by_deadline) = deadline.bound(start, self.config.connect_timeout);
        let handshake = h2::client::Builder::new().handshake::<_, Bytes>(conn.stream);
        let (send, driver) = match tokio::time::timeout_at(until.into(), handshake).await {
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
        let mut conns = self.endpoints[i]
            .h2
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let conn = H2Conn {
            send,
            since: Instant::now(),
            active: Arc::new(AtomicUsize::new(0)),
        };
        let stream = H2Stream::on(&conn);
        conns.push(conn);
        Ok(stream)
    }

    /// A stream on an open HTTP/2 connection to endpoint `i` below the upstream's
    /// concurrency limit, if there is one.
    fn h2_ready(&self, i: usize) -> Option<H2Stream> {
        let now = Instant::now();
        let idle_limit = self.config.pool_idle_timeout;
        let mut conns = self.endpoints[i]
            .h2
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // Broken (GOAWAY, closed), or idle too long with no stream open: let it go.
        conns.retain_mut(|c| {
            let idle =
                c.active.load(Ordering::Relaxed) == 0 && now.duration_since(c.since) >= idle_limit;
            !idle && matches!(c.send.poll_ready(&mut cx), std::task::Poll::Ready(Ok(())))
        });
        let c = conns
            .iter_mut()
            .find(|c| c.active.load(Ordering::Relaxed) < c.send.current_max_send_streams())?;
        c.since = now;
        Some(H2Stream::on(c))
    }

    /// Opens a new connection to endpoint `i`: the TCP connect, then (TLS upstreams) the
    /// handshake, each bounded by `min(connect_timeout, time left)`.
    pub async fn connect(
        &self,
        i: usize,
        deadline: &Deadline,
        egress: &Egress,
        metrics: &Metrics,
    ) -> Result<ClientConn, ProxyError> {
        self.take_new_connection(egress)?;
        let addr = self.endpoints[i].addr;
        let start = Instant::now();
        let fail = |kind| self.error(addr, start, kind);
        let (until, by_deadline) = deadline.bound(start, self.config.connect_timeout);
        let tcp = match tokio::time::timeout_at(until.into(), TcpStream::connect(addr)).await {
            Err(_) => {
                let (limit, source_limit) = self.connect_limit(deadline, by_deadline);
                return Err(fail(UpstreamErrorKind::ConnectTimeout {
                    limit,
                    source_limit,
                }));
            }
            Ok(Err(e)) => return Err(fail(UpstreamErrorKind::from_connect(e))),
            Ok(Ok(stream)) => stream,
        };
        let _ = tcp.set_nodelay(true);
        let stream = match (&self.tls, &self.endpoints[i].server_name) {
            (Some(tls), Some(name)) => {
                let shake = self.handshake(tls, name, tcp, deadline, metrics).await;
                shake.map_err(fail)?
            }
            _ => Stream::Plain(tcp),
        };
        Ok(ClientConn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            endpoint: i,
            addr,
            reused: false,
            received: false,
        })
    }

    /// A new egress connection takes a token from the shared rate limit (the NAT's), or
    /// fails `UO`.
    fn take_new_connection(&self, egress: &Egress) -> Result<(), ProxyError> {
        match &egress.new_connections {
            Some(rate) if self.zone() == Zone::Egress && !rate.try_take() => {
                Err(ProxyError::Overflow(Overflow::EgressConnectionRate {
                    upstream: self.name.clone(),
                    limit: rate.rate(),
                }))
            }
            _ => Ok(()),
        }
    }

    /// The limit a connect or handshake ran into, and where it came from.
    fn connect_limit(&self, deadline: &Deadline, by_deadline: bool) -> (Duration, TimeoutSource) {
        let limit = if by_deadline {
            deadline.budget()
        } else {
            self.config.connect_timeout
        };
        let source_limit = match (by_deadline, deadline.source()) {
            (false, _) => TimeoutSource::ConnectTimeout,
            (true, DeadlineSource::Call) => TimeoutSource::CallTimeout,
            (true, _) => TimeoutSource::Deadline,
        };
        (limit, source_limit)
    }

    /// The TLS handshake on a new connection, under its own `min(connect_timeout, time
    /// left)`; a failure says what was wrong with the upstream's certificate.
    async fn handshake(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        name: &ServerName<'static>,
        tcp: TcpStream,
        deadline: &Deadline,
        metrics: &Metrics,
    ) -> Result<UpstreamStream, UpstreamErrorKind> {
        let zone = self.zone().as_str();
        let shaking = Instant::now();
        let (until, by_deadline) = deadline.bound(shaking, self.config.connect_timeout);
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let handshake = connector.connect(name.clone(), tcp);
        match tokio::time::timeout_at(until.into(), handshake).await {
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
                Ok(Stream::Tls(Box::new(s)))
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

    /// Writes `wire` while already reading the response head, and returns the head.
    ///
    /// An upstream may answer before it has read the whole request (413, 401 for an upload
    /// it refuses): its answer is passed on rather than waited past. `sent` says whether
    /// the whole request went out; when it did not, the connection must not be reused.
    /// A failed write is reported only if no response head can be read after it.
    pub async fn exchange_head(
        &mut self,
        wire: &[u8],
        sent: &mut bool,
    ) -> Result<ResponseHead, ExchangeError> {
        let (mut rd, mut wr) = self.stream.split();
        let mut send = pin!(wr.write_all(wire));
        let mut send_error = None;
        let mut read = pin!(hopline_h1::read_response_head_noting(
            &mut rd,
            &mut self.buf,
            MAX_RESPONSE_HEAD,
            &mut self.received,
        ));
        loop {
            tokio::select! {
                biased;
                r = &mut send, if !*sent && send_error.is_none() => match r {
                    Ok(()) => *sent = true,
                    Err(e) => send_error = Some(e),
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
pub fn millis_at_least_one(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// A well-mixed 64-bit value from a counter (SplitMix64), for random endpoint draws
/// without a random number generator crate.
fn mix(n: usize) -> u64 {
    let mut z = (n as u64)
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(n: usize, lb: LoadBalancing) -> Upstream {
        let endpoints = (0..n).map(|i| format!("127.0.0.1:{}", 9000 + i)).collect();
        let mut config = UpstreamConfig::with_defaults("u", endpoints);
        config.lb = lb;
        Upstream::new(config, 0.2, 10).expect("upstream")
    }

    fn counts(up: &Upstream, draws: usize, avoid: Option<usize>) -> Vec<usize> {
        let mut seen = vec![0; up.endpoints.len()];
        for _ in 0..draws {
            seen[up.pick(avoid)] += 1;
        }
        seen
    }

    #[test]
    fn least_request_prefers_the_less_busy_endpoint() {
        let up = upstream(2, LoadBalancing::LeastRequest);
        let busy = up.enter(0);
        assert_eq!(counts(&up, 100, None), vec![0, 100]);
        drop(busy);
        // Idle again: both are used.
        let seen = counts(&up, 1000, None);
        assert!(seen.iter().all(|&n| n > 300), "{seen:?}");
    }

    #[test]
    fn least_request_spreads_over_many_endpoints() {
        let up = upstream(5, LoadBalancing::LeastRequest);
        let seen = counts(&up, 5000, None);
        assert!(seen.iter().all(|&n| (700..1300).contains(&n)), "{seen:?}");
    }

    #[test]
    fn round_robin_takes_turns_and_random_covers_all() {
        let up = upstream(3, LoadBalancing::RoundRobin);
        let order: Vec<usize> = (0..6).map(|_| up.pick(None)).collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
        let up = upstream(3, LoadBalancing::Random);
        let seen = counts(&up, 3000, None);
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn a_retry_avoids_the_endpoint_that_just_failed() {
        for lb in [
            LoadBalancing::LeastRequest,
            LoadBalancing::RoundRobin,
            LoadBalancing::Random,
        ] {
            let up = upstream(3, lb);
            assert_eq!(counts(&up, 300, Some(1))[1], 0, "{lb:?}");
            // With one endpoint there is nothing else to try.
            let one = upstream(1, lb);
            assert_eq!(one.pick(Some(0)), 0);
        }
    }
}
