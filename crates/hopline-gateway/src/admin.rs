//! The admin API, on its own listener (loopback by default): `/healthz`, `/readyz`
//! (503 while draining), `/config` (effective timeouts as JSON) and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use hopline_core::config::{RouteAction, Zone};
use hopline_h1::head::{put_decimal, put_header, put_status_line, reason_phrase};
use hopline_h1::{read_request_head, wait_first_byte};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::gateway::{Current, Gateway};

/// Serves the admin API until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    current: Arc<Current>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => if let Ok((s, _)) = a {
                let current = current.clone();
                conns.spawn(async move { connection(s, &current).await });
            },
        }
        while conns.try_join_next().is_some() {}
    }
    conns.abort_all();
}

async fn connection(mut s: TcpStream, current: &Current) {
    let mut buf = BytesMut::with_capacity(2048);
    loop {
        if wait_first_byte(&mut s, &mut buf, Duration::from_secs(60))
            .await
            .is_err()
        {
            return;
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        let Ok(head) =
            read_request_head(&mut s, &mut buf, 16 * 1024, until, Duration::from_secs(5)).await
        else {
            return;
        };
        let gw = current.load();
        let (status, ctype, body) = match (head.method_str(), head.path()) {
            ("GET", "/healthz") => (200, "text/plain", "ok\n".to_string()),
            ("GET", "/readyz") if gw.draining() => (503, "text/plain", "draining\n".to_string()),
            ("GET", "/readyz") => (200, "text/plain", "ready\n".to_string()),
            ("GET", "/config") => (
                200,
                "application/json",
                format!("{:#}\n", effective_config(&gw)),
            ),
            ("GET", "/metrics") => (
                200,
                crate::metrics::CONTENT_TYPE,
                gw.metrics.encode(&gw.in_flight()),
            ),
            (_, "/healthz" | "/readyz" | "/config" | "/metrics") => {
                (405, "text/plain", "method not allowed\n".into())
            }
            _ => (
                404,
                "text/plain",
                "not found: try /healthz /readyz /config /metrics\n".into(),
            ),
        };
        let mut out = BytesMut::with_capacity(body.len() + 128);
        put_status_line(&mut out, status, reason_phrase(status).as_bytes());
        put_header(&mut out, b"content-type", ctype.as_bytes());
        out.put_slice(b"content-length: ");
        put_decimal(&mut out, body.len() as u64);
        out.put_slice(b"\r\n\r\n");
        out.put_slice(body.as_bytes());
        if s.write_all(&out).await.is_err() || !head.keep_alive() {
            return;
        }
    }
}

fn ms(d: Duration) -> Value {
    json!(d.as_millis() as u64)
}

/// The effective configuration: every route with its deadline and, for each upstream call,
/// the connect and attempt timeouts as capped by that deadline.
pub fn effective_config(gw: &Gateway) -> Value {
    let c = &gw.config;
    let s = &c.server;
    let deadline_of = |t: Duration| t.min(c.deadline.max);
    let up_json = |name: &str, cap: Duration, call_timeout: Option<Duration>| -> Value {
        let Some(u) = c.upstream(name) else {
            return Value::Null;
        };
        let cap = call_timeout.map_or(cap, |t| t.min(cap));
        json!({
            "upstream": u.name,
            "zone": match u.zone { Zone::Internal => "internal", Zone::Egress => "egress" },
            "connect_timeout_ms": ms(u.connect_timeout.min(cap)),
            "attempt_timeout_ms": ms(u.timeout.min(cap)),
            "max_retries": u.max_retries,
        })
    };
    let routes: Vec<Value> = c
        .routes
        .iter()
        .map(|r| {
            let d = deadline_of(r.timeout);
            let mut v = json!({
                "name": r.name,
                "match": match &r.path {
                    hopline_core::config::PathMatch::Exact(p) => json!({"path": p}),
                    hopline_core::config::PathMatch::Prefix(p) => json!({"path_prefix": p}),
                },
                "deadline_ms": ms(d),
            });
            match &r.action {
                RouteAction::Proxy { upstream } => v["proxy"] = up_json(upstream, d, None),
                RouteAction::Aggregate(a) => {
                    v["aggregate"] = json!({
                        "mode": a.mode.as_str(),
                        "calls": a.calls.iter().map(|call| {
                            let mut cv = up_json(&call.upstream, d, call.timeout);
                            cv["name"] = json!(call.name);
                            cv["call_timeout_ms"] = ms(call.timeout.map_or(d, |t| t.min(d)));
                            cv["required"] = json!(call.required);
                            cv
                        }).collect::<Vec<_>>(),
                    });
                }
            }
            v
        })
        .collect();
    json!({
        "server": {
            "listen": s.listen.to_string(),
            "header_read_timeout_ms": ms(s.header_read_timeout),
            "body_read_timeout_ms": ms(s.body_read_timeout),
            "write_timeout_ms": ms(s.write_timeout),
            "idle_timeout_ms": ms(s.idle_timeout),
            "drain_timeout_ms": ms(s.drain_timeout),
            "max_connections": s.max_connections,
            "max_header_bytes": s.max_header_bytes,
            "max_body_bytes": s.max_body_bytes,
        },
        "deadline": {"default_ms": ms(c.deadline.default), "max_ms": ms(c.deadline.max), "margin_ms": ms(c.deadline.margin)},
        "routes": routes,
    })
}
