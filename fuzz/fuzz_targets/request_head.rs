//! The request head parser and validator on arbitrary bytes: never panics, every head it
//! accepts answers its accessors and holds to the framing rules, and its fields are
//! written as the same bytes whether copied in runs or field by field.
#![no_main]

use bytes::BytesMut;
use hopline_h1::head::{parse_request, strip_hop_by_hop, HeadLimits};
use hopline_h1::write::put_header;
use hopline_h1::BodyLength;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        max_head: 4096,
        max_request_line: 1024,
    };
    let mut buf = BytesMut::from(data);
    if let Ok(Some(mut head)) = parse_request(&mut buf, limits) {
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
        // As the upstream head is written: some fields skipped, the rest copied.
        strip_hop_by_hop(&mut head.headers);
        let keep = |n: &[u8]| n.len() % 3 != 0;
        let mut runs = BytesMut::new();
        head.headers.write_where(&mut runs, keep);
        let mut one_by_one = BytesMut::new();
        for (n, v) in head.headers.iter().filter(|(n, _)| keep(n)) {
            put_header(&mut one_by_one, n, v);
        }
        assert_eq!(runs, one_by_one);
    }
});
