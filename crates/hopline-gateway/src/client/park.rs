//! Idle keep-alive connections parked as bare sockets.
//!
//! A plain HTTP/1 connection that has been quiet for a while (see `conn`'s hot wait) stops
//! being a task: its socket and the little it needs to resume (its slot, its client, the
//! time it went idle) move into the [`Lot`], one shared table watched by a single task.
//! Each parked socket's readiness is registered with a waker that names its place in the
//! table; when bytes (or EOF) arrive, the lot spawns a new connection task that carries on
//! where the old one stopped. Idle and drain timeouts are one heap of deadlines.
//!
//! A parked connection costs its table entry (~200 bytes) instead of a task (a 768-byte
//! tokio cell plus its `JoinSet` entry), which is what lets thousands of idle keep-alive
//! connections sit in a few hundred bytes each, as nginx's do. Behaviour is the task's:
//! the idle timeout closes quietly, draining closes a parked connection once it has been
//! idle for `drain_idle_grace` and still serves a client that sends before then.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::conn::{raised, serve_connection, Held, Signals, Start};
use crate::front::Client;
use crate::gateway::Current;
use crate::stream::Stream;

/// Slots kept when the lot empties: a table larger than this was grown by a burst and is
/// freed.
const SHRINK_ABOVE: usize = 64;

/// An idle connection, as the lot keeps it.
#[derive(Debug)]
pub(crate) struct Parked {
    /// The gateway the connection resumes on (its requests load the config current then).
    pub current: Arc<Current>,
    /// The socket, registered with the runtime's I/O driver.
    pub tcp: TcpStream,
    /// Who the client is.
    pub client: Client,
    /// The server's signals (the lot included).
    pub signals: Signals,
    /// When the connection went idle (end of its last response).
    pub idle_since: Instant,
    /// Its connection slot and gauge.
    pub held: Held,
}

/// The table of parked connections; cheap to clone (each connection's [`Signals`] carries
/// one). Its task is [`tend`].
#[derive(Debug, Clone)]
pub(crate) struct Lot {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Slots whose sockets became readable, and the lot task's waker. A lock of its own:
    /// wakers run on the I/O driver, never while `state` is held by the same thread.
    ready: Mutex<Ready>,
}

#[derive(Debug, Default)]
struct Ready {
    slots: Vec<usize>,
    /// Set by every wake, cleared when the lot task sees it.
    notified: bool,
    waker: Option<Waker>,
}

impl Shared {
    /// Wakes the lot task, first adding `slot` to the readable ones.
    fn notify(&self, slot: Option<usize>) {
        let waker = {
            let mut ready = lock(&self.ready);
            ready.slots.extend(slot);
            ready.notified = true;
            ready.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[derive(Debug)]
struct State {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// (deadline, slot, generation); entries of slots that moved on are skipped when they
    /// come up, and swept out when they outnumber the live ones.
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    parked: usize,
    /// False once draining: connections then wait in their own tasks.
    open: bool,
    /// When the lot task's timer fires next (a park with an earlier deadline wakes it).
    wake_at: Option<Instant>,
}

#[derive(Debug)]
struct Slot {
    conn: Option<Parked>,
    deadline: Instant,
    /// Bumped whenever the slot is vacated, so that a timer set for an earlier occupant
    /// does not close a later one.
    generation: u32,
    waker: Waker,
}

/// The waker registered with a parked socket: it names the socket's slot.
struct SlotWaker {
    slot: usize,
    shared: Weak<Shared>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            shared.notify(Some(self.slot));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lot {
    /// An empty lot, open for parking.
    pub(crate) fn new() -> Lot {
        Lot {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    slots: Vec::new(),
                    free: Vec::new(),
                    timers: BinaryHeap::new(),
                    parked: 0,
                    open: true,
                    wake_at: None,
                }),
                ready: Mutex::new(Ready::default()),
            }),
        }
    }

    /// Parks `conn` until its socket is readable (it then resumes in a new task) or
    /// `until` passes (it then closes quietly). Refused, handing `conn` back, once the
    /// lot is draining or gone.
    pub(crate) fn park(&self, conn: Parked, until: Instant) -> Result<(), Box<Parked>> {
        let mut st = lock(&self.shared.state);
        if !st.open {
            return Err(Box::new(conn));
        }
        let slot = match st.free.pop() {
            Some(i) => i,
            None => {
                let i = st.slots.len();
                let waker = Waker::from(Arc::new(SlotWaker {
                    slot: i,
                    shared: Arc::downgrade(&self.shared),
                }));
                st.slots.push(Slot {
                    conn: None,
                    deadline: until,
                    generation: 0,
                    waker,
                });
                i
            }
        };
        // Registers the slot's waker with the socket; bytes already there count as a wake.
        let ready = {
            let s = &st.slots[slot];
            conn.tcp
                .poll_read_ready(&mut Context::from_waker(&s.waker))
                .is_ready()
        };
        let s = &mut st.slots[slot];
        s.conn = Some(conn);
        s.deadline = until;
        let generation = s.generation;
        st.timers.push(Reverse((until, slot, generation)));
        st.parked += 1;
        let earlier = st.wake_at.is_none_or(|at| until < at);
        drop(st);
        if ready || earlier {
            self.shared.notify(ready.then_some(slot));
        }
        Ok(())
    }

    /// How many connections are parked.
    #[cfg(test)]
    pub(crate) fn parked(&self) -> usize {
        lock(&self.shared.state).parked
    }

