//! `hopline diagnose`: reads hopline access logs (several files and instances) and answers
//! the incident's questions — **when** it started per route, **where** it went wrong
//! first (upstream, zone, phase) and how long before the rest, **what** (top causes, what
//! the 499s waited on, fallbacks), and **who cut** the requests (a latency ceiling: a
//! front's timeout, or hopline's own deadline).
//!
//! Reading is streaming: memory grows with seconds × routes and with distinct causes, not
//! with lines. Lines that are not access records are counted and skipped.

pub mod input;
pub mod series;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::input::rfc3339;
use crate::series::{onset, Bucket, Metric, Onset};

/// Distinct (normalized) causes kept; beyond, counted as "other causes".
const MAX_CAUSES: usize = 1000;
/// Latency resolution for ceilings (ms) and its range.
const CEIL_BIN_MS: f64 = 10.0;
const CEIL_BINS: usize = 12_000;

/// Why logs could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}")]
pub struct DiagnoseError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only lines at or after this time (epoch seconds).
    pub since: Option<f64>,
    /// Only lines before this time (epoch seconds).
    pub until: Option<f64>,
}

/// A place failures happen: an upstream, its zone, the phase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Site {
    /// Upstream.
    pub upstream: String,
    /// Zone.
    pub zone: String,
    /// Phase (`connect`, `tls`, `request`, `response_headers`, `response_body`, or `?`).
    pub phase: String,
}

impl std::fmt::Display for Site {
    /// `coupon (egress) connect`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}) {}", self.upstream, self.zone, self.phase)
    }
}

#[derive(Debug, Default)]
struct SiteStats {
    /// Failures per second, and when the first of each second was logged.
    per_second: BTreeMap<i64, (u32, f64)>,
    total: u64,
    example: String,
}

#[derive(Debug, Default)]
struct CauseStats {
    count: u64,
    first: f64,
    example: String,
}

#[derive(Debug)]
struct RouteStats {
    seconds: BTreeMap<i64, Bucket>,
    /// Durations in 10 ms bins, and how many of each bin were 499s.
    durations: Vec<u32>,
    cut_499: Vec<u32>,
    requests: u64,
}

impl Default for RouteStats {
    fn default() -> Self {
        RouteStats {
            seconds: BTreeMap::new(),
            durations: vec![0; CEIL_BINS],
            cut_499: vec![0; CEIL_BINS],
            requests: 0,
        }
    }
}

/// Everything read, before it is judged.
#[derive(Debug, Default)]
struct Tally {
    lines: u64,
    skipped: u64,
    first: f64,
    last: f64,
    routes: HashMap<String, RouteStats>,
    sites: HashMap<Site, SiteStats>,
    causes: HashMap<String, CauseStats>,
    other_causes: u64,
    failures: u64,
    waits: HashMap<(String, String), u64>,
    fallbacks: HashMap<String, (u64, f64)>,
    first_499: BTreeMap<i64, (u32, f64)>,
    /// Per upstream: idle times of pooled connections that were reset or closed under a
    /// request (at most 10,000 kept), and how many fresh connections were.
    idle_resets: HashMap<String, (Vec<f64>, u64)>,
    /// Per upstream: what its queue did.
    queues: HashMap<String, QueueStats>,
}

/// What one upstream's queue did to the requests that found its slots full.
#[derive(Debug, Default)]
struct QueueStats {
    /// Refused without waiting: the queue full, or the wait beyond the budget.
    at_once: u64,
    /// Waited until the deadline.
    expired: u64,
    /// The client left while it waited.
    left: u64,
    /// Waits of the requests that got a slot (ms, at most 10,000 kept), and how many.
    served: (Vec<f64>, u64),
}

/// Reads `paths` and judges them.
pub fn diagnose(paths: &[PathBuf], opts: &Options) -> Result<Report, DiagnoseError> {
    let mut tally = Tally {
        first: f64::INFINITY,
        last: f64::NEG_INFINITY,
        ..Tally::default()
    };
    for p in paths {
        read(p, opts, &mut tally)?;
    }
    Ok(judge(paths, tally))
}

/// Judges one log already open (`-` on stdin, or bytes in memory: the fuzz target's
/// way in). Reading stops only at the end or at an I/O error.
pub fn diagnose_reader(reader: impl BufRead, opts: &Options) -> std::io::Result<Report> {
    let mut tally = Tally {
        first: f64::INFINITY,
        last: f64::NEG_INFINITY,
        ..Tally::default()
    };
    read_lines(reader, opts, &mut tally)?;
    Ok(judge(&[], tally))
}

