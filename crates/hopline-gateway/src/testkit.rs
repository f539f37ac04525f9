//! In-process tests of the request core: a gateway built from TOML whose upstreams live
//! on an in-memory network ([`MemoryNet`], `tokio::io::duplex` behind
//! `Upstream::dial`), and a client ([`TestFront`]) that implements [`Front`] and
//! [`Sink`] and can leave at any step. Everything runs on one thread, on tokio's paused
//! clock: time moves only when every task waits, so a test of a 30 s deadline takes
//! microseconds and says exactly when each thing happened.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hopline_core::policy::Decision;
use hopline_core::{Flag, Phase, ProxyError, TimeoutSource};
use hopline_h1::head::Headers;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::body::BodySource;
use crate::front::{BodyFailure, CannotCarry, Front, Next, ResponseStart, Sink};
use crate::front::{Client, Request};
use crate::gateway::Gateway;
use crate::observe::access_log::TunnelEnd;
use crate::observe::access_log::{AccessLog, AccessRecord};
use crate::request;
use crate::response::ErrorContext;
use crate::upstream::ClientConn;

/// Bytes an in-memory connection buffers each way (a small TCP window).
const WINDOW: usize = 64 * 1024;

/// Longest virtual time a test waits for something it expects.
const PATIENCE: Duration = Duration::from_secs(600);

/// Wakes whoever waits on a condition over shared state, each time it may have changed.
#[derive(Debug)]
pub(crate) struct Events(watch::Sender<u64>);

impl Default for Events {
    fn default() -> Self {
        Events(watch::channel(0).0)
    }
}

impl Events {
    /// Wakes the waiters.
    pub(crate) fn bump(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    /// Waits until `cond` holds; panics with `what` after [`PATIENCE`] of virtual time.
    pub(crate) async fn until(&self, what: &str, cond: impl Fn() -> bool) {
        let mut rx = self.0.subscribe();
        let waited = tokio::time::timeout(PATIENCE, async {
            while !cond() {
                let _ = rx.changed().await;
            }
        });
        waited
            .await
            .unwrap_or_else(|_| panic!("still waiting for {what}"));
    }
}

/// What an endpoint address on the in-memory network does with a connect.
pub(crate) enum Peer {
    /// Refuses it (`ECONNREFUSED`).
    Refuse,
    /// Never answers it (a SYN into a black hole): the connect waits until dropped.
    Blackhole,
    /// Accepts it; the function plays the upstream's side of the connection.
    Serve(Play),
    /// Accepts it after this long (a connect's round trips and a TLS handshake), then
    /// plays it as `Serve`.
    Slow(Duration, Play),
}

/// Plays the upstream's side of one accepted connection.
pub(crate) type Play = Arc<dyn Fn(Side) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A [`Peer::Serve`] from an async function of the upstream's side.
pub(crate) fn serve<F, Fut>(f: F) -> Peer
where
    F: Fn(Side) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Peer::Serve(Arc::new(move |side| Box::pin(f(side))))
}

/// Counts of what happened on the network, for assertions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Connects attempted.
    pub dials: usize,
    /// Connects accepted.
    pub accepted: usize,
    /// Connects that were waiting in a black hole and were given up (dropped).
    pub abandoned: usize,
    /// Requests the upstreams read.
    pub requests: usize,
    /// Connections on which an upstream saw the gateway close (EOF, or the h2 stream reset).
    pub closed: usize,
    /// Connects to a [`Peer::Slow`] in progress now.
    pub connecting: usize,
    /// The most connects to a [`Peer::Slow`] in progress at once.
    pub most_connecting: usize,
}

/// The in-memory network the test gateway's upstreams connect on.
#[derive(Default)]
pub(crate) struct MemoryNet {
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
    counts: Mutex<Counts>,
    /// Bumped on every change of `counts`.
    pub events: Events,
}

