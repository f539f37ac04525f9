//! The set of proxies: create, update, delete, toxics, reset — what the API and the
//! config file drive.
//!
//! The lifecycle is Toxiproxy 2.12's, without its races: a call that stops a proxy
//! (disable, delete, a listen change) returns only once the listener is closed and the
//! proxy's connections are dropped, so a connect right after it is refused and a restart
//! re-binds the same port; listeners set `SO_REUSEADDR`, as Go's do; a failed bind leaves
//! the proxy disabled and says why. An update that changes nothing does nothing, and a
//! change of upstream alone keeps the listener (new connections go to the new upstream).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Mutex as AsyncMutex};
use tokio::task::{JoinHandle, JoinSet};

use crate::http::ClientRates;
use crate::pipe::{pipe, reset, Dice, DirectionStats, ToxicList};
use crate::rng::Rng;
use crate::toxic::{Toxic, ToxicError, ToxicKind};

/// Upstream connect limit for a proxied connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an API call failed: Toxiproxy 2.12's errors, with its texts and status codes.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404.
    #[error("proxy not found")]
    ProxyNotFound,
    /// 404.
    #[error("toxic not found")]
    ToxicNotFound,
    /// 409.
    #[error("proxy already exists")]
    ProxyExists,
    /// 409.
    #[error("toxic already exists")]
    ToxicExists,
    /// 400, e.g. `missing required field: name at proxy 2`.
    #[error("missing required field: {0}")]
    MissingField(String),
    /// 400: the body is not what the call takes.
    #[error("bad request body: {0}")]
    BadRequestBody(String),
    /// 400.
    #[error("stream was invalid, can be either upstream or downstream")]
    InvalidStream,
    /// 400.
    #[error("invalid toxic type")]
    InvalidToxicType,
    /// 400: an HTTP toxic on a proxy that does not parse HTTP (hopline's toxics).
    #[error("toxic type {0} needs a proxy created with \"http\": true")]
    NeedsHttp(&'static str),
    /// 500: the listen address could not be bound (the text is Go's, as Toxiproxy shows it).
    #[error("listen tcp {addr}: {}", go_text(.source))]
    Listen {
        /// Address.
        addr: String,
        /// Why.
        source: io::Error,
    },
}

/// An OS error worded as Go's `net` package words it.
fn go_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "bind: address already in use".into(),
        io::ErrorKind::AddrNotAvailable => "bind: cannot assign requested address".into(),
        io::ErrorKind::PermissionDenied => "bind: permission denied".into(),
        _ => e.to_string(),
    }
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::ProxyNotFound | ApiError::ToxicNotFound => 404,
            ApiError::ProxyExists | ApiError::ToxicExists => 409,
            ApiError::MissingField(_)
            | ApiError::BadRequestBody(_)
            | ApiError::InvalidStream
            | ApiError::InvalidToxicType
            | ApiError::NeedsHttp(_) => 400,
            ApiError::Listen { .. } => 500,
        }
    }
}

impl From<ToxicError> for ApiError {
    fn from(e: ToxicError) -> Self {
        match e {
            ToxicError::UnknownType(_) | ToxicError::MissingType => ApiError::InvalidToxicType,
            ToxicError::BadStream(_) => ApiError::InvalidStream,
            other => ApiError::BadRequestBody(other.to_string()),
        }
    }
}

/// How a proxy is described when created.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySpec {
    /// Unique name.
    pub name: String,
    /// Listen address (`127.0.0.1:0` picks a port).
    pub listen: String,
    /// Upstream `host:port`.
    pub upstream: String,
    /// Listening or not.
    pub enabled: bool,
    /// Parse HTTP/1.1 so HTTP toxics can act.
    pub http: bool,
}

impl ProxySpec {
    /// Reads Toxiproxy's proxy JSON (`name`, `listen`, `upstream`, `enabled`) plus `http`.
    pub fn from_json(v: &Value) -> Result<ProxySpec, ApiError> {
        Self::from_json_at(v, None)
    }

