//! Turning a run into numbers: per-second series from the load generator's view and from
//! every hop's own log, alert evaluation, expectations.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::load::{Outcome, Sample};
use crate::scenario::{Alert, Expect, Metric, Phase, Scenario};

/// One second of the load generator's view.
#[derive(Debug, Clone, Default)]
pub struct Second {
    /// Second index from the start.
    pub t: u64,
    /// Requests scheduled in it.
    pub total: u64,
    /// By class: `2xx`, `3xx`, `4xx`, `5xx`, `abandoned`, `error`, `skipped`.
    pub classes: BTreeMap<String, u64>,
    /// 200s with `x-hopline-degraded`.
    pub degraded: u64,
    /// Latency percentiles (ms) of requests scheduled in it.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Max.
    pub max: f64,
}

fn class(o: &Outcome) -> String {
    match o {
        Outcome::Status(s) => format!("{}xx", s / 100),
        Outcome::Abandoned => "abandoned".into(),
        Outcome::Error(_) => "error".into(),
        Outcome::Skipped => "skipped".into(),
        Outcome::Grpc(c) => format!("grpc {c}"),
    }
}

fn is_ok(o: &Outcome) -> bool {
    matches!(o, Outcome::Status(s) if (200..300).contains(s))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Per-second series of the samples.
pub fn seconds(samples: &[Sample], duration: Duration) -> Vec<Second> {
    let n = duration.as_secs().max(1);
    let mut out: Vec<Second> = (0..n)
        .map(|t| Second {
            t,
            ..Second::default()
        })
        .collect();
    let mut hists: Vec<Histogram<u64>> = (0..n).map(|_| histogram()).collect();
    for s in samples {
        let i = (s.scheduled.as_secs() as usize).min(out.len() - 1);
        let sec = &mut out[i];
        sec.total += 1;
        *sec.classes.entry(class(&s.outcome)).or_default() += 1;
        if s.degraded.is_some() && is_ok(&s.outcome) {
            sec.degraded += 1;
        }
        if s.outcome != Outcome::Skipped {
            let _ = hists[i].record((s.latency.as_micros() as u64).max(1));
        }
    }
    for (sec, h) in out.iter_mut().zip(&hists) {
        if !h.is_empty() {
            sec.p50 = h.value_at_quantile(0.5) as f64 / 1000.0;
            sec.p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
            sec.max = h.max() as f64 / 1000.0;
        }
    }
    out
}

/// The fault windows in seconds.
pub fn fault_windows(s: &Scenario) -> Vec<(f64, f64)> {
    s.faults
        .iter()
        .map(|f| {
            (
                f.at.as_secs_f64(),
                f.until.unwrap_or(s.duration).as_secs_f64(),
            )
        })
        .collect()
}

fn in_phase(t: f64, phase: Phase, faults: &[(f64, f64)]) -> bool {
    match phase {
        Phase::All => true,
        Phase::Fault => faults.iter().any(|(a, b)| t >= *a && t < *b),
    }
}

/// Aggregate numbers over the samples of a phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseStats {
    /// Requests (not counting skipped).
    pub total: u64,
    /// Share not answered 2xx.
    pub non_2xx_ratio: f64,
    /// Share of 2xx that were degraded.
    pub degraded_ratio: f64,
    /// p50 ms.
    pub p50_ms: f64,
    /// p99 ms.
    pub p99_ms: f64,
    /// max ms.
    pub max_ms: f64,
}