impl std::fmt::Debug for MemoryNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNet")
            .field("counts", &self.counts())
            .finish()
    }
}

impl MemoryNet {
    /// Sets what `addr` does with the connects that follow.
    pub(crate) fn set(&self, addr: &str, peer: Peer) {
        let addr = addr.parse().expect("address");
        self.peers
            .lock()
            .expect("lock")
            .insert(addr, Arc::new(peer));
    }

    /// What happened so far.
    pub(crate) fn counts(&self) -> Counts {
        *self.counts.lock().expect("lock")
    }

    fn count(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().expect("lock"));
        self.events.bump();
    }

    /// Waits until the counts satisfy `cond`.
    pub(crate) async fn until(&self, what: &str, cond: impl Fn(Counts) -> bool) {
        self.events.until(what, || cond(self.counts())).await
    }

    /// Opens a connection to `addr` as its peer says (an address nobody was set up for
    /// refuses).
    pub(crate) async fn connect(self: &Arc<Self>, addr: SocketAddr) -> io::Result<DuplexStream> {
        self.count(|c| c.dials += 1);
        let peer = self.peers.lock().expect("lock").get(&addr).cloned();
        match peer.as_deref() {
            None | Some(Peer::Refuse) => Err(io::ErrorKind::ConnectionRefused.into()),
            Some(Peer::Blackhole) => {
                // Counted as abandoned when the connect future is dropped.
                struct Abandon(Arc<MemoryNet>);
                impl Drop for Abandon {
                    fn drop(&mut self) {
                        self.0.count(|c| c.abandoned += 1);
                    }
                }
                let _abandon = Abandon(self.clone());
                std::future::pending().await
            }
            Some(Peer::Slow(d, f)) => {
                self.count(|c| {
                    c.connecting += 1;
                    c.most_connecting = c.most_connecting.max(c.connecting);
                });
                // Counted down also when the connect is given up (dropped).
                struct Done(Arc<MemoryNet>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        self.0.count(|c| c.connecting -= 1);
                    }
                }
                let done = Done(self.clone());
                tokio::time::sleep(*d).await;
                drop(done);
                self.accept(f)
            }
            Some(Peer::Serve(f)) => self.accept(f),
        }
    }

    fn accept(self: &Arc<Self>, f: &Play) -> io::Result<DuplexStream> {
        let (ours, theirs) = tokio::io::duplex(WINDOW);
        self.count(|c| c.accepted += 1);
        tokio::spawn(f(Side {
            io: theirs,
            buf: BytesMut::new(),
            net: self.clone(),
        }));
        Ok(ours)
    }
}

/// A request as an in-memory HTTP/1 upstream read it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// The request head, as sent.
    pub head: String,
    /// The body (by `content-length`).
    pub body: Vec<u8>,
}