    /// The same, naming the proxy's position in a `/populate` list in errors.
    pub fn from_json_at(v: &Value, at: Option<usize>) -> Result<ProxySpec, ApiError> {
        let o = v
            .as_object()
            .ok_or_else(|| ApiError::BadRequestBody("a proxy must be a JSON object".into()))?;
        let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        let missing = |field: &str| {
            ApiError::MissingField(match at {
                Some(i) => format!("{field} at proxy {i}"),
                None => field.to_string(),
            })
        };
        let name = s("name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| missing("name"))?;
        let upstream = s("upstream")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| missing("upstream"))?;
        Ok(ProxySpec {
            name,
            listen: s("listen")
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "127.0.0.1:0".into()),
            upstream,
            enabled: o.get("enabled").and_then(Value::as_bool).unwrap_or(true),
            http: o.get("http").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// Counters of one proxy, kept for the life of the server (a proxy deleted and created
/// again under the same name goes on counting, as Prometheus counters must).
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Client → upstream.
    pub upstream: DirectionStats,
    /// Upstream → client.
    pub downstream: DirectionStats,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections the NAT model stalled at least once (`conn_rate_limit`).
    pub nat_stalled: AtomicU64,
    /// Connections the NAT model reset after `max_stall`.
    pub nat_reset: AtomicU64,
}

/// What a proxy's connections share.
#[derive(Debug)]
struct Shared {
    upstream: Arc<RwLock<String>>,
    http: bool,
    seed: u64,
    toxics: watch::Receiver<ToxicList>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    rates: ClientRates,
    stats: Arc<ProxyStats>,
}

/// A running accept loop: tell it to stop, then wait for it.
#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Proxy {
    spec: ProxySpec,
    bound: Option<SocketAddr>,
    toxics: watch::Sender<ToxicList>,
    upstream: Arc<RwLock<String>>,
    stats: Arc<ProxyStats>,
    running: Option<Running>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.task.abort();
        }
    }
}

impl Proxy {
    fn new(spec: ProxySpec, toxics: Vec<Toxic>, stats: Arc<ProxyStats>) -> Proxy {
        let (tx, _) = watch::channel(Arc::new(toxics));
        Proxy {
            upstream: Arc::new(RwLock::new(spec.upstream.clone())),
            spec,
            bound: None,
            toxics: tx,
            stats,
            running: None,
        }
    }

    /// The listen address as Toxiproxy shows it: the bound one once started.
    fn listen(&self) -> String {
        self.bound
            .map(|a| a.to_string())
            .unwrap_or_else(|| self.spec.listen.clone())
    }

    fn to_json(&self) -> Value {
        let toxics: Vec<Value> = self.toxics.borrow().iter().map(Toxic::to_json).collect();
        json!({
            "name": self.spec.name,
            "listen": self.listen(),
            "upstream": self.spec.upstream,
            "enabled": self.spec.enabled,
            "http": self.spec.http,
            "toxics": toxics,
        })
    }

    /// Binds and starts accepting (when enabled and not running). A failed bind leaves the
    /// proxy disabled.
    async fn start(&mut self, seed: u64) -> Result<(), ApiError> {
        if !self.spec.enabled || self.running.is_some() {
            return Ok(());
        }
        // Re-enabling binds the address the proxy had, so clients can reconnect to it.
        let addr = self.listen();
        let listener = match bind(&addr).await {
            Ok(l) => l,
            Err(source) => {
                self.spec.enabled = false;
                return Err(ApiError::Listen { addr, source });
            }
        };
        self.bound = listener.local_addr().ok();
        let shared = Arc::new(Shared {
            upstream: self.upstream.clone(),
            http: self.spec.http,
            // Same seed, same proxy name: same draws, run after run.
            seed: seed ^ fnv(self.spec.name.as_bytes()),
            toxics: self.toxics.subscribe(),
            buckets: Mutex::new(HashMap::new()),
            rates: ClientRates::default(),
            stats: self.stats.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared, stopped));
        self.running = Some(Running { stop, task });
        Ok(())
    }

    /// Stops accepting, closes the listener and drops every connection, then returns.
    async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(true);
            let _ = r.task.await;
        }
    }
}

/// Binds `addr` (a host name resolves to its first IPv4 address, as Go's listener does)
/// with `SO_REUSEADDR`, so a proxy restarted while old connections linger in TIME_WAIT
/// gets its port back.
async fn bind(addr: &str) -> io::Result<TcpListener> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
    let target = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))?;
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(target)?;
    socket.listen(1024)
}

