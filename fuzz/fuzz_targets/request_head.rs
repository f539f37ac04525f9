//! The request head parser and validator on arbitrary bytes: never panics, and every head
//! it accepts answers its accessors and holds to the framing rules.
#![no_main]

use bytes::BytesMut;
use hopline_h1::head::{parse_request, HeadLimits};
use hopline_h1::BodyLength;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        max_head: 4096,
        max_request_line: 1024,
    };
    let mut buf = BytesMut::from(data);
    if let Ok(Some(head)) = parse_request(&mut buf, limits) {
        let _ = (
            head.path(),
            head.query(),
            head.origin_form(),
            head.keep_alive(),
        );
        let te = head.headers.contains("transfer-encoding");
        let cl = head.headers.contains("content-length");
        // An accepted head is never ambiguous: never both, and chunked only with TE.
        assert!(!(te && cl));
        assert_eq!(head.body_length() == BodyLength::Chunked, te);
        // Deadline headers parse (or not) without panicking.
        for name in ["grpc-timeout", "x-envoy-expected-rq-timeout-ms"] {
            if let Some(v) = head.headers.get(name) {
                let _ = hopline_core::deadline::parse_grpc_timeout(v);
                let _ = hopline_core::deadline::parse_envoy_timeout_ms(v);
            }
        }
    }
});
