//! Allocation-free writers of the few textual forms the hot path produces (numbers,
//! addresses, JSON strings, millisecond durations), appending bytes to a `Vec<u8>`.
//!
//! `core::fmt` is general and correct but goes through dynamic dispatch and padding logic
//! for every integer; an access log line holds a dozen of them, so these writers exist to
//! keep a request's logging cost small. Each produces exactly what `Display` would.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// "00", "01", .. "99": two digits per division.
const PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Renders `n` in decimal into `tmp`, returning the digits (the shared core of every
/// integer writer here and of `hopline-h1`'s head writers).
pub fn decimal(mut n: u64, tmp: &mut [u8; 20]) -> &[u8] {
    let mut i = tmp.len();
    while n >= 100 {
        let d = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        tmp[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
    }
    if n >= 10 {
        let d = n as usize * 2;
        i -= 2;
        tmp[i..i + 2].copy_from_slice(&PAIRS[d..d + 2]);
    } else {
        i -= 1;
        tmp[i] = b'0' + n as u8;
    }
    &tmp[i..]
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(decimal(n, &mut [0; 20]));
}

/// Appends `n` in decimal, zero-padded to `width` digits.
pub fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut tmp = [0; 20];
    let digits = decimal(n, &mut tmp);
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits);
}

/// Renders an IPv4 address into `tmp` as `Display` writes it (`127.0.0.1`), returning
/// the text.
pub fn ipv4(ip: Ipv4Addr, tmp: &mut [u8; 15]) -> &[u8] {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            tmp[n] = b'.';
            n += 1;
        }
        // At most three digits, written in place (no copy of a variable length).
        let o = usize::from(octet);
        if o >= 100 {
            tmp[n] = b'0' + octet / 100;
            n += 1;
        }
        if o >= 10 {
            tmp[n] = PAIRS[(o % 100) * 2];
            n += 1;
        }
        tmp[n] = PAIRS[(o % 100) * 2 + 1];
        n += 1;
    }
    &tmp[..n]
}

/// Appends an IP address as `Display` writes it (`127.0.0.1`, `::1`).
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => out.extend_from_slice(ipv4(v4, &mut [0; 15])),
        // Rare on the hot path, and its compression rules are best left to std.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends a socket address as `Display` writes it (`127.0.0.1:80`, `[::1]:80`).
pub fn push_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            push_ip(out, IpAddr::V4(*a.ip()));
            out.push(b':');
            push_u64(out, u64::from(a.port()));
        }
        SocketAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// Appends `d` in milliseconds with three decimals (microsecond resolution, rounded to the
/// nearest microsecond), e.g. `12.345`.
pub fn push_millis3(out: &mut Vec<u8>, d: Duration) {
    // In u64 (a u128 division is a library call): seconds to microseconds, saturating
    // only for durations beyond half a million years.
    let micros = d
        .as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_nanos() + 500) / 1_000);
    push_u64(out, micros / 1_000);
    out.push(b'.');
    push_padded(out, micros % 1_000, 3);
}

/// Appends `v` as a JSON string literal (quotes included), escaping `"`, `\` and control
/// characters; everything else, non-ASCII included, is copied as is.
pub fn push_json_str(out: &mut Vec<u8>, v: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = v.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Nearly every string needs no escape: a scan without early exit (which the compiler
    // vectorises) finds out, and the string is then copied whole.
    let plain = !bytes.iter().fold(false, |esc, &b| {
        esc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    fn s(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).expect("utf-8")
    }

    #[test]
    fn numbers_match_display() {
        for n in [
            0,
            7,
            9,
            10,
            42,
            99,
            100,
            101,
            999,
            1000,
            65_535,
            1_234_567_890,
            u64::MAX,
        ] {
            assert_eq!(s(|o| push_u64(o, n)), n.to_string());
        }
        assert_eq!(s(|o| push_padded(o, 7, 3)), "007");
        assert_eq!(s(|o| push_padded(o, 1234, 3)), "1234");
        assert_eq!(s(|o| push_padded(o, 0, 2)), "00");
    }

    #[test]
    fn addresses_match_display() {
        let v4 = SocketAddr::from((Ipv4Addr::new(10, 0, 255, 1), 8080));
        assert_eq!(s(|o| push_socket_addr(o, v4)), v4.to_string());
        let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 443, 0, 0));
        assert_eq!(s(|o| push_socket_addr(o, v6)), "[::1]:443");
        assert_eq!(s(|o| push_ip(o, Ipv4Addr::UNSPECIFIED.into())), "0.0.0.0");
        for b in 0..=255u8 {
            let ip = Ipv4Addr::new(b, 255 - b, b / 3, b.wrapping_mul(7));
            assert_eq!(ipv4(ip, &mut [0; 15]), ip.to_string().as_bytes(), "{ip}");
        }
    }

    #[test]
    fn millis_round_to_the_microsecond() {
        assert_eq!(s(|o| push_millis3(o, Duration::ZERO)), "0.000");
        assert_eq!(
            s(|o| push_millis3(o, Duration::from_nanos(12_345_499))),
            "12.345"
        );
        assert_eq!(
            s(|o| push_millis3(o, Duration::from_nanos(12_345_500))),
            "12.346"
        );
        assert_eq!(s(|o| push_millis3(o, Duration::from_secs(5))), "5000.000");
        // Rounding that carries into the next millisecond and second.
        assert_eq!(
            s(|o| push_millis3(o, Duration::new(1, 999_999_500))),
            "2000.000"
        );
        // The old u128 arithmetic, for a spread of durations.
        for nanos in [
            1u64,
            499,
            500,
            999_999,
            1_000_500,
            86_400_000_000_123,
            u64::MAX,
        ] {
            let d = Duration::from_nanos(nanos);
            let micros = u64::try_from((d.as_nanos() + 500) / 1_000).unwrap_or(u64::MAX);
            let want = format!("{}.{:03}", micros / 1_000, micros % 1_000);
            assert_eq!(s(|o| push_millis3(o, d)), want, "{nanos} ns");
        }
        assert_eq!(
            s(|o| push_millis3(o, Duration::MAX)),
            format!("{}.{:03}", u64::MAX / 1_000, u64::MAX % 1_000)
        );
    }

    #[test]
    fn json_strings_escape_what_json_requires() {
        assert_eq!(
            s(|o| push_json_str(o, "plain/path?a=1")),
            "\"plain/path?a=1\""
        );
        assert_eq!(
            s(|o| push_json_str(o, "a\"b\\c\nd\re\tf\u{1}g")),
            r#""a\"b\\c\nd\re\tf\u0001g""#
        );
        assert_eq!(s(|o| push_json_str(o, "优惠券")), "\"优惠券\"");
        assert_eq!(s(|o| push_json_str(o, "")), "\"\"");
    }
}
