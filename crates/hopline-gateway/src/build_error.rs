//! Why the gateway could not be built from a valid config: what the upstreams, the
//! egress store, the access log or the listener's TLS said. Above `upstream/`, whose
//! own error it carries.

use std::io;

/// Why the gateway could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An upstream could not be built (its DNS resolver, its TLS files).
    #[error(transparent)]
    Upstream(#[from] crate::upstream::UpstreamBuildError),
    /// The access log could not be opened.
    #[error("cannot open access log")]
    AccessLog(#[source] io::Error),
    /// A `[server.tls]` certificate or key cannot be used.
    #[error("server.tls")]
    ServerTls(#[source] hopline_tls::TlsFileError),
    /// The `https://` collector's CA bundle cannot be used (`tracing.ca`).
    #[error("tracing")]
    Tracing(#[source] hopline_tls::TlsFileError),
    /// The shared egress store cannot be set up (`[egress] shared`, `ca`).
    #[error("egress.shared")]
    SharedEgress(#[source] crate::upstream::shared::StoreError),
}
