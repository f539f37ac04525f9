//! The per-request deadline: computed once at arrival, consulted by every hop.

use std::fmt::Debug;
use std::ops::{Add, Sub};
use std::time::{Duration, Instant};

use crate::error::TimeoutSource;

/// A reading of a monotonic clock: `std::time::Instant`, or an async runtime's own
/// instant (the gateway reads tokio's, so that its deadlines follow a paused test clock).
pub trait Moment:
    Copy + Ord + Debug + Add<Duration, Output = Self> + Sub<Self, Output = Duration>
{
}

impl<T> Moment for T where
    T: Copy + Ord + Debug + Add<Duration, Output = T> + Sub<T, Output = Duration>
{
}

/// `a - b`, or zero when `b` is later.
fn since<I: Moment>(a: I, b: I) -> Duration {
    if a > b {
        a - b
    } else {
        Duration::ZERO
    }
}

/// Which input decided a request's deadline (logged, and shown by `/config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineSource {
    /// The route's own timeout (or `deadline.default` when the route sets none).
    Route,
    /// The caller's remaining time, read from `x-envoy-expected-rq-timeout-ms` or `grpc-timeout`.
    Caller,
    /// The global cap `deadline.max`.
    Max,
    /// An aggregate call's own `timeout`, shorter than the time the request had left.
    Call,
}

/// A point in time after which no work for a request may continue.
///
/// A `Deadline` is always finite: there is no constructor for "no deadline", so any code
/// that needs one to make an upstream call cannot make an unbounded one.
///
/// Generic over the clock it is read on (`std::time::Instant` by default); every instant
/// handed to one deadline must come from the same clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline<I = Instant> {
    start: I,
    at: I,
    source: DeadlineSource,
}

impl<I: Moment> Deadline<I> {
    /// The request deadline per DESIGN.md §3:
    /// `min(route_timeout, caller_remaining - margin, max)`, counted from `start`.
    ///
    /// A caller whose remaining time is already below `margin` gets a zero budget: the
    /// request fails fast with 504 instead of doing work nobody waits for.
    pub fn for_request(
        start: I,
        route_timeout: Duration,
        caller_remaining: Option<Duration>,
        margin: Duration,
        max: Duration,
    ) -> Deadline<I> {
        let mut budget = route_timeout;
        let mut source = DeadlineSource::Route;
        if max < budget {
            budget = max;
            source = DeadlineSource::Max;
        }
        if let Some(caller) = caller_remaining {
            let caller = caller.saturating_sub(margin);
            if caller < budget {
                budget = caller;
                source = DeadlineSource::Caller;
            }
        }
        Deadline {
            start,
            at: start + budget,
            source,
        }
    }

    /// A deadline `budget` after `start`, decided by the route (for sub-calls and tests).
    pub fn after(start: I, budget: Duration) -> Deadline<I> {
        Deadline {
            start,
            at: start + budget,
            source: DeadlineSource::Route,
        }
    }

    /// A sub-deadline for one call: `min(now + limit, self)`. Never later than `self`.
    pub fn narrowed(&self, now: I, limit: Option<Duration>) -> Deadline<I> {
        match limit {
            Some(l) if now + l < self.at => Deadline {
                start: now,
                at: now + l,
                source: DeadlineSource::Call,
            },
            _ => Deadline {
                start: now,
                at: self.at.max(now),
                source: self.source,
            },
        }
    }

    /// The instant the deadline expires.
    pub fn at(&self) -> I {
        self.at
    }

    /// When the request arrived.
    pub fn start(&self) -> I {
        self.start
    }

    /// The whole budget the request was given.
    pub fn budget(&self) -> Duration {
        since(self.at, self.start)
    }

    /// What decided the budget.
    pub fn source(&self) -> DeadlineSource {
        self.source
    }

    /// Time left at `now` (zero once expired).
    pub fn remaining(&self, now: I) -> Duration {
        since(self.at, now)
    }

    /// True once `now` has reached the deadline.
    pub fn expired(&self, now: I) -> bool {
        now >= self.at
    }

    /// The limit a timeout ran into: `own` (the step's own limit) when the deadline did not
    /// bound the step, else the deadline as named by what set it.
    pub fn limit_source(&self, by_deadline: bool, own: TimeoutSource) -> TimeoutSource {
        match (by_deadline, self.source) {
            (false, _) => own,
            (true, DeadlineSource::Call) => TimeoutSource::CallTimeout,
            (true, DeadlineSource::Caller) => TimeoutSource::CallerBudget,
            (true, DeadlineSource::Route | DeadlineSource::Max) => TimeoutSource::Deadline,
        }
    }