impl Received {
    /// The value of header `name` (the first), if sent.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// The upstream's side of one in-memory connection.
pub(crate) struct Side {
    io: DuplexStream,
    buf: BytesMut,
    net: Arc<MemoryNet>,
}

impl Side {
    /// Reads the next HTTP/1 request (head, and a `content-length` body); `None` once the
    /// gateway closed the connection (counted).
    pub(crate) async fn request(&mut self) -> Option<Received> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf.split_to(end)).into_owned();
        let mut r = Received {
            head,
            body: Vec::new(),
        };
        let len: usize = r
            .header("content-length")
            .map_or(0, |v| v.parse().expect("content-length"));
        while self.buf.len() < len {
            if !self.fill().await {
                return None;
            }
        }
        r.body = self.buf.split_to(len).to_vec();
        self.net.count(|c| c.requests += 1);
        Some(r)
    }

    /// Reads some bytes of whatever comes; false (counted) once the gateway closed.
    pub(crate) async fn fill(&mut self) -> bool {
        match self.io.read_buf(&mut self.buf).await {
            Ok(n) if n > 0 => true,
            _ => {
                self.net.count(|c| c.closed += 1);
                false
            }
        }
    }

    /// Bytes read and not yet taken as a request.
    pub(crate) fn unread(&self) -> usize {
        self.buf.len()
    }

    /// Writes `bytes` to the gateway (errors ignored: the gateway may have gone).
    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        let _ = self.io.write_all(bytes).await;
    }

    /// Holds the connection without answering until the gateway closes it (counted).
    pub(crate) async fn hold(mut self) {
        while self.fill().await {
            self.buf.clear();
        }
    }

    /// Serves the connection as HTTP/2: each request stream goes to `f` (with the net, to
    /// count); counts the connection closed when it ends.
    pub(crate) async fn h2<F, Fut>(self, f: F)
    where
        F: Fn(
            http::Request<h2::RecvStream>,
            h2::server::SendResponse<Bytes>,
            Arc<MemoryNet>,
        ) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let net = self.net.clone();
        let Ok(mut conn) = h2::server::handshake(self.io).await else {
            return;
        };
        while let Some(Ok((req, respond))) = conn.accept().await {
            net.count(|c| c.requests += 1);
            tokio::spawn(f(req, respond, net.clone()));
        }
        net.count(|c| c.closed += 1);
    }
}

/// An HTTP/1.1 response with a body, keeping the connection.
pub(crate) fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A serving peer that answers every request with `ok(body)` after `delay`.
pub(crate) fn answers(delay: Duration, body: &'static str) -> Peer {
    serve(move |mut s| async move {
        while s.request().await.is_some() {
            tokio::time::sleep(delay).await;
            s.send(&ok(body)).await;
        }
    })
}

/// A serving peer that reads each request and never answers it.
pub(crate) fn silent() -> Peer {
    serve(|mut s| async move { while s.request().await.is_some() {} })
}

/// The failure the gateway answered with, as typed facts (the error itself is not kept:
/// it carries I/O errors that cannot be cloned).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    /// The status the failure policy gave it.
    pub status: u16,
    /// Its flag.
    pub flag: Flag,
    /// Which error it was.
    pub variant: Variant,
    /// The upstream phase it happened in, if an upstream's.
    pub phase: Option<Phase>,
    /// The limit a timeout ran into, if it was one.
    pub timeout: Option<TimeoutSource>,
    /// How long the failed step had run (upstream errors).
    pub elapsed: Option<Duration>,
    /// The cause as the access log gives it.
    pub cause: String,
}

/// Which [`ProxyError`] an answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// [`ProxyError::Upstream`].
    Upstream,
    /// [`ProxyError::DeadlineSpent`].
    DeadlineSpent,
    /// [`ProxyError::CallerBudgetTooShort`].
    CallerBudgetTooShort,
    /// [`ProxyError::Shutdown`].
    Shutdown,
    /// [`ProxyError::NoEndpoint`].
    NoEndpoint,
    /// [`ProxyError::Overflow`].
    Overflow,
    /// [`ProxyError::BadCallResponse`].
    BadCallResponse,
    /// Anything else.
    Other,
}

impl Answer {
    fn of(err: &ProxyError, d: &Decision) -> Answer {
        let (phase, timeout, elapsed) = match err {
            ProxyError::Upstream(u) => (
                Some(u.kind.phase()),
                u.kind.timeout_source(),
                Some(u.elapsed),
            ),
            _ => (None, None, None),
        };
        Answer {
            status: d.status,
            flag: d.flag,
            variant: match err {
                ProxyError::Upstream(_) => Variant::Upstream,
                ProxyError::DeadlineSpent { .. } => Variant::DeadlineSpent,
                ProxyError::CallerBudgetTooShort { .. } => Variant::CallerBudgetTooShort,
                ProxyError::Shutdown { .. } => Variant::Shutdown,
                ProxyError::NoEndpoint { .. } => Variant::NoEndpoint,
                ProxyError::Overflow(_) => Variant::Overflow,
                ProxyError::BadCallResponse { .. } => Variant::BadCallResponse,
                _ => Variant::Other,
            },
            phase,
            timeout,
            elapsed,
            cause: err.to_string(),
        }
    }
}

