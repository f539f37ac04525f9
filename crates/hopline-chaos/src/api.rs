//! The REST API, compatible with Toxiproxy 2.12: same paths, JSON shapes, status codes,
//! error texts, content types and headers, so existing Toxiproxy clients drive
//! `hopline chaos` unchanged.
//!
//! As Toxiproxy's: every answer carries `X-Toxiproxy-Request-Id`; a browser-like user
//! agent (`Mozilla/…`) gets 403, so a web page cannot drive the proxy across sites (and,
//! beyond Toxiproxy, so does any `Origin` and a `Host` that is a name other than
//! `localhost` or one given with `--api-allowed-host`: DNS rebinding); a
//! known path with the wrong method gets 405 with no body; an unknown path (a trailing
//! slash included) gets `404 page not found`; errors are `{"error": …, "status": …}`
//! written as Go's `http.Error` writes them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hopline_h1::small::{Limits, Reply};
use hopline_h1::RequestHead;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::registry::{ApiError, ProxySpec, ProxyStats, Registry};
use crate::toxic::Toxic;

/// The Toxiproxy API version this server mirrors.
pub(crate) const VERSION: &str = "2.12.0";

const JSON: &str = "application/json";
/// What Go's `http.Error` sends.
const TEXT: &str = "text/plain; charset=utf-8";

/// Switches of the API server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve `/metrics` with per-proxy counters (Toxiproxy's `-proxy-metrics`).
    pub proxy_metrics: bool,
    /// Host names (beyond IP literals and `localhost`) the API answers to
    /// (`--api-allowed-host`); another name in `Host` is answered 403.
    pub allowed_hosts: Vec<String>,
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    options: Options,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let ids = Arc::new(RequestIds::default());
    let limits = Limits {
        allowed_hosts: options.allowed_hosts.clone(),
        hosts_setting: "--api-allowed-host",
        ..Limits::default()
    };
    let proxy_metrics = options.proxy_metrics;
    hopline_h1::small::serve(listener, limits, shutdown, move |head, body| {
        let (registry, ids) = (registry.clone(), ids.clone());
        async move {
            let mut reply = answer(&registry, proxy_metrics, &head, &body).await;
            reply.headers.push(("x-toxiproxy-request-id", ids.next()));
            reply
        }
    })
    .await;
}

/// Request ids in the shape of Toxiproxy's (20 characters of base32hex).
#[derive(Debug, Default)]
struct RequestIds(AtomicU64);

impl RequestIds {
    fn next(&self) -> String {
        const DIGITS: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let v = (u128::from(t) << 40) ^ u128::from(n) ^ (u128::from(std::process::id()) << 20);
        (0..20)
            .map(|i| char::from(DIGITS[((v >> (5 * (19 - i))) & 31) as usize]))
            .collect()
    }
}

fn ok(status: u16, v: Option<Value>) -> Reply {
    Reply::new(status, JSON, v.map(|v| v.to_string()).unwrap_or_default())
}

/// An error as Go's `http.Error` writes it: plain text content type, `nosniff`, the
/// JSON body and a newline.
fn error_reply(status: u16, body: String) -> Reply {
    let mut r = Reply::new(status, TEXT, body + "\n");
    r.headers.push(("x-content-type-options", "nosniff".into()));
    r
}

fn api_error(e: &ApiError) -> Reply {
    error_reply(
        e.status(),
        json!({"error": e.to_string(), "status": e.status()}).to_string(),
    )
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequestBody(e.to_string()))
}

/// The methods a known path takes, or `None` for an unknown path.
fn methods(parts: &[&str]) -> Option<&'static [&'static str]> {
    Some(match parts {
        ["version"] => &["GET"],
        ["reset"] | ["populate"] => &["POST"],
        ["metrics"] => &["GET"],
        ["proxies"] | ["proxies", _, "toxics"] => &["GET", "POST"],
        ["proxies", _] | ["proxies", _, "toxics", _] => &["GET", "POST", "PATCH", "DELETE"],
        _ => return None,
    })
}

/// Answers one API request.
pub(crate) async fn answer(
    r: &Registry,
    proxy_metrics: bool,
    head: &RequestHead,
    body: &[u8],
) -> Reply {
    if head
        .headers
        .get("user-agent")
        .is_some_and(|ua| ua.starts_with(b"Mozilla/"))
    {
        return error_reply(403, "User agent not allowed".into());
    }
    let method = head.method_str();
    let path = head.path();
    // Exact segments: `/proxies/` is not `/proxies` (as gorilla/mux routes them).
    let parts: Vec<&str> = path.strip_prefix('/').unwrap_or("\0").split('/').collect();
    let known = methods(&parts).filter(|_| !parts.iter().any(|p| p.is_empty()));
    let known = known.filter(|_| parts != ["metrics"] || proxy_metrics);
    match known {
        None => return error_reply(404, "404 page not found".into()),
        Some(allowed) if !allowed.contains(&method) => return Reply::new(405, TEXT, ""),
        Some(_) => {}
    }
    match route(r, method, &parts, body).await {
        Ok(reply) => reply,
        Err(e) => api_error(&e),
    }
}

