//! What hopline reads from a certificate: its subject and validity.

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Facts about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject, e.g. `CN=pay.example`.
    pub subject: String,
    /// `notBefore`, seconds since the Unix epoch.
    pub not_before: i64,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
    /// `notBefore` as a UTC date, e.g. `2026-01-01`.
    pub not_before_date: String,
    /// `notAfter` as a UTC date, e.g. `2026-10-01`.
    pub not_after_date: String,
}

/// A certificate that does not parse as X.509.
#[derive(Debug, thiserror::Error)]
#[error("not an X.509 certificate")]
pub struct ParseError(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>);

impl CertInfo {
    /// Parses the DER certificate `der`.
    pub fn parse(der: &CertificateDer<'_>) -> Result<CertInfo, ParseError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(ParseError)?;
        let v = cert.validity();
        let subject = cert.subject().to_string();
        Ok(CertInfo {
            subject: if subject.is_empty() {
                "(empty)".into()
            } else {
                subject
            },
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
            not_before_date: v.not_before.to_datetime().date().to_string(),
            not_after_date: v.not_after.to_datetime().date().to_string(),
        })
    }
}