fn read(path: &Path, opts: &Options, tally: &mut Tally) -> Result<(), DiagnoseError> {
    let err = |source| DiagnoseError {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    read_lines(
        std::io::BufReader::with_capacity(1 << 20, file),
        opts,
        tally,
    )
    .map_err(err)
}

/// Every line of `reader` into `tally`: linear in the input, one line in memory at a time.
fn read_lines(mut reader: impl BufRead, opts: &Options, tally: &mut Tally) -> std::io::Result<()> {
    let mut raw = Vec::new();
    loop {
        raw.clear();
        // A line is read as bytes to its newline, then checked: invalid UTF-8 is that one
        // line skipped (and counted), never the next one lost.
        if reader.read_until(b'\n', &mut raw)? == 0 {
            return Ok(());
        }
        let Ok(text) = std::str::from_utf8(&raw) else {
            tally.skipped += 1;
            continue;
        };
        let Some((t, line)) = input::parse(text.trim_end()) else {
            tally.skipped += 1;
            continue;
        };
        if opts.since.is_some_and(|s| t < s) || opts.until.is_some_and(|u| t >= u) {
            continue;
        }
        tally.add(t, &line);
    }
}

/// Makes causes that differ only by port or measured time equal: `:33141` → `:*`, and a
/// measured `after 12ms` → `after …` (a configured limit, `after 300ms (call timeout)`,
/// stays).
pub fn normalize(cause: &str) -> String {
    let b = cause.as_bytes();
    let mut out = String::with_capacity(cause.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b':' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            let mut j = i + 1;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            out.push_str(":*");
            i = j;
        } else if cause[i..].starts_with("after ") && b.get(i + 6).is_some_and(u8::is_ascii_digit) {
            let mut j = i + 6;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.') {
                j += 1;
            }
            if cause[j..].starts_with(" (") {
                out.push_str(&cause[i..j]);
            } else {
                out.push_str("after …");
            }
            i = j;
        } else {
            let ch = cause[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

impl Tally {
    fn add(&mut self, t: f64, l: &input::Line<'_>) {
        self.lines += 1;
        self.first = self.first.min(t);
        self.last = self.last.max(t);
        let sec = t.floor() as i64;
        let route = l.route.as_deref().unwrap_or("(none)");
        let r = self.routes.entry(route.to_string()).or_default();
        let degraded = !l.degraded.is_empty() || l.flags.iter().any(|f| f == "DG");
        r.seconds
            .entry(sec)
            .or_default()
            .add(t, l.status, degraded, l.duration_ms);
        r.requests += 1;
        let b = ((l.duration_ms / CEIL_BIN_MS) as usize).min(CEIL_BINS - 1);
        r.durations[b] += 1;
        if l.status == 499 {
            r.cut_499[b] += 1;
            let (n, first) = self.first_499.entry(sec).or_insert((0, t));
            *n += 1;
            *first = first.min(t);
            // What it waited on: the request's upstream exchange, or the aggregate calls
            // the client's leaving cut off (neither answered nor fallen back).
            let cut: Vec<(String, String)> = l
                .calls
                .iter()
                .filter(|c| !c.fallback && c.status.is_none())
                .map(|c| {
                    let phase = c.phase.as_deref().unwrap_or("?");
                    (c.upstream.to_string(), phase.to_string())
                })
                .collect();
            if cut.is_empty() {
                let up = l.upstream.as_deref().unwrap_or("?").to_string();
                let phase = l.phase.as_deref().unwrap_or("?").to_string();
                *self.waits.entry((up, phase)).or_default() += 1;
            }
            for w in cut {
                *self.waits.entry(w).or_default() += 1;
            }
        }
        // Connections the upstream closed under a request (flag UC).
        if let Some(up) = l
            .upstream
            .as_deref()
            .filter(|_| l.flags.iter().any(|f| f == "UC"))
        {
            let e = self.idle_resets.entry(up.to_string()).or_default();
            match (l.upstream_reused, l.upstream_idle_ms) {
                (Some(true), Some(idle)) if e.0.len() < 10_000 => e.0.push(idle),
                (Some(true), _) => {}
                _ => e.1 += 1,
            }
        }
        // Requests that found the upstream's slots full (they carry queue_ms).
        if let (Some(up), Some(q)) = (l.upstream.as_deref(), l.queue_ms) {
            let e = self.queues.entry(up.to_string()).or_default();
            match (l.status, l.phase.as_deref()) {
                (499, Some("queue")) => e.left += 1,
                (_, Some("queue")) if q < 1.0 => e.at_once += 1,
                (_, Some("queue")) => e.expired += 1,
                _ => {
                    if e.served.0.len() < 10_000 {
                        e.served.0.push(q);
                    }
                    e.served.1 += 1;
                }
            }
        }
        // The failure itself, and each fallen-back or failed call.
        if let (Some(cause), Some(up)) = (&l.cause, &l.upstream) {
            if l.status != 499 {
                let site = Site {
                    upstream: up.to_string(),
                    zone: l.zone.as_deref().unwrap_or("?").to_string(),
                    phase: request_phase(l).to_string(),
                };
                self.failure(sec, t, site, cause);
            }
        }
        if let Some(cause) = &l.cause {
            if l.upstream.is_none() && l.calls.is_empty() {
                self.cause(t, cause);
            }
        }
        for c in &l.calls {
            if c.fallback {
                let f = self.fallbacks.entry(c.name.to_string()).or_insert((0, t));
                f.0 += 1;
                f.1 = f.1.min(t);
            }
            // A call cut off because the client left is not the upstream's failure.
            let cut_off = l.status == 499 && !c.fallback;
            if let Some(cause) = c.cause.as_ref().filter(|_| !cut_off) {
                let site = Site {
                    upstream: c.upstream.to_string(),
                    zone: c.zone.to_string(),
                    phase: c.phase.as_deref().unwrap_or("?").to_string(),
                };
                self.failure(sec, t, site, cause);
            }
        }
    }

    fn failure(&mut self, sec: i64, t: f64, site: Site, cause: &str) {
        let s = self.sites.entry(site).or_default();
        let (n, first) = s.per_second.entry(sec).or_insert((0, t));
        *n += 1;
        *first = first.min(t);
        s.total += 1;
        if s.example.is_empty() {
            s.example = cause.to_string();
        }
        self.failures += 1;
        self.cause(t, cause);
    }

    fn cause(&mut self, t: f64, cause: &str) {
        let key = normalize(cause);
        if let Some(c) = self.causes.get_mut(&key) {
            c.count += 1;
            c.first = c.first.min(t);
        } else if self.causes.len() < MAX_CAUSES {
            self.causes.insert(
                key,
                CauseStats {
                    count: 1,
                    first: t,
                    example: cause.to_string(),
                },
            );
        } else {
            self.other_causes += 1;
        }
    }
}

/// One route's verdict.
#[derive(Debug, Clone)]
pub struct RouteFinding {
    /// The route.
    pub route: String,
    /// Requests read.
    pub requests: u64,
    /// The earliest departure among its metrics, if any.
    pub onset: Option<Onset>,
    /// A latency ceiling: most requests cut at one duration.
    pub ceiling: Option<Ceiling>,
    /// Its seconds, in order.
    pub seconds: Vec<RouteSecond>,
}

/// One second of one route, as read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteSecond {
    /// The second (epoch).
    pub t: i64,
    /// Requests.
    pub requests: u32,
    /// Non-2xx answers.
    pub non_2xx: u32,
    /// Degraded answers.
    pub degraded: u32,
    /// p99 latency (ms, the upper edge of its bin).
    pub p99_ms: f64,
}

/// Requests pinned at one duration.
#[derive(Debug, Clone, PartialEq)]
pub struct Ceiling {
    /// The duration (ms).
    pub at_ms: f64,
    /// Requests within one bin of it.
    pub requests: u64,
    /// Of which 499 (the client, or a front, left).
    pub cut_by_client: u64,
}

/// Where failures began, in order.
#[derive(Debug, Clone)]
pub struct SiteFinding {
    /// Upstream, zone, phase.
    pub site: Site,
    /// Failures.
    pub failures: u64,
    /// The first failure of the first second with at least 3 (epoch seconds, with the
    /// fraction).
    pub began: Option<f64>,
    /// One cause as logged.
    pub example: String,
}

/// A cause.
#[derive(Debug, Clone)]
pub struct CauseFinding {
    /// Normalized text.
    pub cause: String,
    /// Lines.
    pub count: u64,
    /// Share of all failures.
    pub share: f64,
    /// First seen (epoch).
    pub first: f64,
    /// One as logged.
    pub example: String,
}

/// The diagnosis.
#[derive(Debug, Clone)]
pub struct Report {
    /// Files read.
    pub files: Vec<String>,
    /// Access lines read.
    pub lines: u64,
    /// Lines skipped (not access records).
    pub skipped: u64,
    /// First and last line (epoch).
    pub span: (f64, f64),
    /// Per route, busiest first.
    pub routes: Vec<RouteFinding>,
    /// Failure sites, earliest first.
    pub sites: Vec<SiteFinding>,
    /// The first second with at least 3 499s (epoch).
    pub first_499: Option<f64>,
    /// Top causes.
    pub causes: Vec<CauseFinding>,
    /// What 499s were waiting on: (upstream, phase, count), most first.
    pub waits: Vec<(String, String, u64)>,
    /// Fallbacks per call: (call, count, first epoch), most first.
    pub fallbacks: Vec<(String, u64, f64)>,
    /// Keep-alive idle mismatches, per upstream.
    pub idle_mismatches: Vec<IdleMismatch>,
    /// Upstreams whose queue refused or lost requests, most first.
    pub queues: Vec<QueueFinding>,
}

/// An upstream whose `max_in_flight` slots were full for long enough that requests were
/// refused, ran out of time, or were left by their clients in its queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueFinding {
    /// The upstream.
    pub upstream: String,
    /// Refused at once: its queue full, or the expected wait beyond their budget.
    pub at_once: u64,
    /// Waited in its queue until their deadline.
    pub expired: u64,
    /// Left by their clients while waiting (499).
    pub left: u64,
    /// Served after waiting.
    pub served: u64,
    /// Their median wait (ms), when any.
    pub median_wait_ms: Option<f64>,
    /// Their longest wait (ms), when any.
    pub longest_wait_ms: Option<f64>,
}

/// Pooled connections the upstream had already closed: resets right after an idle gap.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleMismatch {
    /// The upstream.
    pub upstream: String,
    /// Failures on reused connections.
    pub resets: u64,
    /// The shortest idle time among them (ms).
    pub min_idle_ms: f64,
    /// The median (ms).
    pub median_idle_ms: f64,
    /// The same failure on fresh connections.
    pub fresh: u64,
}