/// What the test client received.
#[derive(Debug, Default)]
pub(crate) struct Got {
    /// The response head the sink was given.
    pub status: Option<u16>,
    /// Its header fields.
    pub headers: Option<Headers>,
    /// Body bytes flushed.
    pub body: Vec<u8>,
    /// The body ended.
    pub finished: bool,
    /// Error answers written (at most one per request).
    pub answers: Vec<Answer>,
}

/// What the client and the test share.
#[derive(Debug, Default)]
struct Shared {
    leave: Notify,
    /// The client's end of its request body (dropped: the body ends).
    body: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    /// Body bytes the gateway has read.
    taken: std::sync::atomic::AtomicU64,
    seen: Mutex<Got>,
    events: Events,
    /// Nothing is buffered-but-unflushed here: `data` goes straight to `seen` at flush.
    pending: Mutex<Vec<u8>>,
}

/// The test's handle on its client: make it leave, see what it got.
#[derive(Debug, Clone)]
pub(crate) struct ClientHandle(Arc<Shared>);

impl ClientHandle {
    /// The client goes away (its connection resets).
    pub(crate) fn leave(&self) {
        self.0.leave.notify_one();
    }

    /// The client sends `bytes` of its body.
    pub(crate) fn send(&self, bytes: &[u8]) {
        if let Some(tx) = &*self.0.body.lock().expect("lock") {
            let _ = tx.send(Bytes::copy_from_slice(bytes));
        }
    }

    /// The client's body ends.
    pub(crate) fn end_body(&self) {
        self.0.body.lock().expect("lock").take();
    }

    /// Body bytes the gateway has read so far.
    pub(crate) fn taken(&self) -> u64 {
        self.0.taken.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until what the client got satisfies `cond`.
    pub(crate) async fn until(&self, what: &str, cond: impl Fn(&Got) -> bool) {
        self.0
            .events
            .until(what, || cond(&self.0.seen.lock().expect("lock")))
            .await
    }
}

/// A client protocol in memory: one request, its body sent through its handle, its
/// responses kept.
#[derive(Debug)]
pub(crate) struct TestFront {
    body: mpsc::UnboundedReceiver<Bytes>,
    /// The body's declared length.
    declared: Option<u64>,
    arrival: Instant,
    shared: Arc<Shared>,
    reusable: bool,
}

impl TestFront {
    /// A client whose request arrived now; its body is what the handle sends until it
    /// ends it.
    pub(crate) fn new() -> (TestFront, ClientHandle) {
        let shared = Arc::new(Shared::default());
        let (tx, body) = mpsc::unbounded_channel();
        *shared.body.lock().expect("lock") = Some(tx);
        let front = TestFront {
            body,
            declared: None,
            arrival: Instant::now(),
            shared: shared.clone(),
            reusable: false,
        };
        (front, ClientHandle(shared))
    }
}

impl Front for TestFront {
    async fn accept_body(&mut self) -> Result<(), BodyFailure> {
        Ok(())
    }

    fn split(
        &mut self,
    ) -> (
        impl Future<Output = io::Error> + Send + '_,
        impl Sink + Send + '_,
        impl BodySource + '_,
    ) {
        let shared = self.shared.clone();
        let gone = async move {
            shared.leave.notified().await;
            io::Error::from(io::ErrorKind::ConnectionReset)
        };
        let body = TestBody {
            rx: &mut self.body,
            shared: &self.shared,
            left: self.declared,
        };
        (
            gone,
            TestSink {
                shared: &self.shared,
                reusable: &mut self.reusable,
            },
            body,
        )
    }

