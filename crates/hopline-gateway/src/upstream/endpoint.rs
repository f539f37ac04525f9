//! Endpoints: the addresses an upstream's requests go to, each with its connection pools,
//! its load (requests in flight) and its standing — passive outlier ejection and active
//! health checks. An endpoint is used only when both say yes; when too few are usable,
//! the upstream balances over all of them (panic mode) rather than overload the rest.
//!
//! The set of endpoints changes as names re-resolve ([`crate::upstream::discovery`]): an endpoint
//! whose address stays keeps its pools and standing; one that goes is marked removed,
//! its idle connections are closed and requests already on it finish.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

use hopline_core::config::{LoadBalancing, OutlierConfig};
use hopline_core::time::Human;
use hopline_core::{ProxyError, TimeoutSource, UpstreamErrorKind};
use rustls::pki_types::ServerName;

use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;

/// How many recent failures an endpoint remembers for `/endpoints`.
const RECENT_FAILURES: usize = 5;

/// One address of an upstream.
#[derive(Debug)]
pub struct Endpoint {
    /// Where connections go.
    pub addr: SocketAddr,
    /// The configured entry it came from (`coupon.svc:8080`, or the address itself).
    pub target: Arc<str>,
    /// The name its certificate is verified against (TLS upstreams).
    pub(crate) server_name: Option<ServerName<'static>>,
    pub(crate) idle: Mutex<Vec<IdleConn>>,
    /// Woken when a connection goes back to `idle`: a request waiting to connect may take
    /// it instead.
    pub(crate) returned: tokio::sync::Notify,
    /// Requests waiting on `returned` (no wake is sent when there are none).
    pub(crate) awaiting_return: AtomicUsize,
    /// Connects finished and connections returned while requests were waiting to connect:
    /// a waiter that saw this move within `connect_timeout` keeps waiting (the endpoint is
    /// answering, only busy).
    pub(crate) progress: std::sync::atomic::AtomicU64,
    /// Connects (and TLS handshakes) in progress, at most the upstream's `max_connecting`.
    pub(crate) connecting: Arc<crate::limits::InFlight>,
    /// HTTP/2 connections (`protocol = "h2"`), each shared by concurrent requests.
    pub(crate) h2: Mutex<Vec<H2Conn>>,
    /// Held while an HTTP/2 connection is being opened, so requests that find none wait
    /// for that one instead of each opening their own.
    pub(crate) h2_opening: tokio::sync::Mutex<()>,
    /// The stream limit its HTTP/2 connections last announced (`usize::MAX` until one
    /// has): a new connection assumes it until its own SETTINGS arrive, so requests
    /// that come meanwhile do not queue on it past the limit.
    pub(crate) h2_streams: AtomicUsize,
    /// Requests using this endpoint now (least-request balancing).
    active: AtomicUsize,
    /// Gateway failures in a row (outlier detection).
    failures: AtomicU32,
    successes_total: AtomicU64,
    failures_total: AtomicU64,
    /// No longer in the upstream's set: pooled connections are not kept.
    removed: AtomicBool,
    standing: Mutex<Standing>,
}

