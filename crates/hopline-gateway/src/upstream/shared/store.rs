//! The Redis side of a shared egress scope: one connection, one Lua script
//! ([`LEASE_SCRIPT`]), one call per lease.

use std::path::PathBuf;
use std::time::Duration;

use hopline_core::config::SharedEgressConfig;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Script};

/// The lease script: GCRA for the new-connection rate, expiring holdings for in-flight
/// slots. Its header documents the keys and arguments, so other clients can join a scope.
pub const LEASE_SCRIPT: &str = include_str!("lease.lua");

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `shared` is not a URL Redis understands.
    #[error("egress.shared: {0}")]
    Url(#[source] redis::RedisError),
    /// The `ca` file could not be read.
    #[error("egress.ca {path}: {source}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `ca` file holds no usable CA certificate.
    #[error("egress.ca")]
    CaPem(#[source] hopline_tls::TlsFileError),
    /// Redis did not answer within the bound.
    #[error("Redis did not answer within {0:?}")]
    Slow(Duration),
    /// Connecting, authenticating or the call failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The script answered something else than four integers.
    #[error("Redis: unexpected lease answer")]
    Answer,
}

/// The longest a connection to Redis may take (TCP, TLS, AUTH, the script's load).
const CONNECT_LIMIT: Duration = Duration::from_secs(1);

/// What a lease call asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseRequest {
    /// The scope's new connections per second (0: not limited).
    pub rate: u32,
    /// How many connections the scope may open at once.
    pub burst: u32,
    /// Connection tokens wanted now.
    pub tokens: u32,
    /// The scope's in-flight slots (0: not limited).
    pub in_flight: u64,
    /// Slots this gateway has in use.
    pub need: u64,
    /// Slots this gateway wants to hold (in use plus spare).
    pub want: u64,
    /// How long the holding lasts unless renewed.
    pub ttl: Duration,
}

/// What Redis granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseAnswer {
    /// Connection tokens granted (fewer than asked: the scope's rate is used up).
    pub tokens: u32,
    /// When fewer were granted: how long until the next token is due.
    pub next_token: Duration,
    /// Slots this gateway now holds.
    pub held: u64,
    /// Slots the other holders of the scope hold.
    pub others: u64,
}

/// A connection to the scope's Redis.
pub struct Store {
    client: Client,
    conn: Option<MultiplexedConnection>,
    script: Script,
    keys: [String; 3],
    holder: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("keys", &self.keys)
            .field("holder", &self.holder)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

/// The Redis keys of `scope`, in the script's `KEYS` order. The `{scope}` hash tag keeps
/// them in one slot of a Redis Cluster.
pub fn keys(scope: &str) -> [String; 3] {
    [
        format!("hopline:{{{scope}}}:rate"),
        format!("hopline:{{{scope}}}:held"),
        format!("hopline:{{{scope}}}:expiry"),
    ]
}

impl Store {
    /// A store for `config` (no connection yet); the password is read from the environment
    /// variable `config.password_env` now.
    pub fn new(config: &SharedEgressConfig, holder: String) -> Result<Store, StoreError> {
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(StoreError::Url)?;
        if let Ok(password) = std::env::var(&config.password_env) {
            let redis = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis);
        }
        let client = match &config.ca {
            Some(path) => {
                // Parsed now, so a bad file stops `serve` instead of every connect failing.
                hopline_tls::files::roots(path).map_err(StoreError::CaPem)?;
                let root_cert = std::fs::read(path).map_err(|source| StoreError::Ca {
                    path: path.clone(),
                    source,
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                Client::build_with_tls(info, certs).map_err(StoreError::Url)?
            }
            None => Client::open(info).map_err(StoreError::Url)?,
        };
        Ok(Store {
            client,
            conn: None,
            script: Script::new(LEASE_SCRIPT),
            keys: keys(&config.scope),
            holder,
        })
    }

    /// One lease call, bounded by `limit`; connecting first if need be (connect,
    /// authenticate, load the script), bounded by `max(limit, 1 s)` — a connection is
    /// made ahead of need or while the local share is in force, never while a request
    /// waits. A failed or slow call drops the connection, so the next one starts afresh.
    pub async fn lease(
        &mut self,
        req: &LeaseRequest,
        limit: Duration,
    ) -> Result<LeaseAnswer, StoreError> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let bound = limit.max(CONNECT_LIMIT);
                match tokio::time::timeout(bound, self.connect()).await {
                    Ok(c) => c?,
                    Err(_) => return Err(StoreError::Slow(bound)),
                }
            }
        };
        let conn = self.conn.insert(conn);
        let call = Self::call(&self.script, &self.keys, &self.holder, conn, req);
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(StoreError::Slow(limit))
            }
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection, StoreError> {
        let config = AsyncConnectionConfig::new();
        let mut c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.script.load_async(&mut c).await?;
        Ok(c)
    }

    async fn call(
        script: &Script,
        keys: &[String; 3],
        holder: &str,
        conn: &mut MultiplexedConnection,
        req: &LeaseRequest,
    ) -> Result<LeaseAnswer, StoreError> {
        let mut call = script.prepare_invoke();
        for k in keys {
            call.key(k);
        }
        call.arg(holder)
            .arg(req.rate)
            .arg(req.burst)
            .arg(req.tokens)
            .arg(req.in_flight)
            .arg(req.need)
            .arg(req.want)
            .arg(req.ttl.as_millis() as u64);
        let answer: Vec<i64> = call.invoke_async(conn).await?;
        let [tokens, wait_us, held, others] = answer[..] else {
            return Err(StoreError::Answer);
        };
        Ok(clamped(
            req,
            LeaseAnswer {
                tokens: u32::try_from(tokens).map_err(|_| StoreError::Answer)?,
                next_token: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
                held: u64::try_from(held).map_err(|_| StoreError::Answer)?,
                others: u64::try_from(others).map_err(|_| StoreError::Answer)?,
            },
        ))
    }
}

/// Longest wait for the next token an answer may say (the lease task asks again after it).
const MAX_NEXT_TOKEN: Duration = Duration::from_secs(1);

/// An answer held to what was asked: never more tokens than asked, never more slots than
/// wanted, the next token within a second. A store that answers more (compromised, or a
/// spoofed plaintext connection) cannot open the NAT budget beyond what this gateway asked.
fn clamped(req: &LeaseRequest, a: LeaseAnswer) -> LeaseAnswer {
    LeaseAnswer {
        tokens: a.tokens.min(req.tokens),
        next_token: a.next_token.min(MAX_NEXT_TOKEN),
        held: a.held.min(req.want),
        others: a.others,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_never_grants_more_than_was_asked() {
        let req = LeaseRequest {
            rate: 100,
            burst: 10,
            tokens: 5,
            in_flight: 50,
            need: 3,
            want: 8,
            ttl: Duration::from_secs(10),
        };
        let lying = LeaseAnswer {
            tokens: u32::MAX,
            next_token: Duration::from_secs(86_400),
            held: u64::MAX,
            others: 7,
        };
        let a = clamped(&req, lying);
        assert_eq!((a.tokens, a.held, a.others), (5, 8, 7));
        assert_eq!(a.next_token, Duration::from_secs(1));
        let honest = LeaseAnswer {
            tokens: 2,
            next_token: Duration::from_millis(30),
            held: 4,
            others: 0,
        };
        assert_eq!(clamped(&req, honest), honest);
    }
}
