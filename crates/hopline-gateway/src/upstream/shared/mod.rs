//! Cluster-wide egress budgets (`[egress] shared`): every gateway of a scope takes its
//! new-connection tokens and in-flight slots from one Redis, in small leases, so that
//! together they stay within the NAT's budget however many replicas run.
//!
//! Requests never wait for Redis. They take from what this gateway holds now — connection
//! tokens leased ahead, in-flight slots held ahead — and a background task tops the leases
//! up, renews the holding and gives back what is not needed. When Redis does not answer
//! within `fallback_after`, the gateway falls back to its local share
//! (`budget / expected_replicas`), says so once, and returns to the shared budget when a
//! probe succeeds. See `lease.lua` for the keys and the script.

mod store;

pub use store::{keys, LeaseAnswer, LeaseRequest, Store, StoreError, LEASE_SCRIPT};

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hopline_core::config::{EgressConfig, SharedEgressConfig};
pub use hopline_core::SharedRefusal as Refusal;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::limits::RateLimit;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;

/// How long an in-flight holding lasts unless renewed: a gateway that dies gives its
/// slots back to the scope within this.
pub const HOLDING_TTL: Duration = Duration::from_secs(5);
/// How often a holding is renewed: also how soon a gateway gives back spare slots once
/// the scope has none free.
const RENEW_EVERY: Duration = Duration::from_millis(100);
/// How often Redis is probed while the local share is in force.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How often a gateway looks for freed slots while the scope's are all held.
const SLOTS_POLL: Duration = Duration::from_millis(20);

/// The budgets in force, changed by a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Budgets {
    /// New connections per second for the scope (0: not limited).
    rate: u32,
    /// In-flight slots for the scope (0: not limited).
    in_flight: usize,
    /// The share divisor when Redis is unreachable.
    replicas: u32,
    fallback_after: Duration,
}

impl Budgets {
    fn of(e: &EgressConfig, s: &SharedEgressConfig) -> Budgets {
        Budgets {
            rate: e.max_new_connections_per_sec.unwrap_or(0),
            in_flight: e.max_in_flight.unwrap_or(0),
            replicas: s.expected_replicas.unwrap_or(1).max(1),
            fallback_after: s.fallback_after,
        }
    }

    fn token_batch(&self) -> u32 {
        token_batch(self.rate)
    }

    /// How many connections the scope may open at once: half a second of its budget.
    fn burst(&self) -> u32 {
        (self.rate / 2).max(1)
    }

    fn slot_batch(&self) -> usize {
        slot_batch(self.in_flight)
    }

    fn local_rate(&self) -> u32 {
        (self.rate / self.replicas).max(1)
    }

    fn local_in_flight(&self) -> usize {
        (self.in_flight / self.replicas as usize).max(1)
    }
}

/// Connection tokens leased at a time: 20 ms of the scope's `rate`. A gateway asks for
/// more when it has a batch or fewer on hand, so it holds up to two (40 ms of the budget).
fn token_batch(rate: u32) -> u32 {
    (rate / 50).clamp(1, 1_000)
}

/// In-flight slots held ahead of need: 2 % of the scope's `in_flight` budget. A gateway
/// keeps between one and three batches spare.
fn slot_batch(in_flight: usize) -> usize {
    (in_flight / 50).clamp(1, 100)
}

pub use crate::observe::metrics::SharedSample;

/// A gateway's membership in a shared egress scope. Built once; survives reloads (which
/// may change the budgets, not the store or scope).
#[derive(Debug)]
pub struct SharedEgress {
    scope: Arc<str>,
    budgets: Mutex<Budgets>,
    rate: AtomicU32,
    in_flight: AtomicUsize,
    /// True while the local share is in force.
    local: AtomicBool,
    /// Connection tokens leased and not used yet.
    tokens: AtomicU32,
    /// The last lease granted fewer tokens than asked (the cluster budget is used up).
    rate_exhausted: AtomicBool,
    /// The local bucket, at `rate / replicas`, used while Redis is unreachable.
    local_rate: RateLimit,
    /// In-flight slots in use.
    used: AtomicUsize,
    /// In-flight slots held from the scope.
    held: AtomicUsize,
    /// The scope had no free slot at the last answer: hold no spare, and a refusal is
    /// the cluster's limit.
    slots_exhausted: AtomicBool,
    /// Calls refused a slot since the last lease call: asked for in the next one.
    slot_demand: AtomicUsize,
    wake: Arc<Notify>,
    /// True once the first lease call has been answered or has failed.
    settled: tokio::sync::watch::Sender<bool>,
    tokens_leased: AtomicU64,
    fallbacks: AtomicU64,
    lease_failures: AtomicU64,
    log: Arc<AccessLog>,
    metrics: Arc<Metrics>,
}

