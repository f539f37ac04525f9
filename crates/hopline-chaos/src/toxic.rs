//! Toxics as data: Toxiproxy's set with its names, attributes and JSON shape, plus the
//! NAT model (`conn_rate_limit`, `loss`) and HTTP faults (`abort`, `cc_defense`).

use serde_json::{json, Map, Value};

/// Which direction a toxic acts on (Toxiproxy's naming).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Client → upstream.
    Upstream,
    /// Upstream → client.
    Downstream,
}

impl Stream {
    /// `upstream` or `downstream`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }
}

/// What a toxic does. Times are milliseconds unless noted.
#[derive(Debug, Clone, PartialEq)]
pub enum ToxicKind {
    /// Does nothing (Toxiproxy's `noop`).
    Noop,
    /// Delay every chunk by `latency` ± `jitter`.
    Latency {
        /// Base delay (ms).
        latency: u64,
        /// Random spread (ms).
        jitter: u64,
    },
    /// Limit throughput to `rate` KB/s.
    Bandwidth {
        /// KB per second.
        rate: u64,
    },
    /// Delay the close by `delay`.
    SlowClose {
        /// ms.
        delay: u64,
    },
    /// Stop all data; close after `timeout` (never when 0).
    Timeout {
        /// ms.
        timeout: u64,
    },
    /// Reset the connection (RST) after `timeout`.
    ResetPeer {
        /// ms.
        timeout: u64,
    },
    /// Slice data into pieces of `average_size` ± `size_variation` bytes, `delay` µs apart.
    Slicer {
        /// Bytes.
        average_size: u64,
        /// Bytes.
        size_variation: u64,
        /// Microseconds.
        delay: u64,
    },
    /// Close the connection after `bytes` bytes.
    LimitData {
        /// Bytes.
        bytes: u64,
    },
    /// NAT model: new connections above `rate`/s (bucket `burst`) stall like dropped SYNs
    /// (1 s, 2 s, 4 s … before trying again), and are reset after `max_stall` (0: never).
    ConnRateLimit {
        /// New connections per second.
        rate: u64,
        /// Bucket size.
        burst: u64,
        /// ms; 0 = stall for as long as it takes.
        max_stall: u64,
    },
    /// NAT model: each chunk stalls `stall` ms with `probability`, like a retransmission.
    Loss {
        /// Per chunk.
        probability: f64,
        /// ms.
        stall: u64,
    },
    /// HTTP: answer `status` instead of forwarding, with `probability` per request.
    Abort {
        /// Status to answer.
        status: u16,
        /// Per request.
        probability: f64,
    },
    /// HTTP: above `max_rps_per_client` requests/s from one client IP, answer `status`
    /// (default 302) with `location`, without contacting the upstream.
    CcDefense {
        /// Requests per second per client IP.
        max_rps_per_client: u64,
        /// Status (default 302).
        status: u16,
        /// `Location` header value.
        location: String,
    },
}

/// One toxic on a proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Toxic {
    /// Unique per proxy; default `TYPE_STREAM`.
    pub name: String,
    /// Direction.
    pub stream: Stream,
    /// Probability that the toxic applies to a given connection (default 1).
    pub toxicity: f64,
    /// Kind and attributes.
    pub kind: ToxicKind,
}

/// A toxic description that cannot be used (answered 400 by the API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToxicError {
    /// Unknown `type`.
    #[error("unknown toxic type {0:?}")]
    UnknownType(String),
    /// Missing `type`.
    #[error("toxic type is required")]
    MissingType,
    /// Bad `stream`.
    #[error("stream must be \"upstream\" or \"downstream\", got {0:?}")]
    BadStream(String),
    /// A toxicity that is not a number.
    #[error("toxicity must be a number")]
    BadToxicity,
    /// An attribute of the wrong type or range.
    #[error("attribute {name:?}: {why}")]
    BadAttribute {
        /// Attribute name.
        name: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// Not an object.
    #[error("request body must be a JSON object")]
    NotAnObject,
}

