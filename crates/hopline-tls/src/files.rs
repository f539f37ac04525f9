//! Certificates and keys from PEM files. Every error names the file and the reason.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate, key or CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not valid PEM.
    #[error("{}: not valid PEM", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The PEM error.
        source: rustls::pki_types::pem::Error,
    },
    /// The file holds no `CERTIFICATE` block.
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no private key block.
    #[error("{}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is of a type or curve the provider cannot sign with.
    #[error("{}: unsupported private key", path.display())]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// The provider's error.
        source: rustls::Error,
    },
    /// The key does not belong to the certificate.
    #[error("{}: private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A certificate in the file cannot be parsed.
    #[error("{}: certificate #{index} cannot be parsed", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Which certificate, from 0.
        index: usize,
        /// The parser's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A CA certificate was refused as a trust anchor.
    #[error("{}: CA certificate #{index} is not a usable trust anchor", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Which certificate, from 0.
        index: usize,
        /// rustls's error.
        source: rustls::Error,
    },
    /// `[server.tls]` names no certificate at all.
    #[error("no certificate configured")]
    NoCertificates,
    /// The certificate verifier could not be built from the trust anchors.
    #[error("cannot build the certificate verifier")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    /// rustls refused the settings (e.g. no protocol version left).
    #[error("TLS settings refused")]
    Config(#[source] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in the PEM file at `path`, in file order; at least one.
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsFileError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    for (index, c) in certs.iter().enumerate() {
        crate::info::CertInfo::parse(c).map_err(|source| TlsFileError::BadCertificate {
            path: path.to_path_buf(),
            index,
            source: Box::new(source),
        })?;
    }
    Ok(certs)
}

/// The first private key in the PEM file at `path`.
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsFileError::NoKey {
            path: path.to_path_buf(),
        },
        source => TlsFileError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// A certificate chain with its key, checked to belong together.
pub fn certified_key(cert: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, TlsFileError> {
    let chain = certs(cert)?;
    let der = key(key_path)?;
    let signer = crate::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|source| TlsFileError::UnsupportedKey {
            path: key_path.to_path_buf(),
            source,
        })?;
    let ck = CertifiedKey::new(chain, signer);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(ck))
        }
        Err(_) => Err(TlsFileError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key_path.to_path_buf(),
        }),
    }
}

/// A root store from the CA bundle at `path`; every certificate in it must be usable.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsFileError> {
    let mut store = rustls::RootCertStore::empty();
    for (index, c) in certs(path)?.into_iter().enumerate() {
        store.add(c).map_err(|source| TlsFileError::BadCa {
            path: path.to_path_buf(),
            index,
            source,
        })?;
    }
    Ok(store)
}

/// Facts about the first (leaf) certificate in the PEM file at `path`.
pub fn leaf_info(path: &Path) -> Result<crate::info::CertInfo, TlsFileError> {
    let certs = certs(path)?;
    crate::info::CertInfo::parse(&certs[0]).map_err(|source| TlsFileError::BadCertificate {
        path: path.to_path_buf(),
        index: 0,
        source: Box::new(source),
    })
}