    async fn respond(&mut self, err: &ProxyError, d: &Decision, _cx: &ErrorContext<'_>) {
        let mut seen = self.shared.seen.lock().expect("lock");
        seen.answers.push(Answer::of(err, d));
        drop(seen);
        self.shared.events.bump();
    }

    async fn tunnel(&mut self, _upstream: ClientConn, _idle: Duration) -> TunnelEnd {
        TunnelEnd::default()
    }

    fn protocol(&self) -> &'static str {
        "HTTP/1.1"
    }

    fn arrival(&self) -> Instant {
        self.arrival
    }

    async fn linger(&mut self) {}
}

/// The test client's request body, as the handle sends it.
struct TestBody<'a> {
    rx: &'a mut mpsc::UnboundedReceiver<Bytes>,
    shared: &'a Arc<Shared>,
    /// Bytes of a declared length still to come: the body ends after them.
    left: Option<u64>,
}

impl BodySource for TestBody<'_> {
    fn poll_chunk(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, BodyFailure>>> {
        if self.left == Some(0) {
            return std::task::Poll::Ready(None);
        }
        let got = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(b)) = &got {
            let n = b.len() as u64;
            self.left = self.left.map(|l| l.saturating_sub(n));
            self.shared
                .taken
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            self.shared.events.bump();
        }
        got.map(|b| b.map(Ok))
    }
}

/// The test client's response sink.
struct TestSink<'a> {
    shared: &'a Arc<Shared>,
    reusable: &'a mut bool,
}

impl Sink for TestSink<'_> {
    fn start(&mut self, head: ResponseStart) -> Result<(), CannotCarry> {
        let mut seen = self.shared.seen.lock().expect("lock");
        seen.status = Some(head.status);
        seen.headers = Some(head.headers);
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) {
        self.shared
            .pending
            .lock()
            .expect("lock")
            .extend_from_slice(bytes);
    }

    fn trailers(&mut self, _fields: Headers) {}

    fn finish(&mut self) {
        self.shared.seen.lock().expect("lock").finished = true;
        *self.reusable = true;
    }

    fn buffered(&self) -> usize {
        self.shared.pending.lock().expect("lock").len()
    }

    fn discard(&mut self) {
        self.shared.pending.lock().expect("lock").clear();
        let mut seen = self.shared.seen.lock().expect("lock");
        seen.status = None;
        seen.headers = None;
    }

    async fn flush(&mut self) -> Result<(), ProxyError> {
        let pending = std::mem::take(&mut *self.shared.pending.lock().expect("lock"));
        self.shared.seen.lock().expect("lock").body.extend(pending);
        self.shared.events.bump();
        Ok(())
    }

    fn reusable(&self) -> bool {
        *self.reusable
    }
}

/// A gateway on the in-memory network, with its access records kept.
pub(crate) struct Harness {
    /// The gateway.
    pub gw: Gateway,
    /// Its upstreams' network.
    pub net: Arc<MemoryNet>,
    records: Arc<Mutex<Vec<AccessRecord>>>,
    /// Resolving it stops the gateway (the drain ran out: 503 `SD`).
    pub kill: Arc<Notify>,
}

/// How one request went.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// What became of the connection.
    pub next: Next,
    /// The request's access record.
    pub record: AccessRecord,
    /// The error answer written, if any.
    pub answer: Option<Answer>,
    /// The response status the client got from the upstream, if one started.
    pub status: Option<u16>,
    /// The body it got.
    pub body: Vec<u8>,
    /// Virtual time from arrival to the record.
    pub took: Duration,
}

impl Harness {
    /// A gateway for `toml` (a complete config; the access log is kept in memory).
    pub(crate) fn new(toml: &str) -> Harness {
        let config = hopline_config::parse(toml, Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("config: {e}"));
        let mut gw = Gateway::new(config).expect("gateway");
        let net = Arc::new(MemoryNet::default());
        for up in &mut gw.upstreams {
            up.memory = Some(net.clone());
        }
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut log = AccessLog::open(&hopline_core::config::AccessLogSink::Off).expect("log");
        log.tap = Some(records.clone());
        gw.log = Arc::new(log);
        Harness {
            gw,
            net,
            records,
            kill: Arc::new(Notify::new()),
        }
    }

