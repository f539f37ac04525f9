//! The open-loop load generator: requests leave at their scheduled times whatever is
//! outstanding, and latency counts from the scheduled time — no coordinated omission.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout_at, Instant};

/// One step of the arrival-rate schedule: from `at`, `rate` requests per second (ramping
/// linearly to the next step's rate when `ramp` is set).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Offset from the start of the run.
    pub at: Duration,
    /// Requests per second.
    pub rate: f64,
    /// Ramp linearly to the next step's rate instead of jumping.
    pub ramp: bool,
}

/// What the load generator does.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Target address.
    pub target: SocketAddr,
    /// Request paths, used round robin.
    pub paths: Vec<String>,
    /// Rate schedule (sorted by `at`).
    pub schedule: Vec<Step>,
    /// Total run time.
    pub duration: Duration,
    /// The client gives up after this long (the front then logs 499).
    pub client_timeout: Duration,
    /// Requests outstanding at most; beyond, a scheduled request is counted as `skipped`.
    pub max_in_flight: usize,
    /// What the client speaks to the target.
    pub protocol: Protocol,
}

/// `[load] protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `http/1.1`: `GET`s on pooled keep-alive connections.
    #[default]
    Http1,
    /// `h2`: `GET`s as streams on one HTTP/2 connection (h2c, prior knowledge).
    H2,
    /// `grpc`: unary gRPC calls (an empty message) as streams on one HTTP/2 connection.
    Grpc,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// The client timeout fired first.
    Abandoned,
    /// Connect or protocol failure.
    Error(String),
    /// Not sent: `max_in_flight` reached.
    Skipped,
    /// A gRPC call that ended with this non-zero `grpc-status` (HTTP 200).
    Grpc(u16),
}

/// One request's record.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Scheduled send time, from the start of the run.
    pub scheduled: Duration,
    /// From the scheduled time to the end.
    pub latency: Duration,
    /// The result.
    pub outcome: Outcome,
    /// `x-hopline-flags` of the response, if any.
    pub flags: Option<String>,
    /// `x-hopline-degraded` of the response, if any.
    pub degraded: Option<String>,
}

/// The scheduled send offsets for a plan.
pub fn send_times(schedule: &[Step], duration: Duration) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut t = 0.0f64;
    let end = duration.as_secs_f64();
    while t < end {
        let rate = rate_at(schedule, t);
        if rate <= 0.0 {
            // Jump to the next step with a positive rate.
            match schedule.iter().find(|s| s.at.as_secs_f64() > t) {
                Some(s) => t = s.at.as_secs_f64(),
                None => break,
            }
            continue;
        }
        out.push(Duration::from_secs_f64(t));
        t += 1.0 / rate;
    }
    out
}

fn rate_at(schedule: &[Step], t: f64) -> f64 {
    let Some(i) = schedule.iter().rposition(|s| s.at.as_secs_f64() <= t) else {
        return 0.0;
    };
    let s = &schedule[i];
    match schedule.get(i + 1) {
        Some(next) if s.ramp => {
            let (a, b) = (s.at.as_secs_f64(), next.at.as_secs_f64());
            s.rate + (next.rate - s.rate) * ((t - a) / (b - a)).clamp(0.0, 1.0)
        }
        _ => s.rate,
    }
}

type Pool = Arc<Mutex<Vec<(TcpStream, BytesMut)>>>;

async fn one(
    target: SocketAddr,
    path: &str,
    pool: &Pool,
    deadline: Instant,
) -> (Outcome, Option<String>, Option<String>) {
    let pooled = pool.lock().map(|mut p| p.pop()).unwrap_or(None);
    let (mut s, mut buf) = match pooled {
        Some(c) => c,
        None => match timeout_at(deadline, TcpStream::connect(target)).await {
            Err(_) => return (Outcome::Abandoned, None, None),
            Ok(Err(e)) => return (Outcome::Error(format!("connect: {e}")), None, None),
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                (s, BytesMut::with_capacity(4096))
            }
        },
    };
    let mut req = BytesMut::with_capacity(128);
    let fields = [("host", "drill"), ("user-agent", "hopline-drill")];
    hopline_h1::write::put_request(&mut req, b"GET", path.as_bytes(), fields, b"");
    let work = async {
        let head = hopline_h1::client::exchange(&mut s, &mut buf, &req, 64 * 1024, 16 << 20)
            .await
            .map_err(|e| hopline_core::error::cause_chain(&e))?
            .head;
        let h = |n: &str| {
            head.headers
                .get(n)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        Ok::<_, String>((
            head.status,
            h("x-hopline-flags"),
            h("x-hopline-degraded"),
            head.keep_alive(),
        ))
    };
    match timeout_at(deadline, work).await {
        // Abandoned: the connection is dropped, as a client giving up would.
        Err(_) => (Outcome::Abandoned, None, None),
        Ok(Err(e)) => (Outcome::Error(e), None, None),
        Ok(Ok((status, flags, degraded, keep))) => {
            if keep && buf.is_empty() {
                if let Ok(mut p) = pool.lock() {
                    p.push((s, buf));
                }
            }
            (Outcome::Status(status), flags, degraded)
        }
    }
}

/// The one HTTP/2 connection of a run, opened on first use and again after it fails.
type H2Client = Arc<tokio::sync::Mutex<Option<h2::client::SendRequest<bytes::Bytes>>>>;