/// When failures (or 499s) began: the first of the first second with at least 3.
fn began(per_second: &BTreeMap<i64, (u32, f64)>) -> Option<f64> {
    per_second
        .values()
        .find(|(n, _)| *n >= 3)
        .map(|(_, first)| *first)
}

/// A ceiling in a route's durations: the busiest 10 ms bin at or above 500 ms holds (with
/// its neighbours) at least 2 % of the route's requests and 20 requests, and fewer than
/// 0.5 % of the requests are slower than it.
fn ceiling(r: &RouteStats) -> Option<Ceiling> {
    let start = (500.0 / CEIL_BIN_MS) as usize;
    let (peak, _) = r
        .durations
        .iter()
        .enumerate()
        .skip(start)
        .max_by_key(|(_, c)| **c)?;
    let around = |v: &[u32]| -> u64 {
        v[peak.saturating_sub(1)..=(peak + 1).min(CEIL_BINS - 1)]
            .iter()
            .map(|c| u64::from(*c))
            .sum()
    };
    let near = around(&r.durations);
    let slower: u64 = r.durations[(peak + 2).min(CEIL_BINS)..]
        .iter()
        .map(|c| u64::from(*c))
        .sum();
    let total = r.requests;
    (near >= 20 && near * 50 >= total && slower * 200 < total).then(|| Ceiling {
        at_ms: (peak as f64 + 0.5) * CEIL_BIN_MS,
        requests: near,
        cut_by_client: around(&r.cut_499),
    })
}

