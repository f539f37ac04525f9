//! The hopline gateway: listener with server timeouts, routing, upstream pools, deadlines,
//! cancellation and access log.
//!
//! [`serve`] takes a bound listener, a validated config and a shutdown future, and runs
//! until the shutdown resolves and the drain completes. The request life cycle is
//! charted in `docs/architecture.md`.

// The binary and the benches use what is re-exported below; the rest is the crate's own.
// Floors, top to bottom (docs/architecture.md charts them): client/ → request/ →
// exchange/ → the assembled gateway and the seam (gateway, front, admin) → upstream/ →
// observe/ → leaves (build_error, clock, limits, response, shape, stream).
mod admin;
mod body;
mod build_error;
mod client;
mod clock;
mod exchange;
mod front;
mod gateway;
mod limits;
mod observe;
mod pace;
mod request;
mod response;
mod shape;
mod stream;
#[cfg(test)]
mod testkit;
mod upstream;

use client::{conn, h2, park, tls};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hopline_core::config::{Config, Overload};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

pub use build_error::BuildError;
pub use gateway::{Current, Gateway, NotApplied};
pub use observe::access_log::{AccessLog, AccessRecord};
pub use observe::metrics::Metrics;
pub use observe::{otlp, trace};
pub use upstream::endpoint::{EndpointGuard, Verdict};
pub use upstream::shared;
pub use upstream::{Upstream, UpstreamBuildError, UpstreamContext};

/// How long in-flight requests get, after the drain period, to write their 503 `SD`.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Serves `listener` with `config` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BuildError> {
    let current = Current::new(Gateway::new(config)?);
    run(
        vec![Listener::plain(listener)],
        Vec::new(),
        current,
        shutdown,
    )
    .await;
    Ok(())
}

/// Serves `listeners` (and the admin API on `admin`) with the gateway in `current` —
/// which a reload may swap meanwhile — until `shutdown` resolves.
///
/// Draining: stop accepting, close idle keep-alive connections, let in-flight requests
/// finish (their responses say `connection: close`) for up to `drain_timeout`; then answer
/// the rest 503 `SD` and close. Every request is logged exactly once; the log is flushed
/// before returning.
pub async fn run(
    listeners: Vec<Listener>,
    admin: Vec<TcpListener>,
    current: Arc<Current>,
    shutdown: impl Future<Output = ()>,
) {
    let first = current.load();
    let slots = Arc::new(Semaphore::new(first.config.server.max_connections));
    let (drain_tx, drain_rx) = watch::channel(false);
    let (kill_tx, kill_rx) = watch::channel(false);
    let lot = park::Lot::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(park::tend(lot.clone(), drain_rx.clone()));
    let signals = conn::Signals {
        drain: drain_rx,
        kill: kill_rx.clone(),
        lot: Some(lot),
    };
    // The access log is shared across reloads; one task writes it out periodically.
    let log = first.log.clone();
    let flusher = tokio::spawn(async move { log.flush_every().await });
    let admin_tasks: Vec<_> = admin
        .into_iter()
        .map(|l| {
            let mut stop = kill_rx.clone();
            let current = current.clone();
            tokio::spawn(admin::serve(l, current, async move {
                let _ = stop.wait_for(|v| *v).await;
            }))
        })
        .collect();
    let mut accept = Accept { listeners, next: 0 };
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let Some(slot) = connection_slot(&slots, &current, &mut accept, shutdown.as_mut()).await
        else {
            break;
        };
        // Finished connections are reaped while waiting: a finished task keeps its cell
        // (768 bytes) until joined, and parked connections finish their tasks in waves.
        let accepted = loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break None,
                a = accept.any() => break Some(a),
                Some(_) = tasks.join_next() => {}
            }
        };
        let Some(accepted) = accepted else { break };
        match accepted {
            Ok(conn) => spawn_connection(&mut tasks, &current, &signals, slot, conn),
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                accept_errors.note(&current.load().log, &e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    drop(accept);
    let gw = current.load();
    drain(&mut tasks, &gw, &drain_tx, &kill_tx).await;
    for t in admin_tasks {
        let _ = t.await;
    }
    flusher.abort();
    gw.log.flush();
}

/// A connection slot (`max_connections`), waiting for one when full; with
/// `overload = "close"`, connections accepted meanwhile are closed at once. `None` once
/// `shutdown` resolves.
async fn connection_slot(
    slots: &Arc<Semaphore>,
    current: &Current,
    accept: &mut Accept,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        match slots.clone().try_acquire_owned() {
            Ok(s) => return Some(s),
            Err(_) if current.load().config.server.overload == Overload::Close => {
                // Full, and told to fail fast: accept and close at once, so the client
                // sees a closed connection now instead of waiting in the backlog.
                let accepted = tokio::select! {
                    biased;
                    _ = &mut shutdown => return None,
                    a = accept.any() => a,
                };
                if let Ok((stream, _, _)) = accepted {
                    drop(stream);
                    current.load().metrics.connection_refused();
                }
            }
            Err(_) => {
                return tokio::select! {
                    biased;
                    _ = &mut shutdown => None,
                    s = slots.clone().acquire_owned() => s.ok(),
                }
            }
        }
    }
}

