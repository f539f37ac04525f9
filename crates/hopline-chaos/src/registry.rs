//! The set of proxies: create, update, delete, toxics, reset — what the API and the
//! config file drive. Each enabled proxy owns one listener task, which owns its
//! connections: disabling or deleting a proxy drops them all.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::http::ClientRates;
use crate::pipe::{pipe, reset, Dice, ToxicList};
use crate::rng::Rng;
use crate::toxic::{Toxic, ToxicError, ToxicKind};

/// Upstream connect limit for a proxied connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an API call failed; each maps to Toxiproxy's status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404.
    #[error("{0} not found")]
    NotFound(String),
    /// 409.
    #[error("{0} already exists")]
    Conflict(String),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 400, from a toxic description.
    #[error(transparent)]
    Toxic(#[from] ToxicError),
    /// 500: the listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Why.
        source: io::Error,
    },
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::BadRequest(_) | ApiError::Toxic(_) => 400,
            ApiError::Listen { .. } => 500,
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
        let o = v
            .as_object()
            .ok_or_else(|| ApiError::BadRequest("proxy must be a JSON object".into()))?;
        let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        let name = s("name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::BadRequest("missing required field: name".into()))?;
        let upstream = s("upstream")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::BadRequest("missing required field: upstream".into()))?;
        Ok(ProxySpec {
            name,
            listen: s("listen").unwrap_or_else(|| "127.0.0.1:0".into()),
            upstream,
            enabled: o.get("enabled").and_then(Value::as_bool).unwrap_or(true),
            http: o.get("http").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// What a proxy's connections share.
#[derive(Debug)]
struct Shared {
    upstream: String,
    http: bool,
    seed: u64,
    toxics: watch::Receiver<ToxicList>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    rates: ClientRates,
    connections: AtomicU64,
}

#[derive(Debug)]
struct Proxy {
    spec: ProxySpec,
    bound: Option<SocketAddr>,
    toxics: watch::Sender<ToxicList>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Proxy {
    fn to_json(&self) -> Value {
        let listen = self
            .bound
            .map(|a| a.to_string())
            .unwrap_or_else(|| self.spec.listen.clone());
        let toxics: Vec<Value> = self.toxics.borrow().iter().map(Toxic::to_json).collect();
        json!({
            "name": self.spec.name,
            "listen": listen,
            "upstream": self.spec.upstream,
            "enabled": self.spec.enabled,
            "http": self.spec.http,
            "toxics": toxics,
        })
    }

    fn start(&mut self, seed: u64) -> Result<(), ApiError> {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if !self.spec.enabled {
            return Ok(());
        }
        // Re-enabling binds the address the proxy had, so clients can reconnect to it.
        let addr = self
            .bound
            .map(|a| a.to_string())
            .unwrap_or_else(|| self.spec.listen.clone());
        let listen_err = |source| ApiError::Listen {
            addr: addr.clone(),
            source,
        };
        let std_listener = std::net::TcpListener::bind(addr.as_str()).map_err(listen_err)?;
        std_listener.set_nonblocking(true).map_err(listen_err)?;
        let listener = TcpListener::from_std(std_listener).map_err(listen_err)?;
        self.bound = listener.local_addr().ok();
        let shared = Arc::new(Shared {
            upstream: self.spec.upstream.clone(),
            http: self.spec.http,
            // Same seed, same proxy name: same draws, run after run.
            seed: seed ^ fnv(self.spec.name.as_bytes()),
            toxics: self.toxics.subscribe(),
            buckets: Mutex::new(HashMap::new()),
            rates: ClientRates::default(),
            connections: AtomicU64::new(0),
        });
        self.task = Some(tokio::spawn(accept_loop(listener, shared)));
        Ok(())
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                conns.spawn(async move { connection(stream, peer, &shared).await });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
        while conns.try_join_next().is_some() {}
    }
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

async fn connection(client: TcpStream, peer: SocketAddr, shared: &Shared) {
    let _ = client.set_nodelay(true);
    let n = shared.connections.fetch_add(1, Ordering::Relaxed);
    let mut rng = Rng::new(shared.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut dice = Dice::new(Rng::new(rng.next_u64()));
    let list = shared.toxics.borrow().clone();
    // The NAT model: over the new-connection rate, the connection gets nothing through,
    // retried after 1 s, 2 s, 4 s … like SYN retransmissions, or reset after max_stall.
    if let Some(t) = list
        .iter()
        .find(|t| matches!(t.kind, ToxicKind::ConnRateLimit { .. }))
    {
        if let ToxicKind::ConnRateLimit {
            rate,
            burst,
            max_stall,
        } = t.kind
        {
            if dice.active(t) {
                let start = Instant::now();
                let mut wait = Duration::from_secs(1);
                while !take_token(shared, &t.name, rate, burst.max(1)) {
                    if max_stall > 0 {
                        let cap = Duration::from_millis(max_stall);
                        if start.elapsed() + wait >= cap {
                            tokio::time::sleep(cap.saturating_sub(start.elapsed())).await;
                            reset(&client);
                            return;
                        }
                    }
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }
    let connect = || async {
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect(shared.upstream.as_str()),
        )
        .await
        {
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
        pipe(client, up, shared.toxics.clone(), &mut rng).await;
    } else {
        // Upstream unreachable: the client sees its connection reset, as it would directly.
        reset(&client);
    }
}

/// All proxies of a chaos server.
#[derive(Debug)]
pub struct Registry {
    seed: u64,
    proxies: Mutex<BTreeMap<String, Proxy>>,
}

impl Registry {
    /// An empty registry whose randomness derives from `seed`.
    pub fn new(seed: u64) -> Self {
        Registry {
            seed,
            proxies: Mutex::new(BTreeMap::new()),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Proxy>> {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates and starts a proxy (409 when the name exists).
    pub fn create(&self, spec: ProxySpec, toxics: Vec<Toxic>) -> Result<Value, ApiError> {
        let mut map = self.lock();
        if map.contains_key(&spec.name) {
            return Err(ApiError::Conflict(format!("proxy {}", spec.name)));
        }
        let (tx, _) = watch::channel(Arc::new(toxics));
        let mut p = Proxy {
            spec,
            bound: None,
            toxics: tx,
            task: None,
        };
        p.start(self.seed)?;
        let v = p.to_json();
        map.insert(p.spec.name.clone(), p);
        Ok(v)
    }

    /// Every proxy, keyed by name (Toxiproxy's `GET /proxies`).
    pub fn list(&self) -> Value {
        let map = self.lock();
        Value::Object(map.iter().map(|(k, p)| (k.clone(), p.to_json())).collect())
    }

    /// One proxy.
    pub fn get(&self, name: &str) -> Result<Value, ApiError> {
        self.lock()
            .get(name)
            .map(Proxy::to_json)
            .ok_or_else(|| ApiError::NotFound(format!("proxy {name}")))
    }

    /// Updates `enabled`, `listen` and/or `upstream`.
    pub fn update(&self, name: &str, patch: &Value) -> Result<Value, ApiError> {
        let mut map = self.lock();
        let p = map
            .get_mut(name)
            .ok_or_else(|| ApiError::NotFound(format!("proxy {name}")))?;
        let o = patch
            .as_object()
            .ok_or_else(|| ApiError::BadRequest("body must be a JSON object".into()))?;
        if let Some(e) = o.get("enabled").and_then(Value::as_bool) {
            p.spec.enabled = e;
        }
        if let Some(l) = o.get("listen").and_then(Value::as_str) {
            p.spec.listen = l.to_string();
            p.bound = None;
        }
        if let Some(u) = o.get("upstream").and_then(Value::as_str) {
            p.spec.upstream = u.to_string();
        }
        p.start(self.seed)?;
        Ok(p.to_json())
    }

    /// Removes a proxy and drops its connections.
    pub fn delete(&self, name: &str) -> Result<(), ApiError> {
        self.lock()
            .remove(name)
            .map(drop)
            .ok_or_else(|| ApiError::NotFound(format!("proxy {name}")))
    }

    /// Enables every proxy and removes every toxic.
    pub fn reset(&self) -> Result<(), ApiError> {
        let mut map = self.lock();
        for p in map.values_mut() {
            p.toxics.send_replace(Arc::new(Vec::new()));
            if !p.spec.enabled {
                p.spec.enabled = true;
                p.start(self.seed)?;
            }
        }
        Ok(())
    }

    /// The toxics of a proxy.
    pub fn toxics(&self, name: &str) -> Result<Value, ApiError> {
        let map = self.lock();
        let p = map
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("proxy {name}")))?;
        let list: Vec<Value> = p.toxics.borrow().iter().map(Toxic::to_json).collect();
        Ok(Value::Array(list))
    }

    /// Adds a toxic; live connections pick it up at once.
    pub fn add_toxic(&self, name: &str, toxic: Toxic) -> Result<Value, ApiError> {
        let map = self.lock();
        let p = map
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("proxy {name}")))?;
        if p.toxics.borrow().iter().any(|t| t.name == toxic.name) {
            return Err(ApiError::Conflict(format!("toxic {}", toxic.name)));
        }
        let v = toxic.to_json();
        p.toxics.send_modify(|l| Arc::make_mut(l).push(toxic));
        Ok(v)
    }

    /// One toxic.
    pub fn toxic(&self, name: &str, toxic: &str) -> Result<Value, ApiError> {
        let map = self.lock();
        let p = map
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("proxy {name}")))?;
        let list = p.toxics.borrow();
        list.iter()
            .find(|t| t.name == toxic)
            .map(Toxic::to_json)
            .ok_or_else(|| ApiError::NotFound(format!("toxic {toxic}")))
    }

    /// Updates a toxic's attributes, stream or toxicity.
    pub fn update_toxic(&self, name: &str, toxic: &str, patch: &Value) -> Result<Value, ApiError> {
        let map = self.lock();
        let p = map
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("proxy {name}")))?;
        let current = p
            .toxics
            .borrow()
            .iter()
            .find(|t| t.name == toxic)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("toxic {toxic}")))?;
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
    pub fn delete_toxic(&self, name: &str, toxic: &str) -> Result<(), ApiError> {
        let map = self.lock();
        let p = map
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("proxy {name}")))?;
        if !p.toxics.borrow().iter().any(|t| t.name == toxic) {
            return Err(ApiError::NotFound(format!("toxic {toxic}")));
        }
        p.toxics
            .send_modify(|l| Arc::make_mut(l).retain(|t| t.name != toxic));
        Ok(())
    }
}
