//! Reading hopline's JSON access log, one line at a time, into the few fields a diagnosis
//! needs. Lines that are not access records (endpoint events, other programs' lines) are
//! counted, not fatal.

use std::borrow::Cow;

use serde::Deserialize;

/// One access log line, as much of it as diagnose reads.
#[derive(Debug, Deserialize)]
pub struct Line<'a> {
    /// RFC 3339 UTC, e.g. `2026-11-28T04:48:30.386Z`.
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    /// The route (`(none)` for no match).
    #[serde(borrow, default)]
    pub route: Option<Cow<'a, str>>,
    /// The status hopline logged (499 when the client left).
    pub status: u16,
    /// Flags, e.g. `UT`, `DG` (always written, `[]` for none: with `duration_ms`, what
    /// tells an access record from other JSON lines, such as `hopline mock`'s).
    #[serde(borrow)]
    pub flags: Vec<Cow<'a, str>>,
    /// The cause of a failure.
    #[serde(borrow, default)]
    pub cause: Option<Cow<'a, str>>,
    /// The upstream of a proxy route.
    #[serde(borrow, default)]
    pub upstream: Option<Cow<'a, str>>,
    /// Its zone.
    #[serde(borrow, default)]
    pub zone: Option<Cow<'a, str>>,
    /// Where the exchange failed (or, for a 499, what it waited in).
    #[serde(borrow, default)]
    pub phase: Option<Cow<'a, str>>,
    /// Whole request time.
    pub duration_ms: f64,
    /// The upstream connection was a pooled one.
    #[serde(default)]
    pub upstream_reused: Option<bool>,
    /// How long it had been idle in the pool.
    #[serde(default)]
    pub upstream_idle_ms: Option<f64>,
    /// How long it waited in its upstream's queue for an in-flight slot.
    #[serde(default)]
    pub queue_ms: Option<f64>,
    /// Calls that fell back.
    #[serde(borrow, default)]
    pub degraded: Vec<Cow<'a, str>>,
    /// Aggregate calls.
    #[serde(borrow, default)]
    pub calls: Vec<Call<'a>>,
}

/// One aggregate call of a line.
#[derive(Debug, Deserialize)]
pub struct Call<'a> {
    /// The call's name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// Its upstream.
    #[serde(borrow)]
    pub upstream: Cow<'a, str>,
    /// Its zone.
    #[serde(borrow)]
    pub zone: Cow<'a, str>,
    /// Why it failed or fell back.
    #[serde(borrow, default)]
    pub cause: Option<Cow<'a, str>>,
    /// Where it failed.
    #[serde(borrow, default)]
    pub phase: Option<Cow<'a, str>>,
    /// What the upstream answered, if it did.
    #[serde(default)]
    pub status: Option<u16>,
    /// Served from its fallback.
    #[serde(default)]
    pub fallback: bool,
}

/// Parses one line — hopline's JSON access log, or nginx's in the documented
/// [`NGINX_LOG_FORMAT`] — `None` for a line that is neither.
/// A line whose time or durations are not finite, non-negative numbers (`inf`, `NaN`,
/// `-1`) is neither: it is malformed, and counted as skipped.
pub fn parse(line: &str) -> Option<(f64, Line<'_>)> {
    let (t, l) = if line.starts_with('{') {
        let l: Line<'_> = serde_json::from_str(line).ok()?;
        (epoch(&l.ts)?, l)
    } else {
        nginx(line)?
    };
    let sane = |v: f64| v.is_finite() && v >= 0.0;
    let ok = sane(t)
        && sane(l.duration_ms)
        && l.upstream_idle_ms.is_none_or(sane)
        && l.queue_ms.is_none_or(sane);
    ok.then_some((t, l))
}

/// The nginx `log_format` diagnose reads (name it as you like):
/// `$msec $status $request_time $upstream_response_time $upstream_status $upstream_addr
/// $request_id "$request"`. Its lines count as route `nginx`.
pub const NGINX_LOG_FORMAT: &str = "$msec $status $request_time $upstream_response_time $upstream_status $upstream_addr $request_id \"$request\"";

/// The upstream of every nginx line: the proxy nginx sends to (hopline, where diagnose
/// reads both logs).
pub const NGINX_UPSTREAM: &str = "nginx's upstream";

