//! The REST API, compatible with Toxiproxy 2.x: same paths, JSON shapes and status codes,
//! so existing Toxiproxy clients drive `hopline chaos` unchanged.

use std::sync::Arc;

use hopline_h1::small::Reply;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::registry::{ApiError, ProxySpec, Registry};
use crate::toxic::Toxic;

/// The Toxiproxy API version this server mirrors.
pub const VERSION: &str = "2.12.0";

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    hopline_h1::small::serve(listener, shutdown, move |head, body| {
        let (status, value) = match route(&registry, head.method_str(), head.path(), body) {
            Ok((status, v)) => (status, v),
            Err(e) => (
                e.status(),
                Some(json!({"error": e.to_string(), "status": e.status()})),
            ),
        };
        Reply {
            status,
            content_type: "application/json",
            body: value.map(|v| format!("{v}\n")).unwrap_or_default(),
        }
    })
    .await;
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))
}

type Answer = Result<(u16, Option<Value>), ApiError>;

/// Dispatches one API call.
pub fn route(r: &Registry, method: &str, path: &str, body: &[u8]) -> Answer {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    match (method, parts.as_slice()) {
        ("GET", ["version"]) => Ok((200, Some(json!({"version": VERSION})))),
        ("POST", ["reset"]) => r.reset().map(|()| (204, None)),
        ("GET", ["proxies"]) => Ok((200, Some(r.list()))),
        ("POST", ["proxies"]) => {
            let v = parse(body)?;
            let toxics = toxics_of(&v)?;
            r.create(ProxySpec::from_json(&v)?, toxics)
                .map(|p| (201, Some(p)))
        }
        ("POST", ["populate"]) => populate(r, &parse(body)?),
        ("GET", ["proxies", name]) => r.get(name).map(|p| (200, Some(p))),
        ("POST" | "PATCH", ["proxies", name]) => {
            r.update(name, &parse(body)?).map(|p| (200, Some(p)))
        }
        ("DELETE", ["proxies", name]) => r.delete(name).map(|()| (204, None)),
        ("GET", ["proxies", name, "toxics"]) => r.toxics(name).map(|t| (200, Some(t))),
        ("POST", ["proxies", name, "toxics"]) => {
            let t = Toxic::from_json(&parse(body)?)?;
            r.add_toxic(name, t).map(|t| (200, Some(t)))
        }
        ("GET", ["proxies", name, "toxics", toxic]) => r.toxic(name, toxic).map(|t| (200, Some(t))),
        ("POST" | "PATCH", ["proxies", name, "toxics", toxic]) => r
            .update_toxic(name, toxic, &parse(body)?)
            .map(|t| (200, Some(t))),
        ("DELETE", ["proxies", name, "toxics", toxic]) => {
            r.delete_toxic(name, toxic).map(|()| (204, None))
        }
        _ => Err(ApiError::NotFound(format!("{method} {path}"))),
    }
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

/// `POST /populate`: creates the listed proxies, replacing any whose listen address or
/// upstream differ; answers 201 with every listed proxy.
fn populate(r: &Registry, v: &Value) -> Answer {
    let list = v
        .as_array()
        .ok_or_else(|| ApiError::BadRequest("populate takes a JSON array of proxies".into()))?;
    let specs = list
        .iter()
        .map(ProxySpec::from_json)
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for spec in specs {
        if let Ok(existing) = r.get(&spec.name) {
            let same_up = existing["upstream"] == spec.upstream.as_str();
            let same_listen =
                existing["listen"] == spec.listen.as_str() || spec.listen.ends_with(":0");
            if same_up && same_listen {
                out.push(existing);
                continue;
            }
            r.delete(&spec.name)?;
        }
        out.push(r.create(spec, Vec::new())?);
    }
    Ok((201, Some(json!({"proxies": out}))))
}
