//! An upstream's TLS configuration, and what a failed handshake means.
//!
//! Verification is rustls's WebPKI verifier, wrapped so that a rejected certificate
//! carries what the operator needs — its subject and dates and the name we asked for —
//! out of the handshake to [`classify`].

use std::io;
use std::sync::{Arc, OnceLock};

use hopline_core::config::UpstreamTlsConfig;
use hopline_core::TlsFailure;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

use crate::files::{self, TlsFileError};
use crate::info::CertInfo;

/// The system's trust anchors (rustls-native-certs), or the Mozilla roots (webpki-roots)
/// when the system has none; read once per process.
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(native.certs);
            if added == 0 {
                store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            Arc::new(store)
        })
        .clone()
}

/// Builds the client config for an upstream: its CA bundle (or the system roots), its
/// client certificate for mTLS, ALPN; resumption is rustls's default (in memory).
pub fn client_config(tls: &UpstreamTlsConfig) -> Result<Arc<rustls::ClientConfig>, TlsFileError> {
    let provider = crate::provider();
    let webpki = if tls.insecure_skip_verify {
        None
    } else {
        let roots = match &tls.ca {
            Some(ca) => Arc::new(files::roots(ca)?),
            None => system_roots(),
        };
        let v = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(TlsFileError::Verifier)?;
        Some(v)
    };
    let verifier = Arc::new(Verifier {
        webpki,
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsFileError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let ck = files::certified_key(cert, key)?;
            builder
                .with_client_auth_cert(ck.cert.clone(), files::key(key)?)
                .map_err(TlsFileError::Config)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// A certificate the verifier rejected, with what the operator needs to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{cause}")]
struct Rejected {
    /// rustls's reason.
    cause: CertificateError,
    /// The presented end-entity certificate, if it parses.
    cert: Option<CertInfo>,
    /// The name it was verified against.
    name: String,
}

/// Certificate verification: WebPKI, whose certificate errors carry a [`Rejected`]; or,
/// with `insecure_skip_verify`, none (`webpki` is `None`). Either way the handshake
/// signatures are checked: the peer must hold the key of the certificate it sent.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map_err(|e| match e {
                Error::InvalidCertificate(cause) => Error::InvalidCertificate(
                    CertificateError::Other(OtherError(Arc::new(Rejected {
                        cause,
                        cert: CertInfo::parse(end_entity).ok(),
                        name: server_name.to_str().into_owned(),
                    }))),
                ),
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a failed client handshake (tokio-rustls reports rustls errors inside an
/// `io::Error`) means for the operator.
pub fn classify(e: io::Error) -> TlsFailure {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return TlsFailure::Io(e);
    };
    match tls {
        Error::InvalidCertificate(CertificateError::Other(OtherError(o))) => {
            match o.downcast_ref::<Rejected>() {
                Some(r) => rejected(r, o.clone()),
                None => TlsFailure::BadCertificate(Box::new(tls.clone())),
            }
        }
        Error::InvalidCertificate(_) => TlsFailure::BadCertificate(Box::new(tls.clone())),
        Error::AlertReceived(_) => TlsFailure::PeerAlert(Box::new(tls.clone())),
        _ => TlsFailure::Handshake(Box::new(tls.clone())),
    }
}

/// An I/O error on an established TLS connection that is really a TLS failure: with
/// TLS 1.3, a server that refuses our client certificate says so (alert) only after the
/// client's side of the handshake ended, on the first read. Anything else is returned.
pub fn tls_failure(e: io::Error) -> Result<TlsFailure, io::Error> {
    if e.get_ref().is_some_and(|i| i.is::<Error>()) {
        Ok(classify(e))
    } else {
        Err(e)
    }
}

fn rejected(r: &Rejected, original: Arc<dyn std::error::Error + Send + Sync>) -> TlsFailure {
    let subject = || {
        r.cert
            .as_ref()
            .map_or_else(|| "unknown".to_string(), |c| c.subject.clone())
    };
    let date = |f: fn(&CertInfo) -> &String| r.cert.as_ref().map(|c| f(c).clone());
    match &r.cause {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            match date(|c| &c.not_after_date) {
                Some(not_after) => TlsFailure::CertExpired {
                    not_after,
                    subject: subject(),
                },
                None => TlsFailure::BadCertificate(Box::new(SharedError(original))),
            }
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            match date(|c| &c.not_before_date) {
                Some(not_before) => TlsFailure::CertNotYetValid {
                    not_before,
                    subject: subject(),
                },
                None => TlsFailure::BadCertificate(Box::new(SharedError(original))),
            }
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            TlsFailure::WrongName {
                name: r.name.clone(),
                subject: subject(),
            }
        }
        CertificateError::UnknownIssuer => TlsFailure::UnknownIssuer { subject: subject() },
        _ => TlsFailure::BadCertificate(Box::new(SharedError(original))),
    }
}

/// A shared error as an owned source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SharedError(Arc<dyn std::error::Error + Send + Sync>);