    /// The instant by which a step limited to `limit` must end: `min(now + limit, deadline)`,
    /// and whether it is the deadline (rather than `limit`) that bounds it.
    pub fn bound(&self, now: I, limit: Duration) -> (I, bool) {
        let own = now + limit;
        if own < self.at {
            (own, false)
        } else {
            (self.at, true)
        }
    }
}

/// Parses `x-envoy-expected-rq-timeout-ms`: a non-negative integer count of milliseconds.
///
/// Works on bytes throughout: a header value is untrusted input and need not be UTF-8.
pub fn parse_envoy_timeout_ms(value: &[u8]) -> Option<Duration> {
    let digits = trim_ows(value);
    if digits.len() > 12 {
        return None;
    }
    parse_digits(digits).map(Duration::from_millis)
}

/// Parses `grpc-timeout`: 1 to 8 digits followed by one unit of `H M S m u n`.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = trim_ows(value).split_last()?;
    if digits.len() > 8 {
        return None;
    }
    let n = parse_digits(digits)?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `1*DIGIT` as a number; `None` for anything else (empty, signs, spaces, overflow).
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Strips optional whitespace (SP / HTAB) around a field value.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn route_timeout_wins_when_smallest() {
        let t0 = Instant::now();
        let d = Deadline::for_request(t0, 1000 * MS, Some(5000 * MS), 5 * MS, 30_000 * MS);
        assert_eq!(d.budget(), 1000 * MS);
        assert_eq!(d.source(), DeadlineSource::Route);
    }

    #[test]
    fn caller_remaining_minus_margin_wins_when_smaller() {
        let t0 = Instant::now();
        let d = Deadline::for_request(t0, 1000 * MS, Some(300 * MS), 5 * MS, 30_000 * MS);
        assert_eq!(d.budget(), 295 * MS);
        assert_eq!(d.source(), DeadlineSource::Caller);
    }

    #[test]
    fn max_caps_everything_and_caller_below_margin_is_zero() {
        let t0 = Instant::now();
        let d = Deadline::for_request(t0, 60_000 * MS, None, 5 * MS, 30_000 * MS);
        assert_eq!((d.budget(), d.source()), (30_000 * MS, DeadlineSource::Max));
        let z = Deadline::for_request(t0, 1000 * MS, Some(3 * MS), 5 * MS, 30_000 * MS);
        assert_eq!(z.budget(), Duration::ZERO);
        assert!(z.expired(t0));
    }

    #[test]
    fn bound_says_which_limit_applies() {
        let t0 = Instant::now();
        let d = Deadline::after(t0, 100 * MS);
        assert_eq!(d.bound(t0, 50 * MS), (t0 + 50 * MS, false));
        assert_eq!(d.bound(t0 + 80 * MS, 50 * MS), (t0 + 100 * MS, true));
    }

    #[test]
    fn header_parsers_accept_valid_and_reject_garbage() {
        assert_eq!(parse_envoy_timeout_ms(b"1500"), Some(1500 * MS));
        assert_eq!(parse_envoy_timeout_ms(b"-1"), None);
        assert_eq!(parse_envoy_timeout_ms(b""), None);
        assert_eq!(parse_grpc_timeout(b"250m"), Some(250 * MS));
        assert_eq!(parse_grpc_timeout(b"2S"), Some(2000 * MS));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"123456789S"), None);
        assert_eq!(parse_grpc_timeout(b"5x"), None);
        assert_eq!(parse_grpc_timeout(b"m"), None);
    }

    #[test]
    fn non_ascii_and_odd_bytes_never_panic() {
        // `1é`: the last byte is in the middle of a UTF-8 character (this used to panic).
        assert_eq!(parse_grpc_timeout("1é".as_bytes()), None);
        assert_eq!(parse_grpc_timeout(b"\xff"), None);
        assert_eq!(parse_grpc_timeout(b"1\xffm"), None);
        assert_eq!(parse_grpc_timeout(b"+1m"), None);
        assert_eq!(parse_envoy_timeout_ms("١٢".as_bytes()), None);
        assert_eq!(parse_envoy_timeout_ms(b"99999999999999"), None);
        for b in 0..=255u8 {
            let _ = parse_grpc_timeout(&[b'1', b]);
            let _ = parse_envoy_timeout_ms(&[b]);
        }
    }
}
