//! Certificates made at test time (rcgen): a CA, leaves it signs, and a blocking rustls
//! client to talk to hopline's TLS listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use time::OffsetDateTime;

/// A test CA whose files live in `dir`.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    dir: PathBuf,
}

/// A leaf certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Validity of a leaf.
pub(crate) enum Validity {
    /// From a year ago to a year ahead.
    Good,
    /// Ended on this date (y, m, d).
    ExpiredOn(i32, u8, u8),
    /// Ends this many days from now.
    EndsInDays(i64),
}

impl Ca {
    /// A new CA named `name`, its files in a fresh directory.
    pub(crate) fn new(name: &str) -> Ca {
        let dir = super::temp_dir();
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed");
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem()).expect("write ca");
        Ca {
            issuer: Issuer::new(params, key),
            cert: path,
            dir,
        }
    }

    /// A leaf for `names` (DNS names or IPs), subject `CN=cn`, written as `stem.pem` and
    /// `stem.key`.
    pub(crate) fn leaf(&self, stem: &str, cn: &str, names: &[&str], validity: Validity) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let now = OffsetDateTime::now_utc();
        let (from, to) = match validity {
            Validity::Good => (
                now - time::Duration::days(365),
                now + time::Duration::days(365),
            ),
            Validity::ExpiredOn(y, m, d) => {
                let end = rcgen::date_time_ymd(y, m, d);
                (end - time::Duration::days(90), end)
            }
            Validity::EndsInDays(n) => (
                now - time::Duration::days(30),
                now + time::Duration::days(n),
            ),
        };
        params.not_before = from;
        params.not_after = to;
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let leaf = Leaf {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("write cert");
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write key");
        // As a key file should be: its owner's only (`check` warns otherwise).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&leaf.key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
        leaf
    }
}

/// A blocking TLS client to `addr` that trusts `ca`, asks for `sni` and offers `alpn`.
pub(crate) fn connect(
    addr: SocketAddr,
    ca: &Path,
    sni: &str,
    alpn: &[&str],
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, std::io::Error> {
    connect_with(addr, ca, sni, alpn, rustls::ALL_VERSIONS)
}

/// [`connect`] limited to `versions`. The handshake is completed before returning.
pub(crate) fn connect_with(
    addr: SocketAddr,
    ca: &Path,
    sni: &str,
    alpn: &[&str],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, std::io::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    handshake(TcpStream::connect(addr)?, Arc::new(config), sni)
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca)?;
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let c: CertificateDer<'static> = c.map_err(std::io::Error::other)?;
        roots.add(c).map_err(std::io::Error::other)?;
    }
    Ok(roots)
}

/// A TLS 1.2/1.3 client config trusting `ca` (no ALPN).
pub(crate) fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, std::io::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Completes a TLS handshake as `sni` on an already connected `tcp`.
pub(crate) fn handshake(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, std::io::Error> {
    let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Sends `GET path` on `s` (keep-alive) and reads one response: (status, body).
pub(crate) fn get_tls(s: &mut impl ReadWrite, path: &str) -> (u16, String) {
    write!(s, "GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").expect("write");
    s.flush().expect("flush");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("read");
        assert!(
            n > 0,
            "closed before a full response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head[9..12].parse().expect("status");
                return (status, body[..len].to_string());
            }
        }
    }
}

/// Read + Write.
pub(crate) trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A gateway with a TLS listener serving `default` (`tls_extra` goes into `[server.tls]`,
/// `server_extra` into `[server]`), an admin API, and every path routed to `up`.
pub(crate) fn tls_gateway(
    default: &Leaf,
    tls_extra: &str,
    server_extra: &str,
    up: SocketAddr,
) -> super::Proc {
    super::gateway(
        &format!(
            "{server_extra}\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{tls_extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            super::path(&default.cert),
            super::path(&default.key)
        ),
        &super::route_all(up),
    )
}
