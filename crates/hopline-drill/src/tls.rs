//! Throw-away certificates for a drill run: a CA and one server certificate it signs,
//! written next to the run's logs, for services that speak TLS (`{tls:ca}`,
//! `{tls:cert}`, `{tls:key}` in a scenario).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// The names the server certificate is valid for: loopback, and any name under
/// `drill.example` (e.g. `coupon.drill.example`, the payment channel's SNI).
pub const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "*.drill.example"];

/// The files of one run's certificates.
#[derive(Debug, Clone)]
pub struct DrillPki {
    /// The CA certificate (PEM): what clients trust.
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused.
    #[error("cannot generate the drill's certificates")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Generates a CA and a server certificate for [`NAMES`] into `dir`.
pub fn generate(dir: &Path) -> Result<DrillPki, PkiError> {
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        let written = std::fs::write(&path, text).and_then(|()| {
            // Private keys are their owner's only (`hopline check` warns otherwise).
            if name.ends_with(".key") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(())
        });
        written
            .map(|()| path.clone())
            .map_err(|source| PkiError::Write { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "hopline drill CA (throw-away)");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    for n in NAMES {
        leaf.subject_alt_names.push(match n.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.try_into()?),
        });
    }
    leaf.distinguished_name
        .push(DnType::CommonName, "coupon.drill.example");
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(DrillPki {
        ca: write("ca.pem", ca_cert.pem())?,
        cert: write("server.pem", cert.pem())?,
        key: write("server.key", key.serialize_pem())?,
    })
}

/// Replaces `{tls:ca}`, `{tls:cert}` and `{tls:key}` with the files' paths.
pub fn fill(text: &str, pki: &DrillPki) -> String {
    text.replace("{tls:ca}", &pki.ca.display().to_string())
        .replace("{tls:cert}", &pki.cert.display().to_string())
        .replace("{tls:key}", &pki.key.display().to_string())
}
