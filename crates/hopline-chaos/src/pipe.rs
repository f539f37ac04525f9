//! Byte forwarding between a client and its upstream, one pump per direction, with the
//! toxics of that direction applied chunk by chunk. The toxic list is re-read whenever it
//! changes, so adding or removing a toxic acts on live connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};

use crate::rng::Rng;
use crate::toxic::{Stream, Toxic, ToxicKind};

/// The toxics of a proxy, as watched by its connections.
pub(crate) type ToxicList = Arc<Vec<Toxic>>;

/// Per-connection decisions: whether each toxic applies (drawn once, by `toxicity`).
#[derive(Debug)]
pub(crate) struct Dice {
    rng: Rng,
    rolled: HashMap<String, bool>,
    since: HashMap<String, Instant>,
}

impl Dice {
    /// Dice drawing from `rng`.
    pub(crate) fn new(rng: Rng) -> Self {
        Dice {
            rng,
            rolled: HashMap::new(),
            since: HashMap::new(),
        }
    }

    /// True when `toxic` applies to this connection.
    pub(crate) fn active(&mut self, toxic: &Toxic) -> bool {
        let rng = &mut self.rng;
        *self
            .rolled
            .entry(toxic.name.clone())
            .or_insert_with(|| rng.chance(toxic.toxicity))
    }

    /// When `toxic` started acting on this connection.
    pub(crate) fn since(&mut self, toxic: &Toxic) -> Instant {
        *self
            .since
            .entry(toxic.name.clone())
            .or_insert_with(Instant::now)
    }

    /// The generator, for per-chunk draws.
    pub(crate) fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The source closed; the close was passed on (half-close).
    Eof,
    /// Close the whole connection now (timeout toxic, limit_data, or a failed write).
    Close,
    /// Reset the whole connection (RST).
    Reset,
}