/// Numbers over the samples scheduled in `phase`.
pub fn phase_stats(samples: &[Sample], phase: Phase, faults: &[(f64, f64)]) -> PhaseStats {
    let mut h = histogram();
    let (mut total, mut bad, mut ok, mut degraded) = (0u64, 0u64, 0u64, 0u64);
    for s in samples
        .iter()
        .filter(|s| in_phase(s.scheduled.as_secs_f64(), phase, faults))
    {
        total += 1;
        if is_ok(&s.outcome) {
            ok += 1;
            if s.degraded.is_some() {
                degraded += 1;
            }
        } else {
            bad += 1;
        }
        if s.outcome != Outcome::Skipped {
            let _ = h.record((s.latency.as_micros() as u64).max(1));
        }
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    PhaseStats {
        total,
        non_2xx_ratio: ratio(bad, total),
        degraded_ratio: ratio(degraded, ok),
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: h.max() as f64 / 1000.0,
    }
}

impl PhaseStats {
    fn get(&self, m: Metric) -> f64 {
        match m {
            Metric::Non2xxRatio => self.non_2xx_ratio,
            Metric::DegradedRatio => self.degraded_ratio,
            Metric::P99Ms => self.p99_ms,
        }
    }
}

/// When an alert fired and resolved (seconds from the start).
#[derive(Debug, Clone)]
pub struct AlertEvent {
    /// Alert name.
    pub name: String,
    /// Fired at.
    pub fired: f64,
    /// Resolved at (None: still firing at the end).
    pub resolved: Option<f64>,
}

/// Evaluates alerts second by second over a sliding window.
pub fn alerts(alerts: &[Alert], secs: &[Second]) -> Vec<AlertEvent> {
    let mut out = Vec::new();
    for a in alerts {
        let w = (a.window.as_secs() as usize).max(1);
        let mut firing: Option<f64> = None;
        for end in 0..secs.len() {
            let win = &secs[end.saturating_sub(w - 1)..=end];
            let total: u64 = win.iter().map(|s| s.total).sum();
            let ok: u64 = win
                .iter()
                .map(|s| s.classes.get("2xx").copied().unwrap_or(0))
                .sum();
            let degraded: u64 = win.iter().map(|s| s.degraded).sum();
            let value = match a.metric {
                Metric::Non2xxRatio => {
                    if total == 0 {
                        0.0
                    } else {
                        (total - ok) as f64 / total as f64
                    }
                }
                Metric::DegradedRatio => {
                    if ok == 0 {
                        0.0
                    } else {
                        degraded as f64 / ok as f64
                    }
                }
                Metric::P99Ms => win.iter().map(|s| s.p99).fold(0.0, f64::max),
            };
            let on = total >= a.min_requests && value > a.above;
            let t = (end + 1) as f64;
            match (on, firing) {
                (true, None) => firing = Some(t),
                (false, Some(f)) => {
                    out.push(AlertEvent {
                        name: a.name.clone(),
                        fired: f,
                        resolved: Some(t),
                    });
                    firing = None;
                }
                _ => {}
            }
        }
        if let Some(f) = firing {
            out.push(AlertEvent {
                name: a.name.clone(),
                fired: f,
                resolved: None,
            });
        }
    }
    out
}

/// One hop's view from its own log.
#[derive(Debug, Clone, Default)]
pub struct Hop {
    /// Service name.
    pub name: String,
    /// Per second: status (or `cancelled`) → count.
    pub seconds: Vec<BTreeMap<String, u64>>,
    /// Causes logged during faults (the whole run when it has none), most frequent first.
    pub top_causes: Vec<(String, u64)>,
    /// Lines read.
    pub lines: u64,
    /// Changes in an endpoint's standing the hop logged (hopline's `endpoint` events).
    pub endpoint_events: Vec<EndpointEvent>,
    /// When the first request arriving in a fault window failed (5xx) at this hop.
    pub first_failure_in_fault: Option<f64>,
    /// `hopline diagnose` on this hop's log (hopline hops), with the run's start.
    pub diagnosis: Option<(hopline_diagnose::Report, f64)>,
}

/// What an event in a hop's log is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EventSubject {
    /// An endpoint's standing (`"event":"endpoint"`).
    #[default]
    Endpoint,
    /// A shared egress scope's mode (`"event":"egress"`).
    EgressScope,
}

