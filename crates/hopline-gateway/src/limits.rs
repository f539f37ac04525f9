//! Fail-fast limits: in-flight counters, the egress new-connection rate, the retry budget,
//! the process-wide budget of buffered bytes.
//!
//! A full in-flight limit can make a request wait, in a bounded FIFO, for as long as its own
//! deadline allows ([`InFlight::acquire`]): one that is sure not to get a slot in time (the
//! queue full, or its expected wait beyond its budget) is refused at once with 503 `UO`,
//! because a queue in front of a sick upstream must not turn its slowness into everybody's
//! timeouts. The other limits do not queue.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) use hopline_core::error::QueueRefusal;
// tokio's clock (the real one outside tests), so tests can run these on a paused clock.
use tokio::time::Instant;

/// A counter of calls in flight with a hard ceiling, and a bounded FIFO of requests
/// waiting for a slot.
#[derive(Debug)]
pub struct InFlight {
    limit: AtomicUsize,
    current: AtomicUsize,
    /// Requests waiting in [`InFlight::acquire`].
    pending: AtomicUsize,
    /// Woken, one waiter at a time and in order, when a slot is released.
    released: tokio::sync::Notify,
    /// Slots released while requests waited, handed to the waiter woken for each (still
    /// counted in `current`): a request arriving meanwhile cannot take them, so the queue
    /// is served in order.
    handed: AtomicUsize,
    /// How long a slot is held, nanoseconds: an exponentially weighted average over about
    /// the last 64 releases measured (0: no estimate yet).
    hold: AtomicU64,
}

/// Releases one in-flight slot when dropped (also when its request is cancelled).
#[derive(Debug)]
pub struct InFlightGuard {
    owner: Arc<InFlight>,
    /// When the slot was taken, for the hold-time estimate (`None`: not measured).
    since: Option<Instant>,
}

/// A place in an [`InFlight`]'s queue, given back when dropped (a request that leaves
/// while waiting frees its place at once).
struct Place<'a> {
    owner: &'a InFlight,
    /// Woken (a slot handed to it, or the limit raised) and gone without using it.
    unused_wake: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let owner = self.owner;
        let left = owner.pending.fetch_sub(1, Ordering::AcqRel) - 1;
        // A wake (and the slot handed with it) this waiter did not use goes to the next
        // one, or back to the free slots when nobody waits any more.
        if left == 0 {
            owner.reclaim_handed();
        } else if self.unused_wake {
            owner.released.notify_one();
        }
    }
}