/// What outlier detection and health checks say about an endpoint.
#[derive(Debug, Default)]
struct Standing {
    /// Times ejected so far (an ejection lasts `base_ejection` × this).
    ejections: u32,
    /// Ejected until then.
    ejected_until: Option<Instant>,
    /// Failing its active health checks.
    unhealthy: bool,
    /// Active checks in a row with the same result, and the last one's result.
    check_streak: u32,
    last_check: Option<(SystemTime, Result<u16, String>)>,
    /// The most recent failures, newest last.
    recent: VecDeque<(SystemTime, &'static str)>,
    /// Back from an ejection or failed health checks at this instant: warming up under
    /// `outlier.slow_start`.
    warming_since: Option<Instant>,
}

impl Endpoint {
    /// Counts a connect finished or a connection returned to the pool, when requests wait
    /// on the endpoint (for the connect gate's "busy, not stuck"); whether any do.
    pub(crate) fn note_progress(&self) -> bool {
        let waiting = self
            .awaiting_return
            .load(std::sync::atomic::Ordering::Acquire)
            > 0;
        if waiting {
            self.progress
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        waiting
    }

    /// A new endpoint at `addr`, from the configured entry `target`.
    pub(crate) fn new(
        addr: SocketAddr,
        target: Arc<str>,
        server_name: Option<ServerName<'static>>,
    ) -> Self {
        Endpoint {
            addr,
            target,
            server_name,
            idle: Mutex::new(Vec::new()),
            returned: tokio::sync::Notify::new(),
            awaiting_return: AtomicUsize::new(0),
            progress: std::sync::atomic::AtomicU64::new(0),
            connecting: crate::limits::InFlight::new(64),
            h2: Mutex::new(Vec::new()),
            h2_opening: tokio::sync::Mutex::new(()),
            h2_streams: AtomicUsize::new(usize::MAX),
            active: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            successes_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            standing: Mutex::new(Standing::default()),
        }
    }

    /// Its weight in the least-request pick under `slow_start`: from 0.1 just back to 1
    /// once the window has passed (or when it is not warming up).
    fn warmth(&self, slow_start: Duration) -> f64 {
        let mut s = self.standing();
        let Some(since) = s.warming_since else {
            return 1.0;
        };
        let f = since.elapsed().as_secs_f64() / slow_start.as_secs_f64();
        if f >= 1.0 {
            s.warming_since = None;
            return 1.0;
        }
        f.max(0.1)
    }

    /// Requests on it now.
    pub fn in_flight(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Dropped from its upstream's set (its pooled connections are not kept).
    pub(crate) fn removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    fn standing(&self) -> std::sync::MutexGuard<'_, Standing> {
        self.standing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks it removed and closes its idle connections.
    fn retire(&self) {
        self.removed.store(true, Ordering::Relaxed);
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.h2.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// An endpoint's state as `/endpoints` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Takes requests.
    Usable,
    /// Ejected by outlier detection.
    Ejected,
    /// Failing its active health checks.
    Unhealthy,
}

impl State {
    /// As shown in `/endpoints` and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Usable => "usable",
            State::Ejected => "ejected",
            State::Unhealthy => "unhealthy",
        }
    }
}

/// What a request's attempt on an endpoint came to, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint answered (any status but 502/503/504).
    Success,
    /// A gateway failure: a connect failure, reset, timeout, or 502/503/504.
    Failure(&'static str),
}

impl Verdict {
    /// The verdict on a response status.
    pub fn of_status(status: u16) -> Verdict {
        match status {
            502 => Verdict::Failure("502 response"),
            503 => Verdict::Failure("503 response"),
            504 => Verdict::Failure("504 response"),
            _ => Verdict::Success,
        }
    }

    /// The verdict on a failed exchange; `None` when the failure was not the endpoint's
    /// (the client left, a limit of the gateway's own).
    pub fn of_error(e: &ProxyError) -> Option<Verdict> {
        let ProxyError::Upstream(u) = e else {
            return None;
        };
        Some(Verdict::Failure(match &u.kind {
            UpstreamErrorKind::ConnectTimeout { .. } => "connect timeout",
            UpstreamErrorKind::ConnectRefused(_) => "connection refused",
            UpstreamErrorKind::ConnectFailed(_) => "connect failure",
            UpstreamErrorKind::TlsTimeout { .. } => "TLS handshake timeout",
            UpstreamErrorKind::Tls(_) => "TLS handshake failure",
            UpstreamErrorKind::Timeout { .. } => "response timeout",
            UpstreamErrorKind::Reset { .. } => "reset",
            UpstreamErrorKind::Closed { .. } => "early close",
            UpstreamErrorKind::Protocol { .. } => "protocol error",
            UpstreamErrorKind::Io { .. } => "I/O error",
        }))
    }
}

/// A request's use of an endpoint: counted in its in-flight load until dropped, and the
/// way the attempt's outcome reaches outlier detection.
#[derive(Debug)]
pub struct EndpointGuard {
    reporter: Reporter,
}

impl EndpointGuard {
    /// The endpoint.
    pub fn ep(&self) -> &Arc<Endpoint> {
        &self.reporter.ep
    }

