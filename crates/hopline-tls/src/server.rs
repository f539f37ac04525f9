//! The TLS listener's configuration: certificates chosen by SNI, a default certificate,
//! the minimum version, ALPN, and session resumption.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use hopline_core::config::ServerTlsConfig;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;

use crate::files::{certified_key, TlsFileError};

/// The ticket key and the session cache.
type Resumption = (Arc<dyn ProducesTickets>, Arc<dyn StoresServerSessions>);

/// Session-resumption state kept for the life of the process, so that tickets and
/// cached sessions stay valid across reloads (a reload re-reads certificates only).
fn resumption() -> Resumption {
    static STATE: OnceLock<Option<Resumption>> = OnceLock::new();
    let state = STATE.get_or_init(|| {
        let tickets = rustls::crypto::ring::Ticketer::new().ok()?;
        let cache: Arc<dyn StoresServerSessions> =
            rustls::server::ServerSessionMemoryCache::new(16 * 1024);
        Some((tickets, cache))
    });
    match state {
        Some((t, c)) => (t.clone(), c.clone()),
        // No randomness for a ticket key: resumption by session id only.
        None => (
            Arc::new(NoTickets),
            rustls::server::ServerSessionMemoryCache::new(16 * 1024),
        ),
    }
}

#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// Chooses the certificate for a client hello: an exact SNI match, then a wildcard
/// (`*.example.com` for `a.example.com`), then the default.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// The certificate served for `sni` (`None`: the client sent no SNI).
    pub fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return &self.default;
        };
        if let Some(c) = self.exact.get(&name) {
            return c;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// Reads every certificate and key of `tls` and builds the listener's config, offering
/// ALPN `h2` (when `h2`) and `http/1.1`. Fails as a whole on the first file that cannot be
/// used (a reload then keeps the old one).
pub fn server_config(
    tls: &ServerTlsConfig,
    h2: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsFileError> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    let mut first = None;
    for c in &tls.certs {
        let ck = certified_key(&c.cert, &c.key)?;
        first.get_or_insert_with(|| ck.clone());
        if c.server_names.is_empty() {
            default = Some(ck.clone());
        }
        for n in &c.server_names {
            match n.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_string()),
                None => exact.entry(n.clone()),
            }
            .or_insert_with(|| ck.clone());
        }
    }
    let Some(default) = default.or(first) else {
        return Err(TlsFileError::NoCertificates);
    };
    let resolver = SniResolver {
        exact,
        wildcard,
        default,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(crate::versions(tls.min_version))
        .map_err(TlsFileError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let (tickets, cache) = resumption();
    config.ticketer = tickets;
    config.session_storage = cache;
    Ok(Arc::new(config))
}

/// A single-certificate server config (for `hopline mock --tls-cert`): TLS 1.2 and 1.3,
/// ALPN `http/1.1`; with `client_ca`, every client must present a certificate issued by
/// it (mutual TLS).
pub fn single_cert_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsFileError> {
    let ck = certified_key(cert, key)?;
    let builder = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(TlsFileError::Config)?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = Arc::new(crate::files::roots(ca)?);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots,
                crate::provider(),
            )
            .build()
            .map_err(TlsFileError::Verifier)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
