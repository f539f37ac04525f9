//! What hopline reads from a certificate: its subject and validity (RustCrypto's
//! `x509-cert`, a DER reader built for untrusted input).

use rustls::pki_types::CertificateDer;
use x509_cert::der::Decode;
use x509_cert::time::Time;
use x509_cert::Certificate;

/// Facts about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject as RFC 4514 writes it, e.g. `CN=pay.example` (`O=Example,CN=pay.example`
    /// for two attributes: the last one first).
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
pub struct ParseError(#[source] x509_cert::der::Error);

impl CertInfo {
    /// Parses the DER certificate `der`.
    pub fn parse(der: &CertificateDer<'_>) -> Result<CertInfo, ParseError> {
        let cert = Certificate::from_der(der.as_ref()).map_err(ParseError)?;
        let tbs = cert.tbs_certificate();
        let v = tbs.validity();
        let subject = tbs.subject().to_string();
        let (not_before, not_before_date) = instant(&v.not_before);
        let (not_after, not_after_date) = instant(&v.not_after);
        Ok(CertInfo {
            subject: if subject.is_empty() {
                "(empty)".into()
            } else {
                subject
            },
            not_before,
            not_before_date,
            not_after,
            not_after_date,
        })
    }
}

/// Seconds since the epoch and the UTC date of a certificate time (never before 1950,
/// never after 9999: what UTCTime and GeneralizedTime can say).
fn instant(t: &Time) -> (i64, String) {
    let secs = i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX);
    let d = t.to_date_time();
    (
        secs,
        format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn reads_subject_and_validity() {
        let mut p = rcgen::CertificateParams::new(vec!["pay.example".into()]).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "pay.example");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        p.not_before = rcgen::date_time_ymd(2026, 1, 1);
        p.not_after = rcgen::date_time_ymd(2051, 10, 1);
        let info = CertInfo::parse(&cert(p)).expect("parse");
        assert_eq!(info.subject, "O=Example,CN=pay.example");
        assert_eq!(info.not_before_date, "2026-01-01");
        assert_eq!(info.not_after_date, "2051-10-01");
        assert_eq!(info.not_before, 1_767_225_600);
        assert_eq!(info.not_after - info.not_before, 9_404 * 86_400);
    }

    #[test]
    fn an_empty_subject_says_so() {
        let mut p = rcgen::CertificateParams::new(vec!["x.test".into()]).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        assert_eq!(CertInfo::parse(&cert(p)).expect("parse").subject, "(empty)");
    }

    #[test]
    fn truncated_or_corrupted_input_is_an_error_never_a_panic() {
        let good = cert(rcgen::CertificateParams::new(vec!["x.test".into()]).expect("params"));
        let bytes = good.as_ref();
        for cut in 0..bytes.len() {
            let short = CertificateDer::from(bytes[..cut].to_vec());
            assert!(CertInfo::parse(&short).is_err(), "cut at {cut}");
        }
        // Every byte flipped in turn: parsed or refused, never a panic.
        for i in 0..bytes.len() {
            let mut v = bytes.to_vec();
            v[i] ^= 0xff;
            let _ = CertInfo::parse(&CertificateDer::from(v));
        }
        assert!(CertInfo::parse(&CertificateDer::from(b"not a cert".to_vec())).is_err());
    }
}