    /// Reports the attempt's outcome: a success resets the endpoint's failure streak; a
    /// failure extends it and may eject the endpoint.
    pub fn report(&self, verdict: Verdict) {
        self.reporter.report(verdict);
    }

    /// Notes a successful attempt's time to its response headers.
    pub fn answered_in(&self, took: Duration) {
        self.reporter.set.answered_in(took);
    }

    /// A handle that reports on this endpoint without counting in its load.
    pub fn reporter(&self) -> Reporter {
        self.reporter.clone()
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.reporter.ep.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reports attempt outcomes on one endpoint to its upstream's outlier detection.
#[derive(Debug, Clone)]
pub struct Reporter {
    set: Arc<EndpointSet>,
    ep: Arc<Endpoint>,
}

impl Reporter {
    /// Reports `verdict`.
    pub fn report(&self, verdict: Verdict) {
        self.set.report(&self.ep, verdict);
    }

    /// Reports a failed exchange when the failure was the endpoint's. A timeout at the
    /// caller's own budget is only when the upstream's endpoints answer in a fraction of
    /// the time the attempt had: a caller that gives 15 ms to a service that takes 50 ms
    /// ejects nothing, an endpoint that never answers while its peers take 2 ms is ejected.
    pub fn failed(&self, e: &ProxyError) {
        if let ProxyError::Upstream(u) = e {
            if u.kind.timeout_source() == Some(TimeoutSource::CallerBudget)
                && !self.set.peers_answer_within(u.elapsed)
            {
                return;
            }
        }
        if let Some(v) = Verdict::of_error(e) {
            self.report(v);
        }
    }

    /// Notes a successful attempt's time to its response headers.
    pub fn answered_in(&self, took: Duration) {
        self.set.answered_in(took);
    }
}

/// Why no endpoint was picked.
#[derive(Debug)]
pub enum NoEndpoint {
    /// The set is empty: names not resolved (yet).
    Empty,
    /// Every endpoint is ejected or unhealthy.
    NoneUsable,
}

/// An upstream's current endpoints and their standing, shared across reloads that keep
/// the upstream's endpoint settings.
#[derive(Debug)]
pub struct EndpointSet {
    /// The upstream's name.
    pub upstream: Arc<str>,
    outlier: OutlierConfig,
    panic_threshold: u8,
    list: RwLock<Arc<[Arc<Endpoint>]>>,
    /// Endpoints ejected or unhealthy as last seen (0: every pick takes the fast path).
    unusable: AtomicUsize,
    /// Endpoints ejected as last seen (against `max_ejection_percent`).
    ejected: AtomicUsize,
    panic: AtomicBool,
    metrics: Arc<Metrics>,
    per_endpoint_metrics: bool,
    log: Arc<AccessLog>,
    /// How long the upstream's endpoints take to answer (response headers), in
    /// microseconds: a moving average of successful attempts (0 until the first). A timeout
    /// at the caller's budget is the endpoint's failure only when it ran far past this.
    answers_in_us: AtomicU64,
}

/// A timeout at the caller's budget counts against the endpoint when the attempt ran this
/// many times longer than its upstream's endpoints usually take to answer.
const CALLER_TIMEOUT_FACTOR: u64 = 4;

impl EndpointSet {
    /// A set with `initial` endpoints.
    pub(crate) fn new(
        upstream: Arc<str>,
        outlier: OutlierConfig,
        panic_threshold: u8,
        initial: Vec<Arc<Endpoint>>,
        metrics: Arc<Metrics>,
        per_endpoint_metrics: bool,
        log: Arc<AccessLog>,
    ) -> Self {
        EndpointSet {
            upstream,
            outlier,
            panic_threshold,
            list: RwLock::new(initial.into()),
            unusable: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
            panic: AtomicBool::new(false),
            metrics,
            per_endpoint_metrics,
            log,
            answers_in_us: AtomicU64::new(0),
        }
    }

    /// Notes how long a successful attempt took to its response headers.
    pub(crate) fn answered_in(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.answers_in_us.load(Ordering::Relaxed);
        // An eighth of each new sample; the first one stands alone.
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.answers_in_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Whether a timeout after `ran` at the caller's budget is the endpoint's failure: its
    /// peers (the upstream's endpoints) answer in well under that. With no answer seen yet,
    /// it is the caller's.
    fn peers_answer_within(&self, ran: Duration) -> bool {
        let usual = self.answers_in_us.load(Ordering::Relaxed);
        let ran = u64::try_from(ran.as_micros()).unwrap_or(u64::MAX);
        usual != 0 && ran >= usual.saturating_mul(CALLER_TIMEOUT_FACTOR)
    }

    /// The endpoints now.
    pub fn list(&self) -> Arc<[Arc<Endpoint>]> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the endpoints that came from `target` with `addrs`: addresses that stay
    /// keep their endpoint (pools, standing); gone ones are retired. `make` builds a new one.
    /// Returns (added, removed) addresses.
    pub(crate) fn replace_target(
        &self,
        target: &str,
        addrs: &[SocketAddr],
        make: impl Fn(SocketAddr) -> Endpoint,
    ) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        let mut next: Vec<Arc<Endpoint>> = Vec::with_capacity(list.len() + addrs.len());
        let mut removed = Vec::new();
        for ep in list.iter() {
            if &*ep.target != target || addrs.contains(&ep.addr) {
                next.push(ep.clone());
            } else {
                ep.retire();
                removed.push(ep.addr);
            }
        }
        let mut added = Vec::new();
        for a in addrs {
            if !next.iter().any(|e| &*e.target == target && e.addr == *a) {
                next.push(Arc::new(make(*a)));
                added.push(*a);
            }
        }
        *list = next.into();
        drop(list);
        self.recount();
        (added, removed)
    }

    /// Chooses the endpoint of an attempt by `lb` (`draw` is a fresh counter value),
    /// avoiding `avoid` (the endpoint a retried attempt just failed on) when another is
    /// usable, and counts the request on it.
    pub fn pick(
        self: &Arc<Self>,
        lb: LoadBalancing,
        draw: usize,
        avoid: Option<SocketAddr>,
    ) -> Result<EndpointGuard, NoEndpoint> {
        let list = self.list();
        if list.is_empty() {
            return Err(NoEndpoint::Empty);
        }
        let warm = self.outlier.slow_start;
        let ep = if self.unusable.load(Ordering::Relaxed) == 0 {
            choose(&list, lb, draw, (avoid, warm))
        } else {
            let now = Instant::now();
            let usable: Vec<Arc<Endpoint>> = list
                .iter()
                .filter(|e| self.usable(e, now))
                .cloned()
                .collect();
            // Every endpoint known dead: answered at once (503 `UH`), never sent to one of
            // them. Panic mode is for some usable, but fewer than the threshold.
            let panic = !usable.is_empty()
                && usable.len() * 100 < usize::from(self.panic_threshold) * list.len();
            self.set_panic(panic, usable.len(), list.len());
            if usable.is_empty() {
                return Err(NoEndpoint::NoneUsable);
            } else if panic {
                choose(&list, lb, draw, (avoid, warm))
            } else {
                choose(&usable, lb, draw, (avoid, warm))
            }
        };
        ep.active.fetch_add(1, Ordering::Relaxed);
        Ok(EndpointGuard {
            reporter: Reporter {
                set: self.clone(),
                ep,
            },
        })
    }

    /// Usable now; an ejection that has run out ends here (logged).
    fn usable(&self, ep: &Endpoint, now: Instant) -> bool {
        let mut s = ep.standing();
        if let Some(until) = s.ejected_until {
            if now < until {
                return false;
            }
            s.ejected_until = None;
            ep.failures.store(0, Ordering::Relaxed);
            self.ejected.fetch_sub(1, Ordering::Relaxed);
            if !s.unhealthy {
                self.unusable.fetch_sub(1, Ordering::Relaxed);
            }
            s.warming_since = Some(now);
            self.event(ep, "returned", "after its ejection".into());
        }
        !s.unhealthy
    }

    fn set_panic(&self, on: bool, usable: usize, all: usize) {
        if self.panic.swap(on, Ordering::Relaxed) != on {
            let (state, detail) = if on {
                let detail = format!(
                    "{usable} of {all} endpoints usable (below panic_threshold {}%), balancing over all",
                    self.panic_threshold
                );
                ("panic", detail)
            } else {
                let then = if usable == 0 {
                    ", answering 503 UH until one is back"
                } else {
                    ""
                };
                let detail = format!("{usable} of {all} endpoints usable{then}");
                ("panic_over", detail)
            };
            let what = if on { "panic mode" } else { "panic mode over" };
            self.log.announce(
                "upstream",
                &[("upstream", &self.upstream)],
                state,
                &detail,
                format_args!("upstream {}: {what}: {detail}", self.upstream),
            );
        }
    }

    /// Says on stderr and in the access log that `ep`'s standing changed.
    fn event(&self, ep: &Endpoint, state: &str, detail: String) {
        let how = match state {
            "ejected" | "returned" => format!("{state} {detail}"),
            _ => format!("is {state}: {detail}"),
        };
        let endpoint = ep.addr.to_string();
        self.log.announce(
            "endpoint",
            &[("upstream", &self.upstream), ("endpoint", &endpoint)],
            state,
            &detail,
            format_args!("endpoint {} of {} {how}", ep.addr, self.upstream),
        );
    }

    /// Balancing over all endpoints because too few are usable.
    pub fn in_panic(&self) -> bool {
        self.panic.load(Ordering::Relaxed)
    }

    fn report(&self, ep: &Endpoint, verdict: Verdict) {
        let failed = matches!(verdict, Verdict::Failure(_));
        if self.per_endpoint_metrics {
            self.metrics.endpoint_outcome(
                &self.upstream,
                ep.addr,
                if failed { "failure" } else { "success" },
            );
        }
        let Verdict::Failure(what) = verdict else {
            ep.successes_total.fetch_add(1, Ordering::Relaxed);
            if ep.failures.load(Ordering::Relaxed) != 0 {
                ep.failures.store(0, Ordering::Relaxed);
            }
            return;
        };
        ep.failures_total.fetch_add(1, Ordering::Relaxed);
        let streak = ep.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut s = ep.standing();
        if s.recent.len() == RECENT_FAILURES {
            s.recent.pop_front();
        }
        s.recent.push_back((SystemTime::now(), what));
        if !self.outlier.enabled
            || streak < self.outlier.consecutive_failures
            || s.ejected_until.is_some()
        {
            return;
        }
        // A place among the ejected, within max_ejection_percent of the endpoints.
        let room = usize::from(self.outlier.max_ejection_percent) * self.list().len();
        let reserved = self
            .ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                ((n + 1) * 100 <= room).then_some(n + 1)
            });
        if reserved.is_err() {
            return;
        }
        s.ejections += 1;
        let lasts = self
            .outlier
            .base_ejection
            .saturating_mul(s.ejections)
            .min(self.outlier.max_ejection);
        s.ejected_until = Some(Instant::now() + lasts);
        if !s.unhealthy {
            self.unusable.fetch_add(1, Ordering::Relaxed);
        }
        let n = self.outlier.consecutive_failures as usize;
        let same = s.recent.len() >= n.min(RECENT_FAILURES)
            && s.recent.iter().rev().take(n).all(|(_, w)| *w == what);
        let why = if same {
            format!("{streak} consecutive failures, each a {what}")
        } else {
            format!("{streak} consecutive failures, the last a {what}")
        };
        drop(s);
        self.metrics.endpoint_ejected(&self.upstream);
        self.event(ep, "ejected", format!("for {}: {why}", Human(lasts)));
    }

