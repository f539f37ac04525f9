//! Formatting helpers for durations and wall-clock timestamps.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Displays a duration the way configs write it: `250ms`, `5s`, `1.5s`, `120us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let micros = d.as_micros();
        if micros == 0 && d.as_nanos() > 0 {
            write!(f, "{}ns", d.as_nanos())
        } else if micros < 1_000 {
            write!(f, "{micros}us")
        } else if micros < 1_000_000 {
            let ms = micros / 1_000;
            let frac = micros % 1_000;
            if frac == 0 || ms >= 100 {
                write!(f, "{ms}ms")
            } else {
                write!(f, "{}.{}ms", ms, frac / 100)
            }
        } else if micros.is_multiple_of(1_000_000) {
            write!(f, "{}s", micros / 1_000_000)
        } else {
            let ms = d.as_millis();
            if ms.is_multiple_of(1_000) {
                write!(f, "{}s", ms / 1_000)
            } else {
                write!(f, "{}.{:03}s", ms / 1_000, ms % 1_000)
            }
        }
    }
}

/// Formats `t` as RFC 3339 UTC with millisecond precision, e.g. `2026-11-01T12:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    push_rfc3339(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `t` as [`rfc3339`] formats it, without allocating. The date and time up to the
/// second are rendered once per second per thread and reused.
pub fn push_rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    use crate::text::push_padded;
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((u64::MAX, [0; 20])) };
    }
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    match SECOND.get() {
        (cached, prefix) if cached == secs => out.extend_from_slice(&prefix),
        _ => {
            let start = out.len();
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let rem = secs % 86_400;
            push_padded(out, y.max(0) as u64, 4);
            out.push(b'-');
            push_padded(out, u64::from(m), 2);
            out.push(b'-');
            push_padded(out, u64::from(d), 2);
            out.push(b'T');
            push_padded(out, rem / 3600, 2);
            out.push(b':');
            push_padded(out, (rem / 60) % 60, 2);
            out.push(b':');
            push_padded(out, rem % 60, 2);
            out.push(b'.');
            // Years past 9999 do not fit the cache; they are rendered every time.
            if let Ok(prefix) = <[u8; 20]>::try_from(&out[start..]) {
                SECOND.set((secs, prefix));
            }
        }
    }
    push_padded(out, u64::from(since.subsec_millis()), 3);
    out.push(b'Z');
}

/// Converts days since 1970-01-01 into a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_read_like_config() {
        assert_eq!(Human(Duration::from_millis(250)).to_string(), "250ms");
        assert_eq!(Human(Duration::from_secs(5)).to_string(), "5s");
        assert_eq!(Human(Duration::from_millis(1500)).to_string(), "1.500s");
        assert_eq!(Human(Duration::from_micros(120)).to_string(), "120us");
        assert_eq!(Human(Duration::from_micros(2_500)).to_string(), "2.5ms");
    }

    #[test]
    fn rfc3339_reuses_the_rendered_second_and_notices_the_next() {
        let t = UNIX_EPOCH + Duration::from_millis(1_793_534_400_123);
        assert_eq!(rfc3339(t), "2026-11-01T12:00:00.123Z");
        let same_second = t + Duration::from_millis(500);
        assert_eq!(rfc3339(same_second), "2026-11-01T12:00:00.623Z");
        let next = t + Duration::from_millis(900);
        assert_eq!(rfc3339(next), "2026-11-01T12:00:01.023Z");
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_793_534_400_123);
        assert_eq!(rfc3339(t), "2026-11-01T12:00:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