/// Serves an accepted connection in its own task: the TLS handshake on a TLS listener,
/// then requests until it closes. The slot and the connection gauge are released by drop,
/// even if the task panics or is aborted.
fn spawn_connection(
    tasks: &mut JoinSet<()>,
    current: &Arc<Current>,
    signals: &conn::Signals,
    slot: OwnedSemaphorePermit,
    (stream, peer, tls): Accepted,
) {
    let accepted = tokio::time::Instant::now();
    let current = current.clone();
    let signals = signals.clone();
    let gauge = {
        let gw = current.load();
        stream::set_keepalive(&stream, gw.config.server.tcp_keepalive.as_ref(), None);
        gw.metrics.open_connection()
    };
    if !tls {
        // Plain HTTP/1 (or h2c) spawns the connection's future itself, with no wrapper:
        // that future is what each idle keep-alive connection holds, so a wrapper's
        // captures would add to every one of them.
        let client = crate::front::Client {
            peer,
            tls: None,
            requests: Default::default(),
        };
        let stream = stream::Stream::Plain(stream);
        tasks.spawn(conn::serve_connection(
            current,
            stream,
            client,
            signals,
            conn::Start::Accepted(accepted),
            Some(conn::Held::new(gauge, slot)),
        ));
        return;
    }
    let guard = (gauge, slot);
    tasks.spawn(async move {
        // Held by reference: a move would keep a second copy in the task's state.
        let _guard = &guard;
        // In a block of its own: what the handshake leaves behind (the gateway it ran
        // on, its result) then takes no room in the task while the connection is served.
        let (stream, client, h2) = {
            let gw = current.load();
            let Some(config) = gw.tls.clone() else { return };
            // Boxed: the handshake's state (~1.6 KB) would otherwise be part of every
            // connection's task for its whole life, idle keep-alive ones included.
            let handshake = Box::pin(tls::handshake(&gw, config, stream, peer, accepted)).await;
            let Some((stream, session)) = handshake else {
                return;
            };
            let h2 = session.h2;
            let client = crate::front::Client {
                peer,
                tls: Some(Arc::new(session)),
                requests: Default::default(),
            };
            (stream, client, h2)
        };
        if h2 {
            // Boxed: an HTTP/2 connection's state lives on the heap, only when there is one.
            Box::pin(h2::serve_h2(current, stream, client, signals, accepted)).await;
        } else {
            // TLS connections wait in their own task (their session is state a parked
            // socket would have to keep anyway), holding their slot in `guard`.
            conn::serve_connection(
                current,
                stream,
                client,
                signals,
                conn::Start::Accepted(accepted),
                None,
            )
            .await;
        }
    });
}

/// Drains: idle connections close, in-flight requests get `drain_timeout` to finish;
/// then the rest are answered 503 `SD` (within [`KILL_GRACE`]) and aborted.
async fn drain(
    tasks: &mut JoinSet<()>,
    gw: &Gateway,
    drain_tx: &watch::Sender<bool>,
    kill_tx: &watch::Sender<bool>,
) {
    gw.start_draining();
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(gw.config.server.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let _ = kill_tx.send(true);
        let _ = tokio::time::timeout(KILL_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    let _ = kill_tx.send(true);
}

/// A bound listener: plain HTTP, or TLS (handshake with the gateway's current
/// `[server.tls]` certificates).
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub tcp: TcpListener,
    /// True for the TLS listener.
    pub tls: bool,
}

impl Listener {
    /// A plain-HTTP listener.
    pub fn plain(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: false }
    }

    /// A TLS listener.
    pub fn tls(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: true }
    }
}

/// Accepts from several listeners, starting each poll at the next one so that a busy
/// listener cannot starve the others.
struct Accept {
    listeners: Vec<Listener>,
    next: usize,
}

type Accepted = (tokio::net::TcpStream, std::net::SocketAddr, bool);

impl Accept {
    async fn any(&mut self) -> std::io::Result<Accepted> {
        let n = self.listeners.len();
        if n == 0 {
            return std::future::pending().await;
        }
        std::future::poll_fn(|cx| {
            for k in 0..n {
                let i = (self.next + k) % n;
                let l = &self.listeners[i];
                if let std::task::Poll::Ready(r) = l.tcp.poll_accept(cx) {
                    self.next = (i + 1) % n;
                    return std::task::Poll::Ready(r.map(|(s, a)| (s, a, l.tls)));
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// Accept failures, said at most once a second (an `EMFILE` repeats every 10 ms backoff).
#[derive(Default)]
struct AcceptErrors {
    said: Option<tokio::time::Instant>,
    quiet: u64,
}

impl AcceptErrors {
    fn note(&mut self, log: &AccessLog, e: &std::io::Error) {
        let now = tokio::time::Instant::now();
        if self.said.is_some_and(|t| now < t + Duration::from_secs(1)) {
            self.quiet += 1;
            return;
        }
        let detail = match std::mem::take(&mut self.quiet) {
            0 => e.to_string(),
            n => format!("{e} ({n} more in the last second)"),
        };
        self.said = Some(now);
        log.announce(
            "accept",
            &[],
            "failed",
            &detail,
            format_args!("accept failed: {detail}"),
        );
    }
}
