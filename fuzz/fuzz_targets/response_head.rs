//! The response head parser and its framing rules on arbitrary bytes: never panics; an
//! accepted framing is never ambiguous.
#![no_main]

use bytes::BytesMut;
use hopline_h1::head::parse_response;
use hopline_h1::{BodyDecoder, BodyLength, Decoded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(head)) = parse_response(&mut buf, 4096) {
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
    }
});