impl InFlight {
    /// A counter allowing `limit` concurrent holders.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(InFlight {
            limit: AtomicUsize::new(limit),
            current: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            released: tokio::sync::Notify::new(),
            handed: AtomicUsize::new(0),
            hold: AtomicU64::new(0),
        })
    }

    /// Takes a slot, or `None` when all `limit` are taken.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlightGuard> {
        self.take(None)
    }

    fn take(self: &Arc<Self>, since: Option<Instant>) -> Option<InFlightGuard> {
        let prev = self.current.fetch_add(1, Ordering::AcqRel);
        if prev >= self.limit() {
            self.current.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(self.guard(since))
    }

    /// A guard for a slot already counted in `current`.
    fn guard(self: &Arc<Self>, since: Option<Instant>) -> InFlightGuard {
        InFlightGuard {
            owner: self.clone(),
            since,
        }
    }

    /// Takes a slot handed to a woken waiter, if one is left.
    fn take_handed(&self) -> bool {
        self.handed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| h.checked_sub(1))
            .is_ok()
    }

    /// Slots handed to waiters that have all gone back to the free slots.
    fn reclaim_handed(&self) {
        while self.pending.load(Ordering::Acquire) == 0 && self.take_handed() {
            self.current.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Takes a free slot when nobody is waiting for one (no clock read: its hold time counts
    /// from `since`, when the request came).
    pub fn take_now(self: &Arc<Self>, since: Instant) -> Option<InFlightGuard> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return self.take(Some(since));
        }
        None
    }

    /// Takes a slot, waiting for one in FIFO order until `until` when the limit is full:
    /// refused at once when `max_pending` already wait or when the expected wait is beyond
    /// `until`. `since` is when the request came (its slot's hold time counts from it when
    /// one is free at once: no clock is read for that).
    pub async fn acquire(
        self: &Arc<Self>,
        since: Instant,
        max_pending: usize,
        until: Instant,
    ) -> Result<InFlightGuard, QueueRefusal> {
        self.wait_for_slot(since, max_pending, until, true).await
    }

    /// Takes a slot, waiting for one in FIFO order until `until`, with no bound on the
    /// waiters and no refusal by expected wait (for a wait that something else may end
    /// sooner, as a pooled connection coming back ends a wait to connect).
    pub async fn acquire_until(
        self: &Arc<Self>,
        since: Instant,
        until: Instant,
    ) -> Result<InFlightGuard, QueueRefusal> {
        self.wait_for_slot(since, usize::MAX, until, false).await
    }

    async fn wait_for_slot(
        self: &Arc<Self>,
        since: Instant,
        max_pending: usize,
        until: Instant,
        shed: bool,
    ) -> Result<InFlightGuard, QueueRefusal> {
        // Nobody waits: a free slot is taken (with waiters, a newcomer queues behind them).
        if let Some(g) = self.take_now(since) {
            return Ok(g);
        }
        if max_pending == 0 {
            return Err(QueueRefusal::Full { max_pending });
        }
        let place = self.pending.fetch_add(1, Ordering::AcqRel) + 1;
        let mut place_guard = Place {
            owner: self,
            unused_wake: false,
        };
        if place > max_pending {
            return Err(QueueRefusal::Full { max_pending });
        }
        let start = Instant::now();
        let hold = self.hold.load(Ordering::Relaxed);
        if shed && hold > 0 {
            let limit = self.limit().max(1) as u64;
            let expected = Duration::from_nanos(hold.saturating_mul(place as u64) / limit + hold);
            let left = until.saturating_duration_since(start);
            if expected > left {
                return Err(QueueRefusal::ExpectedWait { expected, left });
            }
        }
        let mut woken = false;
        loop {
            let notified = self.released.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            place_guard.unused_wake = woken;
            // A slot freed as the deadline passes is no use to this request: it is the
            // queue's expiry, and the slot goes to the next waiter (by `Place`).
            if now >= until {
                return Err(QueueRefusal::Expired {
                    waited: start.elapsed(),
                });
            }
            // Woken: the slot handed with the wake (or one a raised limit freed).
            if woken && self.take_handed() {
                place_guard.unused_wake = false;
                return Ok(self.guard(Some(now)));
            }
            if let Some(g) = self.take(Some(now)) {
                place_guard.unused_wake = false;
                return Ok(g);
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return Err(QueueRefusal::Expired {
                    waited: start.elapsed(),
                });
            }
            woken = true;
        }
    }

    /// Requests waiting for a slot now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// How long a slot is held, as estimated (`None`: no estimate yet).
    pub fn hold_time(&self) -> Option<Duration> {
        let n = self.hold.load(Ordering::Relaxed);
        (n > 0).then(|| Duration::from_nanos(n))
    }

    /// Folds one hold time into the estimate (weight 1/32: about the last 64 releases).
    fn note_hold(&self, held: Duration) {
        let sample = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.hold.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            // old + (sample - old) / 32, in integers.
            (old - old / 32).saturating_add(sample / 32)
        };
        self.hold.store(new, Ordering::Relaxed);
    }

    /// The configured ceiling.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the ceiling (a reload): applies to new acquisitions; slots already taken
    /// stay taken until released.
    pub fn set_limit(&self, limit: usize) {
        let old = self.limit.swap(limit, Ordering::Relaxed);
        // A raised limit has room for those waiting now.
        if limit > old && self.pending.load(Ordering::Acquire) > 0 {
            self.released.notify_waiters();
        }
    }

    /// Slots taken now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let owner = &*self.owner;
        let waiting = owner.pending.load(Ordering::Acquire) > 0;
        // Hold times matter only near the limit: no clock is read far below it.
        if let Some(since) = self.since {
            if waiting || owner.current() * 2 >= owner.limit() {
                owner.note_hold(since.elapsed());
            }
        }
        if waiting {
            // The slot stays counted and goes to the waiter this wakes (first in line).
            owner.handed.fetch_add(1, Ordering::AcqRel);
            owner.released.notify_one();
            // The last waiter may have left meanwhile: then nobody takes it.
            owner.reclaim_handed();
        } else {
            owner.current.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A token bucket: `rate` tokens per second, holding at most `rate` (one second of burst).
#[derive(Debug)]
pub struct RateLimit {
    rate: AtomicU32,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// A bucket refilled at `rate` per second, starting full.
    pub fn new(rate: u32) -> Self {
        RateLimit {
            rate: AtomicU32::new(rate),
            state: Mutex::new((f64::from(rate), Instant::now())),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> u32 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Changes the rate (a reload); tokens already in the bucket are kept.
    pub fn set_rate(&self, rate: u32) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    /// Empties the bucket: from now on it holds only what the rate refills.
    pub fn drain(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = (0.0, Instant::now());
    }

    /// Takes one token: now when the bucket has one (`Some(now)`), else the next one the
    /// rate refills, when that comes by `until` (`Some(when)`: the caller waits until then;
    /// tokens promised to earlier callers come first); `None` when it does not.
    pub fn reserve(&self, until: Instant) -> Option<Instant> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let rate = f64::from(self.rate());
        let refill = now.duration_since(s.1).as_secs_f64() * rate;
        s.0 = (s.0 + refill).min(rate);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            return Some(now);
        }
        if rate <= 0.0 {
            return None;
        }
        let at = now + Duration::from_secs_f64((1.0 - s.0) / rate);
        if at > until {
            return None;
        }
        // Promised: the bucket goes into debt, so the next caller waits behind this one.
        s.0 -= 1.0;
        Some(at)
    }

    /// Takes one token if there is one.
    pub fn try_take(&self) -> bool {
        // A token promised for later is never one by now.
        self.reserve(Instant::now()).is_some()
    }
}

/// Retries allowed on top of first attempts: `ratio` of requests plus `min_per_sec`.
///
/// Each request deposits `ratio` of a token (up to [`RetryBudget::CAP`] tokens); a retry
/// spends one from the per-second floor first, then from the deposits. Lock-free.
#[derive(Debug)]
pub struct RetryBudget {
    deposit_milli: AtomicU64,
    min_per_sec: AtomicU32,
    tokens_milli: AtomicU64,
    epoch: Instant,
    window: AtomicU64,
    used_in_window: AtomicU32,
}

impl RetryBudget {
    /// Most tokens saved up, so a long quiet spell cannot fund a retry storm.
    pub const CAP: u64 = 100;

    /// A budget of `ratio` retries per request plus `min_per_sec` retries per second.
    pub fn new(ratio: f64, min_per_sec: u32) -> Self {
        RetryBudget {
            deposit_milli: AtomicU64::new((ratio * 1000.0).round() as u64),
            min_per_sec: AtomicU32::new(min_per_sec),
            tokens_milli: AtomicU64::new(0),
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            used_in_window: AtomicU32::new(0),
        }
    }

    /// Changes the ratio and floor (a reload); saved tokens are kept.
    pub fn set_params(&self, ratio: f64, min_per_sec: u32) {
        self.deposit_milli
            .store((ratio * 1000.0).round() as u64, Ordering::Relaxed);
        self.min_per_sec.store(min_per_sec, Ordering::Relaxed);
    }

    /// Records one request.
    pub fn deposit(&self) {
        let cap = Self::CAP * 1000;
        let deposit = self.deposit_milli.load(Ordering::Relaxed);
        let prev = self.tokens_milli.fetch_add(deposit, Ordering::Relaxed);
        if prev + deposit > cap {
            self.tokens_milli.fetch_min(cap, Ordering::Relaxed);
        }
    }

    /// Spends one retry if the budget allows it.
    pub fn try_spend(&self) -> bool {
        let sec = self.epoch.elapsed().as_secs();
        let w = self.window.load(Ordering::Relaxed);
        if w != sec
            && self
                .window
                .compare_exchange(w, sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used_in_window.store(0, Ordering::Relaxed);
        }
        if self.used_in_window.fetch_add(1, Ordering::Relaxed)
            < self.min_per_sec.load(Ordering::Relaxed)
        {
            return true;
        }
        self.tokens_milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                t.checked_sub(1000)
            })
            .is_ok()
    }
}

