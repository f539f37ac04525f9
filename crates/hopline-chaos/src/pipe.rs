//! Byte forwarding between a client and its upstream, one pump per direction, with the
//! toxics of that direction applied chunk by chunk. The toxic list is re-read whenever it
//! changes, so adding or removing a toxic acts on live connections.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};

use crate::rng::Rng;
use crate::toxic::{Stream, Toxic, ToxicKind};

/// The toxics of a proxy, as watched by its connections.
pub type ToxicList = Arc<Vec<Toxic>>;

/// Per-connection decisions: whether each toxic applies (drawn once, by `toxicity`).
#[derive(Debug)]
pub struct Dice {
    rng: Rng,
    rolled: HashMap<String, bool>,
    since: HashMap<String, Instant>,
}

impl Dice {
    /// Dice drawing from `rng`.
    pub fn new(rng: Rng) -> Self {
        Dice {
            rng,
            rolled: HashMap::new(),
            since: HashMap::new(),
        }
    }

    /// True when `toxic` applies to this connection.
    pub fn active(&mut self, toxic: &Toxic) -> bool {
        let rng = &mut self.rng;
        *self
            .rolled
            .entry(toxic.name.clone())
            .or_insert_with(|| rng.chance(toxic.toxicity))
    }

    /// When `toxic` started acting on this connection.
    fn since(&mut self, toxic: &Toxic) -> Instant {
        *self
            .since
            .entry(toxic.name.clone())
            .or_insert_with(Instant::now)
    }

    /// The generator, for per-chunk draws.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
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

/// Forwards `src` to `dst`, applying the toxics of direction `dir`.
pub async fn pump<R, W>(
    dir: Stream,
    src: &mut R,
    dst: &mut W,
    mut rx: watch::Receiver<ToxicList>,
    mut dice: Dice,
) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 128 * 1024];
    let mut sent: u64 = 0;
    // The toxics acting on this direction of this connection; recomputed only when the
    // proxy's list changes, so an untoxic pump costs one read and one write per chunk.
    let mut active: Vec<Toxic> = Vec::new();
    let mut dirty = true;
    loop {
        if dirty {
            let list = rx.borrow_and_update().clone();
            active = list
                .iter()
                .filter(|t| t.stream == dir && !t.kind.is_http() && dice.active(t))
                .cloned()
                .collect();
            dirty = false;
        }
        if let Some(t) = active
            .iter()
            .find(|t| matches!(t.kind, ToxicKind::Timeout { .. }))
        {
            let ToxicKind::Timeout { timeout } = t.kind else {
                unreachable!()
            };
            let since = dice.since(t);
            if timeout == 0 {
                changed(&mut rx).await;
                dirty = true;
                continue;
            }
            tokio::select! {
                _ = changed(&mut rx) => {
                dirty = true;
                continue;
            }
                _ = sleep_until(since + Duration::from_millis(timeout)) => return End::Close,
            }
        }
        let reset_at = match active
            .iter()
            .find(|t| matches!(t.kind, ToxicKind::ResetPeer { .. }))
        {
            Some(t) => {
                let ToxicKind::ResetPeer { timeout } = t.kind else {
                    unreachable!()
                };
                Some(dice.since(t) + Duration::from_millis(timeout))
            }
            None => None,
        };
        let read = tokio::select! {
            biased;
            _ = sleep_until(reset_at.unwrap_or_else(Instant::now)), if reset_at.is_some() => return End::Reset,
            _ = changed(&mut rx) => {
                dirty = true;
                continue;
            }
            r = src.read(&mut buf) => r,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                if let Some(ToxicKind::SlowClose { delay }) = active
                    .iter()
                    .map(|t| &t.kind)
                    .find(|k| matches!(k, ToxicKind::SlowClose { .. }))
                {
                    sleep(Duration::from_millis(*delay)).await;
                }
                let _ = dst.shutdown().await;
                return End::Eof;
            }
            Ok(n) => n,
        };
        let read_at = Instant::now();
        let mut data = &buf[..n];
        let mut stop_after = false;
        for t in &active {
            match &t.kind {
                ToxicKind::LimitData { bytes } => {
                    let left = bytes.saturating_sub(sent);
                    if (data.len() as u64) >= left {
                        data = &data[..left as usize];
                        stop_after = true;
                    }
                }
                ToxicKind::Latency { latency, jitter } => {
                    let ms = dice.rng().around(*latency, *jitter);
                    sleep_until(read_at + Duration::from_millis(ms)).await;
                }
                ToxicKind::Loss { probability, stall } if dice.rng().chance(*probability) => {
                    sleep(Duration::from_millis(*stall)).await;
                }
                _ => {}
            }
        }
        let slicer = active.iter().find_map(|t| match t.kind {
            ToxicKind::Slicer {
                average_size,
                size_variation,
                delay,
            } => Some((average_size, size_variation, delay)),
            _ => None,
        });
        let bandwidth = active.iter().find_map(|t| match t.kind {
            ToxicKind::Bandwidth { rate } => Some(rate),
            _ => None,
        });
        let write_started = Instant::now();
        let ok = match (slicer, bandwidth.filter(|r| *r > 0)) {
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
        if let Some(rate) = bandwidth.filter(|r| *r > 0) {
            // The next chunk may not start before this one's share of a second is over.
            let secs = data.len() as f64 / (rate as f64 * 1000.0);
            sleep_until(write_started + Duration::from_secs_f64(secs)).await;
        }
        if stop_after {
            return End::Close;
        }
    }
}

/// Runs both pumps of a connection and closes or resets it as they decide.
pub async fn pipe(
    mut client: TcpStream,
    mut upstream: TcpStream,
    rx: watch::Receiver<ToxicList>,
    rng: &mut Rng,
) {
    let up_dice = Dice::new(Rng::new(rng.next_u64()));
    let down_dice = Dice::new(Rng::new(rng.next_u64()));
    let end = {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let up = pump(Stream::Upstream, &mut cr, &mut uw, rx.clone(), up_dice);
        let down = pump(Stream::Downstream, &mut ur, &mut cw, rx, down_dice);
        tokio::pin!(up, down);
        // Half-close is respected: one side's EOF waits for the other; Close/Reset end both.
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
pub fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}
