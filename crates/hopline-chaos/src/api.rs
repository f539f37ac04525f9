//! The REST API, compatible with Toxiproxy 2.x: same paths, JSON shapes and status codes,
//! so existing Toxiproxy clients drive `hopline chaos` unchanged.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use hopline_h1::head::{put_decimal, put_header, put_status_line, reason_phrase};
use hopline_h1::{read_body_chunk, read_request_head, wait_first_byte, BodyDecoder};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

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
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => if let Ok((s, _)) = a {
                let r = registry.clone();
                conns.spawn(async move { connection(s, &r).await });
            },
        }
        while conns.try_join_next().is_some() {}
    }
    conns.abort_all();
}

async fn connection(mut s: TcpStream, registry: &Registry) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if wait_first_byte(&mut s, &mut buf, Duration::from_secs(120))
            .await
            .is_err()
        {
            return;
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        let Ok(head) =
            read_request_head(&mut s, &mut buf, 64 * 1024, until, Duration::from_secs(10)).await
        else {
            return;
        };
        let Ok(length) = head.body_length() else {
            return;
        };
        let mut dec = BodyDecoder::new(length);
        let mut body = Vec::new();
        loop {
            match read_body_chunk(&mut s, &mut buf, &mut dec).await {
                Ok(Some(p)) => body.extend_from_slice(&p),
                Ok(None) => break,
                Err(_) => return,
            }
            if body.len() > 1 << 20 {
                return;
            }
        }
        let (status, value) = match route(registry, head.method_str(), head.path(), &body) {
            Ok((status, v)) => (status, v),
            Err(e) => (
                e.status(),
                Some(json!({"error": e.to_string(), "status": e.status()})),
            ),
        };
        let out = render(status, value.as_ref(), head.keep_alive());
        if s.write_all(&out).await.is_err() || !head.keep_alive() {
            return;
        }
    }
}

fn render(status: u16, body: Option<&Value>, keep_alive: bool) -> BytesMut {
    let text = body.map(|v| format!("{v}\n")).unwrap_or_default();
    let mut out = BytesMut::with_capacity(128 + text.len());
    put_status_line(&mut out, status, reason_phrase(status).as_bytes());
    if body.is_some() {
        put_header(&mut out, b"content-type", b"application/json");
    }
    if !keep_alive {
        put_header(&mut out, b"connection", b"close");
    }
    out.put_slice(b"content-length: ");
    put_decimal(&mut out, text.len() as u64);
    out.put_slice(b"\r\n\r\n");
    out.put_slice(text.as_bytes());
    out
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))
}

type Reply = Result<(u16, Option<Value>), ApiError>;

/// Dispatches one API call.
pub fn route(r: &Registry, method: &str, path: &str, body: &[u8]) -> Reply {
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
fn populate(r: &Registry, v: &Value) -> Reply {
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