/// One request as a stream on the run's HTTP/2 connection.
async fn one_h2(
    target: SocketAddr,
    path: &str,
    client: &H2Client,
    deadline: Instant,
    grpc: bool,
) -> (Outcome, Option<String>, Option<String>) {
    match timeout_at(deadline, exchange_h2(target, path, client, grpc)).await {
        Err(_) => (Outcome::Abandoned, None, None),
        Ok(Err(e)) => {
            // Broken: the next request opens a new connection.
            *client.lock().await = None;
            (Outcome::Error(e), None, None)
        }
        Ok(Ok(r)) => r,
    }
}

async fn exchange_h2(
    target: SocketAddr,
    path: &str,
    client: &H2Client,
    grpc: bool,
) -> Result<(Outcome, Option<String>, Option<String>), String> {
    let send = {
        let mut slot = client.lock().await;
        match slot.as_ref() {
            Some(s) => s.clone(),
            None => {
                let tcp = TcpStream::connect(target)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let _ = tcp.set_nodelay(true);
                let (send, conn) = h2::client::handshake(tcp)
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                *slot = Some(send.clone());
                send
            }
        }
    };
    let mut send = send.ready().await.map_err(|e| e.to_string())?;
    let mut req = http::Request::builder()
        .uri(format!("http://drill{path}"))
        .header("user-agent", "hopline-drill");
    if grpc {
        req = req
            .method("POST")
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    let req = req.body(()).map_err(|e| e.to_string())?;
    let (resp, mut stream) = send.send_request(req, !grpc).map_err(|e| e.to_string())?;
    if grpc {
        // One empty message.
        stream
            .send_data(bytes::Bytes::from_static(b"\0\0\0\0\0"), true)
            .map_err(|e| e.to_string())?;
    }
    let (head, mut body) = resp.await.map_err(|e| e.to_string())?.into_parts();
    let h = |n: &str| {
        head.headers
            .get(n)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let (flags, degraded) = (h("x-hopline-flags"), h("x-hopline-degraded"));
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    // A trailers-only answer carries grpc-status in its head.
    let code = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| head.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
    let outcome = match (grpc, code) {
        (true, Some(c)) if c != 0 && head.status == 200 => Outcome::Grpc(c),
        _ => Outcome::Status(head.status.as_u16()),
    };
    Ok((outcome, flags, degraded))
}

/// Runs the plan; `tick` is called about once a second with (elapsed, sent so far).
///
/// When `stop` resolves (the drill was told to stop), no more requests are sent, those in
/// flight are abandoned, and the samples so far are returned with the time it stopped.
pub async fn run(
    plan: &LoadPlan,
    mut tick: impl FnMut(Duration, usize),
    stop: impl std::future::Future<Output = ()>,
) -> (Vec<Sample>, Option<Duration>) {
    tokio::pin!(stop);
    let mut stopped = None;
    let times = send_times(&plan.schedule, plan.duration);
    let samples = Arc::new(Mutex::new(Vec::with_capacity(times.len())));
    let pool: Pool = Arc::new(Mutex::new(Vec::new()));
    let h2: H2Client = Arc::new(tokio::sync::Mutex::new(None));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_tick = Duration::from_secs(1);
    for (i, at) in times.iter().enumerate() {
        let due = start + *at;
        if Instant::now() < due {
            tokio::select! {
                biased;
                _ = &mut stop => {
                    stopped = Some(start.elapsed());
                    break;
                }
                _ = sleep_until(due) => {}
            }
        }
        if *at >= next_tick {
            tick(*at, i);
            next_tick += Duration::from_secs(1);
        }
        while tasks.try_join_next().is_some() {}
        if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= plan.max_in_flight {
            if let Ok(mut s) = samples.lock() {
                s.push(Sample {
                    scheduled: *at,
                    latency: Duration::ZERO,
                    outcome: Outcome::Skipped,
                    flags: None,
                    degraded: None,
                });
            }
            continue;
        }
        in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (samples, pool, in_flight) = (samples.clone(), pool.clone(), in_flight.clone());
        let h2 = h2.clone();
        let path = plan.paths[i % plan.paths.len()].clone();
        let (target, client_timeout, at) = (plan.target, plan.client_timeout, *at);
        let protocol = plan.protocol;
        tasks.spawn(async move {
            let deadline = due + client_timeout;
            let (outcome, flags, degraded) = match protocol {
                Protocol::Http1 => one(target, &path, &pool, deadline).await,
                Protocol::H2 => one_h2(target, &path, &h2, deadline, false).await,
                Protocol::Grpc => one_h2(target, &path, &h2, deadline, true).await,
            };
            let latency = due.elapsed();
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(mut s) = samples.lock() {
                s.push(Sample {
                    scheduled: at,
                    latency,
                    outcome,
                    flags,
                    degraded,
                });
            }
        });
    }
    if stopped.is_some() {
        tasks.abort_all();
    }
    while tasks.join_next().await.is_some() {}
    let mut out = samples.lock().map(|s| s.clone()).unwrap_or_default();
    out.sort_by_key(|s| s.scheduled);
    (out, stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_steps_and_ramps() {
        let steps = vec![
            Step {
                at: Duration::ZERO,
                rate: 10.0,
                ramp: false,
            },
            Step {
                at: Duration::from_secs(1),
                rate: 100.0,
                ramp: true,
            },
            Step {
                at: Duration::from_secs(2),
                rate: 200.0,
                ramp: false,
            },
        ];
        let t = send_times(&steps, Duration::from_secs(3));
        let in_sec = |s: u64| t.iter().filter(|d| d.as_secs() == s).count();
        assert_eq!(in_sec(0), 10);
        assert!((140..=160).contains(&in_sec(1)), "{}", in_sec(1));
        assert_eq!(in_sec(2), 200);
    }
}