    /// Records an active health check's result on `ep`: `thresholds` are (healthy,
    /// unhealthy) streak lengths that flip its state.
    pub(crate) fn checked(
        &self,
        ep: &Endpoint,
        result: Result<u16, String>,
        thresholds: (u32, u32),
    ) {
        let mut s = ep.standing();
        let passed = result.is_ok();
        let was_passing = matches!(s.last_check, Some((_, Ok(_))) | None);
        s.check_streak = if passed == was_passing {
            s.check_streak + 1
        } else {
            1
        };
        let detail = match &result {
            Ok(status) => format!("answered {status}"),
            Err(e) => e.clone(),
        };
        s.last_check = Some((SystemTime::now(), result));
        let flip = if s.unhealthy {
            passed && s.check_streak >= thresholds.0
        } else {
            !passed && s.check_streak >= thresholds.1
        };
        if !flip {
            return;
        }
        s.unhealthy = !s.unhealthy;
        if !s.unhealthy {
            s.warming_since = Some(Instant::now());
        }
        if s.ejected_until.is_none() {
            if s.unhealthy {
                self.unusable.fetch_add(1, Ordering::Relaxed);
            } else {
                self.unusable.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let (state, n) = if s.unhealthy {
            ("unhealthy", thresholds.1)
        } else {
            ("healthy", thresholds.0)
        };
        drop(s);
        let detail = format!("{n} health checks in a row, the last {detail}");
        self.event(ep, state, detail);
    }

    /// Recomputes the unusable and ejected counts (after the set changed).
    fn recount(&self) {
        let (mut unusable, mut ejected) = (0, 0);
        for e in self.list().iter() {
            let s = e.standing();
            let out = s.ejected_until.is_some();
            ejected += usize::from(out);
            unusable += usize::from(out || s.unhealthy);
        }
        self.unusable.store(unusable, Ordering::Relaxed);
        self.ejected.store(ejected, Ordering::Relaxed);
    }

    /// Each endpoint's state now.
    pub fn states(&self) -> Vec<(Arc<Endpoint>, State)> {
        let now = Instant::now();
        self.list()
            .iter()
            .map(|e| {
                let s = e.standing();
                let state = if s.ejected_until.is_some_and(|u| now < u) {
                    State::Ejected
                } else if s.unhealthy {
                    State::Unhealthy
                } else {
                    State::Usable
                };
                (e.clone(), state)
            })
            .collect()
    }

    /// How long until the first ejection that is in force now runs out, if any.
    pub fn soonest_return(&self) -> Option<Duration> {
        let now = Instant::now();
        self.list()
            .iter()
            .filter_map(|e| e.standing().ejected_until)
            .filter(|until| *until > now)
            .min()
            .map(|until| until - now)
    }

    /// Why no endpoint is usable, for the 503 `UH` cause.
    pub fn none_usable(&self) -> String {
        let states = self.states();
        let count = |st: State| states.iter().filter(|(_, s)| *s == st).count();
        format!(
            "{} endpoints, none usable: {} ejected, {} failing health checks",
            states.len(),
            count(State::Ejected),
            count(State::Unhealthy)
        )
    }

    /// One endpoint as `/endpoints` shows it.
    pub fn describe(&self, ep: &Endpoint, state: State) -> serde_json::Value {
        let s = ep.standing();
        let now = Instant::now();
        let wall = SystemTime::now();
        let ago = |t: SystemTime| wall.duration_since(t).map_or(0, |d| d.as_millis() as u64);
        let failures: Vec<_> = s
            .recent
            .iter()
            .rev()
            .map(|(t, what)| serde_json::json!({ "what": what, "ago_ms": ago(*t) }))
            .collect();
        serde_json::json!({
            "address": ep.addr.to_string(),
            "target": &*ep.target,
            "state": state.as_str(),
            "in_flight": ep.in_flight(),
            "successes": ep.successes_total.load(Ordering::Relaxed),
            "failures": ep.failures_total.load(Ordering::Relaxed),
            "consecutive_failures": ep.failures.load(Ordering::Relaxed),
            "recent_failures": failures,
            "ejections": s.ejections,
            "ejected_for_ms": s.ejected_until
                .and_then(|u| u.checked_duration_since(now))
                .map(|d| d.as_millis() as u64),
            "health_check": s.last_check.as_ref().map(|(t, r)| match r {
                Ok(status) => serde_json::json!({ "passed": true, "status": status, "ago_ms": ago(*t) }),
                Err(e) => serde_json::json!({ "passed": false, "error": e, "ago_ms": ago(*t) }),
            }),
        })
    }
}

/// Picks from `list` (non-empty) by `lb`, avoiding the endpoint at `avoid` when another
/// exists; with `warm` (`outlier.slow_start`), least request weighs an endpoint that is
/// warming up by how far it is through the window.
fn choose(
    list: &[Arc<Endpoint>],
    lb: LoadBalancing,
    draw: usize,
    (avoid, warm): (Option<SocketAddr>, Duration),
) -> Arc<Endpoint> {
    let n = list.len();
    let avoid = avoid
        .filter(|_| n > 1)
        .and_then(|a| list.iter().position(|e| e.addr == a));
    // Candidates are 0..m, mapped around the avoided index.
    let m = n - usize::from(avoid.is_some());
    let at = |k: usize| match avoid {
        Some(a) if k >= a => k + 1,
        _ => k,
    };
    let i = match lb {
        LoadBalancing::RoundRobin => at(draw % m),
        LoadBalancing::Random => at(mix(draw) as usize % m),
        LoadBalancing::LeastRequest if m == 1 => at(0),
        LoadBalancing::LeastRequest => {
            let r = mix(draw);
            let a = r as usize % m;
            // A second candidate, different from the first.
            let b = (a + 1 + (r >> 32) as usize % (m - 1)) % m;
            let (a, b) = (at(a), at(b));
            if !warm.is_zero() {
                // Load per unit of weight: (in flight + 1) / weight, compared across.
                let (wa, wb) = (list[a].warmth(warm), list[b].warmth(warm));
                let la = (list[a].in_flight() + 1) as f64 * wb;
                let lb = (list[b].in_flight() + 1) as f64 * wa;
                if lb < la {
                    b
                } else {
                    a
                }
            } else if list[b].in_flight() < list[a].in_flight() {
                b
            } else {
                a
            }
        }
    };
    list[i].clone()
}

/// A well-mixed 64-bit value from a counter (SplitMix64), for random endpoint draws
/// without a random number generator crate.
fn mix(n: usize) -> u64 {
    let mut z = (n as u64)
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An HTTP/2 connection to an endpoint: a handle that opens streams on it (its frames
/// are driven by a task that ends when the connection does).
#[derive(Debug)]
pub(crate) struct H2Conn {
    /// Opens streams on it.
    pub(crate) send: h2::client::SendRequest<bytes::Bytes>,
    /// When it was last used.
    pub(crate) since: Instant,
    /// Streams hopline has open on it (against the upstream's concurrency limit).
    pub(crate) active: Arc<AtomicUsize>,
}

/// A stream's place on an HTTP/2 connection: counted against the connection's limit
/// until dropped (when the request is done with the stream).
#[derive(Debug)]
pub struct H2Stream {
    /// Opens the stream.
    pub send: h2::client::SendRequest<bytes::Bytes>,
    active: Arc<AtomicUsize>,
}

impl H2Stream {
    /// A stream's place on `c`.
    pub(crate) fn on(c: &H2Conn) -> H2Stream {
        c.active.fetch_add(1, Ordering::Relaxed);
        H2Stream {
            send: c.send.clone(),
            active: c.active.clone(),
        }
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pooled HTTP/1 connection, idle since `since`.
#[derive(Debug)]
pub(crate) struct IdleConn {
    /// The connection.
    pub(crate) stream: crate::stream::UpstreamStream,
    /// When it went back to the pool.
    pub(crate) since: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> Arc<EndpointSet> {
        set_with(n, OutlierConfig::default())
    }

    fn set_with(n: usize, outlier: OutlierConfig) -> Arc<EndpointSet> {
        let endpoints = (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16));
                Arc::new(Endpoint::new(addr, addr.to_string().into(), None))
            })
            .collect();
        let log =
            crate::observe::access_log::AccessLog::open(&hopline_core::config::AccessLogSink::Off)
                .expect("log off");
        Arc::new(EndpointSet::new(
            "u".into(),
            outlier,
            50,
            endpoints,
            Arc::new(Metrics::new()),
            false,
            Arc::new(log),
        ))
    }

    fn index(g: &EndpointGuard) -> usize {
        usize::from(g.ep().addr.port() - 9000)
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_back_from_ejection_ramps_up_under_slow_start() {
        let outlier = OutlierConfig {
            slow_start: Duration::from_secs(10),
            ..OutlierConfig::default()
        };
        let s = set_with(2, outlier);
        s.list()[0].standing().warming_since = Some(Instant::now());
        // Requests held (so loads build up): the warming one's share follows its weight,
        // a tenth just back, a half half-way through, all of it after the window.
        let share = |s: &Arc<EndpointSet>| {
            let held: Vec<EndpointGuard> = (0..22)
                .map(|d| s.pick(LoadBalancing::LeastRequest, d, None).expect("pick"))
                .collect();
            held.iter().filter(|g| index(g) == 0).count()
        };
        let just_back = share(&s);
        assert!(just_back <= 2, "{just_back} of 22 just back");
        tokio::time::advance(Duration::from_secs(5)).await;
        let half_way = share(&s);
        assert!((5..=9).contains(&half_way), "{half_way} of 22 half-way");
        tokio::time::advance(Duration::from_secs(5)).await;
        let warm = share(&s);
        assert!((10..=12).contains(&warm), "{warm} of 22 once warm");
        assert!(s.list()[0].standing().warming_since.is_none(), "warm now");
    }

    fn counts(
        set: &Arc<EndpointSet>,
        lb: LoadBalancing,
        draws: usize,
        avoid: Option<usize>,
    ) -> Vec<usize> {
        let avoid = avoid.map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)));
        let mut seen = vec![0; set.list().len()];
        for d in 0..draws {
            seen[index(&set.pick(lb, d, avoid).expect("pick"))] += 1;
        }
        seen
    }

    #[test]
    fn least_request_prefers_the_less_busy_endpoint() {
        let s = set(2);
        let busy = s.pick(LoadBalancing::RoundRobin, 0, None).expect("pick");
        assert_eq!(index(&busy), 0);
        assert_eq!(
            counts(&s, LoadBalancing::LeastRequest, 100, None),
            vec![0, 100]
        );
        drop(busy);
        // Idle again: both are used.
        let seen = counts(&s, LoadBalancing::LeastRequest, 1000, None);
        assert!(seen.iter().all(|&n| n > 300), "{seen:?}");
    }

    #[test]
    fn least_request_spreads_over_many_endpoints() {
        let seen = counts(&set(5), LoadBalancing::LeastRequest, 5000, None);
        assert!(seen.iter().all(|&n| (700..1300).contains(&n)), "{seen:?}");
    }

    #[test]
    fn round_robin_takes_turns_and_random_covers_all() {
        let s = set(3);
        let order: Vec<usize> = (0..6)
            .map(|d| index(&s.pick(LoadBalancing::RoundRobin, d, None).expect("pick")))
            .collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
        let seen = counts(&set(3), LoadBalancing::Random, 3000, None);
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn a_retry_avoids_the_endpoint_that_just_failed() {
        for lb in [
            LoadBalancing::LeastRequest,
            LoadBalancing::RoundRobin,
            LoadBalancing::Random,
        ] {
            assert_eq!(counts(&set(3), lb, 300, Some(1))[1], 0, "{lb:?}");
            // With one endpoint there is nothing else to try.
            assert_eq!(counts(&set(1), lb, 1, Some(0)), vec![1]);
        }
    }

    #[test]
    fn consecutive_failures_eject_within_the_percentage_and_successes_reset() {
        let s = set(4);
        let ep = |i: usize| s.list()[i].clone();
        // Four failures, a success, four more: no ejection (the streak restarted).
        for v in [Verdict::Failure("reset"); 4] {
            s.report(&ep(0), v);
        }
        s.report(&ep(0), Verdict::Success);
        for v in [Verdict::Failure("reset"); 4] {
            s.report(&ep(0), v);
        }
        assert!(s.states().iter().all(|(_, st)| *st == State::Usable));
        // The fifth in a row ejects it; never more than half of the four at once.
        for i in 0..4 {
            for _ in 0..5 {
                s.report(&ep(i), Verdict::Failure("reset"));
            }
        }
        let ejected = s
            .states()
            .iter()
            .filter(|(_, st)| *st == State::Ejected)
            .count();
        assert_eq!(ejected, 2);
        assert_eq!(Verdict::of_status(503), Verdict::Failure("503 response"));
        assert_eq!(Verdict::of_status(500), Verdict::Success);
    }
}