impl ToxicKind {
    /// The Toxiproxy type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            ToxicKind::Noop => "noop",
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::Bandwidth { .. } => "bandwidth",
            ToxicKind::SlowClose { .. } => "slow_close",
            ToxicKind::Timeout { .. } => "timeout",
            ToxicKind::ResetPeer { .. } => "reset_peer",
            ToxicKind::Slicer { .. } => "slicer",
            ToxicKind::LimitData { .. } => "limit_data",
            ToxicKind::ConnRateLimit { .. } => "conn_rate_limit",
            ToxicKind::Loss { .. } => "loss",
            ToxicKind::Abort { .. } => "abort",
            ToxicKind::CcDefense { .. } => "cc_defense",
        }
    }

    /// The attribute names a toxic type takes (`None` for an unknown type).
    pub fn attribute_names(type_name: &str) -> Option<&'static [&'static str]> {
        Some(match type_name {
            "noop" => &[],
            "latency" => &["latency", "jitter"],
            "bandwidth" => &["rate"],
            "slow_close" => &["delay"],
            "timeout" | "reset_peer" => &["timeout"],
            "slicer" => &["average_size", "size_variation", "delay"],
            "limit_data" => &["bytes"],
            "conn_rate_limit" => &["rate", "burst", "max_stall"],
            "loss" => &["probability", "stall"],
            "abort" => &["status", "probability"],
            "cc_defense" => &["max_rps_per_client", "status", "location"],
            _ => return None,
        })
    }

    /// True for toxics that act on parsed HTTP requests.
    pub fn is_http(&self) -> bool {
        matches!(self, ToxicKind::Abort { .. } | ToxicKind::CcDefense { .. })
    }

    fn attributes(&self) -> Value {
        match self {
            ToxicKind::Noop => json!({}),
            ToxicKind::Latency { latency, jitter } => json!({"latency": latency, "jitter": jitter}),
            ToxicKind::Bandwidth { rate } => json!({"rate": rate}),
            ToxicKind::SlowClose { delay } => json!({"delay": delay}),
            ToxicKind::Timeout { timeout } | ToxicKind::ResetPeer { timeout } => {
                json!({"timeout": timeout})
            }
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay,
            } => {
                json!({"average_size": average_size, "size_variation": size_variation, "delay": delay})
            }
            ToxicKind::LimitData { bytes } => json!({"bytes": bytes}),
            ToxicKind::ConnRateLimit {
                rate,
                burst,
                max_stall,
            } => {
                json!({"rate": rate, "burst": burst, "max_stall": max_stall})
            }
            ToxicKind::Loss { probability, stall } => {
                json!({"probability": probability, "stall": stall})
            }
            ToxicKind::Abort {
                status,
                probability,
            } => json!({"status": status, "probability": probability}),
            ToxicKind::CcDefense {
                max_rps_per_client,
                status,
                location,
            } => {
                json!({"max_rps_per_client": max_rps_per_client, "status": status, "location": location})
            }
        }
    }
}

struct Attrs<'a>(Option<&'a Map<String, Value>>);

/// The largest integer attribute (2^40: 34 years of milliseconds, a TiB of bytes): what a
/// toxic adds or multiplies with it cannot overflow.
const MAX_ATTRIBUTE: u64 = 1 << 40;

impl Attrs<'_> {
    fn uint(&self, name: &'static str, default: u64) -> Result<u64, ToxicError> {
        match self.0.and_then(|m| m.get(name)) {
            None | Some(Value::Null) => Ok(default),
            // Toxiproxy's attributes are Go int64s: a negative one is accepted and acts
            // as 0 (no delay, no bytes).
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_i64().map(|_| 0))
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0)
                        .map(|f| f.max(0.0) as u64)
                })
                .ok_or(ToxicError::BadAttribute {
                    name,
                    why: "must be an integer",
                })
                .and_then(|n| {
                    (n <= MAX_ATTRIBUTE)
                        .then_some(n)
                        .ok_or(ToxicError::BadAttribute {
                            name,
                            why: "must be at most 1099511627776 (2^40)",
                        })
                }),
        }
    }

    fn prob(&self, name: &'static str, default: f64) -> Result<f64, ToxicError> {
        match self.0.and_then(|m| m.get(name)) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => {
                v.as_f64()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or(ToxicError::BadAttribute {
                        name,
                        why: "must be a number between 0 and 1",
                    })
            }
        }
    }

    fn status(&self, name: &'static str, default: u16) -> Result<u16, ToxicError> {
        let s = self.uint(name, u64::from(default))?;
        u16::try_from(s)
            .ok()
            .filter(|s| (100..=599).contains(s))
            .ok_or(ToxicError::BadAttribute {
                name,
                why: "must be an HTTP status between 100 and 599",
            })
    }

    fn string(&self, name: &'static str, default: &str) -> Result<String, ToxicError> {
        match self.0.and_then(|m| m.get(name)) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ToxicError::BadAttribute {
                name,
                why: "must be a string",
            }),
        }
    }
}

