//! Round-trip properties: what hopline writes, hopline reads back unchanged, however the
//! bytes are cut on the way.

use bytes::BytesMut;
use hopline_h1::body::{encode_chunk, LAST_CHUNK};
use hopline_h1::head::{parse_request, HeadLimits};
use hopline_h1::write::put_header;
use hopline_h1::{BodyDecoder, BodyLength, Decoded};
use proptest::prelude::*;

/// Decodes a chunked body fed `step` bytes at a time; the body and the bytes left over.
fn decode(wire: &[u8], step: usize) -> (Vec<u8>, Vec<u8>) {
    let mut dec = BodyDecoder::new(BodyLength::Chunked);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = wire;
    loop {
        match dec.decode(&mut buf).expect("valid chunked body") {
            Decoded::Data(d) => out.extend_from_slice(&d),
            Decoded::End => {
                buf.extend_from_slice(rest);
                return (out, buf.to_vec());
            }
            Decoded::NeedMore => {
                assert!(!rest.is_empty(), "ran out of input before the last chunk");
                let n = step.min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }
    }
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}"
}

proptest! {
    #[test]
    fn chunked_round_trips_whatever_the_chunks_and_the_cuts(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
        step in 1usize..64,
        trailer in prop::option::of(token()),
    ) {
        let mut wire = BytesMut::new();
        for c in &chunks {
            encode_chunk(&mut wire, c);
        }
        match &trailer {
            None => wire.extend_from_slice(LAST_CHUNK),
            Some(name) => wire.extend_from_slice(format!("0\r\n{name}: v\r\n\r\n").as_bytes()),
        }
        wire.extend_from_slice(b"NEXT");
        let (body, rest) = decode(&wire, step);
        prop_assert_eq!(body, chunks.concat());
        prop_assert_eq!(rest, b"NEXT".to_vec());
    }

    #[test]
    fn request_heads_round_trip(
        method in "[A-Z]{1,10}",
        segments in prop::collection::vec("[A-Za-z0-9._~-]{1,12}", 0..5),
        query in prop::option::of("[A-Za-z0-9=&]{1,20}"),
        fields in prop::collection::vec((token(), "[ -~]{0,40}"), 0..10),
        split in 1usize..200,
    ) {
        let path = format!("/{}", segments.join("/"));
        let target = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .filter(|(n, _)| {
                let n = n.to_ascii_lowercase();
                n != "host" && n != "content-length" && n != "transfer-encoding"
            })
            .map(|(n, v)| (n, v.trim().to_string()))
            .collect();
        let mut wire = BytesMut::new();
        wire.extend_from_slice(format!("{method} {target} HTTP/1.1\r\n").as_bytes());
        put_header(&mut wire, b"Host", b"example.test");
        for (n, v) in &fields {
            put_header(&mut wire, n.as_bytes(), v.as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        // Partial input is "need more", never an error; the whole head parses.
        let cut = split.min(wire.len() - 1);
        let mut partial = BytesMut::from(&wire[..cut]);
        prop_assert!(parse_request(&mut partial, HeadLimits::new(64 * 1024)).expect("partial is fine").is_none());
        let mut buf = wire.clone();
        let head = parse_request(&mut buf, HeadLimits::new(64 * 1024)).expect("valid").expect("complete");
        prop_assert!(buf.is_empty());
        prop_assert_eq!(head.method_str(), method.as_str());
        prop_assert_eq!(head.path(), path.as_str());
        prop_assert_eq!(head.query(), query.as_deref());
        prop_assert_eq!(head.body_length(), BodyLength::Empty);
        let got: Vec<(String, String)> = head
            .headers
            .iter()
            .skip(1)
            .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        prop_assert_eq!(got, fields);
    }
}
