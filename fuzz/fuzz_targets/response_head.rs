//! The response head parser and its framing rules on arbitrary bytes: never panics; an
//! accepted framing is never ambiguous; the fields left after hop-by-hop stripping are
//! written as the same bytes whether copied in runs or field by field.
#![no_main]

use bytes::BytesMut;
use hopline_h1::head::{parse_response, strip_hop_by_hop};
use hopline_h1::write::put_header;
use hopline_h1::{BodyDecoder, BodyLength, Decoded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(mut head)) = parse_response(&mut buf, 4096) {
        let _ = (
            head.keep_alive(),
            head.framing(false),
            head.body_length(true),
        );
        if let Ok(length) = head.body_length(false) {
            let te = head.headers.contains("transfer-encoding");
            let cl = head.headers.contains("content-length");
            assert!(!(te && cl && length != BodyLength::Empty));
            let mut dec = BodyDecoder::new(length);
            while let Ok(Decoded::Data(_)) = dec.decode(&mut buf) {}
        }
        strip_hop_by_hop(&mut head.headers);
        let mut runs = BytesMut::new();
        head.headers.write_to(&mut runs);
        let mut one_by_one = BytesMut::new();
        for (n, v) in head.headers.iter() {
            put_header(&mut one_by_one, n, v);
        }
        assert_eq!(runs, one_by_one);
    }
});