/// An in-flight slot of a shared scope: given back when dropped.
#[derive(Debug)]
pub struct SharedSlot {
    owner: Arc<SharedEgress>,
}

impl Drop for SharedSlot {
    fn drop(&mut self) {
        let used = self.owner.used.fetch_sub(1, Ordering::AcqRel) - 1;
        let o = &self.owner;
        if !o.local.load(Ordering::Relaxed) {
            let spare = o.held.load(Ordering::Relaxed).saturating_sub(used);
            if spare > 3 * slot_batch(o.in_flight.load(Ordering::Relaxed)) {
                o.wake.notify_one();
            }
        }
    }
}

impl Drop for SharedEgress {
    fn drop(&mut self) {
        // Lets the lease task see that it is no longer needed.
        self.wake.notify_one();
    }
}

impl SharedEgress {
    /// Joins the scope of `shared`: the store is set up now (the password read from its
    /// environment variable) and the lease task spawned on the current runtime; the first
    /// lease is asked for at once.
    pub fn start(
        egress: &EgressConfig,
        shared: &SharedEgressConfig,
        log: Arc<AccessLog>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<SharedEgress>, StoreError> {
        let holder = holder_id();
        let store = Store::new(shared, holder)?;
        let budgets = Budgets::of(egress, shared);
        let s = Arc::new(SharedEgress {
            scope: shared.scope.as_str().into(),
            budgets: Mutex::new(budgets),
            rate: AtomicU32::new(budgets.rate),
            in_flight: AtomicUsize::new(budgets.in_flight),
            local: AtomicBool::new(false),
            tokens: AtomicU32::new(0),
            rate_exhausted: AtomicBool::new(false),
            local_rate: RateLimit::new(budgets.local_rate()),
            used: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            slots_exhausted: AtomicBool::new(false),
            slot_demand: AtomicUsize::new(0),
            wake: Arc::new(Notify::new()),
            settled: tokio::sync::watch::Sender::new(false),
            tokens_leased: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            lease_failures: AtomicU64::new(0),
            log,
            metrics,
        });
        let task = LeaseTask {
            owner: Arc::downgrade(&s),
            wake: s.wake.clone(),
            store,
            settled: false,
        };
        tokio::spawn(task.run());
        Ok(s)
    }

    /// Resolves once the first lease call has been answered (or failed), at most
    /// `limit`: so the first requests after a start find tokens on hand.
    pub async fn settled(&self, limit: Duration) {
        let mut rx = self.settled.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|s| *s)).await;
    }

    /// The scope's name.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Applies reloaded budgets (new leases and local shares follow them).
    pub fn set_budgets(&self, egress: &EgressConfig, shared: &SharedEgressConfig) {
        let b = Budgets::of(egress, shared);
        *self.budgets.lock().unwrap_or_else(|p| p.into_inner()) = b;
        self.rate.store(b.rate, Ordering::Relaxed);
        self.in_flight.store(b.in_flight, Ordering::Relaxed);
        self.local_rate.set_rate(b.local_rate());
        self.wake.notify_one();
    }

    fn budgets(&self) -> Budgets {
        *self.budgets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a new-connection token: a leased one, else (Redis unreachable) one of the
    /// local share. Never waits.
    pub fn take_connection(&self) -> Result<(), Refusal> {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return Ok(());
        }
        let taken = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if let Ok(before) = taken {
            if before - 1 <= token_batch(rate) {
                self.wake.notify_one();
            }
            return Ok(());
        }
        if self.local.load(Ordering::Relaxed) {
            return match self.local_rate.try_take() {
                true => Ok(()),
                false => Err(Refusal::LocalRate(self.local_rate.rate())),
            };
        }
        self.wake.notify_one();
        match self.rate_exhausted.load(Ordering::Relaxed) {
            true => Err(Refusal::ClusterRate(rate)),
            false => Err(Refusal::AwaitingLease),
        }
    }

    /// Takes an in-flight slot: one of those held from the scope, else (Redis
    /// unreachable) one of the local share. `None` when the scope has no in-flight budget.
    pub fn acquire(self: &Arc<Self>) -> Result<Option<SharedSlot>, Refusal> {
        let budget = self.in_flight.load(Ordering::Relaxed);
        if budget == 0 {
            return Ok(None);
        }
        let local = self.local.load(Ordering::Relaxed);
        let limit = match local {
            true => self.budgets().local_in_flight(),
            false => self.held.load(Ordering::Acquire),
        };
        let before = self.used.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            self.used.fetch_sub(1, Ordering::AcqRel);
            if !local {
                self.slot_demand.fetch_add(1, Ordering::Relaxed);
            }
            return Err(
                match (local, self.slots_exhausted.load(Ordering::Relaxed)) {
                    (true, _) => Refusal::LocalInFlight(limit),
                    (false, true) => Refusal::ClusterInFlight(budget),
                    (false, false) => {
                        self.wake.notify_one();
                        Refusal::AwaitingLease
                    }
                },
            );
        }
        if !local && before + 1 + slot_batch(budget) > limit {
            self.wake.notify_one();
        }
        Ok(Some(SharedSlot {
            owner: self.clone(),
        }))
    }

    /// This gateway's part in the scope now.
    pub fn sample(&self) -> SharedSample {
        let b = self.budgets();
        SharedSample {
            scope: self.scope.to_string(),
            rate_budget: b.rate,
            in_flight_budget: b.in_flight,
            local: self.local.load(Ordering::Relaxed),
            tokens_on_hand: self.tokens.load(Ordering::Relaxed),
            tokens_leased: self.tokens_leased.load(Ordering::Relaxed),
            slots_held: self.held.load(Ordering::Relaxed),
            slots_used: self.used.load(Ordering::Relaxed),
            local_rate: b.local_rate(),
            local_in_flight: b.local_in_flight(),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            lease_failures: self.lease_failures.load(Ordering::Relaxed),
        }
    }

    /// What the next lease call should ask for, and whether one is due now: tokens run
    /// low (unless `tokens_gated`: the cluster's rate is used up for a while), the held
    /// slots are too few or too many (unless `slots_gated`), or `renew` is due.
    ///
    /// Slots: a gateway asks for those in use, those refused since the last call, and
    /// two batches spare while the scope has free slots — none when it has not, so that
    /// spare slots do not sit with one gateway while another is refused.
    fn next_request(
        &self,
        renew: bool,
        tokens_gated: bool,
        slots_gated: bool,
    ) -> (LeaseRequest, bool) {
        let b = self.budgets();
        let tokens = self.tokens.load(Ordering::Acquire);
        let want_tokens = match b.rate {
            0 => 0,
            _ if tokens <= b.token_batch() && !tokens_gated => 2 * b.token_batch() - tokens,
            _ => 0,
        };
        let used = self.used.load(Ordering::Acquire);
        let held = self.held.load(Ordering::Acquire);
        let batch = b.slot_batch();
        let demand = self.slot_demand.load(Ordering::Relaxed).min(2 * batch);
        let room = !self.slots_exhausted.load(Ordering::Relaxed);
        let spare = if room { 2 * batch } else { 0 };
        let (low, high) = match room {
            true => (used + demand + batch, used + 3 * batch),
            false => (used + demand, used + batch),
        };
        let slots_off = b.in_flight > 0 && (held > high || (held < low && !slots_gated));
        let req = LeaseRequest {
            rate: b.rate,
            burst: b.burst(),
            tokens: want_tokens,
            in_flight: b.in_flight as u64,
            need: used as u64,
            want: match b.in_flight {
                0 => 0,
                _ => (used + demand + spare) as u64,
            },
            ttl: HOLDING_TTL,
        };
        let due = want_tokens > 0 || slots_off || (renew && (held > 0 || used > 0));
        (req, due)
    }

    /// Takes in what Redis granted.
    fn granted(&self, req: &LeaseRequest, a: &LeaseAnswer, took: Duration) {
        self.metrics
            .record_egress_lease(&self.scope, Some(took), a.tokens);
        if a.tokens > 0 {
            self.tokens.fetch_add(a.tokens, Ordering::AcqRel);
            self.tokens_leased
                .fetch_add(u64::from(a.tokens), Ordering::Relaxed);
        }
        if req.tokens > 0 {
            self.rate_exhausted
                .store(a.tokens < req.tokens, Ordering::Relaxed);
        }
        if req.in_flight > 0 {
            self.held.store(a.held as usize, Ordering::Release);
            let full = a.held + a.others >= req.in_flight;
            self.slots_exhausted.store(full, Ordering::Relaxed);
            self.slot_demand.store(0, Ordering::Relaxed);
        }
        if self.local.swap(false, Ordering::AcqRel) {
            let detail = "Redis answers again: the cluster-wide budget applies";
            self.event("shared", detail);
        }
    }

    /// Redis failed or was too slow: the local share applies from now on.
    fn failed(&self, e: &StoreError) {
        self.lease_failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.record_egress_lease(&self.scope, None, 0);
        if !self.local.swap(true, Ordering::AcqRel) {
            // Start the local bucket empty: the cluster may have just used its burst.
            self.local_rate.drain();
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            self.metrics.count_egress_fallback(&self.scope);
            let b = self.budgets();
            let mut shares = Vec::new();
            if b.rate > 0 {
                shares.push(format!("{} new connections/s", b.local_rate()));
            }
            if b.in_flight > 0 {
                shares.push(format!("{} in flight", b.local_in_flight()));
            }
            let detail = format!("{e}: local share {} until Redis answers", shares.join(", "));
            self.event("local", &detail);
        }
    }

    fn event(&self, state: &str, detail: &str) {
        self.log.announce(
            "egress",
            &[("scope", &self.scope)],
            state,
            detail,
            format_args!("egress scope {} {state}: {detail}", self.scope),
        );
    }
}

