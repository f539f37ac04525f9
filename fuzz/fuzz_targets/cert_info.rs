//! The certificate reader (subject and validity, hand-walked over yasna) on arbitrary
//! bytes: a certificate or an error, never a panic.
#![no_main]

use hopline_tls::info::CertInfo;
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = CertInfo::parse(&CertificateDer::from(data)) {
        assert!(!info.subject.is_empty());
    }
});