    /// A `GET path` from a trusted peer, with `headers`.
    pub(crate) fn get(path: &str, headers: &[(&str, &str)]) -> Request {
        Self::request("GET", path, headers)
    }

    /// A request with no body.
    pub(crate) fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut h = Headers::new();
        h.push("host", "gw.test");
        for (n, v) in headers {
            h.push(
                Bytes::copy_from_slice(n.as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            );
        }
        Request {
            method: Bytes::copy_from_slice(method.as_bytes()),
            target: Bytes::copy_from_slice(path.as_bytes()),
            origin: Bytes::copy_from_slice(path.as_bytes()),
            headers: h,
            has_body: false,
            body_length: None,
            keep_alive: true,
            client_idle: None,
        }
    }

    /// Serves `req` (with `body`) while `script` runs with the client's handle; the
    /// request's outcome once both are done.
    pub(crate) async fn exchange<S, Fut>(&self, mut req: Request, body: &[u8], script: S) -> Outcome
    where
        S: FnOnce(ClientHandle) -> Fut,
        Fut: Future<Output = ()>,
    {
        if !body.is_empty() {
            req.has_body = true;
            req.body_length = Some(body.len() as u64);
            req.headers.push("content-length", body.len().to_string());
        }
        let (front, handle) = TestFront::new();
        handle.send(body);
        handle.end_body();
        self.serve(req, (front, handle), script).await
    }

    /// Serves `req`, whose body (of `declared` length, if given; none: chunked) the
    /// `script` sends through the client's handle as it likes.
    pub(crate) async fn upload<S, Fut>(
        &self,
        mut req: Request,
        declared: Option<u64>,
        script: S,
    ) -> Outcome
    where
        S: FnOnce(ClientHandle) -> Fut,
        Fut: Future<Output = ()>,
    {
        req.has_body = true;
        req.body_length = declared;
        match declared {
            Some(n) => req.headers.push("content-length", n.to_string()),
            None => req.headers.push("transfer-encoding", "chunked"),
        }
        let (front, handle) = TestFront::new();
        self.serve(req, (front, handle), script).await
    }

    async fn serve<S, Fut>(
        &self,
        req: Request,
        (mut front, handle): (TestFront, ClientHandle),
        script: S,
    ) -> Outcome
    where
        S: FnOnce(ClientHandle) -> Fut,
        Fut: Future<Output = ()>,
    {
        front.declared = req.body_length;
        let client = Client {
            peer: "127.0.0.1:40000".parse().expect("peer"),
            tls: None,
            requests: Default::default(),
        };
        let started = Instant::now();
        let kill = self.kill.clone();
        let kill = std::pin::pin!(async move { kill.notified().await });
        let before = self.records.lock().expect("lock").len();
        let (next, ()) = tokio::join!(
            request::serve(&self.gw, &mut front, req, &client, kill),
            script(handle.clone()),
        );
        let took = started.elapsed();
        let record = self.records.lock().expect("lock")[before..]
            .first()
            .cloned()
            .expect("one access record");
        let seen = std::mem::take(&mut *handle.0.seen.lock().expect("lock"));
        Outcome {
            next,
            record,
            answer: seen.answers.first().cloned(),
            status: seen.status,
            body: seen.body,
            took,
        }
    }

    /// Every access record so far.
    pub(crate) fn records(&self) -> Vec<AccessRecord> {
        self.records.lock().expect("lock").clone()
    }

    /// Serves `req` with nothing else happening meanwhile.
    pub(crate) async fn send(&self, req: Request) -> Outcome {
        self.exchange(req, b"", |_| async {}).await
    }
}