/// The background task of a scope: lease calls when tokens or slots run low, renewals,
/// probes while the local share is in force. Ends when its [`SharedEgress`] is dropped.
struct LeaseTask {
    owner: Weak<SharedEgress>,
    wake: Arc<Notify>,
    store: Store,
    /// The first call has been made.
    settled: bool,
}

impl LeaseTask {
    async fn run(mut self) {
        let mut renew_at = Instant::now();
        // While the cluster's rate is used up: no token before then.
        let mut token_at = Instant::now();
        // While the cluster's slots are all held: the next look.
        let mut slots_at = Instant::now();
        loop {
            let now = Instant::now();
            let next = {
                let Some(s) = self.owner.upgrade() else {
                    return;
                };
                let (req, due) = s.next_request(now >= renew_at, now < token_at, now < slots_at);
                let local = s.local.load(Ordering::Relaxed);
                let call = !self.settled || if local { now >= renew_at } else { due };
                if call {
                    let limit = s.budgets().fallback_after;
                    // The owner is not kept alive across the call.
                    drop(s);
                    let asked = Instant::now();
                    let answer = self.store.lease(&req, limit).await;
                    self.settled = true;
                    let Some(s) = self.owner.upgrade() else {
                        return;
                    };
                    let now = Instant::now();
                    s.settled.send_replace(true);
                    match answer {
                        Ok(a) => {
                            s.granted(&req, &a, now - asked);
                            renew_at = now + RENEW_EVERY;
                            if a.tokens < req.tokens {
                                token_at = now + a.next_token.max(Duration::from_millis(1));
                            }
                            if a.held < req.want {
                                slots_at = now + SLOTS_POLL;
                            }
                        }
                        Err(e) => {
                            s.failed(&e);
                            renew_at = now + PROBE_EVERY;
                        }
                    }
                    // Straight on: something may have run low meanwhile.
                    continue;
                }
                match local {
                    true => renew_at,
                    false => [renew_at, token_at, slots_at]
                        .into_iter()
                        .filter(|t| *t > now)
                        .min()
                        .unwrap_or(renew_at),
                }
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }
}

/// A name for this process's holding, unique in the scope: host, pid and start time.
fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    format!("{host}:{}:{started}", std::process::id())
}