async fn route(r: &Registry, method: &str, parts: &[&str], body: &[u8]) -> Result<Reply, ApiError> {
    Ok(match (method, parts) {
        ("GET", ["version"]) => Reply::new(
            200,
            "application/json;charset=utf-8",
            format!("{{\"version\": \"{VERSION}\"}}\n"),
        ),
        ("GET", ["metrics"]) => Reply::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(r).await,
        ),
        ("POST", ["reset"]) => {
            r.reset().await?;
            ok(204, None)
        }
        ("GET", ["proxies"]) => ok(200, Some(r.list().await)),
        ("POST", ["proxies"]) => {
            let v = parse(body)?;
            let toxics = toxics_of(&v)?;
            ok(
                201,
                Some(r.create(ProxySpec::from_json(&v)?, toxics).await?),
            )
        }
        ("POST", ["populate"]) => populate(r, body).await?,
        ("GET", ["proxies", name]) => ok(200, Some(r.get(name).await?)),
        ("POST" | "PATCH", ["proxies", name]) => {
            // Toxiproxy checks the proxy before it reads the body.
            r.get(name).await?;
            ok(200, Some(r.update(name, &parse(body)?).await?))
        }
        ("DELETE", ["proxies", name]) => {
            r.delete(name).await?;
            ok(204, None)
        }
        ("GET", ["proxies", name, "toxics"]) => ok(200, Some(r.toxics(name).await?)),
        ("POST", ["proxies", name, "toxics"]) => {
            r.get(name).await?;
            let t = Toxic::from_json(&parse(body)?)?;
            ok(200, Some(r.add_toxic(name, t).await?))
        }
        ("GET", ["proxies", name, "toxics", toxic]) => ok(200, Some(r.toxic(name, toxic).await?)),
        ("POST" | "PATCH", ["proxies", name, "toxics", toxic]) => {
            r.get(name).await?;
            ok(200, Some(r.update_toxic(name, toxic, &parse(body)?).await?))
        }
        ("DELETE", ["proxies", name, "toxics", toxic]) => {
            r.delete_toxic(name, toxic).await?;
            ok(204, None)
        }
        _ => Reply::new(405, TEXT, ""),
    })
}

fn toxics_of(v: &Value) -> Result<Vec<Toxic>, ApiError> {
    match v.get("toxics") {
        Some(Value::Array(list)) => list
            .iter()
            .map(|t| Toxic::from_json(t).map_err(ApiError::from))
            .collect(),
        _ => Ok(Vec::new()),
    }
}

/// `POST /populate`: 201 with `{"proxies": [...]}`; on a failure, the failure's status
/// with `{"error", "status", "proxies"}` listing the proxies handled before it.
async fn populate(r: &Registry, body: &[u8]) -> Result<Reply, ApiError> {
    let v = parse(body)?;
    let list = v.as_array().ok_or_else(|| {
        ApiError::BadRequestBody("json: cannot unmarshal object into a list of proxies".into())
    })?;
    let (proxies, error) = r.populate(list).await;
    Ok(match error {
        None => ok(201, Some(json!({"proxies": proxies}))),
        Some(e) => Reply::new(
            e.status(),
            JSON,
            json!({"error": e.to_string(), "status": e.status(), "proxies": proxies}).to_string(),
        ),
    })
}

/// Toxiproxy's proxy metrics, plus hopline's counters of connections and of what the NAT
/// model did to them.
async fn metrics(r: &Registry) -> String {
    let mut out = String::new();
    let stats = r.stats().await;
    let families: [(&str, &str); 2] = [
        (
            "toxiproxy_proxy_received_bytes_total",
            "Bytes read from the source, per proxy and direction",
        ),
        (
            "toxiproxy_proxy_sent_bytes_total",
            "Bytes written to the destination, per proxy and direction",
        ),
    ];
    for (i, (family, help)) in families.iter().enumerate() {
        out.push_str(&format!(
            "# HELP {family} {help}\n# TYPE {family} counter\n"
        ));
        for (name, listen, upstream, s) in &stats {
            for (dir, d) in [("upstream", &s.upstream), ("downstream", &s.downstream)] {
                let n = if i == 0 { &d.received } else { &d.sent };
                out.push_str(&format!(
                    "{family}{{direction=\"{dir}\",listener=\"{}\",proxy=\"{}\",upstream=\"{}\"}} {}\n",
                    escape(listen),
                    escape(name),
                    escape(upstream),
                    n.load(Ordering::Relaxed)
                ));
            }
        }
    }
    type Count = fn(&ProxyStats) -> u64;
    let counters: [(&str, &str, Count); 3] = [
        (
            "hopline_chaos_connections_total",
            "Connections accepted per proxy",
            |s| s.connections.load(Ordering::Relaxed),
        ),
        (
            "hopline_chaos_nat_stalled_total",
            "Connections the NAT model (conn_rate_limit) stalled",
            |s| s.nat_stalled.load(Ordering::Relaxed),
        ),
        (
            "hopline_chaos_nat_reset_total",
            "Connections the NAT model reset after max_stall",
            |s| s.nat_reset.load(Ordering::Relaxed),
        ),
    ];
    for (family, help, get) in counters {
        out.push_str(&format!(
            "# HELP {family} {help}\n# TYPE {family} counter\n"
        ));
        for (name, _, _, s) in &stats {
            out.push_str(&format!(
                "{family}{{proxy=\"{}\"}} {}\n",
                escape(name),
                get(s)
            ));
        }
    }
    out
}

/// A Prometheus label value.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
