//! One HTTP/1 client connection: its idle, busy and header timers, reading request heads,
//! and handing each request to the request core (`request::serve`) through the HTTP/1
//! front-end (`h1`).
//!
//! While a request waits on its upstream, the connection keeps reading from the client
//! in the same task (like Go's background read): EOF or a reset ends the request at once,
//! dropping every upstream connection it holds. Nothing of a request runs detached.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::BytesMut;
use hopline_core::config::ServerConfig;
use hopline_core::ProxyError;
use hopline_h1::{read_request_head, wait_first_byte, wait_first_byte_unbuffered};
use hopline_h1::{BodyLength, HeadError, HeadLimits, ParseError, RequestHead};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::timeout_at;

use crate::client::h1::H1Front;
use crate::client::h2::{serve_h2, PREFACE};
use crate::client::park::{Lot, Parked};
use crate::front::Next;
use crate::front::{Client, Request};
use crate::gateway::{Current, Gateway};
use crate::observe::metrics::ConnectionGuard;
use crate::request::{reject, serve};
use crate::stream::{ClientStream, Prefixed, Stream};

/// Signals from the server to its connections.
#[derive(Debug, Clone)]
pub(crate) struct Signals {
    /// True once draining: idle connections close after `drain_idle_grace`, responses
    /// say `connection: close`.
    pub drain: watch::Receiver<bool>,
    /// True once the drain period is over: in-flight requests are answered 503 `SD`.
    pub kill: watch::Receiver<bool>,
    /// Where idle plain connections park (`None`: they wait in their own tasks).
    pub lot: Option<Lot>,
}

/// A plain connection's slot (`max_connections`) and its place in the connection gauge,
/// released when the connection closes, wherever it is then (its task or the lot).
#[derive(Debug)]
pub(crate) struct Held {
    _gauge: ConnectionGuard,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Held {
    pub(crate) fn new(gauge: ConnectionGuard, slot: tokio::sync::OwnedSemaphorePermit) -> Held {
        Held {
            _gauge: gauge,
            _slot: slot,
        }
    }
}

/// How a connection's task starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// Just accepted, at this instant: its first request head is due `header_read_timeout`
    /// after it.
    Accepted(Instant),
    /// Back from the lot, where it had been idle since this instant, with bytes to read.
    Resumed(Instant),
}