/// Resolves a listen address for comparison (`localhost:P` is `127.0.0.1:P`).
async fn resolve(addr: &str) -> Option<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await.ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stop_requested(&mut stopped) => break,
            a = listener.accept() => match a {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    conns.spawn(async move { connection(stream, peer, &shared).await });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
        while conns.try_join_next().is_some() {}
    }
    // Listener first (new connects are refused from here on), then every connection.
    drop(listener);
    conns.shutdown().await;
}

async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, before the caller awaits again.
    let _ = rx.wait_for(|s| *s).await;
}

/// Takes a token from `name`'s bucket (`rate`/s, size `burst`).
fn take_token(shared: &Shared, name: &str, rate: u64, burst: u64) -> bool {
    let mut b = shared.buckets.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let e = b.entry(name.to_string()).or_insert((burst as f64, now));
    e.0 = (e.0 + now.duration_since(e.1).as_secs_f64() * rate as f64).min(burst as f64);
    e.1 = now;
    if e.0 >= 1.0 {
        e.0 -= 1.0;
        true
    } else {
        false
    }
}

/// The NAT model: over the new-connection rate, the connection gets nothing through,
/// retried after 1 s, 2 s, 4 s … like SYN retransmissions, or reset after `max_stall`.
/// False when the connection was reset.
async fn nat_admit(client: &TcpStream, shared: &Shared, dice: &mut Dice, list: &ToxicList) -> bool {
    for t in list.iter() {
        let ToxicKind::ConnRateLimit {
            rate,
            burst,
            max_stall,
        } = t.kind
        else {
            continue;
        };
        if !dice.active(t) {
            continue;
        }
        let start = Instant::now();
        let mut wait = Duration::from_secs(1);
        let mut stalled = false;
        while !take_token(shared, &t.name, rate, burst.max(1)) {
            if !stalled {
                stalled = true;
                shared.stats.nat_stalled.fetch_add(1, Ordering::Relaxed);
            }
            if max_stall > 0 {
                let cap = Duration::from_millis(max_stall);
                if start.elapsed() + wait >= cap {
                    tokio::time::sleep(cap.saturating_sub(start.elapsed())).await;
                    shared.stats.nat_reset.fetch_add(1, Ordering::Relaxed);
                    reset(client);
                    return false;
                }
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    true
}

async fn connection(client: TcpStream, peer: SocketAddr, shared: &Shared) {
    let _ = client.set_nodelay(true);
    let n = shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut rng = Rng::new(shared.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut dice = Dice::new(Rng::new(rng.next_u64()));
    let list = shared.toxics.borrow().clone();
    if !nat_admit(&client, shared, &mut dice, &list).await {
        return;
    }
    let upstream = shared
        .upstream
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let connect = || async {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream.as_str())).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Some(s)
            }
            _ => None,
        }
    };
    if shared.http {
        crate::http::serve(
            client,
            peer.ip(),
            shared.toxics.clone(),
            dice,
            &shared.rates,
            connect,
        )
        .await;
    } else if let Some(up) = connect().await {
        let stats = (&shared.stats.upstream, &shared.stats.downstream);
        pipe(client, up, shared.toxics.clone(), &mut rng, stats).await;
    }
    // Upstream unreachable: the client connection is simply closed (a FIN), as
    // Toxiproxy closes it.
}

/// All proxies of a chaos server.
#[derive(Debug)]
pub struct Registry {
    seed: u64,
    proxies: AsyncMutex<BTreeMap<String, Proxy>>,
    stats: Mutex<BTreeMap<String, Arc<ProxyStats>>>,
}