    /// Takes the connection in `slot` out if its socket is readable (re-registering the
    /// slot's waker otherwise).
    fn take_if_ready(&self, slot: usize) -> Option<Parked> {
        let mut st = lock(&self.shared.state);
        let s = st.slots.get_mut(slot)?;
        let conn = s.conn.as_ref()?;
        if conn
            .tcp
            .poll_read_ready(&mut Context::from_waker(&s.waker))
            .is_pending()
        {
            return None;
        }
        vacate(&mut st, slot)
    }

    /// Takes out every connection whose deadline has passed, and returns the next
    /// deadline.
    fn expire(&self, now: Instant, out: &mut Vec<Parked>) -> Option<Instant> {
        let mut st = lock(&self.shared.state);
        while let Some(&Reverse((at, slot, generation))) = st.timers.peek() {
            if at > now {
                break;
            }
            st.timers.pop();
            let s = &st.slots[slot];
            if s.generation == generation && s.conn.is_some() && s.deadline <= now {
                out.extend(vacate(&mut st, slot));
            }
        }
        // Timers of slots that moved on are swept out once they outnumber the live ones.
        if st.timers.len() > 2 * st.parked + 64 {
            let State { slots, timers, .. } = &mut *st;
            timers.retain(|Reverse((at, slot, generation))| {
                let s = &slots[*slot];
                s.generation == *generation && s.conn.is_some() && s.deadline == *at
            });
        }
        // Once the lot is empty, a table grown by a burst is given back (a later wake from
        // a socket parked before finds its slot gone or re-registers with its new occupant).
        if st.parked == 0 && st.slots.len() > SHRINK_ABOVE {
            st.slots = Vec::new();
            st.free = Vec::new();
            st.timers = BinaryHeap::new();
        }
        let next = st.timers.peek().map(|Reverse((at, _, _))| *at);
        st.wake_at = next;
        next
    }

    /// How many slots the table holds (parked or free).
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        lock(&self.shared.state).slots.len()
    }

    /// Draining: no more parking; each parked connection closes once it has been idle for
    /// its gateway's `drain_idle_grace`, unless its client sends first.
    fn start_draining(&self) {
        let mut st = lock(&self.shared.state);
        st.open = false;
        let State { slots, timers, .. } = &mut *st;
        for (i, s) in slots.iter_mut().enumerate() {
            if let Some(conn) = &s.conn {
                let grace = conn.current.load().config.server.drain_idle_grace;
                let until = (conn.idle_since + grace).min(s.deadline);
                s.deadline = until;
                timers.push(Reverse((until, i, s.generation)));
            }
        }
    }

    fn is_empty(&self) -> bool {
        lock(&self.shared.state).parked == 0
    }

    /// Ready when a parked socket woke (or a park needs the timer moved earlier).
    fn woken(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            let mut r = lock(&self.shared.ready);
            if std::mem::take(&mut r.notified) {
                return Poll::Ready(());
            }
            r.waker = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    /// Closes every parked connection (releasing their slots) and refuses new ones.
    fn close_all(&self) {
        let parked: Vec<Parked> = {
            let mut st = lock(&self.shared.state);
            st.open = false;
            st.parked = 0;
            st.timers.clear();
            st.slots.iter_mut().filter_map(|s| s.conn.take()).collect()
        };
        // Dropped outside the lock: each holds the lot (through its signals).
        drop(parked);
    }
}

fn vacate(st: &mut State, slot: usize) -> Option<Parked> {
    let s = &mut st.slots[slot];
    let conn = s.conn.take()?;
    s.generation = s.generation.wrapping_add(1);
    st.free.push(slot);
    st.parked -= 1;
    Some(conn)
}

/// Closes the lot's connections when its task ends or is aborted: parked connections
/// hold the lot through their signals, so without this they would keep each other open.
struct CloseOnDrop<'a>(&'a Lot);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close_all();
    }
}

/// The lot's task: resumes connections whose sockets became readable, closes those whose
/// idle (or drain) deadline passed, and owns the resumed connections' tasks. Ends once
/// draining has emptied the lot and every resumed connection has closed; aborting it
/// closes them all.
pub(crate) async fn tend(lot: Lot, mut drain: watch::Receiver<bool>) {
    let _close = CloseOnDrop(&lot);
    let mut resumed = JoinSet::new();
    let mut woke = Vec::new();
    let mut expired = Vec::new();
    let mut draining = false;
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    loop {
        std::mem::swap(&mut woke, &mut lock(&lot.shared.ready).slots);
        for slot in woke.drain(..) {
            if let Some(p) = lot.take_if_ready(slot) {
                resumed.spawn(serve_connection(
                    p.current,
                    Stream::Plain(p.tcp),
                    p.client,
                    p.signals,
                    Start::Resumed(p.idle_since),
                    Some(p.held),
                ));
            }
        }
        let next = lot.expire(Instant::now(), &mut expired);
        expired.clear();
        while resumed.try_join_next().is_some() {}
        if draining && lot.is_empty() && resumed.is_empty() {
            return;
        }
        if let Some(at) = next {
            timer.as_mut().reset(at);
        }
        tokio::select! {
            biased;
            _ = lot.woken() => {}
            _ = &mut timer, if next.is_some() => {}
            _ = raised(&mut drain), if !draining => {
                draining = true;
                lot.start_draining();
            }
            Some(_) = resumed.join_next(), if !resumed.is_empty() => {}
        }
    }
}