pub(crate) async fn raised(rx: &mut watch::Receiver<bool>) {
    // `changed()` rather than `wait_for`: the same wake-ups with a smaller future, which
    // every idle keep-alive connection's task holds.
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// How long a connection that just answered a request keeps its read buffer and request
/// state while waiting for the next one. Busy keep-alive connections then cost no
/// allocation per request; connections idle for longer give both back and wait holding
/// only their socket and a small task (see `bench/` idle-conns).
const HOT_WAIT: Duration = Duration::from_millis(100);

/// Serves one accepted connection (after its TLS handshake, if any) until it closes.
/// With [`Start::Accepted`], the first request head is due `header_read_timeout` after
/// the TCP accept, handshake included. `held` (the connection's slot and gauge) is dropped
/// with the connection; a connection that has it parks in `signals.lot` when it goes idle
/// (the task ends; the lot starts a new one when the client sends again).
///
/// An `async move` block rather than an `async fn`: an async fn's body moves its
/// arguments into locals and keeps both copies in its state, and this state is what every
/// idle keep-alive connection holds (measured with `-Zprint-type-sizes`).
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve_connection(
    mut current: Arc<Current>,
    mut stream: ClientStream,
    mut client: Client,
    mut signals: Signals,
    start: Start,
    mut held: Option<Held>,
) -> impl Future<Output = ()> + Send {
    async move {
        let (accepted, mut first) = match start {
            Start::Accepted(at) => {
                let _ = stream.set_nodelay();
                (at, true)
            }
            Start::Resumed(idle_since) => (idle_since, false),
        };
        let mut idle_since = accepted;
        let mut buf = BytesMut::new();
        // Set when `busy` hands back a quiet connection (a resumed one has bytes waiting).
        let mut quiet = false;
        loop {
            let mut gw = current.load();
            let park = quiet
                && held.is_some()
                && signals.lot.is_some()
                && matches!(stream, Stream::Plain(_))
                && !*signals.drain.borrow();
            if park {
                let until = idle_since + gw.config.server.idle_timeout;
                drop(gw);
                let (Some(lot), Stream::Plain(tcp), Some(h)) =
                    (signals.lot.clone(), stream, held.take())
                else {
                    return;
                };
                let parked = Parked {
                    current,
                    tcp,
                    client,
                    signals,
                    idle_since,
                    held: h,
                };
                match lot.park(parked, until) {
                    Ok(()) => return,
                    // Draining meanwhile: wait here, as without a lot.
                    Err(back) => {
                        let back = *back;
                        (current, client, signals) = (back.current, back.client, back.signals);
                        stream = Stream::Plain(back.tcp);
                        held = Some(back.held);
                    }
                }
                gw = current.load();
            }
            let cfg = &gw.config.server;
            if buf.is_empty() {
                let wait = if first {
                    // Counted from accept: a TLS handshake already spent part of it.
                    cfg.header_read_timeout.saturating_sub(accepted.elapsed())
                } else {
                    // Counted from the end of the last response (`busy`, or the lot,
                    // already waited part of it).
                    (idle_since + cfg.idle_timeout).saturating_duration_since(Instant::now())
                };
                // The drain wait runs after the select, not inside it: its state then
                // shares room with the idle wait's instead of adding to it. Only what the
                // outcome says outlives this block (not the error itself, which would then
                // take room in the task across the 408's await).
                let timed_out = {
                    let r = match tokio::select! {
                        biased;
                        r = idle_wait(&mut stream, &mut buf, wait) => Some(r),
                        _ = raised(&mut signals.drain) => None,
                    } {
                        Some(r) => r,
                        None => {
                            drain_wait(&mut stream, &mut buf, idle_since, cfg.drain_idle_grace)
                                .await
                        }
                    };
                    match r {
                        Ok(()) => false,
                        Err(HeadError::Idle) if first => true,
                        Err(_) => return,
                    }
                };
                if timed_out {
                    let err = ProxyError::HeaderReadTimeout {
                        limit: cfg.header_read_timeout,
                    };
                    let mut front = H1Front::idle(&gw, &mut stream, &mut buf);
                    Box::pin(reject(&gw, &mut front, &client, None, err)).await;
                    return;
                }
            }
            // When the request's first byte was seen (from accept, for the first).
            let seen = if first { accepted } else { Instant::now() };
            let head_deadline = seen + cfg.header_read_timeout;
            if first && cfg.h2c && h2c_preface(&mut stream, &mut buf, head_deadline).await {
                drop(gw);
                let io = Prefixed::new(buf.split().freeze(), stream);
                // Boxed: an HTTP/2 connection's state lives on the heap, only when there is one.
                Box::pin(serve_h2(current, io, client, signals, accepted)).await;
                return;
            }
            first = false;
            drop(gw);
            // Boxed: the request state (head reading, upstream exchange, aggregate calls) lives
            // on the heap only while the connection is busy, so an idle one's task stays small.
            let next = Box::pin(busy(
                &current,
                &mut stream,
                &mut buf,
                seen,
                &client,
                &mut signals,
                &mut idle_since,
            ))
            .await;
            match next {
                Next::KeepAlive => quiet = true,
                Next::Close => return,
            }
        }
    }
}

/// With `server.h2c`: whether the connection opens with the HTTP/2 preface (read into
/// `buf` as far as needed to tell, by `until`); anything else is served as HTTP/1.
async fn h2c_preface(stream: &mut ClientStream, buf: &mut BytesMut, until: Instant) -> bool {
    while buf.len() < PREFACE.len() && PREFACE.starts_with(buf) {
        buf.reserve(PREFACE.len());
        match timeout_at(until, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
    buf.starts_with(PREFACE)
}

/// Waits up to `wait` for the first byte of the next request, holding no read buffer
/// meanwhile.
async fn idle_wait(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    wait: Duration,
) -> Result<(), HeadError> {
    match stream {
        Stream::Plain(tcp) => wait_first_byte_unbuffered(tcp, buf, wait).await,
        Stream::Tls(tls) => {
            let until = Instant::now() + wait;
            // With no plaintext left in the session, nothing can be read before the
            // socket is: the buffer is given back and the socket's readiness awaited
            // first (an idle TLS connection then holds no 8 KiB read buffer). With
            // plaintext waiting, it is read at once.
            if buf.is_empty() && tls.get_ref().1.wants_read() {
                *buf = BytesMut::new();
                let tcp = tls.get_ref().0;
                let ready = std::future::poll_fn(|cx| tcp.poll_read_ready(cx));
                match timeout_at(until, ready).await {
                    Err(_) => return Err(HeadError::Idle),
                    Ok(Err(e)) => return Err(HeadError::Io(e)),
                    Ok(Ok(())) => {}
                }
            }
            wait_first_byte(
                &mut **tls,
                buf,
                until.saturating_duration_since(Instant::now()),
            )
            .await
        }
        #[cfg(test)]
        Stream::Memory(m) => wait_first_byte(m, buf, wait).await,
    }
}

/// Draining, with no request on the connection: a client that is just sending still gets
/// served, so the connection closes only once it has been idle for `grace` (counted
/// from `idle_since`). A silent connection ends as `Closed`, never with a 408.
async fn drain_wait(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    idle_since: Instant,
    grace: Duration,
) -> Result<(), HeadError> {
    let left = (idle_since + grace).saturating_duration_since(Instant::now());
    match idle_wait(stream, buf, left).await {
        Err(HeadError::Idle) => Err(HeadError::Closed),
        r => r,
    }
}

/// Serves requests back to back while the client sends the next within [`HOT_WAIT`];
/// `KeepAlive` once it goes quiet (with `buf` empty), `Close` when the connection ends.
/// `seen`: when the first request's first byte came; each head is due
/// `header_read_timeout` after its first byte.
async fn busy(
    current: &Current,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    mut seen: Instant,
    client: &Client,
    signals: &mut Signals,
    idle_since: &mut Instant,
) -> Next {
    // One waiter on each signal for the whole busy period, not one per request.
    let mut drain = pin!(raised(&mut signals.drain));
    let mut kill = pin!(raised(&mut signals.kill));
    let mut drained = false;
    loop {
        // Each request runs on the config current when it starts (reloads apply to
        // requests on existing keep-alive connections too).
        let gw = current.load();
        let idle = client
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .gt(&0)
            .then(|| seen.saturating_duration_since(*idle_since));
        let head_deadline = seen + gw.config.server.header_read_timeout;
        let served = request(
            &gw,
            stream,
            buf,
            (head_deadline, idle),
            client,
            kill.as_mut(),
        )
        .await;
        *idle_since = Instant::now();
        if let Next::Close = served {
            return Next::Close;
        }
        let cfg = &gw.config.server;
        if buf.is_empty() {
            // Once the drain signal is seen, every later wait on this connection is a
            // drain wait (the signal's future has completed and must not be polled again).
            let grace = cfg.drain_idle_grace;
            let r = if drained {
                drain_wait(stream, buf, *idle_since, grace).await
            } else {
                tokio::select! {
                    biased;
                    r = wait_first_byte(stream, buf, HOT_WAIT.min(cfg.idle_timeout)) => r,
                    _ = &mut drain => {
                        drained = true;
                        drain_wait(stream, buf, *idle_since, grace).await
                    }
                }
            };
            match r {
                Ok(()) => {}
                Err(HeadError::Idle) => return Next::KeepAlive,
                Err(_) => return Next::Close,
            }
        }
        seen = Instant::now();
    }
}

/// The error a request head that could not be read is answered with.
fn head_error(cfg: &ServerConfig, e: ParseError) -> ProxyError {
    match e {
        ParseError::Rejected { error, .. } => head_error(cfg, *error),
        ParseError::TooLarge { .. } | ParseError::TooManyHeaders => ProxyError::HeadersTooLarge {
            limit: cfg.max_header_bytes,
        },
        ParseError::RequestLineTooLong { limit } => ProxyError::UriTooLong { limit },
        ParseError::UnsupportedTransferEncoding => ProxyError::NotImplemented {
            what: "transfer codings other than chunked",
        },
        p => ProxyError::Malformed(Box::new(p)),
    }
}

/// Reads one request head (whose first bytes are in `buf`) by `head_deadline` and serves it.
async fn request(
    gw: &Gateway,
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    (head_deadline, idle): (Instant, Option<Duration>),
    client: &Client,
    kill: Pin<&mut impl Future<Output = ()>>,
) -> Next {
    let cfg = &gw.config.server;
    let limits = HeadLimits {
        max_head: cfg.max_header_bytes,
        max_request_line: cfg.max_request_line_bytes.min(cfg.max_header_bytes),
    };
    let head = match read_request_head(stream, buf, limits, head_deadline, cfg.header_read_timeout)
        .await
    {
        Ok(h) => h,
        Err(e) => {
            let mut line = None;
            let err = match e {
                HeadError::Timeout(_) => ProxyError::HeaderReadTimeout {
                    limit: cfg.header_read_timeout,
                },
                HeadError::Parse(p) => {
                    if let ParseError::Rejected { method, target, .. } = &p {
                        line = Some((method.clone(), target.clone()));
                    }
                    head_error(cfg, p)
                }
                HeadError::Idle | HeadError::Closed | HeadError::Incomplete | HeadError::Io(_) => {
                    return Next::Close
                }
            };
            reject(gw, &mut H1Front::idle(gw, stream, buf), client, line, err).await;
            return Next::Close;
        }
    };
    let keep_alive = head.keep_alive() && !gw.draining();
    let mut front = H1Front::new(gw, stream, buf, &head, keep_alive);
    let mut req = to_request(head, keep_alive);
    req.client_idle = idle;
    serve(gw, &mut front, req, client, kill).await
}

/// The protocol-independent request an HTTP/1 head carries.
fn to_request(head: RequestHead, keep_alive: bool) -> Request {
    let length = head.body_length();
    Request {
        origin: head.origin_bytes(),
        has_body: length != BodyLength::Empty,
        body_length: match length {
            BodyLength::Length(n) => Some(n),
            _ => None,
        },
        method: head.method,
        target: head.target,
        headers: head.headers,
        keep_alive,
        client_idle: None,
    }
}

/// The connection's timers on tokio's paused clock: each timeout fires exactly when it
/// should, whatever the machine's load, over a real loopback socket.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hopline_core::config::{AccessLogSink, Config, LogConfig, ServerConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;
    use tokio::time::{sleep, Instant};

    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);
    const GRACE: Duration = Duration::from_secs(1);
    /// Virtual time that may pass between a timer firing and the client seeing it.
    const SLACK: Duration = Duration::from_millis(20);

    struct Conn {
        client: TcpStream,
        current: Arc<Current>,
        drain: watch::Sender<bool>,
        _kill: watch::Sender<bool>,
        /// The lot, when the connection parks; its task stops with the test.
        lot: Option<(Lot, tokio::task::JoinHandle<()>)>,
    }

    impl Drop for Conn {
        fn drop(&mut self) {
            if let Some((_, task)) = &self.lot {
                task.abort();
            }
        }
    }

    impl Conn {
        /// Starts draining as `run` does on SIGTERM.
        fn drain(&self) {
            self.current.load().start_draining();
            self.drain.send(true).expect("drain");
        }
    }

    /// A connection served by `serve_connection` with no routes (every request is a 404
    /// that keeps the connection); with `park`, it parks in a lot when idle, as on a
    /// plain listener.
    async fn connect(park: bool) -> Conn {
        let current = gateway();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let (drain, drain_rx) = watch::channel(false);
        let (kill, kill_rx) = watch::channel(false);
        let lot = park.then(|| {
            let lot = Lot::new();
            let task = tokio::spawn(crate::client::park::tend(lot.clone(), drain_rx.clone()));
            (lot, task)
        });
        let signals = Signals {
            drain: drain_rx,
            kill: kill_rx,
            lot: lot.as_ref().map(|(l, _)| l.clone()),
        };
        spawn_plain(&current, server, peer, signals);
        Conn {
            client,
            current,
            drain,
            _kill: kill,
            lot,
        }
    }

    /// A gateway with no routes and the timers above.
    fn gateway() -> Arc<Current> {
        let config = Config {
            server: ServerConfig {
                header_read_timeout: HEADER,
                idle_timeout: IDLE,
                drain_idle_grace: GRACE,
                ..ServerConfig::default()
            },
            log: LogConfig {
                access: AccessLogSink::Off,
                ..LogConfig::default()
            },
            front: None,
            deadline: Default::default(),
            admin: None,
            retry_budget: Default::default(),
            egress: None,
            dns: Default::default(),
            metrics: Default::default(),
            tracing: None,
            upstreams: Vec::new(),
            routes: Vec::new(),
        };
        Current::new(Gateway::new(config).expect("gateway"))
    }

    /// Serves an accepted plain connection as `run` does (with its slot and gauge).
    fn spawn_plain(
        current: &Arc<Current>,
        server: TcpStream,
        peer: std::net::SocketAddr,
        signals: Signals,
    ) {
        let client_info = Client {
            peer,
            tls: None,
            requests: Default::default(),
        };
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .expect("slot");
        let held = Held::new(current.load().metrics.open_connection(), slot);
        tokio::spawn(serve_connection(
            current.clone(),
            Stream::Plain(server),
            client_info,
            signals,
            Start::Accepted(Instant::now()),
            Some(held),
        ));
    }

    /// Waits (on the paused clock) until the connection has parked.
    async fn parked(c: &Conn) {
        let (lot, _) = c.lot.as_ref().expect("a parking connection");
        let until = Instant::now() + HOT_WAIT + SLACK;
        while lot.parked() == 0 {
            assert!(Instant::now() < until, "not parked after the hot wait");
            sleep(Duration::from_millis(1)).await;
        }
    }

    /// A connection that has served one request, and when the response arrived; with
    /// `park`, it has parked since.
    async fn served_once(park: bool) -> (Conn, String, Instant) {
        let mut c = connect(park).await;
        let first = get(&mut c.client, "/a").await;
        let served = Instant::now();
        if park {
            parked(&c).await;
        }
        (c, first, served)
    }

    /// Sends `GET path` and reads the response.
    async fn get(c: &mut TcpStream, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nhost: h\r\n\r\n");
        c.write_all(req.as_bytes()).await.expect("write");
        response(c).await
    }

    /// Reads one response (head and `content-length` body).
    async fn response(c: &mut TcpStream) -> String {
        let mut got = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    return text;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = c.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed mid-response: {text}");
            got.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until the server closes: what came, and the virtual time it took.
    async fn until_closed(c: &mut TcpStream) -> (String, Duration) {
        let start = Instant::now();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.expect("read");
        (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
    }

    fn around(took: Duration, want: Duration) -> bool {
        took >= want && took <= want + SLACK
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_gets_408_at_header_read_timeout_from_accept() {
        for park in [false, true] {
            let mut c = connect(park).await;
            let (text, took) = until_closed(&mut c.client).await;
            assert!(text.starts_with("HTTP/1.1 408 "), "park {park}: {text}");
            assert!(around(took, HEADER), "park {park}: {took:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_connection_closes_quietly_at_idle_timeout() {
        for park in [false, true] {
            let (mut c, first, served) = served_once(park).await;
            assert!(first.starts_with("HTTP/1.1 404 "), "park {park}: {first}");
            // The busy period (buffers kept) and the idle wait after it (in the task or
            // in the lot) add up to idle_timeout.
            let (text, _) = until_closed(&mut c.client).await;
            assert_eq!(text, "", "park {park}");
            let took = served.elapsed();
            assert!(around(took, IDLE), "park {park}: {took:?}");
            if park {
                assert_eq!(c.current.load().metrics.connections(), 0, "slot released");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_head_is_due_header_read_timeout_after_its_first_byte() {
        for park in [false, true] {
            let (mut c, _, _) = served_once(park).await;
            // Idle for longer than a head may take, then a head that never ends.
            sleep(HEADER * 3).await;
            c.client
                .write_all(b"GET /b HTTP/1.1\r\n")
                .await
                .expect("write");
            let (text, took) = until_closed(&mut c.client).await;
            assert!(text.starts_with("HTTP/1.1 408 "), "park {park}: {text}");
            assert!(around(took, HEADER), "park {park}: {took:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn draining_closes_an_idle_connection_after_the_grace() {
        for park in [false, true] {
            let (mut c, _, served) = served_once(park).await;
            c.drain();
            // The grace counts from the end of the last response.
            let (text, _) = until_closed(&mut c.client).await;
            assert_eq!(text, "", "park {park}");
            let took = served.elapsed();
            assert!(around(took, GRACE), "park {park}: {took:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn draining_still_serves_a_client_that_is_sending() {
        for park in [false, true] {
            let (mut c, _, _) = served_once(park).await;
            c.drain();
            sleep(GRACE / 2).await;
            let text = get(&mut c.client, "/b").await;
            assert!(text.contains("connection: close"), "park {park}: {text}");
            let (rest, _) = until_closed(&mut c.client).await;
            assert_eq!(rest, "", "park {park}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_connection_resumes_when_its_client_sends_and_parks_again() {
        let (mut c, _, _) = served_once(true).await;
        let (lot, _) = c.lot.as_ref().map(|(l, t)| (l.clone(), t)).expect("lot");
        for path in ["/b", "/c"] {
            sleep(IDLE / 2).await;
            let text = get(&mut c.client, path).await;
            assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
            assert_eq!(lot.parked(), 0, "resumed in a task");
            parked(&c).await;
            assert_eq!(c.current.load().metrics.connections(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_closing_a_parked_connection_releases_its_slot() {
        let (mut c, _, _) = served_once(true).await;
        c.client.shutdown().await.expect("shutdown");
        let (text, took) = until_closed(&mut c.client).await;
        assert_eq!(text, "");
        assert!(took < SLACK, "{took:?}");
        let until = Instant::now() + SLACK;
        while c.current.load().metrics.connections() != 0 {
            assert!(Instant::now() < until, "the slot stayed held");
            sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_the_lot_closes_its_connections() {
        let (mut c, _, _) = served_once(true).await;
        if let Some((_, task)) = &c.lot {
            task.abort();
        }
        let (text, took) = until_closed(&mut c.client).await;
        assert_eq!(text, "");
        assert!(took < SLACK, "{took:?}");
        assert_eq!(c.current.load().metrics.connections(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_emptied_lot_gives_back_the_table_a_burst_grew() {
        const N: usize = 100;
        let current = gateway();
        let lot = Lot::new();
        let (_drain, drain_rx) = watch::channel(false);
        let (_kill, kill_rx) = watch::channel(false);
        let task = tokio::spawn(crate::client::park::tend(lot.clone(), drain_rx.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut clients = Vec::new();
        for _ in 0..N {
            let mut client = TcpStream::connect(addr).await.expect("connect");
            let (server, peer) = listener.accept().await.expect("accept");
            let signals = Signals {
                drain: drain_rx.clone(),
                kill: kill_rx.clone(),
                lot: Some(lot.clone()),
            };
            spawn_plain(&current, server, peer, signals);
            let text = get(&mut client, "/a").await;
            assert!(text.starts_with("HTTP/1.1 404 "), "{text}");
            clients.push(client);
        }
        let until = Instant::now() + HOT_WAIT + SLACK;
        while lot.parked() < N {
            assert!(Instant::now() < until, "{} of {N} parked", lot.parked());
            sleep(Duration::from_millis(1)).await;
        }
        assert!(lot.slots() >= N);
        drop(clients);
        let until = Instant::now() + SLACK;
        while lot.parked() > 0 || lot.slots() > 0 {
            assert!(
                Instant::now() < until,
                "{} parked, {} slots",
                lot.parked(),
                lot.slots()
            );
            sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(current.load().metrics.connections(), 0);
        task.abort();
    }
}
