//! TLS for hopline, on rustls with the `ring` provider (no C toolchain, no OpenSSL).
//!
//! - [`files`]: certificates and keys read from PEM files, every failure naming the file.
//! - [`info`]: what `check` and the expiry gauges need from a certificate (subject,
//!   validity), read with x509-cert.
//! - [`server`]: the listener's `rustls::ServerConfig` — certificates chosen by SNI, a
//!   default, minimum version, ALPN, session tickets shared across reloads.
//! - [`client`]: an upstream's `rustls::ClientConfig` — CA bundle or system roots, mTLS,
//!   and [`client::classify`], which turns a failed handshake into a
//!   [`hopline_core::TlsFailure`] that names the real cause (expired on which date, which
//!   name, unknown issuer), from the certificate the upstream presented.

pub mod client;
pub mod files;
pub mod info;
pub mod server;

use std::sync::Arc;

pub use files::TlsFileError;

/// The crypto provider every config is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The protocol versions from `min` up.
pub(crate) fn versions(
    min: hopline_core::config::TlsVersion,
) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        hopline_core::config::TlsVersion::Tls12 => rustls::ALL_VERSIONS,
        hopline_core::config::TlsVersion::Tls13 => &TLS13_ONLY,
    }
}
