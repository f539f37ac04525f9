//! Path normalization on arbitrary bytes: never panics; what it returns is normalized
//! (normalizing again changes nothing), starts with `/`, has no `.` or `..` segment, no
//! encoded dot and no lower-case percent-encoding, and equals RFC 3986 §5.2.4's algorithm,
//! written out here as the RFC gives it, applied to the decoded input.
#![no_main]

use hopline_h1::path::{normalize, EscapedSlashes, PathRules};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let rules = PathRules {
        escaped_slashes: match first % 3 {
            0 => EscapedSlashes::Reject,
            1 => EscapedSlashes::Keep,
            _ => EscapedSlashes::Decode,
        },
        merge_slashes: first & 4 != 0,
    };
    // A path: '/' first, no query.
    let mut path = vec![b'/'];
    path.extend(rest.iter().copied().filter(|&b| b != b'?'));
    let Ok(out) = normalize(&path, rules) else {
        return;
    };
    assert!(out.starts_with(b"/"));
    assert!(out.split(|&b| b == b'/').all(|s| s != b"." && s != b".."));
    let again = normalize(&out, rules).expect("a normalized path normalizes");
    assert_eq!(&*again, &*out, "not idempotent");
    for w in out.windows(3).filter(|w| w[0] == b'%') {
        assert!(!w[1].is_ascii_lowercase() && !w[2].is_ascii_lowercase());
        assert!(!(w[1] == b'2' && w[2] == b'E'), "an encoded dot left");
    }
    let mut want = rfc_remove_dot_segments(&decoded(&path, rules.escaped_slashes));
    if rules.merge_slashes {
        want.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    if want.is_empty() {
        want.push(b'/');
    }
    assert_eq!(&*out, &want[..]);
});

/// Percent-decoding as the module documents it: unreserved characters decoded, other
/// encodings upper-cased, escaped slashes kept or decoded to '/'.
fn decoded(path: &[u8], rule: EscapedSlashes) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' {
            let c = hex(path[i + 1]).expect("checked by normalize") * 16
                + hex(path[i + 2]).expect("checked by normalize");
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                out.push(c);
            } else if (c == b'/' || c == b'\\') && rule == EscapedSlashes::Decode {
                out.push(b'/');
            } else {
                out.extend_from_slice(format!("%{c:02X}").as_bytes());
            }
            i += 3;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    out
}

/// RFC 3986 §5.2.4, step by step as written (A to E), on an input buffer and an output
/// buffer.
fn rfc_remove_dot_segments(input: &[u8]) -> Vec<u8> {
    let mut inp = input.to_vec();
    let mut out: Vec<u8> = Vec::new();
    let pop_last = |out: &mut Vec<u8>| {
        let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
        out.truncate(cut);
    };
    while !inp.is_empty() {
        if inp.starts_with(b"../") {
            inp.drain(..3);
        } else if inp.starts_with(b"./") {
            inp.drain(..2);
        } else if inp.starts_with(b"/./") {
            inp.drain(..2);
        } else if inp == b"/." {
            inp = b"/".to_vec();
        } else if inp.starts_with(b"/../") {
            inp.drain(..3);
            pop_last(&mut out);
        } else if inp == b"/.." {
            inp = b"/".to_vec();
            pop_last(&mut out);
        } else if inp == b"." || inp == b".." {
            inp.clear();
        } else {
            let start = usize::from(inp[0] == b'/');
            let end = inp[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(inp.len(), |p| p + start);
            out.extend(inp.drain(..end));
        }
    }
    out
}