impl Toxic {
    /// Reads a toxic from Toxiproxy's JSON shape
    /// `{"name","type","stream","toxicity","attributes":{...}}`.
    pub fn from_json(v: &Value) -> Result<Toxic, ToxicError> {
        let obj = v.as_object().ok_or(ToxicError::NotAnObject)?;
        let ty = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or(ToxicError::MissingType)?;
        let stream = match obj.get("stream").and_then(Value::as_str) {
            None | Some("downstream") => Stream::Downstream,
            Some("upstream") => Stream::Upstream,
            Some(other) => return Err(ToxicError::BadStream(other.to_string())),
        };
        // Any number, as Toxiproxy takes it: at or below 0 never, at or above 1 always.
        let toxicity = match obj.get("toxicity") {
            None | Some(Value::Null) => 1.0,
            Some(t) => t.as_f64().ok_or(ToxicError::BadToxicity)?,
        };
        let a = Attrs(obj.get("attributes").and_then(Value::as_object));
        let kind = match ty {
            "noop" => ToxicKind::Noop,
            "latency" => ToxicKind::Latency {
                latency: a.uint("latency", 0)?,
                jitter: a.uint("jitter", 0)?,
            },
            "bandwidth" => ToxicKind::Bandwidth {
                rate: a.uint("rate", 0)?,
            },
            "slow_close" => ToxicKind::SlowClose {
                delay: a.uint("delay", 0)?,
            },
            "timeout" => ToxicKind::Timeout {
                timeout: a.uint("timeout", 0)?,
            },
            "reset_peer" => ToxicKind::ResetPeer {
                timeout: a.uint("timeout", 0)?,
            },
            "slicer" => ToxicKind::Slicer {
                average_size: a.uint("average_size", 0)?,
                size_variation: a.uint("size_variation", 0)?,
                delay: a.uint("delay", 0)?,
            },
            "limit_data" => ToxicKind::LimitData {
                bytes: a.uint("bytes", 0)?,
            },
            "conn_rate_limit" => {
                let rate = a.uint("rate", 0)?;
                ToxicKind::ConnRateLimit {
                    rate,
                    burst: a.uint("burst", rate.max(1))?,
                    max_stall: a.uint("max_stall", 0)?,
                }
            }
            "loss" => ToxicKind::Loss {
                probability: a.prob("probability", 0.0)?,
                stall: a.uint("stall", 1000)?,
            },
            "abort" => ToxicKind::Abort {
                status: a.status("status", 503)?,
                probability: a.prob("probability", 1.0)?,
            },
            "cc_defense" => ToxicKind::CcDefense {
                max_rps_per_client: a.uint("max_rps_per_client", 0)?,
                status: a.status("status", 302)?,
                location: a.string("location", "/")?,
            },
            other => return Err(ToxicError::UnknownType(other.to_string())),
        };
        let name = match obj.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!("{}_{}", kind.type_name(), stream.as_str()),
        };
        Ok(Toxic {
            name,
            stream,
            toxicity,
            kind,
        })
    }

    /// Applies a partial update (`POST /proxies/P/toxics/T`): attributes merge, the rest
    /// replaces when given.
    pub fn updated(&self, patch: &Value) -> Result<Toxic, ToxicError> {
        let mut current = self.to_json();
        let obj = patch.as_object().ok_or(ToxicError::NotAnObject)?;
        if let Some(cur) = current.as_object_mut() {
            for (k, v) in obj {
                match (k.as_str(), v) {
                    ("attributes", Value::Object(attrs)) => {
                        if let Some(Value::Object(ca)) = cur.get_mut("attributes") {
                            for (ak, av) in attrs {
                                ca.insert(ak.clone(), av.clone());
                            }
                        }
                    }
                    ("name" | "type", _) => {}
                    _ => {
                        cur.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        Toxic::from_json(&current)
    }

    /// Toxiproxy's JSON shape.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.kind.type_name(),
            "stream": self.stream.as_str(),
            "toxicity": self.toxicity,
            "attributes": self.kind.attributes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_toxiproxy() {
        for huge in [json!(u64::MAX), json!(1u64 << 41), json!(1e300)] {
            let e = Toxic::from_json(&json!({"type": "latency", "attributes": {"latency": huge}}))
                .expect_err("out of range");
            assert!(e.to_string().contains("at most"), "{e}");
        }
        let t = Toxic::from_json(&json!({"type": "latency", "attributes": {"latency": 100}}))
            .expect("valid");
        assert_eq!(t.name, "latency_downstream");
        assert_eq!((t.stream, t.toxicity), (Stream::Downstream, 1.0));
        assert_eq!(
            t.kind,
            ToxicKind::Latency {
                latency: 100,
                jitter: 0
            }
        );
        assert_eq!(Toxic::from_json(&t.to_json()).expect("round trip"), t);
    }

    #[test]
    fn bad_toxics_are_rejected() {
        assert!(matches!(
            Toxic::from_json(&json!({"type": "nope"})),
            Err(ToxicError::UnknownType(_))
        ));
        assert!(matches!(
            Toxic::from_json(&json!({"type": "latency", "stream": "sideways"})),
            Err(ToxicError::BadStream(_))
        ));
        assert!(matches!(
            Toxic::from_json(&json!({"type": "latency", "attributes": {"latency": "slow"}})),
            Err(ToxicError::BadAttribute { .. })
        ));
        assert!(matches!(
            Toxic::from_json(&json!({"type": "latency", "toxicity": "high"})),
            Err(ToxicError::BadToxicity)
        ));
        // Toxiproxy's ranges: any toxicity, negative integers act as 0.
        let t = Toxic::from_json(
            &json!({"type": "latency", "toxicity": 2, "attributes": {"latency": -5}}),
        )
        .expect("accepted");
        assert_eq!(
            t.kind,
            ToxicKind::Latency {
                latency: 0,
                jitter: 0
            }
        );
        assert!(Toxic::from_json(&json!({"type": "noop"})).is_ok());
    }

    #[test]
    fn update_merges_attributes() {
        let t = Toxic::from_json(
            &json!({"type": "latency", "attributes": {"latency": 100, "jitter": 5}}),
        )
        .expect("valid");
        let u = t
            .updated(&json!({"attributes": {"latency": 300}}))
            .expect("valid");
        assert_eq!(
            u.kind,
            ToxicKind::Latency {
                latency: 300,
                jitter: 5
            }
        );
    }
}