/// One nginx line in [`NGINX_LOG_FORMAT`].
fn nginx(line: &str) -> Option<(f64, Line<'_>)> {
    let (head, request) = line.split_once(" \"")?;
    request.strip_suffix('"')?;
    // Several upstreams tried are listed "a, b": one token each.
    let head = head.replace(", ", ",").replace(" : ", ":");
    let f: Vec<&str> = head.split_whitespace().collect();
    let [msec, status, request_time, _up_time, up_status, up_addr, _id] = f[..] else {
        return None;
    };
    let t: f64 = msec.parse().ok()?;
    let status: u16 = status.parse().ok()?;
    let secs: f64 = request_time.parse().ok()?;
    // What nginx waited on is its upstream, whatever address it had: named so in the
    // report ("nginx's upstream"), with the address in the cause.
    let upstream = (up_addr != "-").then_some(Cow::Borrowed(NGINX_UPSTREAM));
    let cause = match (status, &upstream) {
        (499, _) => Some(format!("nginx: client closed the connection after {secs}s")),
        (500.., Some(_)) => Some(format!(
            "nginx: upstream {up_addr} answered {up_status} after {secs}s"
        )),
        (500.., None) => Some(format!("nginx: {status} without an upstream answer")),
        _ => None,
    };
    Some((
        t,
        Line {
            ts: Cow::Owned(msec.to_string()),
            route: Some(Cow::Borrowed("nginx")),
            status,
            flags: Vec::new(),
            cause: cause.map(Cow::Owned),
            zone: upstream.as_ref().map(|_| Cow::Borrowed("nginx")),
            upstream,
            phase: None,
            duration_ms: secs * 1000.0,
            upstream_reused: None,
            upstream_idle_ms: None,
            queue_ms: None,
            degraded: Vec::new(),
            calls: Vec::new(),
        },
    ))
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time (`…T…Z`, optional fraction).
pub fn epoch(s: &str) -> Option<f64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    // Four-digit years only: a hostile `99999999999999999-…` must not overflow the day
    // count below.
    if !(0..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let mut t = time.split(':');
    let (hh, mm): (f64, f64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let ss: f64 = t.next()?.parse().ok()?;
    // `(0.0..24.0).contains` is false for NaN too.
    if !(0.0..24.0).contains(&hh) || !(0.0..60.0).contains(&mm) || !(0.0..61.0).contains(&ss) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

/// `epoch` back to RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: f64) -> String {
    let ms = (t * 1000.0).round() as i64;
    let (secs, ms) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days (the inverse of the above).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let t = epoch("2026-11-28T04:48:30.386Z").expect("time");
        assert_eq!(rfc3339(t), "2026-11-28T04:48:30.386Z");
        assert_eq!(epoch("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(epoch("2026-13-01T00:00:00Z"), None);
        assert_eq!(epoch("yesterday"), None);
    }

    #[test]
    fn nginx_lines_in_the_documented_format_parse() {
        let l = r#"1795874400.123 499 5.001 5.000 - 10.0.0.5:8080 abc123 "GET /api/benefits?uid=42 HTTP/1.1""#;
        let (t, line) = parse(l).expect("nginx line");
        assert!((t - 1_795_874_400.123).abs() < 1e-6);
        assert_eq!((line.status, line.route.as_deref()), (499, Some("nginx")));
        assert!((line.duration_ms - 5001.0).abs() < 1e-6);
        let two = r#"1795874401.5 502 0.010 0.004, 0.006 502, 502 10.0.0.5:8080, 10.0.0.6:8080 id "GET / HTTP/1.1""#;
        let (_, line) = parse(two).expect("two upstreams");
        assert_eq!(line.upstream.as_deref(), Some(NGINX_UPSTREAM));
        assert_eq!(
            line.cause.as_deref(),
            Some("nginx: upstream 10.0.0.5:8080,10.0.0.6:8080 answered 502,502 after 0.01s")
        );
        assert!(parse("1795874400 200 \"GET /\"").is_none());
    }

    #[test]
    fn an_access_line_parses_and_an_event_line_does_not_count() {
        let line = r#"{"ts":"2026-11-28T04:48:30.447Z","route":"pay","status":504,"flags":["UT"],"cause":"upstream coupon 127.0.0.1:1 (egress): connect timed out after 200ms (connect_timeout)","upstream":"coupon","zone":"egress","phase":"connect","duration_ms":201.5,"degraded":[]}"#;
        let (_, l) = parse(line).expect("line");
        assert_eq!((l.status, l.phase.as_deref()), (504, Some("connect")));
        let event = r#"{"ts":"2026-11-28T04:48:30.447Z","event":"endpoint","upstream":"m","endpoint":"1.2.3.4:5","state":"ejected","detail":"x"}"#;
        assert!(parse(event).is_none());
        // `hopline mock`'s request lines have a ts and a status too.
        let mock = r#"{"body_bytes":0,"cancelled":true,"client":"127.0.0.1:56642","elapsed_ms":26.487,"expected_rq_timeout_ms":"19","method":"GET","path":"/slow","request_id":"cff8d36a50c24d7000000002","status":0,"ts":"2026-11-28T04:48:30.447Z"}"#;
        assert!(parse(mock).is_none());
        assert!(parse("not json").is_none());
    }

    #[test]
    fn non_finite_and_negative_numbers_are_malformed_lines() {
        let ok = r#"{"ts":"2026-11-28T04:48:30.447Z","status":200,"flags":[],"duration_ms":1.5}"#;
        assert!(parse(ok).is_some());
        for bad in [
            r#"{"ts":"2026-11-28T04:48:30.447Z","status":200,"flags":[],"duration_ms":-1}"#,
            r#"{"ts":"2026-11-28T04:48:30.447Z","status":200,"flags":[],"duration_ms":1e999}"#,
            r#"{"ts":"2026-11-28T04:48:30.447Z","status":200,"flags":[],"duration_ms":1,"upstream_idle_ms":-5}"#,
            r#"{"ts":"2026-11-28Tinf:00:00Z","status":200,"flags":[],"duration_ms":1}"#,
            r#"{"ts":"2026-11-28T00:00:NaNZ","status":200,"flags":[],"duration_ms":1}"#,
            r#"{"ts":"99999999999999999-11-28T00:00:00Z","status":200,"flags":[],"duration_ms":1}"#,
            r#"inf 200 0.1 0.1 200 10.0.0.5:80 id "GET / HTTP/1.1""#,
            r#"1795874400 200 NaN 0.1 200 10.0.0.5:80 id "GET / HTTP/1.1""#,
            r#"1795874400 200 inf 0.1 200 10.0.0.5:80 id "GET / HTTP/1.1""#,
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
