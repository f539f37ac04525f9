//! A JSON Schema of the config file, for editors: `hopline schema` prints it, and the
//! example configs point at the copy in `docs/` (`#:schema`), so TOML editors complete and
//! check keys as the reader does (unknown keys are errors in both).

use serde_json::{json, Value};

fn duration(description: &str) -> Value {
    json!({"$ref": "#/$defs/duration", "description": description})
}

fn int(description: &str, min: u64) -> Value {
    json!({"type": "integer", "minimum": min, "description": description})
}

fn closed(properties: Value) -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": properties})
}

/// The schema (JSON Schema 2020-12) of a `hopline serve` config file.
pub fn schema() -> Value {
    let keepalive = |whose: &str| {
        json!({"oneOf": [{"type": "boolean"}, closed(json!({
            "idle": duration("default 30s: idle time before the first probe"),
            "interval": duration("default 10s: between probes"),
            "count": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3, "description": "probes unanswered before the connection is dropped"},
        }))], "default": true, "description": format!("TCP keepalive on {whose}: true (30s, 10s, 3), false, or {{ idle, interval, count }}")})
    };
    let rate = |description: &str| {
        json!({"oneOf": [{"type": "integer", "minimum": 0},
            {"type": "string", "pattern": "^[0-9]+ ?(B|KiB|MiB|GiB|KB|MB|GB)?/s$"}],
            "default": "1KiB/s", "description": description})
    };
    let call = closed(json!({
        "name": {"type": "string", "description": "key of the call's result in the answer"},
        "upstream": {"type": "string", "description": "an [upstreams.NAME]"},
        "path": {"type": "string", "description": "path with {query.NAME} / {header.NAME} placeholders"},
        "method": {"type": "string", "pattern": "^[A-Z]+$", "default": "GET"},
        "forward_query": {"type": "boolean", "default": false},
        "forward_headers": {"type": "array", "items": {"type": "string"}},
        "fallback": {"description": "any value, served as JSON when the call fails (default null)"},
        "required": {"type": "boolean", "default": false, "description": "a failure fails the whole request"},
        "timeout": duration("the call's own timeout, capped by the time left"),
        "max_body_bytes": {"type": "integer", "minimum": 1, "maximum": 1073741824, "default": 4194304, "description": "the largest answer the call takes (read whole, from server.max_buffered_bytes)"},
    }));
    let mut call = call;
    call["required"] = json!(["name", "upstream", "path"]);
    let mut route = closed(json!({
        "name": {"type": "string"},
        "path": {"type": "string", "pattern": "^/", "description": "exact path (without query)"},
        "path_prefix": {"type": "string", "pattern": "^/", "description": "path prefix"},
        "upstream": {"type": "string", "description": "proxy to this [upstreams.NAME]"},
        "timeout": duration("route deadline (default: deadline.default)"),
        "methods": {"type": "array", "items": {"type": "string", "pattern": "^[A-Z_-]+$"}, "minItems": 1,
            "description": "methods served; others get 405 (default: all; aggregate routes GET, HEAD)"},
        "websocket": {"type": "boolean", "default": false, "description": "forward HTTP/1.1 WebSocket upgrades; tunnel after the upstream's 101"},
        "websocket_idle_timeout": duration("default 60s: a tunnel with no byte either way is closed"),
        "request_buffering": {"type": "boolean", "default": false, "description": "read the body whole (from server.max_buffered_bytes) before calling the upstream; default: streamed as it arrives"},
        "body_read_timeout": duration("the route's own whole-body limit (default: server.body_read_timeout)"),
        "aggregate": closed(json!({
            "mode": {"enum": ["parallel", "sequential"], "default": "parallel"},
            "calls": {"type": "array", "items": call, "minItems": 1},
        })),
    }));
    route["required"] = json!(["name"]);
    let mut upstream = closed(json!({
        "endpoints": {"type": "array", "items": {"type": "string", "description": "host:port; a host name stands for every address it resolves to, re-resolved per [dns]"}, "minItems": 1},
        "zone": {"enum": ["internal", "egress"], "default": "internal"},
        "connect_timeout": duration("default 1s, capped by the time left"),
        "timeout": duration("per attempt, default 5s, capped by the time left"),
        "max_in_flight": int("default 1024; beyond, requests wait in the queue (max_pending)", 1),
        "pool_idle_timeout": duration("default 30s"),
        "pool_max_idle": int("default 128", 0),
        "max_response_header_bytes": int("default 65536: larger response heads (HTTP/1) or header lists (HTTP/2), health checks too, are 502 UPE", 1024),
        "server_idle_timeout": duration("the upstream's own keep-alive idle (for check)"),
        "max_retries": {"type": "integer", "minimum": 0, "maximum": 10, "default": 2},
        "lb": {"enum": ["least_request", "round_robin", "random"], "default": "least_request", "description": "how each attempt picks an endpoint; least_request: the less busy of two drawn at random"},
        "protocol": {"enum": ["http/1.1", "h2"], "default": "http/1.1", "description": "h2: HTTP/2 (prior knowledge, or ALPN h2 over TLS), multiplexed; needed for gRPC"},
        "tls": {"type": "boolean", "description": "TLS to every endpoint (implied by https:// endpoints)"},
        "sni": {"type": "string", "description": "server name sent and verified; default each endpoint's host"},
        "ca": {"type": "string", "description": "PEM bundle of trusted CAs; default the system roots"},
        "client_cert": {"type": "string", "description": "client certificate chain (PEM) for mutual TLS"},
        "client_key": {"type": "string", "description": "client private key (PEM) for mutual TLS"},
        "insecure_skip_verify": {"type": "boolean", "default": false, "description": "accept any certificate (tests only; check flags it)"},
        "alpn": {"type": "array", "items": {"enum": ["http/1.1", "h2"]}, "description": "default: the upstream's protocol"},
        "tcp_keepalive": keepalive("upstream connections"),
        "tcp_user_timeout": duration("TCP_USER_TIMEOUT: how long sent data may stay unacknowledged (default: the kernel's)"),
        "max_connecting": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 64, "description": "connects in progress per endpoint at most; others wait for a returned pooled connection or a connect slot within the time left, at most connect_timeout with none returned"},
        "max_pending": {"type": "integer", "minimum": 0, "maximum": 1000000, "default": 1024, "description": "requests that may wait, in order and within their deadline, for one of max_in_flight's slots; 0: 503 UO at once"},
        "retry_buffer_bytes": {"type": "integer", "minimum": 0, "maximum": 16777216, "default": 65536, "description": "bytes of a streamed request body kept to resend it after a stale pooled connection; a request that sent more is not resent"},
        "panic_threshold": {"type": "integer", "minimum": 0, "maximum": 100, "default": 50, "description": "when some endpoints are usable but fewer than this share (%), balance over all (panic mode); none usable is 503 UH with Retry-After"},
        "deny_addresses": {"type": "array", "items": {"type": "string"}, "description": "CIDRs a name in endpoints may not resolve to (IP literals in endpoints are never checked); a denied address is not used, and none left is 503 UH naming it. Default for zone = \"egress\": loopback, 0.0.0.0/8, link-local, private, 100.64.0.0/10 and fc00::/7 (IPv4 carried in ::ffff:0:0/96 and 64:ff9b::/96 checked too); for internal: none; [] allows all"},
        "outlier": closed(json!({
            "enabled": {"type": "boolean", "default": true},
            "consecutive_failures": {"type": "integer", "minimum": 1, "default": 5, "description": "gateway failures in a row (connect failure, reset, timeout, 502/503/504) that eject an endpoint"},
            "base_ejection": duration("default 30s, times the endpoint's number of ejections"),
            "max_ejection": duration("default 5m"),
            "max_ejection_percent": {"type": "integer", "minimum": 0, "maximum": 100, "default": 50},
            "slow_start": duration("an endpoint back from ejection or failed health checks ramps from a tenth to its full least-request share over this long (default: off)"),
        })),
        "health": {
            "type": "object", "additionalProperties": false, "required": ["path"],
            "properties": {
                "path": {"type": "string", "description": "asked with GET; starts with /"},
                "interval": duration("default 5s, jittered by up to 10%"),
                "timeout": duration("default 1s; must be below interval"),
                "healthy_threshold": {"type": "integer", "minimum": 1, "maximum": 100, "default": 2},
                "unhealthy_threshold": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3},
                "expect_status": {"type": "array", "items": {"type": "integer", "minimum": 100, "maximum": 599}, "minItems": 1, "default": [200]},
            },
        },
    }));
    upstream["required"] = json!(["endpoints"]);
    let mut tls = closed(json!({
        "listen": {"type": "string", "description": "host:port of the TLS listener"},
        "cert": {"type": "string", "description": "default certificate chain (PEM), relative to the config file"},
        "key": {"type": "string", "description": "its private key (PEM)"},
        "min_version": {"enum": ["1.2", "1.3"], "default": "1.2"},
        "certs": {"type": "array", "items": closed(json!({
            "server_names": {"type": "array", "items": {"type": "string"}, "description": "SNI names; *.example.com matches one label"},
            "cert": {"type": "string"},
            "key": {"type": "string"},
        }))},
    }));
    tls["required"] = json!(["listen"]);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "hopline serve configuration",
        "type": "object",
        "additionalProperties": false,
        "$defs": {
            "duration": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(us|µs|ms|s|m|h)$",
                "description": "a duration such as \"250ms\", \"5s\", \"1.5s\", \"2m\""},
        },
        "properties": {
            "server": closed(json!({
                "listen": {"type": "string", "default": "127.0.0.1:8080", "description": "host:port — an IP address or a host name (a name binds every address it resolves to)"},
                "header_read_timeout": duration("default 5s; 408 RT"),
                "body_read_timeout": duration("default 30s; 408 RT"),
                "write_timeout": duration("default 30s; WT"),
                "idle_timeout": duration("default 75s; must exceed the front's"),
                "drain_timeout": duration("default 10s"),
                "drain_idle_grace": duration("default 1s"),
                "max_connections": int("default 10000", 1),
                "backlog": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 4096, "description": "listen backlog; the kernel caps it at net.core.somaxconn"},
                "overload": {"enum": ["pause", "close"], "default": "pause"},
                "escaped_slashes": {"enum": ["reject", "keep", "decode"], "default": "reject", "description": "%2F and %5C in a request path: 400, kept encoded, or decoded to / before dot segments are removed"},
                "merge_slashes": {"type": "boolean", "default": false, "description": "// in a request path becomes / before routing"},
                "trusted_proxies": {"type": "array", "items": {"type": "string"}, "default": ["127.0.0.0/8", "::1/128"], "description": "CIDRs of peers whose X-Forwarded-For, deadline and forwarding headers are believed; [] trusts nobody"},
                "max_header_bytes": {"type": "integer", "minimum": 1024, "maximum": 16777216, "default": 65536},
                "max_request_line_bytes": {"type": "integer", "minimum": 256, "maximum": 16777216, "default": 8192},
                "max_body_bytes": {"type": "integer", "minimum": 0, "maximum": 1099511627776_u64, "default": 16777216, "description": "the largest request body (streamed to the upstream); beyond it 413"},
                "max_buffered_bytes": {"type": "integer", "minimum": 1048576, "maximum": 1099511627776_u64, "default": 268435456, "description": "one budget for every buffer that grows with what a client or upstream sends; beyond it 503 OM"},
                "min_recv_rate": rate("a body sender below this over 10 s of waiting on it (after a 5 s grace) is cut: 408 RT; 0 turns it off"),
                "min_send_rate": rate("a client reading the response below this over min_send_rate_window of waiting on it is cut: WT; 0 turns it off"),
                "min_send_rate_window": duration("default 30s: the window of min_send_rate"),
                "tcp_keepalive": keepalive("client connections"),
                "expose_cause": {"type": "boolean", "default": false},
                "tls": tls,
                "h2c": {"type": "boolean", "default": false, "description": "the plain listener also takes HTTP/2 with prior knowledge"},
                "h2": closed(json!({
                    "enabled": {"type": "boolean", "default": true, "description": "offer h2 by ALPN on the TLS listener"},
                    "max_concurrent_streams": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
                    "max_header_list_bytes": {"type": "integer", "minimum": 1024, "maximum": 16777216, "description": "default max_header_bytes"},
                    "max_pending_accept_reset_streams": {"type": "integer", "minimum": 0, "maximum": 100000, "default": 20, "description": "Rapid Reset defence: streams reset before being served, then GOAWAY ENHANCE_YOUR_CALM"},
                    "max_local_error_reset_streams": {"type": "integer", "minimum": 0, "maximum": 1000000, "default": 1024, "description": "streams reset for protocol errors, then GOAWAY ENHANCE_YOUR_CALM"},
                })),
            })),
            "log": closed(json!({
                "access": {"type": "string", "description": "\"stdout\" (default), \"off\" or a file path"},
                "tls_errors": {"type": "boolean", "default": false, "description": "one log line per failed client TLS handshake"},
                "redact_query": {"type": "array", "items": {"type": "string"}, "default": hopline_core::config::DEFAULT_REDACT_QUERY, "description": "query names whose values the access log writes as REDACTED (case-insensitive, after decoding); [] redacts none"},
            })),
            "front": closed(json!({
                "timeout": duration("the front proxy's upstream timeout"),
                "idle_timeout": duration("the front proxy's keep-alive idle towards us"),
            })),
            "deadline": closed(json!({
                "default": duration("default 3s"),
                "max": duration("default 30s"),
                "margin": duration("default 5ms"),
                "min_caller": duration("default 10ms: a caller's budget below it is answered 504 at once"),
            })),
            "admin": closed(json!({
                "listen": {"type": "string", "description": "host:port — an IP address or a host name (a name binds every address it resolves to)"},
                "max_connections": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 64, "description": "connections open at once; one more is answered 503 and closed"},
                "allowed_hosts": {"type": "array", "items": {"type": "string"}, "default": [], "description": "host names the admin API answers to beyond IP literals and localhost; another name in Host is answered 403 (DNS rebinding)"},
            })),
            "retry_budget": closed(json!({
                "ratio": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2},
                "min_per_sec": {"type": "integer", "minimum": 0, "default": 10},
            })),
            "egress": closed(json!({
                "max_in_flight": int("shared by all egress upstreams", 1),
                "max_new_connections_per_sec": int("shared by all egress upstreams", 1),
                "shared": {"type": "string", "pattern": "^rediss?://", "description": "redis://host:port[/db] or rediss://…: both limits become cluster-wide, shared by every gateway with the same scope (no password here: see password_env)"},
                "scope": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$", "description": "gateways with the same scope share one budget; required with shared"},
                "password_env": {"type": "string", "default": "HOPLINE_REDIS_PASSWORD", "description": "the environment variable holding the Redis password"},
                "ca": {"type": "string", "description": "PEM CA for a rediss:// store with a private CA"},
                "expected_replicas": int("gateways sharing the scope: each takes budget / expected_replicas when Redis is unreachable", 1),
                "fallback_after": duration("how long Redis may take before the local share applies, default 20ms"),
                "nat_limit": int("new connections per second the NAT is documented to allow (hopline check)", 1),
                "nat_idle_timeout": duration("how long the NAT keeps an idle flow (AWS NAT gateway: 350s), for hopline check's nat-idle rule"),
            })),
            "dns": closed(json!({
                "nameservers": {"type": "array", "items": {"type": "string", "description": "ip or ip:port"}, "description": "default: the system's (/etc/resolv.conf)"},
                "min_ttl": duration("default 5s; also the retry interval after a failure"),
                "max_ttl": duration("default 5m"),
                "timeout": duration("one query, default 2s"),
                "family": {"enum": ["v4_preferred", "all", "v4", "v6"], "default": "v4_preferred"},
                "max_addresses_per_name": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 64, "description": "addresses of one name used at most (the first in address order)"},
            })),
            "tracing": closed(json!({
                "otlp_endpoint": {"type": "string", "pattern": "^https?://", "description": "an OpenTelemetry collector's OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces; https:// speaks TLS (verified against ca or the system roots)"},
                "ca": {"type": "string", "description": "PEM bundle of the CAs an https:// collector is verified against (default: the system roots)"},
                "protocol": {"enum": ["http/protobuf"], "default": "http/protobuf"},
                "sample_ratio": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0, "description": "share of new traces recorded (and of untrusted callers' traces); a trusted caller's sampled flag is followed"},
                "max_sampled_per_sec": {"type": "integer", "minimum": 1, "maximum": 1000000, "default": 100, "description": "sampled requests per second per worker, at most; beyond it recorded as unsampled and counted"},
                "service_name": {"type": "string", "default": "hopline"},
            })),
            "metrics": closed(json!({
                "per_endpoint": {"type": "boolean", "default": false, "description": "series with an endpoint label (endpoint sets change: off by default)"},
            })),
            "upstreams": {"type": "object", "additionalProperties": upstream},
            "routes": {"type": "array", "items": route},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml_edit::{ImDocument, Item, Value as TomlValue};

    /// Every key of `item` must be allowed by `schema` at its place (the walk a TOML
    /// editor does with the schema); pushes the dotted keys that are not.
    fn unknown_keys(item: &Item, schema: &Value, defs: &Value, path: &str, out: &mut Vec<String>) {
        let schema = if schema.get("$ref").is_some() {
            defs
        } else {
            schema
        };
        match item {
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let it = Item::Table(t.clone());
                    unknown_keys(&it, &schema["items"], defs, &format!("{path}[{i}]"), out);
                }
            }
            Item::Value(TomlValue::Array(a)) => {
                for (i, v) in a.iter().enumerate() {
                    let it = Item::Value(v.clone());
                    unknown_keys(&it, &schema["items"], defs, &format!("{path}[{i}]"), out);
                }
            }
            _ => {
                // Only object schemas constrain keys; "any value" (fallback) does not.
                let (Some(table), true) = (
                    item.as_table_like(),
                    schema.get("properties").is_some()
                        || schema.get("additionalProperties").is_some(),
                ) else {
                    return;
                };
                for (k, v) in table.iter() {
                    let key = if path.is_empty() {
                        k.to_string()
                    } else {
                        format!("{path}.{k}")
                    };
                    let sub = match (
                        schema.get("properties").and_then(|p| p.get(k)),
                        schema.get("additionalProperties"),
                    ) {
                        (Some(s), _) => s,
                        (None, Some(s)) if s.is_object() => s,
                        _ => {
                            out.push(key);
                            continue;
                        }
                    };
                    unknown_keys(v, sub, defs, &key, out);
                }
            }
        }
    }

    #[test]
    fn every_key_of_the_example_configs_is_in_the_schema() {
        let s = schema();
        let defs = s["$defs"]["duration"].clone();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        for name in ["gateway.toml", "benefits.toml", "incident.toml"] {
            let text = std::fs::read_to_string(dir.join(name)).expect("example");
            let doc = ImDocument::parse(text).expect("toml");
            let mut out = Vec::new();
            unknown_keys(doc.as_item(), &s, &defs, "", &mut out);
            assert!(
                out.is_empty(),
                "{name}: keys missing from the schema: {out:?}"
            );
        }
        // And a key the reader rejects is one the schema rejects.
        let doc = ImDocument::parse("[server]\ncolour = 1\n".to_string()).expect("toml");
        let mut out = Vec::new();
        unknown_keys(doc.as_item(), &s, &defs, "", &mut out);
        assert_eq!(out, ["server.colour"]);
    }

    #[test]
    fn the_committed_schema_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/hopline.schema.json");
        let committed: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("docs/hopline.schema.json"))
                .expect("json");
        assert_eq!(
            committed,
            schema(),
            "run `hopline schema > docs/hopline.schema.json`"
        );
    }
}
