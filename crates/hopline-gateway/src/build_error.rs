//! Why the gateway could not be built from a valid config: a leaf every floor that
//! builds something (upstreams, the egress store, the listener's TLS) may return.

use std::io;

/// Why the gateway could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The DNS resolver could not be set up (e.g. no usable `/etc/resolv.conf`).
    #[error("upstream {upstream}: cannot set up the DNS resolver")]
    Dns {
        /// The upstream.
        upstream: String,
        /// Why.
        source: hickory_resolver::net::NetError,
    },
    /// The access log could not be opened.
    #[error("cannot open access log")]
    AccessLog(#[source] io::Error),
    /// A `[server.tls]` certificate or key cannot be used.
    #[error("server.tls")]
    ServerTls(#[source] hopline_tls::TlsFileError),
    /// An upstream's TLS files cannot be used.
    #[error("upstream {upstream}: TLS")]
    UpstreamTls {
        /// The upstream.
        upstream: String,
        /// Why.
        source: hopline_tls::TlsFileError,
    },
    /// The shared egress store cannot be set up (`[egress] shared`, `ca`).
    #[error("egress.shared")]
    SharedEgress(#[source] crate::shared::StoreError),
}
