//! Why an upstream could not be built from a valid config (a leaf of `upstream/`; the
//! gateway's [`crate::BuildError`] carries it as it is).

/// Why an upstream could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    /// The DNS resolver could not be set up (e.g. no usable `/etc/resolv.conf`).
    #[error("upstream {upstream}: cannot set up the DNS resolver")]
    Dns {
        /// The upstream.
        upstream: String,
        /// Why.
        source: hickory_resolver::net::NetError,
    },
    /// An upstream's TLS files cannot be used.
    #[error("upstream {upstream}: TLS")]
    Tls {
        /// The upstream.
        upstream: String,
        /// Why.
        source: hopline_tls::TlsFileError,
    },
}
