//! The admin API, on its own listener (loopback by default): `/healthz`, `/readyz`
//! (503 while draining), `/config` (effective timeouts as JSON), `/metrics` and
//! `/endpoints` (every upstream's endpoints: state, load, recent failures).
//!
//! It refuses what a web page could make a browser send with 403 — any `Origin`, a browser
//! user agent on anything but GET/HEAD, and a `Host` that is a name other than
//! `localhost` or one of `admin.allowed_hosts` (DNS rebinding) — so a page the operator
//! visits cannot reach it through their loopback. Connections (`admin.max_connections`),
//! waits and bodies are bounded by the server in `hopline_h1::small`.

use std::sync::Arc;
use std::time::Duration;

use hopline_core::config::{AccessLogSink, RouteAction, Zone};
use hopline_h1::small::{Limits, Reply};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::gateway::{Current, Gateway};

/// Serves the admin API until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    current: Arc<Current>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut limits = Limits {
        hosts_setting: "admin.allowed_hosts",
        ..Limits::default()
    };
    if let Some(a) = &current.load().config.admin {
        limits.max_connections = a.max_connections;
        limits.allowed_hosts = a.allowed_hosts.clone();
    }
    hopline_h1::small::serve(listener, limits, shutdown, move |head, _body| {
        let reply = answer(&current, &head);
        async move { reply }
    })
    .await;
}

/// True for a request a web page could have made a browser send: a browser user agent on
/// a method that is not a plain GET/HEAD (any `Origin`, and a `Host` that is a name the
/// API was not told about, are refused by the server before this). Prometheus and kubelet
/// probes send neither.
fn from_a_browser(head: &hopline_h1::RequestHead) -> bool {
    let browser = head
        .headers
        .get("user-agent")
        .is_some_and(|ua| ua.starts_with(b"Mozilla/"));
    browser && !matches!(&head.method[..], b"GET" | b"HEAD")
}

/// Answers one admin request.
fn answer(current: &Current, head: &hopline_h1::RequestHead) -> Reply {
    if from_a_browser(head) {
        return Reply::new(
            403,
            "text/plain",
            "forbidden: requests from web pages are not allowed\n",
        );
    }
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
        ("GET", "/metrics") => (200, crate::observe::metrics::CONTENT_TYPE, {
            if let Some(e) = &gw.exporter {
                gw.metrics.sample_tracing(&e.stats);
            }
            gw.metrics.sample_access_log(gw.log.dropped());
            gw.metrics
                .sample_buffers(gw.buffers.used(), gw.buffers.limit());
            gw.metrics.encode(
                &gw.in_flight(),
                &gw.endpoint_samples(),
                &gw.shared_samples(),
            )
        }),
        ("GET", "/endpoints") => (
            200,
            "application/json",
            format!("{:#}\n", gw.endpoints_view()),
        ),
        (_, "/healthz" | "/readyz" | "/config" | "/metrics" | "/endpoints") => {
            (405, "text/plain", "method not allowed\n".into())
        }
        _ => (
            404,
            "text/plain",
            "not found: try /healthz /readyz /config /metrics /endpoints\n".into(),
        ),
    };
    Reply::new(status, ctype, body)
}

fn path(p: &Option<std::path::PathBuf>) -> Value {
    p.as_ref()
        .map_or(Value::Null, |p| Value::String(p.display().to_string()))
}

fn ms(d: Duration) -> Value {
    json!(d.as_millis() as u64)
}

