//! W3C Trace Context (`traceparent`): a caller's trace is continued, or a new one started;
//! every upstream attempt and aggregate call gets a span id of its own.
//!
//! The parser is strict, as the recommendation says a receiver must be: lowercase hex,
//! no all-zero ids, version `ff` refused; a later version is read by its first four fields.
//! A `traceparent` that does not parse is ignored (and a new trace started), never an error.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

/// A trace's 16-byte id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A span's 8-byte id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span: the parent of ours.
    pub parent_id: SpanId,
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// Longest `tracestate` passed on (the recommendation's limit for propagation).
pub const MAX_TRACESTATE: usize = 512;

impl TraceParent {
    /// Parses a `traceparent` value: `VV-<32 hex>-<16 hex>-<2 hex>` (version `00` exactly
    /// that long; a later version at least that long, the rest after a `-` ignored).
    pub fn parse(v: &[u8]) -> Option<TraceParent> {
        if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let version = hex_byte(&v[0..2])?;
        match version {
            0xff => return None,
            0 if v.len() != 55 => return None,
            _ if v.len() > 55 && v[55] != b'-' => return None,
            _ => {}
        }
        let mut trace = [0u8; 16];
        for (i, b) in trace.iter_mut().enumerate() {
            *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent = [0u8; 8];
        for (i, b) in parent.iter_mut().enumerate() {
            *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
        }
        if trace == [0; 16] || parent == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id: TraceId(trace),
            parent_id: SpanId(parent),
            flags: hex_byte(&v[53..55])?,
        })
    }

    /// The caller asked for this trace to be recorded.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// A `tracestate` worth passing on: non-empty, at most [`MAX_TRACESTATE`] bytes, printable
/// ASCII (its list syntax is the vendors' business; it is forwarded, not interpreted).
pub fn valid_tracestate(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_TRACESTATE && v.iter().all(|b| (0x20..0x7f).contains(b))
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as lowercase hex.
pub fn put_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    put_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

/// A version-00 `traceparent` value (55 bytes, no allocation).
pub fn traceparent(trace: TraceId, span: SpanId, flags: u8) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    let mut hex_at = |at: usize, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            out[at + 2 * i] = HEX[usize::from(b >> 4)];
            out[at + 2 * i + 1] = HEX[usize::from(b & 15)];
        }
    };
    hex_at(3, &trace.0);
    hex_at(36, &span.0);
    hex_at(53, &[flags]);
    out
}

thread_local! {
    /// splitmix64 state, seeded per thread from the process's random hasher keys.
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

/// 64 random bits (splitmix64: fast, well mixed; ids need uniqueness, not secrecy).
fn next_u64() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A new random span id (never all zeros).
pub fn new_span_id() -> SpanId {
    loop {
        let v = next_u64();
        if v != 0 {
            return SpanId(v.to_be_bytes());
        }
    }
}

/// A new random trace id (never all zeros).
pub fn new_trace_id() -> TraceId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&next_u64().to_be_bytes());
    id[8..].copy_from_slice(&new_span_id().0);
    TraceId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read_and_written_back() {
        let t = TraceParent::parse(GOOD).expect("valid");
        assert!(t.sampled());
        assert_eq!(hex(&t.trace_id.0), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(&traceparent(t.trace_id, t.parent_id, t.flags)[..], GOOD);
        // A later version: its first four fields, the rest ignored.
        let later = b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-ever";
        assert!(!TraceParent::parse(later).expect("later version").sampled());
    }

    #[test]
    fn anything_off_is_refused() {
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..], // upper case
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",      // zero trace
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",      // zero parent
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",      // version ff
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",    // 00 too long
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",     // no dash after
            b"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",      // misplaced dash
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",       // short
            b"0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",      // not hex
            b"",
        ] {
            assert_eq!(
                TraceParent::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn new_ids_are_distinct_and_never_zero() {
        let ids: std::collections::HashSet<[u8; 16]> =
            (0..10_000).map(|_| new_trace_id().0).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&[0; 16]));
    }

    #[test]
    fn tracestate_is_bounded() {
        assert!(valid_tracestate(b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(!valid_tracestate(b""));
        assert!(!valid_tracestate(&[b'a'; MAX_TRACESTATE + 1]));
        assert!(!valid_tracestate(b"a=\x01"));
    }
}