fn judge(paths: &[PathBuf], t: Tally) -> Report {
    let mut routes: Vec<RouteFinding> = t
        .routes
        .iter()
        .map(|(name, r)| {
            let onset = [Metric::Non2xx, Metric::Degraded, Metric::P99]
                .into_iter()
                .filter_map(|m| onset(&r.seconds, m))
                .min_by_key(|o| o.at);
            RouteFinding {
                route: name.clone(),
                requests: r.requests,
                onset,
                ceiling: ceiling(r),
                seconds: r
                    .seconds
                    .iter()
                    .map(|(t, b)| RouteSecond {
                        t: *t,
                        requests: b.n,
                        non_2xx: b.non_2xx,
                        degraded: b.degraded,
                        p99_ms: b.p99(),
                    })
                    .collect(),
            }
        })
        .collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.requests));
    let mut sites: Vec<SiteFinding> = t
        .sites
        .into_iter()
        .map(|(site, s)| SiteFinding {
            began: began(&s.per_second),
            site,
            failures: s.total,
            example: s.example,
        })
        .collect();
    sites.sort_by(|a, b| {
        let at = |s: &SiteFinding| s.began.unwrap_or(f64::INFINITY);
        at(a).total_cmp(&at(b)).then(b.failures.cmp(&a.failures))
    });
    let failures = t.failures.max(1) as f64;
    let mut causes: Vec<CauseFinding> = t
        .causes
        .into_iter()
        .map(|(cause, c)| CauseFinding {
            cause,
            count: c.count,
            share: c.count as f64 / failures,
            first: c.first,
            example: c.example,
        })
        .collect();
    causes.sort_by_key(|c| std::cmp::Reverse(c.count));
    causes.truncate(10);
    let mut waits: Vec<(String, String, u64)> =
        t.waits.into_iter().map(|((u, p), n)| (u, p, n)).collect();
    waits.sort_by_key(|w| std::cmp::Reverse(w.2));
    let mut fallbacks: Vec<(String, u64, f64)> = t
        .fallbacks
        .into_iter()
        .map(|(c, (n, f))| (c, n, f))
        .collect();
    fallbacks.sort_by_key(|f| std::cmp::Reverse(f.1));
    // A mismatch: at least 5 such failures on reused connections, at least 4 times as
    // many as on fresh ones (a dying upstream resets fresh connections too).
    let mut idle_mismatches: Vec<IdleMismatch> = t
        .idle_resets
        .into_iter()
        .filter(|(_, (idle, fresh))| idle.len() >= 5 && idle.len() as u64 >= 4 * fresh)
        .map(|(upstream, (mut idle, fresh))| {
            idle.sort_by(f64::total_cmp);
            IdleMismatch {
                upstream,
                resets: idle.len() as u64,
                min_idle_ms: idle[0],
                median_idle_ms: idle[idle.len() / 2],
                fresh,
            }
        })
        .collect();
    idle_mismatches.sort_by_key(|m| std::cmp::Reverse(m.resets));
    // A finding: at least 5 requests the queue refused, ran out of time on, or lost.
    let mut queues: Vec<QueueFinding> = t
        .queues
        .into_iter()
        .filter(|(_, q)| q.at_once + q.expired + q.left >= 5)
        .map(|(upstream, q)| {
            let (mut waits, served) = q.served;
            waits.sort_by(f64::total_cmp);
            QueueFinding {
                upstream,
                at_once: q.at_once,
                expired: q.expired,
                left: q.left,
                served,
                median_wait_ms: waits.get(waits.len() / 2).copied(),
                longest_wait_ms: waits.last().copied(),
            }
        })
        .collect();
    queues.sort_by_key(|q| std::cmp::Reverse(q.at_once + q.expired + q.left));
    Report {
        idle_mismatches,
        queues,
        files: paths.iter().map(|p| p.display().to_string()).collect(),
        lines: t.lines,
        skipped: t.skipped,
        span: (t.first, t.last),
        routes,
        sites,
        first_499: began(&t.first_499),
        causes,
        waits,
        fallbacks,
    }
}