/// What a share of [`BufferBudget`] holds, for `hopline_buffer_budget_refused_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferKind {
    /// A request body read whole before it is sent (`routes[].request_buffering`).
    RequestBody,
    /// The start of a streamed body kept to resend it on a new connection.
    Replay,
    /// An aggregate call's response body, read whole to be merged.
    Aggregate,
    /// Request body bytes an HTTP/2 stream handed over and the upstream has not taken.
    H2Data,
}

impl BufferKind {
    /// Every kind, for metrics pre-registration.
    pub const ALL: [BufferKind; 4] = [
        BufferKind::RequestBody,
        BufferKind::Replay,
        BufferKind::Aggregate,
        BufferKind::H2Data,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            BufferKind::RequestBody => "request_body",
            BufferKind::Replay => "replay",
            BufferKind::Aggregate => "aggregate",
            BufferKind::H2Data => "h2_data",
        }
    }
}

/// One process-wide ceiling on the bytes hopline holds for requests
/// (`server.max_buffered_bytes`): every buffer that can grow with what a client or an
/// upstream sends draws from it by the bytes it actually holds, and gives them back when
/// it is dropped. Lock-free: one atomic add per grant.
#[derive(Debug)]
pub struct BufferBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

/// Bytes taken from a [`BufferBudget`], given back when dropped.
#[derive(Debug)]
pub struct BufferGrant {
    owner: Arc<BufferBudget>,
    held: usize,
}

