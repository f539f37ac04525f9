//! Termination signals as a future, shared by `hopline serve`, `mock`, `chaos` and `drill`.
//!
//! A leaf: it depends on tokio only, so neither the drill crate nor the gateway is linked
//! by a command that only needs to know when to stop.

use std::future::Future;

/// Watches for SIGTERM and SIGINT (as `timeout`, a CI job, Kubernetes or Ctrl-C send them)
/// **from the moment it is called**: a signal that arrives before the future is first
/// polled (while services start, before the first "listening" line) is caught too, and the
/// future resolves as soon as it is polled. Must be called inside a tokio runtime.
///
/// If the handlers cannot be installed the future never resolves (the process then stops
/// only on SIGKILL, as it would without handlers).
pub fn termination() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let streams = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match streams {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}

/// Watches for SIGHUP (the reload request) from the moment it is called; `None` when the
/// handler cannot be installed.
pub fn hangups() -> Option<Hangups> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .ok()
        .map(Hangups)
}

/// A stream of SIGHUPs, from [`hangups`].
#[derive(Debug)]
pub struct Hangups(tokio::signal::unix::Signal);

impl Hangups {
    /// Waits for the next SIGHUP (`None` if the signal stream ended).
    pub async fn recv(&mut self) -> Option<()> {
        self.0.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_sent_before_the_first_poll_is_caught() {
        let stop = termination();
        // The crate forbids unsafe code, so the `kill` program sends the signal.
        let pid = std::process::id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        tokio::time::timeout(std::time::Duration::from_secs(5), stop)
            .await
            .expect("SIGINT sent before the first poll resolves the future");
    }
}
