//! The hopline gateway: listener with server timeouts, routing, upstream pools, deadlines,
//! cancellation and access log.
//!
//! [`serve`] takes a bound listener, a validated config and a shutdown future, and runs
//! until the shutdown resolves and the drain completes. The request life cycle is
//! charted in `docs/architecture.md`.

pub mod access_log;
pub mod admin;
pub mod aggregate;
pub mod conn;
pub mod gateway;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod response;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hopline_core::config::{Config, Overload};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub use gateway::{BuildError, Current, Gateway, NotApplied};

/// How long in-flight requests get, after the drain period, to write their 503 `SD`.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Serves `listener` with `config` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BuildError> {
    let current = Current::new(Gateway::new(config)?);
    run(listener, None, current, shutdown).await;
    Ok(())
}

/// Serves `listener` (and the admin API on `admin`, if given) with the gateway in
/// `current` — which a reload may swap meanwhile — until `shutdown` resolves.
///
/// Draining: stop accepting, close idle keep-alive connections, let in-flight requests
/// finish (their responses say `connection: close`) for up to `drain_timeout`; then answer
/// the rest 503 `SD` and close. Every request is logged exactly once; the log is flushed
/// before returning.
pub async fn run(
    listener: TcpListener,
    admin: Option<TcpListener>,
    current: Arc<Current>,
    shutdown: impl Future<Output = ()>,
) {
    let first = current.load();
    let slots = Arc::new(Semaphore::new(first.config.server.max_connections));
    let (drain_tx, drain_rx) = watch::channel(false);
    let (kill_tx, kill_rx) = watch::channel(false);
    let signals = conn::Signals {
        drain: drain_rx,
        kill: kill_rx.clone(),
    };
    let mut tasks = JoinSet::new();
    // The access log is shared across reloads; one task writes it out periodically.
    let log = first.log.clone();
    let flusher = tokio::spawn(async move { log.flush_every().await });
    let admin_task = admin.map(|l| {
        let mut stop = kill_rx.clone();
        let current = current.clone();
        tokio::spawn(admin::serve(l, current, async move {
            let _ = stop.wait_for(|v| *v).await;
        }))
    });
    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) if current.load().config.server.overload == Overload::Close => {
                // Full, and told to fail fast: accept and close at once, so the client
                // sees a closed connection now instead of waiting in the backlog.
                let accepted = tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    a = listener.accept() => a,
                };
                if let Ok((stream, _)) = accepted {
                    drop(stream);
                    current.load().metrics.connection_refused();
                }
                continue;
            }
            Err(_) => tokio::select! {
                biased;
                _ = &mut shutdown => break,
                s = slots.clone().acquire_owned() => match s {
                    Ok(s) => s,
                    Err(_) => break,
                },
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let current = current.clone();
                let signals = signals.clone();
                // Released by drop even if the connection's task panics or is aborted.
                let guard = (current.load().metrics.open_connection(), slot);
                tasks.spawn(async move {
                    let _guard = guard;
                    conn::serve_connection(current, stream, peer, signals).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                eprintln!("hopline: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    let gw = current.load();
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
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    flusher.abort();
    gw.log.flush();
}