impl BufferBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(BufferBudget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
        })
    }

    /// An empty grant, to grow.
    pub fn grant(self: &Arc<Self>) -> BufferGrant {
        BufferGrant {
            owner: self.clone(),
            held: 0,
        }
    }

    /// The ceiling.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the ceiling (a reload); bytes already held stay held.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn take(&self, n: usize) -> bool {
        let prev = self.used.fetch_add(n, Ordering::AcqRel);
        if prev.saturating_add(n) > self.limit() {
            self.used.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }
}

impl BufferGrant {
    /// Grows the grant by `n` bytes; false (nothing taken) when the budget cannot.
    pub fn grow(&mut self, n: usize) -> bool {
        if n == 0 || self.owner.take(n) {
            self.held += n;
            true
        } else {
            false
        }
    }

    /// Gives `n` of the held bytes back.
    pub fn shrink(&mut self, n: usize) {
        let n = n.min(self.held);
        self.held -= n;
        self.owner.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for BufferGrant {
    fn drop(&mut self) {
        if self.held > 0 {
            self.owner.used.fetch_sub(self.held, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_grants_draw_what_they_hold_and_give_it_back_on_drop() {
        let b = BufferBudget::new(100);
        let mut g = b.grant();
        assert!(g.grow(60));
        let mut h = b.grant();
        assert!(!h.grow(41), "60 + 41 is over 100");
        assert_eq!(b.used(), 60, "a refused grow takes nothing");
        assert!(h.grow(40));
        g.shrink(10);
        assert_eq!((b.used(), g.held()), (90, 50));
        drop(g);
        assert_eq!(b.used(), 40);
        drop(h);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn in_flight_is_a_hard_ceiling_released_on_drop() {
        let l = InFlight::new(2);
        let a = l.try_acquire().expect("1");
        let _b = l.try_acquire().expect("2");
        assert!(l.try_acquire().is_none());
        drop(a);
        assert!(l.try_acquire().is_some());
    }

    #[test]
    fn retry_budget_floor_then_ratio() {
        let b = RetryBudget::new(0.2, 2);
        assert!(b.try_spend());
        assert!(b.try_spend());
        assert!(!b.try_spend(), "floor spent, no deposits");
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.try_spend());
        assert!(b.try_spend());
        assert!(!b.try_spend(), "10 requests x 0.2 = 2 retries");
    }

    #[test]
    fn rate_limit_allows_a_burst_of_rate() {
        let r = RateLimit::new(3);
        assert!(r.try_take() && r.try_take() && r.try_take());
        assert!(!r.try_take());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_refills_at_its_rate_and_holds_one_second_of_burst() {
        let r = RateLimit::new(4);
        for _ in 0..4 {
            assert!(r.try_take());
        }
        assert!(!r.try_take());
        tokio::time::advance(std::time::Duration::from_millis(240)).await;
        assert!(!r.try_take(), "0.96 of a token after 240 ms at 4/s");
        tokio::time::advance(std::time::Duration::from_millis(10)).await;
        assert!(r.try_take(), "one token after 250 ms");
        assert!(!r.try_take());
        // A long quiet spell refills one second's worth, no more.
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        for _ in 0..4 {
            assert!(r.try_take());
        }
        assert!(!r.try_take());
        // A reload that lowers the rate refills at the new rate.
        r.set_rate(1);
        tokio::time::advance(std::time::Duration::from_millis(999)).await;
        assert!(!r.try_take());
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        assert!(r.try_take());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_budget_floor_renews_every_second_and_deposits_are_capped() {
        let b = RetryBudget::new(0.5, 1);
        assert!(b.try_spend(), "this second's floor");
        assert!(!b.try_spend());
        tokio::time::advance(std::time::Duration::from_millis(999)).await;
        assert!(!b.try_spend(), "still the same second");
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        assert!(b.try_spend(), "the next second's floor");
        // Deposits saved over a quiet spell are capped at CAP retries.
        for _ in 0..(RetryBudget::CAP * 4) {
            b.deposit();
        }
        let spent = (0..RetryBudget::CAP * 4).filter(|_| b.try_spend()).count();
        assert_eq!(spent as u64, RetryBudget::CAP);
    }
}