/// An event from a hop's log: an endpoint ejected, returned, unhealthy, healthy; a shared
/// egress scope on its local share or back to the shared budget.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointEvent {
    /// Seconds since the run started.
    pub t: f64,
    /// What it is about.
    pub subject: EventSubject,
    /// The endpoint's address, or `egress scope NAME`.
    pub endpoint: String,
    /// `ejected`, `returned`, `unhealthy`, `healthy`.
    pub state: String,
    /// Why.
    pub detail: String,
}

fn epoch_of(v: &Value) -> Option<f64> {
    if let Some(f) = v.as_f64() {
        return Some(f);
    }
    // RFC 3339 UTC as written by hopline: 2026-11-28T04:48:30.386Z
    hopline_diagnose::input::epoch(v.as_str()?)
}

/// Reads a service's JSON log: hopline access lines, mock lines, legacy-gateway lines.
pub fn hop(name: &str, log: &Path, start_epoch: f64, secs: usize, faults: &[(f64, f64)]) -> Hop {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut hop = Hop {
        name: name.to_string(),
        seconds: vec![BTreeMap::new(); secs],
        ..Hop::default()
    };
    let mut causes: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(ts) = epoch_of(&v["ts"]) else {
            continue;
        };
        let t = ts - start_epoch;
        // An endpoint's change of standing, or a shared egress scope's change of mode
        // (its scope stands where the endpoint does).
        if v["event"] == "endpoint" || v["event"] == "egress" {
            let (subject, what) = match v["event"] == "egress" {
                true => (
                    EventSubject::EgressScope,
                    format!("egress scope {}", v["scope"].as_str().unwrap_or("")),
                ),
                false => (
                    EventSubject::Endpoint,
                    v["endpoint"].as_str().unwrap_or("").to_string(),
                ),
            };
            hop.endpoint_events.push(EndpointEvent {
                t,
                subject,
                endpoint: what,
                state: v["state"].as_str().unwrap_or("").to_string(),
                detail: v["detail"].as_str().unwrap_or("").to_string(),
            });
            continue;
        }
        hop.lines += 1;
        // Request lines are stamped at arrival (hopline, mock) or at the end (legacy).
        // A run without faults (a surge against a budget) counts as one long fault.
        let in_fault = faults.is_empty() || faults.iter().any(|(a, b)| t >= *a && t < *b);
        let cause = v["cause"]
            .as_str()
            .map(String::from)
            .or_else(|| v["err"].as_str().map(String::from))
            .or_else(|| (v["cancelled"] == true).then(|| "cancelled by its client".to_string()));
        if in_fault && v["status"].as_u64().is_some_and(|st| st >= 500) {
            // When it failed: its arrival plus how long it took.
            let failed = t + v["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
            let first = hop.first_failure_in_fault.get_or_insert(failed);
            *first = first.min(failed);
        }
        if in_fault {
            // Group causes that differ only by ports and timings. Aggregate routes log one
            // cause per fallen-back call.
            let call_causes = v["calls"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["cause"].as_str());
            // A request-level cause explains the whole line; otherwise count each call's.
            let list: Vec<&str> = match &cause {
                Some(c) => vec![c.as_str()],
                None => call_causes.collect(),
            };
            for c in list {
                *causes.entry(normalize(c)).or_default() += 1;
            }
        }
        let key = if v["level"] == "error" {
            None
        } else if v["cancelled"] == true {
            Some("cancelled".to_string())
        } else if v["written"] == false {
            // The legacy gateway answered a client that had already left.
            v["status"].as_u64().map(|s| format!("{s} (client gone)"))
        } else {
            v["status"].as_u64().map(|s| s.to_string())
        };
        if let (Some(k), true) = (key, t >= 0.0 && (t as usize) < secs) {
            *hop.seconds[t as usize].entry(k).or_default() += 1;
        }
    }
    let mut top: Vec<(String, u64)> = causes.into_iter().collect();
    top.sort_by_key(|c| std::cmp::Reverse(c.1));
    top.truncate(5);
    hop.top_causes = top;
    hop
}

