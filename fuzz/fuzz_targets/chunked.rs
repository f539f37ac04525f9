//! The chunked decoder on arbitrary bytes fed in arbitrary pieces: never panics, never
//! yields more bytes than it was given, and splitting the input never changes the result.
#![no_main]

use bytes::BytesMut;
use hopline_h1::{BodyDecoder, BodyLength, Decoded};
use libfuzzer_sys::fuzz_target;

fn decode(data: &[u8], step: usize) -> Result<(Vec<u8>, bool), ()> {
    let mut dec = BodyDecoder::new(BodyLength::Chunked).with_max_trailers(1024);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = data;
    loop {
        match dec.decode(&mut buf) {
            Err(_) => return Err(()),
            Ok(Decoded::Data(d)) => out.extend_from_slice(&d),
            Ok(Decoded::End) => return Ok((out, true)),
            Ok(Decoded::NeedMore) => {
                if rest.is_empty() {
                    return Ok((out, false));
                }
                let n = step.min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }
    }
}

fuzz_target!(|input: (u8, &[u8])| {
    let (step, data) = input;
    let whole = decode(data, data.len().max(1));
    let pieces = decode(data, usize::from(step).max(1));
    if let Ok((body, _)) = &whole {
        assert!(body.len() <= data.len());
    }
    // Data decoded before an error may differ in how it was cut; complete results may not.
    if let (Ok((a, true)), Ok((b, true))) = (&whole, &pieces) {
        assert_eq!(a, b);
    }
    assert_eq!(
        whole.is_err() || matches!(whole, Ok((_, true))),
        pieces.is_err() || matches!(pieces, Ok((_, true)))
    );
});