/// A time difference in seconds, to a tenth (`0.4`, `12.0`).
struct Secs(f64);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1}", self.0)
    }
}

fn hms(t: f64) -> String {
    let s = rfc3339(t);
    s.split('T')
        .nth(1)
        .unwrap_or(&s)
        .trim_end_matches('Z')
        .to_string()
}

/// The phase a failed request's upstream exchange failed in; `limit` for one refused by a
/// gateway limit (flag `UO`) and `no_endpoint` for one with nowhere to go (`UH`), which
/// never reached an exchange; `?` when the log does not say (older logs).
fn request_phase<'a>(l: &'a input::Line<'_>) -> &'a str {
    match l.phase.as_deref() {
        Some(p) => p,
        None if l.flags.iter().any(|f| f == "UO") => "limit",
        None if l.flags.iter().any(|f| f == "UH") => "no_endpoint",
        None => "?",
    }
}

/// `connect ` for a known phase, nothing for an unknown one (older logs).
fn phase_words(phase: &str) -> String {
    if phase == "?" {
        String::new()
    } else {
        format!("{} ", phase.replace('_', " "))
    }
}

fn share(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

impl Report {
    /// The terminal summary: read in 30 seconds.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        if self.lines == 0 {
            let _ = writeln!(
                s,
                "hopline diagnose: no access lines in {} ({} other lines skipped)",
                self.files.join(", "),
                self.skipped
            );
            return s;
        }
        let _ = writeln!(
            s,
            "hopline diagnose: {} access lines from {} file(s), {} to {} UTC ({} other lines skipped)",
            self.lines,
            self.files.len(),
            rfc3339(self.span.0),
            hms(self.span.1),
            self.skipped
        );
        let mut any = false;
        for r in &self.routes {
            if let Some(o) = &r.onset {
                any = true;
                let (v, b) = match o.metric {
                    Metric::P99 => (
                        format!("{:.0} ms", o.value),
                        format!("{:.0} ms", o.baseline),
                    ),
                    _ => (share(o.value), share(o.baseline)),
                };
                let _ = writeln!(
                    s,
                    "WHEN   route {}: {} departed at {} ({v}, baseline {b})",
                    r.route,
                    o.metric.as_str(),
                    hms(o.first)
                );
            }
        }
        if !any {
            let _ = writeln!(s, "WHEN   no route departed from its baseline");
        }
        let begun: Vec<&SiteFinding> = self.sites.iter().filter(|x| x.began.is_some()).collect();
        if let Some(first) = begun.first() {
            let b = first.began.unwrap_or_default();
            let _ = writeln!(
                s,
                "WHERE  first: {} ({}) {}failures from {} ({} in all)",
                first.site.upstream,
                first.site.zone,
                phase_words(&first.site.phase),
                hms(b),
                first.failures
            );
            for other in begun.iter().skip(1).take(3) {
                let ob = other.began.unwrap_or_default();
                let _ = writeln!(
                    s,
                    "       then: {} ({}) {}failures from {} ({} s later, {} in all)",
                    other.site.upstream,
                    other.site.zone,
                    phase_words(&other.site.phase),
                    hms(ob),
                    Secs(ob - b),
                    other.failures
                );
            }
            if let Some(f) = self.first_499 {
                let _ = writeln!(
                    s,
                    "       the first 499s at {} ({} s after)",
                    hms(f),
                    Secs(f - b)
                );
            }
        }
        if !self.causes.is_empty() {
            let _ = writeln!(s, "WHAT   top causes:");
            for c in self.causes.iter().take(5) {
                let _ = writeln!(
                    s,
                    "       {:>8} {:>6}  from {}  {}",
                    c.count,
                    share(c.share),
                    hms(c.first),
                    c.cause
                );
            }
        }
        if !self.waits.is_empty() {
            let w: Vec<String> = self
                .waits
                .iter()
                .take(3)
                .map(|(u, p, n)| format!("{u} {}({n})", phase_words(p)))
                .collect();
            let _ = writeln!(s, "       499s were waiting on: {}", w.join(", "));
        }
        if !self.fallbacks.is_empty() {
            let f: Vec<String> = self
                .fallbacks
                .iter()
                .take(5)
                .map(|(c, n, t)| format!("{c} {n} from {}", hms(*t)))
                .collect();
            let _ = writeln!(s, "       fallbacks: {}", f.join(", "));
        }
        for m in &self.idle_mismatches {
            let _ = writeln!(
                s,
                "WHO    upstream {}: {} requests failed on pooled connections it had already closed, idle {:.1} s and more (median {:.1} s), {} on fresh ones — a keep-alive idle mismatch: set upstreams.{}.pool_idle_timeout below its keep-alive idle",
                m.upstream,
                m.resets,
                m.min_idle_ms / 1000.0,
                m.median_idle_ms / 1000.0,
                m.fresh,
                m.upstream
            );
        }
        for q in &self.queues {
            let waited = match (q.median_wait_ms, q.longest_wait_ms) {
                (Some(m), Some(l)) => format!(
                    "; {} served after waiting (median {m:.0} ms, longest {l:.0} ms)",
                    q.served
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "WHO    upstream {}: its max_in_flight slots were full — of the requests that queued for one, {} ran out of time waiting, {} lost their client (499), {} were refused at once (the queue full or the wait beyond the budget){waited}. Its slots turn over too slowly: the upstream answers slower than before, or max_in_flight is below what it can take",
                q.upstream, q.expired, q.left, q.at_once
            );
        }
        for r in &self.routes {
            if let Some(c) = &r.ceiling {
                let who = if c.cut_by_client * 2 >= c.requests {
                    "cut by the client or something in front (they are 499s) — compare with the front's timeout"
                } else if r.route == "nginx" {
                    "answered at that limit by nginx — compare with its proxy_read_timeout"
                } else {
                    "answered at that limit by hopline — compare with the route's deadline"
                };
                let _ = writeln!(
                    s,
                    "WHO    route {}: {} requests pinned at {:.2} s, {who}",
                    r.route,
                    c.requests,
                    c.at_ms / 1000.0
                );
            }
        }
        s
    }

    /// The same, for tools.
    pub fn to_json(&self) -> Value {
        json!({
            "files": self.files,
            "lines": self.lines,
            "skipped": self.skipped,
            "from": rfc3339(self.span.0),
            "to": rfc3339(self.span.1),
            "routes": self.routes.iter().map(|r| json!({
                "route": r.route,
                "requests": r.requests,
                "onset": r.onset.as_ref().map(|o| json!({
                    "at": rfc3339(o.first),
                    "metric": o.metric.as_str(),
                    "value": o.value,
                    "baseline": o.baseline,
                })),
                "ceiling": r.ceiling.as_ref().map(|c| json!({
                    "at_ms": c.at_ms,
                    "requests": c.requests,
                    "cut_by_client": c.cut_by_client,
                })),
            })).collect::<Vec<_>>(),
            "sites": self.sites.iter().map(|x| json!({
                "upstream": x.site.upstream,
                "zone": x.site.zone,
                "phase": x.site.phase,
                "failures": x.failures,
                "began": x.began.map(rfc3339),
                "example": x.example,
            })).collect::<Vec<_>>(),
            "first_499": self.first_499.map(rfc3339),
            "causes": self.causes.iter().map(|c| json!({
                "cause": c.cause,
                "count": c.count,
                "share": c.share,
                "first": rfc3339(c.first),
                "example": c.example,
            })).collect::<Vec<_>>(),
            "waits": self.waits.iter().map(|(u, p, n)| json!({"upstream": u, "phase": p, "count": n})).collect::<Vec<_>>(),
            "fallbacks": self.fallbacks.iter().map(|(c, n, f)| json!({"call": c, "count": n, "first": rfc3339(*f)})).collect::<Vec<_>>(),
            "idle_mismatches": self.idle_mismatches.iter().map(|m| json!({
                "upstream": m.upstream,
                "resets": m.resets,
                "min_idle_ms": m.min_idle_ms,
                "median_idle_ms": m.median_idle_ms,
                "fresh": m.fresh,
            })).collect::<Vec<_>>(),
            "queues": self.queues.iter().map(|q| json!({
                "upstream": q.upstream,
                "at_once": q.at_once,
                "expired": q.expired,
                "left": q.left,
                "served": q.served,
                "median_wait_ms": q.median_wait_ms,
                "longest_wait_ms": q.longest_wait_ms,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_and_499s_are_dated_to_the_first_of_their_second_not_its_start() {
        let mut tally = Tally {
            first: f64::INFINITY,
            last: f64::NEG_INFINITY,
            ..Tally::default()
        };
        // Failures from 02:00:07.6 (three in that second), the first 499s from 02:00:07.9.
        let at = |ms: u32| format!("2026-11-29T02:00:{:02}.{:03}Z", ms / 1000, ms % 1000);
        for ms in [7600, 7700, 7800, 8100] {
            let l = format!(
                r#"{{"ts":"{}","route":"r","status":504,"flags":["UT"],"cause":"upstream u 10.0.0.1:80 (internal): connect timed out after 1s (connect_timeout)","upstream":"u","zone":"internal","phase":"connect","duration_ms":1000.0}}"#,
                at(ms)
            );
            let (t, line) = input::parse(&l).expect("line");
            tally.add(t, &line);
        }
        for ms in [7900, 7950, 7990] {
            let l = format!(
                r#"{{"ts":"{}","route":"r","status":499,"flags":["DC"],"upstream":"u","zone":"internal","phase":"connect","duration_ms":300.0}}"#,
                at(ms)
            );
            let (t, line) = input::parse(&l).expect("line");
            tally.add(t, &line);
        }
        let r = judge(&[], tally);
        let began = r.sites[0].began.expect("began");
        assert_eq!(rfc3339(began), "2026-11-29T02:00:07.600Z");
        assert_eq!(
            r.first_499.map(rfc3339).as_deref(),
            Some("2026-11-29T02:00:07.900Z")
        );
        let text = r.text();
        assert!(
            text.contains("failures from 02:00:07.600") && text.contains("(0.3 s after)"),
            "{text}"
        );
    }

    #[test]
    fn a_full_queue_is_named_with_what_it_did() {
        let mut tally = Tally {
            first: f64::INFINITY,
            last: f64::NEG_INFINITY,
            ..Tally::default()
        };
        let line = |status: u16, flag: &str, phase: &str, queue_ms: f64| {
            format!(
                r#"{{"ts":"2026-11-29T02:00:01.000Z","route":"r","status":{status},"flags":[{flag}],"cause":"upstream u: waited","upstream":"u","zone":"internal","phase":{phase},"duration_ms":300.0,"queue_ms":{queue_ms}}}"#
            )
        };
        let mut add = |l: String| {
            let (t, line) = input::parse(&l).expect("line");
            tally.add(t, &line);
        };
        for _ in 0..4 {
            add(line(503, r#""UO""#, r#""queue""#, 300.0));
        }
        add(line(499, r#""DC""#, r#""queue""#, 120.0));
        add(line(503, r#""UO""#, r#""queue""#, 0.0));
        for q in [10.0, 40.0, 250.0] {
            add(line(200, "", "null", q));
        }
        // A request that never waited says nothing of the queue.
        add(r#"{"ts":"2026-11-29T02:00:01.000Z","route":"r","status":200,"flags":[],"upstream":"u","duration_ms":1.0,"queue_ms":null}"#.to_string());
        let r = judge(&[], tally);
        assert_eq!(
            r.queues,
            vec![QueueFinding {
                upstream: "u".into(),
                at_once: 1,
                expired: 4,
                left: 1,
                served: 3,
                median_wait_ms: Some(40.0),
                longest_wait_ms: Some(250.0),
            }]
        );
        let text = r.text();
        assert!(
            text.contains("WHO    upstream u: its max_in_flight slots were full — of the requests that queued for one, 4 ran out of time waiting, 1 lost their client (499), 1 were refused at once")
                && text.contains("3 served after waiting (median 40 ms, longest 250 ms)"),
            "{text}"
        );
        assert_eq!(r.to_json()["queues"][0]["expired"], 4);
    }

    #[test]
    fn a_refusal_fails_at_the_limit_not_at_an_unknown_phase() {
        let uo = r#"{"ts":"2026-11-29T02:00:00Z","status":503,"flags":["UO"],"cause":"egress scope nat-a: cluster new-connection rate 150/s reached","upstream":"partner","zone":"egress","phase":null,"duration_ms":0.2}"#;
        let uh = r#"{"ts":"2026-11-29T02:00:00Z","status":503,"flags":["UH"],"cause":"upstream partner has no usable endpoint","upstream":"partner","zone":"egress","duration_ms":0.2}"#;
        let old = r#"{"ts":"2026-11-29T02:00:00Z","status":504,"flags":["UT"],"cause":"x","upstream":"partner","zone":"egress","duration_ms":0.2}"#;
        let phase = |line: &str| {
            let (_, l) = input::parse(line).expect("a line");
            request_phase(&l).to_string()
        };
        assert_eq!(phase(uo), "limit");
        assert_eq!(phase(uh), "no_endpoint");
        assert_eq!(phase(old), "?");
    }

    #[test]
    fn causes_group_by_shape() {
        assert_eq!(
            normalize("upstream coupon 10.0.0.1:33141 (egress): connect timed out after 200ms (connect_timeout)"),
            "upstream coupon 10.0.0.1:* (egress): connect timed out after 200ms (connect_timeout)"
        );
        assert_eq!(
            normalize("client closed the connection after 2.9ms while waiting on x"),
            "client closed the connection after … while waiting on x"
        );
    }

    #[test]
    fn an_invalid_utf8_line_is_skipped_alone() {
        let dir = std::env::temp_dir().join(format!("diagnose-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("access.log");
        let record = r#"{"ts":"2026-11-29T02:00:00Z","route":"r","status":200,"flags":[],"duration_ms":1.0}"#;
        let mut text = Vec::new();
        text.extend_from_slice(record.as_bytes());
        text.extend_from_slice(b"\n{\"ts\":\"\xff\xfe\"}\n");
        text.extend_from_slice(record.as_bytes());
        text.extend_from_slice(b"\n");
        text.extend_from_slice(record.as_bytes());
        std::fs::write(&path, text).expect("write");
        let r = diagnose(&[path], &Options::default()).expect("read");
        assert_eq!(
            (r.lines, r.skipped),
            (3, 1),
            "every record after the bad line counts"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