impl Registry {
    /// An empty registry whose randomness derives from `seed`.
    pub fn new(seed: u64) -> Self {
        Registry {
            seed,
            proxies: AsyncMutex::new(BTreeMap::new()),
            stats: Mutex::new(BTreeMap::new()),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn stats_for(&self, name: &str) -> Arc<ProxyStats> {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Creates and starts a proxy (409 when the name exists; 500 and nothing created when
    /// its address cannot be bound).
    pub async fn create(&self, spec: ProxySpec, toxics: Vec<Toxic>) -> Result<Value, ApiError> {
        if let Some(t) = toxics.iter().find(|t| t.kind.is_http() && !spec.http) {
            return Err(ApiError::NeedsHttp(t.kind.type_name()));
        }
        let mut map = self.proxies.lock().await;
        if map.contains_key(&spec.name) {
            return Err(ApiError::ProxyExists);
        }
        let stats = self.stats_for(&spec.name);
        let mut p = Proxy::new(spec, toxics, stats);
        p.start(self.seed).await?;
        let v = p.to_json();
        map.insert(p.spec.name.clone(), p);
        Ok(v)
    }

    /// Every proxy, keyed by name (Toxiproxy's `GET /proxies`).
    pub async fn list(&self) -> Value {
        let map = self.proxies.lock().await;
        Value::Object(map.iter().map(|(k, p)| (k.clone(), p.to_json())).collect())
    }

    /// One proxy.
    pub async fn get(&self, name: &str) -> Result<Value, ApiError> {
        let map = self.proxies.lock().await;
        map.get(name)
            .map(Proxy::to_json)
            .ok_or(ApiError::ProxyNotFound)
    }

    /// Updates `enabled`, `listen` and/or `upstream`; only what changed is acted on.
    pub async fn update(&self, name: &str, patch: &Value) -> Result<Value, ApiError> {
        let o = patch
            .as_object()
            .ok_or_else(|| ApiError::BadRequestBody("the body must be a JSON object".into()))?;
        let mut map = self.proxies.lock().await;
        let p = map.get_mut(name).ok_or(ApiError::ProxyNotFound)?;
        if let Some(u) = o.get("upstream").and_then(Value::as_str) {
            set_upstream(p, u);
        }
        if let Some(l) = o.get("listen").and_then(Value::as_str) {
            if !same_listen(&p.listen(), l).await {
                p.stop().await;
                p.spec.listen = l.to_string();
                p.bound = None;
            }
        }
        let enabled = o
            .get("enabled")
            .and_then(Value::as_bool)
            .unwrap_or(p.spec.enabled);
        p.spec.enabled = enabled;
        if enabled {
            p.start(self.seed).await?;
        } else {
            p.stop().await;
        }
        Ok(p.to_json())
    }

    /// Removes a proxy; returns once its listener is closed and its connections dropped.
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let mut map = self.proxies.lock().await;
        let mut p = map.remove(name).ok_or(ApiError::ProxyNotFound)?;
        p.stop().await;
        // Its counters go too: names created and deleted for ever must not grow /metrics.
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        Ok(())
    }

    /// Enables every proxy and removes every toxic.
    pub async fn reset(&self) -> Result<(), ApiError> {
        let mut map = self.proxies.lock().await;
        for p in map.values_mut() {
            p.toxics.send_replace(Arc::new(Vec::new()));
            if !p.spec.enabled {
                p.spec.enabled = true;
                p.start(self.seed).await?;
            }
        }
        Ok(())
    }

    /// `POST /populate`: creates or replaces the listed proxies. A listed proxy equal to
    /// an existing one (listen addresses compared once resolved) is kept as it is; one
    /// whose upstream alone changed keeps its listener. Stops at the first failure and
    /// returns the proxies handled before it, with the error.
    pub async fn populate(&self, list: &[Value]) -> (Vec<Value>, Option<ApiError>) {
        let specs = match list
            .iter()
            .enumerate()
            .map(|(i, v)| ProxySpec::from_json_at(v, Some(i + 1)))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(s) => s,
            Err(e) => return (Vec::new(), Some(e)),
        };
        let mut out = Vec::new();
        let mut map = self.proxies.lock().await;
        for spec in specs {
            if let Some(p) = map.get_mut(&spec.name) {
                let same = same_listen(&p.listen(), &spec.listen).await && p.spec.http == spec.http;
                if same {
                    set_upstream(p, &spec.upstream);
                    if p.spec.enabled != spec.enabled {
                        p.spec.enabled = spec.enabled;
                        if spec.enabled {
                            if let Err(e) = p.start(self.seed).await {
                                return (out, Some(e));
                            }
                        } else {
                            p.stop().await;
                        }
                    }
                    out.push(p.to_json());
                    continue;
                }
                p.stop().await;
                map.remove(&spec.name);
            }
            let stats = self.stats_for(&spec.name);
            let mut p = Proxy::new(spec, Vec::new(), stats);
            if let Err(e) = p.start(self.seed).await {
                return (out, Some(e));
            }
            out.push(p.to_json());
            map.insert(p.spec.name.clone(), p);
        }
        (out, None)
    }

    /// The toxics of a proxy.
    pub async fn toxics(&self, name: &str) -> Result<Value, ApiError> {
        let map = self.proxies.lock().await;
        let p = map.get(name).ok_or(ApiError::ProxyNotFound)?;
        let list: Vec<Value> = p.toxics.borrow().iter().map(Toxic::to_json).collect();
        Ok(Value::Array(list))
    }

    /// Adds a toxic; live connections pick it up at once.
    pub async fn add_toxic(&self, name: &str, toxic: Toxic) -> Result<Value, ApiError> {
        let map = self.proxies.lock().await;
        let p = map.get(name).ok_or(ApiError::ProxyNotFound)?;
        if toxic.kind.is_http() && !p.spec.http {
            return Err(ApiError::NeedsHttp(toxic.kind.type_name()));
        }
        if p.toxics.borrow().iter().any(|t| t.name == toxic.name) {
            return Err(ApiError::ToxicExists);
        }
        let v = toxic.to_json();
        p.toxics.send_modify(|l| Arc::make_mut(l).push(toxic));
        Ok(v)
    }

    /// One toxic.
    pub async fn toxic(&self, name: &str, toxic: &str) -> Result<Value, ApiError> {
        let map = self.proxies.lock().await;
        let p = map.get(name).ok_or(ApiError::ProxyNotFound)?;
        let list = p.toxics.borrow();
        list.iter()
            .find(|t| t.name == toxic)
            .map(Toxic::to_json)
            .ok_or(ApiError::ToxicNotFound)
    }

    /// Updates a toxic's attributes, stream or toxicity.
    pub async fn update_toxic(
        &self,
        name: &str,
        toxic: &str,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        let map = self.proxies.lock().await;
        let p = map.get(name).ok_or(ApiError::ProxyNotFound)?;
        let current = p
            .toxics
            .borrow()
            .iter()
            .find(|t| t.name == toxic)
            .cloned()
            .ok_or(ApiError::ToxicNotFound)?;
        let updated = current.updated(patch)?;
        let v = updated.to_json();
        p.toxics.send_modify(|l| {
            if let Some(slot) = Arc::make_mut(l).iter_mut().find(|t| t.name == toxic) {
                *slot = updated;
            }
        });
        Ok(v)
    }

    /// Removes a toxic.
    pub async fn delete_toxic(&self, name: &str, toxic: &str) -> Result<(), ApiError> {
        let map = self.proxies.lock().await;
        let p = map.get(name).ok_or(ApiError::ProxyNotFound)?;
        if !p.toxics.borrow().iter().any(|t| t.name == toxic) {
            return Err(ApiError::ToxicNotFound);
        }
        p.toxics
            .send_modify(|l| Arc::make_mut(l).retain(|t| t.name != toxic));
        Ok(())
    }

    /// Every proxy's counters with its current listen address and upstream, for
    /// `/metrics`: `(name, listen, upstream, stats)`.
    pub async fn stats(&self) -> Vec<(String, String, String, Arc<ProxyStats>)> {
        let map = self.proxies.lock().await;
        let known = self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
        known
            .into_iter()
            .map(|(name, stats)| {
                let (listen, upstream) = map
                    .get(&name)
                    .map(|p| (p.listen(), p.spec.upstream.clone()))
                    .unwrap_or_default();
                (name, listen, upstream, stats)
            })
            .collect()
    }
}

/// Points new connections at `upstream`; the listener and live connections stay.
fn set_upstream(p: &mut Proxy, upstream: &str) {
    if p.spec.upstream != upstream {
        p.spec.upstream = upstream.to_string();
        *p.upstream.write().unwrap_or_else(|e| e.into_inner()) = upstream.to_string();
    }
}

/// True when `wanted` names the address `current` is bound to: compared once resolved,
/// and a port of 0 (any port) matches the current one.
async fn same_listen(current: &str, wanted: &str) -> bool {
    if current == wanted {
        return true;
    }
    match (resolve(current).await, resolve(wanted).await) {
        (Some(c), Some(w)) => c.ip() == w.ip() && (c.port() == w.port() || w.port() == 0),
        _ => false,
    }
}