/// Makes causes that differ only by port or elapsed time equal: `:33141` → `:*`, and an
/// elapsed `after 12ms` → `after …` (a configured limit, `after 300ms (call timeout)`, stays).
fn normalize(c: &str) -> String {
    let mut out = String::with_capacity(c.len());
    let mut rest = c;
    while let Some(i) = rest.find([':', 'a']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(port) = tail
            .strip_prefix(':')
            .filter(|t| t.starts_with(|ch: char| ch.is_ascii_digit()))
        {
            let n = port
                .find(|ch: char| !ch.is_ascii_digit())
                .unwrap_or(port.len());
            out.push_str(":*");
            rest = &port[n..];
        } else if let Some(num) = tail
            .strip_prefix("after ")
            .filter(|t| t.starts_with(|ch: char| ch.is_ascii_digit()))
        {
            let n = num
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '.'))
                .unwrap_or(num.len());
            if num[n..].starts_with(" (") {
                out.push_str("after ");
                out.push_str(&num[..n]);
            } else {
                out.push_str("after …");
            }
            rest = &num[n..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Checks every expectation: (description, passed, measured).
pub fn check(
    expect: &[Expect],
    samples: &[Sample],
    faults: &[(f64, f64)],
    events: &[AlertEvent],
    hops: &[Hop],
    scrapes: &HashMap<String, String>,
) -> Vec<(String, bool, String)> {
    expect
        .iter()
        .map(|e| match e {
            Expect::Bound {
                phase,
                metric,
                below,
                above,
            } => {
                let v = phase_stats(samples, *phase, faults).get(*metric);
                let ok = below.is_none_or(|b| v < b) && above.is_none_or(|a| v > a);
                let bound = match (below, above) {
                    (Some(b), Some(a)) => format!("in ({a}, {b})"),
                    (Some(b), None) => format!("< {b}"),
                    (None, Some(a)) => format!("> {a}"),
                    (None, None) => "recorded".into(),
                };
                let phase = match phase {
                    Phase::All => "whole run",
                    Phase::Fault => "fault window",
                };
                let metric = match metric {
                    Metric::Non2xxRatio => "non-2xx ratio",
                    Metric::DegradedRatio => "degraded ratio",
                    Metric::P99Ms => "p99 ms",
                };
                (
                    format!("{metric} in {phase} {bound}"),
                    ok,
                    format!("{v:.4}"),
                )
            }
            Expect::Alert { name, fired } => {
                let did = events.iter().any(|a| &a.name == name);
                (
                    format!(
                        "alert \"{name}\" {}",
                        if *fired { "fires" } else { "stays quiet" }
                    ),
                    did == *fired,
                    if did { "fired".into() } else { "quiet".into() },
                )
            }
            Expect::Event {
                hop,
                state,
                within,
                from_fault_start,
                after_fault,
            } => {
                let from = match from_fault_start {
                    true => Since::FaultStart,
                    false => Since::FirstFailure,
                };
                event_check(hops, faults, hop, state, (*within, from), *after_fault)
            }
            Expect::Scrape {
                at,
                series,
                below,
                above,
            } => scrape_check(scrapes, at, series, *below, *above),
            Expect::DiagnoseFirst {
                hop,
                upstream,
                phase,
            } => {
                let first = hops
                    .iter()
                    .find(|h| &h.name == hop)
                    .and_then(|h| h.diagnosis.as_ref())
                    .and_then(|(d, start)| {
                        d.sites
                            .iter()
                            .find(|x| x.began.is_some())
                            .map(|x| (x.clone(), x.began.unwrap_or_default() - start))
                    });
                let ok = first.as_ref().is_some_and(|(x, _)| {
                    &x.site.upstream == upstream
                        && phase.as_ref().is_none_or(|p| &x.site.phase == p)
                });
                let want = match phase {
                    Some(p) => format!("{upstream} {p}"),
                    None => upstream.clone(),
                };
                (
                    format!("diagnose of {hop}: failures began first at {want}"),
                    ok,
                    first.map_or("no failure site".into(), |(x, at)| {
                        format!("{} at {at:.1}s", x.site)
                    }),
                )
            }
            Expect::TopCause { hop, contains } => {
                let top = hops
                    .iter()
                    .find(|h| &h.name == hop)
                    .and_then(|h| h.top_causes.first())
                    .map(|c| c.0.clone())
                    .unwrap_or_default();
                (
                    format!(
                        "top cause at {hop} during faults (or the run) contains \"{contains}\""
                    ),
                    top.contains(contains.as_str()),
                    top,
                )
            }
        })
        .collect()
}

/// Where an `event` expectation's `within` counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Since {
    /// The hop's first failure in a fault window.
    FirstFailure,
    /// The first fault's start.
    FaultStart,
}

/// An `event` expectation: hop `hop` logged an event `state` — within `within` of its
/// first failure in a fault window (or of the first fault's start), or after the last
/// fault ended.
fn event_check(
    hops: &[Hop],
    faults: &[(f64, f64)],
    hop: &str,
    state: &str,
    (within, from): (Option<Duration>, Since),
    after_fault: bool,
) -> (String, bool, String) {
    let h = hops.iter().find(|h| h.name == hop);
    let events: Vec<&EndpointEvent> = h
        .map(|h| {
            h.endpoint_events
                .iter()
                .filter(|e| e.state == state)
                .collect()
        })
        .unwrap_or_default();
    let (first, what) = match from {
        Since::FirstFailure => (
            h.and_then(|h| h.first_failure_in_fault),
            "its first failure in a fault",
        ),
        Since::FaultStart => (
            faults.iter().map(|f| f.0).reduce(f64::min),
            "the first fault's start",
        ),
    };
    let fault_end = faults.iter().map(|f| f.1).fold(f64::NAN, f64::max);
    let listed = |es: &[&EndpointEvent]| {
        if es.is_empty() {
            "none".to_string()
        } else {
            es.iter()
                .map(|e| format!("{} at {:.2}s", e.endpoint, e.t))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    match (within, after_fault) {
        (Some(w), _) => {
            let w = w.as_secs_f64();
            let ok = first.is_some_and(|f| events.iter().any(|e| e.t >= f && e.t <= f + w));
            let measured = match (first, from) {
                (Some(f), Since::FirstFailure) => {
                    format!("{}; first failure at {f:.2}s", listed(&events))
                }
                (Some(f), Since::FaultStart) => format!("{}; fault at {f:.2}s", listed(&events)),
                (None, _) => format!("{}; no failure in a fault window", listed(&events)),
            };
            (
                format!("{hop} logs {state} within {w}s of {what}"),
                ok,
                measured,
            )
        }
        (None, true) => (
            format!("{hop} logs {state} after the faults end ({fault_end:.0}s)"),
            events.iter().any(|e| e.t >= fault_end),
            listed(&events),
        ),
        (None, false) => (
            format!("{hop} logs {state}"),
            !events.is_empty(),
            listed(&events),
        ),
    }
}

/// The sum of `series` over the Prometheus text of every address in `at`.
fn scrape_check(
    scrapes: &HashMap<String, String>,
    at: &[String],
    series: &str,
    below: Option<f64>,
    above: Option<f64>,
) -> (String, bool, String) {
    let mut sum = 0.0;
    let mut missing = Vec::new();
    for a in at {
        match scrapes.get(a) {
            Some(text) => sum += series_sum(text, series),
            None => missing.push(a.as_str()),
        }
    }
    let bound = match (below, above) {
        (Some(b), Some(a)) => format!("in ({a}, {b})"),
        (Some(b), None) => format!("< {b}"),
        (None, Some(a)) => format!("> {a}"),
        (None, None) => "recorded".into(),
    };
    let ok = missing.is_empty() && below.is_none_or(|b| sum < b) && above.is_none_or(|a| sum > a);
    let measured = match missing.is_empty() {
        true => format!("{sum}"),
        false => format!("{sum}; not scraped: {}", missing.join(", ")),
    };
    (
        format!("{series} summed over {} {bound}", at.join(", ")),
        ok,
        measured,
    )
}

/// The sum of the samples of `series` in Prometheus text: lines named `series` (any
/// labels), or starting with it when it gives labels (`name{proxy="nat"`).
pub fn series_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| match l.strip_prefix(series) {
            Some(rest) if series.contains('{') => !rest.is_empty(),
            Some(rest) => rest.starts_with(' ') || rest.starts_with('{'),
            None => false,
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Everything a report shows, as JSON (`data.json`).
pub fn data_json(
    s: &Scenario,
    secs: &[Second],
    hops: &[Hop],
    events: &[AlertEvent],
    checks: &[(String, bool, String)],
    stats: (PhaseStats, PhaseStats),
) -> Value {
    let st = |p: PhaseStats| json!({"requests": p.total, "non_2xx_ratio": p.non_2xx_ratio, "degraded_ratio": p.degraded_ratio, "p50_ms": p.p50_ms, "p99_ms": p.p99_ms, "max_ms": p.max_ms});
    json!({
        "scenario": s.name,
        "duration_s": s.duration.as_secs_f64(),
        "seed": s.seed,
        "faults": s.faults.iter().map(|f| json!({"at_s": f.at.as_secs_f64(), "until_s": f.until.unwrap_or(s.duration).as_secs_f64(), "service": f.service, "proxy": f.proxy, "toxic": f.toxic})).collect::<Vec<_>>(),
        "load": secs.iter().map(|x| json!({"t": x.t, "total": x.total, "classes": x.classes, "degraded": x.degraded, "p50_ms": x.p50, "p99_ms": x.p99, "max_ms": x.max})).collect::<Vec<_>>(),
        "hops": hops.iter().map(|h| json!({"name": h.name, "lines": h.lines, "seconds": h.seconds, "top_causes": h.top_causes, "diagnosis": h.diagnosis.as_ref().map(|(d, _)| d.to_json()), "endpoint_events": h.endpoint_events.iter().map(|e| json!({"t": e.t, "endpoint": e.endpoint, "state": e.state, "detail": e.detail})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
        "alerts": events.iter().map(|a| json!({"name": a.name, "fired_s": a.fired, "resolved_s": a.resolved})).collect::<Vec<_>>(),
        "expectations": checks.iter().map(|(d, ok, v)| json!({"expect": d, "passed": ok, "measured": v})).collect::<Vec<_>>(),
        "all": st(stats.0),
        "fault_window": st(stats.1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_summed_by_name_or_by_name_and_labels() {
        let text = "# HELP a_total x\n# TYPE a_total counter\na_total{proxy=\"nat\"} 3\na_total{proxy=\"other\"} 4\na_total_more 100\nb 1\n";
        assert_eq!(series_sum(text, "a_total"), 7.0);
        assert_eq!(series_sum(text, "a_total{proxy=\"nat\""), 3.0);
        assert_eq!(series_sum(text, "b"), 1.0);
        assert_eq!(series_sum(text, "c"), 0.0);
    }

    #[test]
    fn causes_group_by_shape() {
        assert_eq!(
            normalize("upstream coupon 127.0.0.1:33141 (egress): response headers timed out after 300ms (call timeout)"),
            "upstream coupon 127.0.0.1:* (egress): response headers timed out after 300ms (call timeout)"
        );
        assert_eq!(
            normalize("upstream a 127.0.0.1:9 (internal): connect error after 184us: refused"),
            "upstream a 127.0.0.1:* (internal): connect error after …: refused"
        );
    }

    #[test]
    fn rfc3339_and_float_timestamps() {
        assert_eq!(
            epoch_of(&serde_json::json!("2026-11-01T12:00:00.500Z")),
            Some(1_793_534_400.5)
        );
        assert_eq!(epoch_of(&serde_json::json!(12.5)), Some(12.5));
    }
}
