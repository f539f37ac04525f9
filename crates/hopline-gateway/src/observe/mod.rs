//! What the gateway says about its work, the bottom floor above the leaves: the access
//! record and log (with the query redaction), Prometheus metrics, trace context and the
//! OTLP exporter. Everything above may use it; it uses nothing above.

pub(crate) mod access_log;
pub(crate) mod metrics;
pub mod otlp;
pub(crate) mod redact;
pub mod trace;