/// The effective configuration: every route with its deadline and, for each upstream call,
/// the connect and attempt timeouts as capped by that deadline.
pub(crate) fn effective_config(gw: &Gateway) -> Value {
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
                "methods": r.methods,
                "websocket_idle_timeout_ms": r.websocket.map(ms),
                "request_buffering": r.request_buffering,
                "body_read_timeout_ms": ms(r.body_read_timeout.unwrap_or(s.body_read_timeout)),
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
    let upstreams: Vec<Value> = c
        .upstreams
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "endpoints": u.endpoints,
                "zone": u.zone.as_str(),
                "connect_timeout_ms": ms(u.connect_timeout),
                "timeout_ms": ms(u.timeout),
                "max_in_flight": u.max_in_flight,
                "pool_idle_timeout_ms": ms(u.pool_idle_timeout),
                "pool_max_idle": u.pool_max_idle,
                "server_idle_timeout_ms": u.server_idle_timeout.map(ms),
                "max_retries": u.max_retries,
                "retry_buffer_bytes": u.retry_buffer_bytes,
                "protocol": u.protocol.as_str(),
                "lb": u.lb.as_str(),
                "tls": u.tls.as_ref().map(|t| json!({
                    "sni": t.sni,
                    "ca": path(&t.ca),
                    "client_cert": path(&t.client_cert),
                    "client_key": path(&t.client_key),
                    "insecure_skip_verify": t.insecure_skip_verify,
                    "alpn": t.alpn,
                })),
            })
        })
        .collect();
    // Keys are shown as paths only, never their contents.
    json!({
        "server": {
            "listen": s.listen.to_string(),
            "header_read_timeout_ms": ms(s.header_read_timeout),
            "body_read_timeout_ms": ms(s.body_read_timeout),
            "write_timeout_ms": ms(s.write_timeout),
            "idle_timeout_ms": ms(s.idle_timeout),
            "drain_timeout_ms": ms(s.drain_timeout),
            "drain_idle_grace_ms": ms(s.drain_idle_grace),
            "max_connections": s.max_connections,
            "backlog": s.backlog,
            "overload": s.overload.as_str(),
            "max_header_bytes": s.max_header_bytes,
            "max_request_line_bytes": s.max_request_line_bytes,
            "max_body_bytes": s.max_body_bytes,
            "max_buffered_bytes": s.max_buffered_bytes,
            "buffered_bytes": gw.buffers.used(),
            "min_recv_rate_bytes_per_sec": s.min_recv_rate,
            "min_send_rate_bytes_per_sec": s.min_send_rate,
            "min_send_rate_window_ms": ms(s.min_send_rate_window),
            "expose_cause": s.expose_cause,
            "h2c": s.h2c,
            "h2": {
                "enabled": s.h2.enabled,
                "max_concurrent_streams": s.h2.max_concurrent_streams,
                "max_header_list_bytes": s.h2.max_header_list_bytes.map_or(s.max_header_bytes as u64, u64::from),
                "max_pending_accept_reset_streams": s.h2.max_pending_accept_reset_streams,
                "max_local_error_reset_streams": s.h2.max_local_error_reset_streams,
            },
            "tls": s.tls.as_ref().map(|t| json!({
                "listen": t.listen.to_string(),
                "min_version": t.min_version.as_str(),
                "certs": t.certs.iter().map(|c| json!({
                    "cert": c.cert.display().to_string(),
                    "key": c.key.display().to_string(),
                    "server_names": c.server_names,
                })).collect::<Vec<_>>(),
            })),
        },
        "log": {
            "access": match &c.log.access {
                AccessLogSink::Stdout => "stdout".to_string(),
                AccessLogSink::Off => "off".to_string(),
                AccessLogSink::File(p) => p.display().to_string(),
            },
            "tls_errors": c.log.tls_errors,
        },
        "front": c.front.as_ref().map(|f| json!({
            "timeout_ms": f.timeout.map(ms),
            "idle_timeout_ms": f.idle_timeout.map(ms),
        })),
        "deadline": {"default_ms": ms(c.deadline.default), "max_ms": ms(c.deadline.max), "margin_ms": ms(c.deadline.margin)},
        "admin": c.admin.as_ref().map(|a| json!({
            "listen": a.listen.to_string(),
            "max_connections": a.max_connections,
            "allowed_hosts": a.allowed_hosts,
        })),
        "retry_budget": {"ratio": c.retry_budget.ratio, "min_per_sec": c.retry_budget.min_per_sec},
        "egress": c.egress.as_ref().map(|e| json!({
            "max_in_flight": e.max_in_flight,
            "max_new_connections_per_sec": e.max_new_connections_per_sec,
            "nat_limit": e.nat_limit,
            "shared": e.shared.as_ref().map(|sh| {
                let now = gw.egress.shared.as_ref().map(|x| x.sample());
                json!({
                    "url": sh.url,
                    "scope": sh.scope,
                    "password_env": sh.password_env,
                    "ca": path(&sh.ca),
                    "expected_replicas": sh.expected_replicas,
                    "fallback_after_ms": ms(sh.fallback_after),
                    "now": now.map(|n| json!({
                        "mode": if n.local { "local" } else { "shared" },
                        "local_share": {"new_connections_per_sec": n.local_rate, "in_flight": n.local_in_flight},
                        "tokens_on_hand": n.tokens_on_hand,
                        "tokens_leased": n.tokens_leased,
                        "slots_held": n.slots_held,
                        "slots_in_use": n.slots_used,
                        "fallbacks": n.fallbacks,
                        "lease_failures": n.lease_failures,
                    })),
                })
            }),
        })),
        "upstreams": upstreams,
        "routes": routes,
    })
}