async fn changed(rx: &mut watch::Receiver<ToxicList>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Bytes through one direction of a proxy: read from the source, written to the
/// destination (Toxiproxy's `received` and `sent`).
#[derive(Debug, Default)]
pub struct DirectionStats {
    /// Read from the source.
    pub received: AtomicU64,
    /// Written to the destination.
    pub sent: AtomicU64,
}

/// What the active toxics of one direction add up to. Several toxics of one type act as
/// Toxiproxy's chain makes them act: latencies add up, the slowest bandwidth wins, the
/// smallest `limit_data` wins, `slow_close` delays add up, each `loss` draws on its own.
#[derive(Debug, Default)]
struct Effect {
    /// `timeout` toxics: close at the earliest of these instants (`None`: never close).
    timeout: Option<Option<Instant>>,
    /// `reset_peer`: reset this long after the first data.
    reset_after: Option<Duration>,
    latencies: Vec<(u64, u64)>,
    losses: Vec<(f64, u64)>,
    bandwidth: Option<u64>,
    slicer: Option<(u64, u64, u64)>,
    limit: Option<u64>,
    slow_close: u64,
}

impl Effect {
    fn of(active: &[Toxic], dice: &mut Dice) -> Effect {
        let mut e = Effect::default();
        for t in active {
            match &t.kind {
                ToxicKind::Timeout { timeout } => {
                    let at =
                        (*timeout > 0).then(|| dice.since(t) + Duration::from_millis(*timeout));
                    e.timeout = Some(match (e.timeout.flatten(), at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    });
                }
                ToxicKind::ResetPeer { timeout } => {
                    e.reset_after.get_or_insert(Duration::from_millis(*timeout));
                }
                ToxicKind::Latency { latency, jitter } => e.latencies.push((*latency, *jitter)),
                ToxicKind::Loss { probability, stall } => e.losses.push((*probability, *stall)),
                ToxicKind::Bandwidth { rate } => {
                    e.bandwidth = Some(e.bandwidth.map_or(*rate, |r| r.min(*rate)));
                }
                ToxicKind::Slicer {
                    average_size,
                    size_variation,
                    delay,
                } => {
                    e.slicer
                        .get_or_insert((*average_size, *size_variation, *delay));
                }
                ToxicKind::LimitData { bytes } => {
                    e.limit = Some(e.limit.map_or(*bytes, |l| l.min(*bytes)));
                }
                ToxicKind::SlowClose { delay } => e.slow_close += delay,
                _ => {}
            }
        }
        e
    }
}

/// Forwards `src` to `dst`, applying the toxics of direction `dir`.
pub(crate) async fn pump<R, W>(
    dir: Stream,
    src: &mut R,
    dst: &mut W,
    mut rx: watch::Receiver<ToxicList>,
    mut dice: Dice,
    stats: &DirectionStats,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 128 * 1024];
    let mut sent: u64 = 0;
    // What the toxics acting on this direction of this connection add up to; recomputed
    // only when the proxy's list changes, so an untoxic pump costs one read and one write
    // per chunk.
    let mut effect = Effect::default();
    let mut dirty = true;
    loop {
        if dirty {
            let list = rx.borrow_and_update().clone();
            let active: Vec<Toxic> = list
                .iter()
                .filter(|t| t.stream == dir && !t.kind.is_http() && dice.active(t))
                .cloned()
                .collect();
            effect = Effect::of(&active, &mut dice);
            dirty = false;
        }
        let read = tokio::select! {
            biased;
            _ = sleep_until(effect.timeout.flatten().unwrap_or_else(Instant::now)),
                if effect.timeout.flatten().is_some() => return End::Close,
            _ = changed(&mut rx) => {
                dirty = true;
                continue;
            }
            r = src.read(&mut buf) => r,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                if effect.slow_close > 0 {
                    sleep(Duration::from_millis(effect.slow_close)).await;
                }
                let _ = dst.shutdown().await;
                return End::Eof;
            }
            Ok(n) => n,
        };
        stats.received.fetch_add(n as u64, Ordering::Relaxed);
        if effect.timeout.is_some() {
            // Nothing passes a timeout toxic: what arrives meanwhile is dropped.
            continue;
        }
        if let Some(after) = effect.reset_after {
            // reset_peer acts on the first data: that data is dropped, and the connection
            // reset `timeout` later (at once for 0).
            sleep(after).await;
            return End::Reset;
        }
        let read_at = Instant::now();
        let mut data = &buf[..n];
        let mut stop_after = false;
        if let Some(bytes) = effect.limit {
            let left = bytes.saturating_sub(sent);
            if (data.len() as u64) >= left {
                data = &data[..left as usize];
                stop_after = true;
            }
        }
        let delay: u64 = effect
            .latencies
            .iter()
            .map(|(latency, jitter)| dice.rng().around(*latency, *jitter))
            .sum();
        if delay > 0 {
            sleep_until(read_at + Duration::from_millis(delay)).await;
        }
        for (probability, stall) in &effect.losses {
            if dice.rng().chance(*probability) {
                sleep(Duration::from_millis(*stall)).await;
            }
        }
        let write_started = Instant::now();
        let bandwidth = effect.bandwidth.filter(|r| *r > 0);
        let ok = match (effect.slicer, bandwidth) {
            (_, Some(rate)) => {
                // rate is KB/s: write 10 ms worth at a time, each slice at its paced instant.
                let slice = (rate as usize * 10).max(1);
                let mut ok = true;
                for (i, piece) in data.chunks(slice).enumerate() {
                    let due = Duration::from_secs_f64((i * slice) as f64 / (rate as f64 * 1000.0));
                    sleep_until(write_started + due).await;
                    if dst.write_all(piece).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                ok
            }
            (Some((avg, var, delay)), None) if avg > 0 => {
                let mut rest = data;
                let mut ok = true;
                while !rest.is_empty() && ok {
                    let size = (dice.rng().around(avg, var).max(1) as usize).min(rest.len());
                    ok = dst.write_all(&rest[..size]).await.is_ok();
                    rest = &rest[size..];
                    if !rest.is_empty() {
                        sleep(Duration::from_micros(delay)).await;
                    }
                }
                ok
            }
            _ => dst.write_all(data).await.is_ok(),
        };
        if !ok {
            return End::Close;
        }
        sent += data.len() as u64;
        stats.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(rate) = bandwidth {
            // The next chunk may not start before this one's share of a second is over.
            let secs = data.len() as f64 / (rate as f64 * 1000.0);
            sleep_until(write_started + Duration::from_secs_f64(secs)).await;
        }
        if stop_after {
            return End::Close;
        }
    }
}

/// Runs both pumps of a connection and closes or resets it as they decide. A FIN from
/// either side is passed on at once while the other direction stays open (half-close).
pub(crate) async fn pipe(
    mut client: TcpStream,
    mut upstream: TcpStream,
    rx: watch::Receiver<ToxicList>,
    rng: &mut Rng,
    stats: (&DirectionStats, &DirectionStats),
) {
    let up_dice = Dice::new(Rng::new(rng.next_u64()));
    let down_dice = Dice::new(Rng::new(rng.next_u64()));
    let end = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let up = pump(
            Stream::Upstream,
            &mut cr,
            &mut uw,
            rx.clone(),
            up_dice,
            stats.0,
        );
        let down = pump(Stream::Downstream, &mut ur, &mut cw, rx, down_dice, stats.1);
        tokio::pin!(up, down);
        tokio::select! {
            e = &mut up => if e == End::Eof { down.await } else { e },
            e = &mut down => if e == End::Eof { up.await } else { e },
        }
    };
    if end == End::Reset {
        reset(&client);
        reset(&upstream);
    }
}

/// Makes the next close of `s` send RST instead of FIN.
pub(crate) fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}
