//! `server.min_send_rate`: a client that reads a response slower than the rate, averaged
//! over `min_send_rate_window` of time spent waiting for it to read, is cut (`WT`), so a
//! slow reader cannot hold an upstream connection and its limit slots for as long as it
//! likes. Only time a write waits on the client counts: a response the upstream is slow to
//! produce never makes its reader slow. On HTTP/2 a window grant counts only as the bytes
//! it let through, so granting a byte at a time does not keep a stream alive.

use std::time::Duration;
use tokio::time::Instant;

use hopline_core::ProxyError;

/// How fast a client has taken its response, in windows of time spent waiting on it.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    /// Bytes per second at least; 0: no bound.
    rate: u64,
    window: Duration,
    /// Time spent waiting on the client so far.
    waited: Duration,
    /// `waited` at which the current window ends.
    window_end: Duration,
    /// Bytes the client took, in all and when the current window started.
    taken: u64,
    window_start: u64,
}

impl Pace {
    /// A bound of `rate` bytes/s over `window` (`rate` 0: none).
    pub(crate) fn new(rate: u64, window: Duration) -> Self {
        Pace {
            rate,
            window,
            waited: Duration::ZERO,
            window_end: window,
            taken: 0,
            window_start: 0,
        }
    }

    /// The client took `n` more bytes.
    pub(crate) fn took(&mut self, n: usize) {
        self.taken += n as u64;
    }

    /// Waits on `f` (a write, or a wait for window) no longer than `limit` at once
    /// (`write_timeout`) nor past the end of the current window; a window that ends with
    /// the client below the rate is [`ProxyError::ClientTooSlow`]. `f` reports the bytes
    /// it let through with [`Pace::took`] on its own.
    pub(crate) async fn wait<F: std::future::Future>(
        &mut self,
        limit: Duration,
        f: F,
    ) -> Result<F::Output, ProxyError> {
        let started = Instant::now();
        let mut mark = started;
        let mut f = std::pin::pin!(f);
        loop {
            let by_limit = started + limit;
            let until = if self.rate > 0 {
                by_limit.min(mark + self.window_end.saturating_sub(self.waited))
            } else {
                by_limit
            };
            let out = tokio::time::timeout_at(until, f.as_mut()).await;
            let now = Instant::now();
            self.waited += now - mark;
            mark = now;
            if let Ok(out) = out {
                return Ok(out);
            }
            if now >= by_limit {
                return Err(ProxyError::ClientWriteTimeout { limit });
            }
            self.end_window()?;
        }
    }

    /// The current window ended while waiting: the client is cut when it took less than
    /// the rate asks in it.
    fn end_window(&mut self) -> Result<(), ProxyError> {
        let got = self.taken - self.window_start;
        let need = self.rate.saturating_mul(self.window.as_secs().max(1));
        if got < need {
            return Err(ProxyError::ClientTooSlow {
                rate: self.rate,
                window: self.window,
                got,
                sent: self.taken,
            });
        }
        self.window_end = self.waited + self.window;
        self.window_start = self.taken;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_below_the_rate_is_cut_when_a_window_of_waiting_ends() {
        let mut p = Pace::new(1024, Duration::from_secs(30));
        // 100 bytes every 10 s of waiting: 300 in the first window, below 30 KiB.
        let mut cut = None;
        for _ in 0..10 {
            let r = p
                .wait(
                    Duration::from_secs(60),
                    tokio::time::sleep(Duration::from_secs(10)),
                )
                .await;
            if let Err(e) = r {
                cut = Some(e);
                break;
            }
            p.took(100);
        }
        match cut {
            Some(ProxyError::ClientTooSlow { got, sent, .. }) => {
                assert_eq!((got, sent), (300, 300))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_at_the_rate_is_never_cut_and_time_not_waiting_does_not_count() {
        let mut p = Pace::new(1024, Duration::from_secs(30));
        for _ in 0..20 {
            // An upstream slow to produce: not the reader's time.
            tokio::time::sleep(Duration::from_secs(100)).await;
            p.wait(
                Duration::from_secs(60),
                tokio::time::sleep(Duration::from_secs(1)),
            )
            .await
            .expect("not cut");
            p.took(2048);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn write_timeout_still_bounds_one_wait() {
        let mut p = Pace::new(0, Duration::from_secs(30));
        let r = p
            .wait(Duration::from_secs(5), std::future::pending::<()>())
            .await;
        assert!(matches!(r, Err(ProxyError::ClientWriteTimeout { .. })));
    }
}
