//! The access log: one JSON object per request, buffered in memory and written out in
//! 64 KiB batches.
//!
//! A request renders its line into a per-thread scratch buffer (no allocation, no
//! `core::fmt`) and appends it to the shared buffer under a short lock; the buffer goes
//! out when it fills and at least every [`FLUSH_EVERY`] (the gateway runs
//! [`AccessLog::flush_every`] on its runtime). There is no writer thread: with
//! `serve --threads 1` the whole gateway is one thread, which also keeps the kernel's
//! per-syscall file lookups on their single-threaded fast path. Like nginx's buffered
//! `access_log`, a batch is one `write` to the page cache made by whichever thread filled
//! it.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hopline_core::config::AccessLogSink;
use hopline_core::text::{push_json_str, push_millis3, push_socket_addr, push_u64};
use hopline_core::time::push_rfc3339;
use hopline_core::Phase;

/// What the access log and the metrics say for a request that matched no route.
pub(crate) const NO_ROUTE: &str = "(none)";

/// One request, as logged. Fields borrow what the request already holds (shared names,
/// the head's bytes, socket addresses) and are only rendered as text when the line is written.
#[derive(Debug, Clone, Default)]
pub struct AccessRecord {
    /// When the request arrived.
    pub ts: Option<SystemTime>,
    /// hopline's own unique id of the request.
    pub request_id: String,
    /// The `x-request-id` the client sent, if any (forwarded upstream unchanged).
    pub client_request_id: Option<String>,
    /// The W3C trace the request belongs to, and hopline's span in it.
    pub trace: Option<crate::observe::trace::TraceCx>,
    /// Client address.
    pub client: Option<SocketAddr>,
    /// The client's address as `server.trusted_proxies` lets hopline know it: the peer,
    /// or behind trusted proxies the first untrusted `x-forwarded-for` entry from the right.
    pub client_ip: Option<std::net::IpAddr>,
    /// The connection's TLS session (TLS listener only).
    pub tls: Option<Arc<TlsSession>>,
    /// `HTTP/1.1`, `HTTP/1.0` or `HTTP/2`; none when the request could not be read.
    pub protocol: Option<&'static str>,
    /// gRPC requests: the `grpc-status` the client got (hopline's, when it failed the
    /// request; 1 CANCELLED when the client left).
    pub grpc_status: Option<u16>,
    /// gRPC requests: the upstream's `grpc-status`, when it answered.
    pub upstream_grpc_status: Option<u16>,
    /// A WebSocket upgrade that became a tunnel: its bytes each way and who closed it.
    pub tunnel: Option<TunnelEnd>,
    /// Method.
    pub method: Bytes,
    /// The path (normalized once routing normalized it), without the query.
    pub path: Bytes,
    /// The query (after `?`), sensitive values redacted (`log.redact_query`); none
    /// without a `?`.
    pub query: Option<Bytes>,
    /// Route name; none when no route matched (logged as `"(none)"`).
    pub route: Option<Arc<str>>,
    /// Status sent (499 when the client left first).
    pub status: u16,
    /// The upstream's own status, when it answered.
    pub upstream_status: Option<u16>,
    /// Flags, e.g. `["UT"]`.
    pub flags: Vec<&'static str>,
    /// The true cause of a failure, with its source chain.
    pub cause: Option<String>,
    /// Upstream name of the last attempt.
    pub upstream: Option<Arc<str>>,
    /// Endpoint of the last attempt.
    pub endpoint: Option<SocketAddr>,
    /// Zone of the upstream.
    pub zone: Option<&'static str>,
    /// The phase of the upstream exchange a failure happened in, or (client gone) was
    /// waiting in: `connect`, `tls`, `request`, `response_headers`, `response_body`.
    pub phase: Option<&'static str>,
    /// The upstream connection was a pooled one (`None`: no upstream connection used).
    pub upstream_reused: Option<bool>,
    /// How long that pooled connection had been idle.
    pub upstream_idle: Option<Duration>,
    /// How long the request waited in its upstream's queue for a slot (`None`: it did not
    /// wait).
    pub queue: Option<Duration>,
    /// How long the client's connection had been idle before this request (`None` on its
    /// first request).
    pub client_idle: Option<Duration>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Time from arrival to the end of the response (or of the failure).
    pub duration: Duration,
    /// The request's deadline budget.
    pub deadline: Option<Duration>,
    /// Calls served from fallbacks (aggregate routes).
    pub degraded: Vec<Arc<str>>,
    /// Bytes of response body sent.
    pub bytes_sent: u64,
    /// Aggregate routes: one record per call.
    pub calls: Vec<CallRecord>,
}

impl AccessRecord {
    /// The `x-request-id` the request travels under: the client's, or hopline's own.
    pub fn x_request_id(&self) -> &str {
        self.client_request_id
            .as_deref()
            .unwrap_or(&self.request_id)
    }

    /// The record as one JSON line (with the trailing newline).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(384);
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends the record as one JSON line (with the trailing newline) to `s`.
    pub fn write_json(&self, s: &mut Vec<u8>) {
        s.extend_from_slice(b"{\"ts\":\"");
        push_rfc3339(s, self.ts.unwrap_or_else(SystemTime::now));
        s.extend_from_slice(b"\",\"request_id\":");
        push_json_str(s, &self.request_id);
        s.extend_from_slice(b",\"client_request_id\":");
        json_opt(s, self.client_request_id.as_deref());
        match &self.trace {
            Some(t) => {
                s.extend_from_slice(b",\"trace_id\":\"");
                hopline_core::trace::put_hex(s, &t.trace_id.0);
                s.extend_from_slice(b"\",\"span_id\":\"");
                hopline_core::trace::put_hex(s, &t.span_id.0);
                s.push(b'"');
            }
            None => s.extend_from_slice(b",\"trace_id\":null,\"span_id\":null"),
        }
        s.extend_from_slice(b",\"client\":\"");
        if let Some(c) = self.client {
            push_socket_addr(s, c);
        }
        s.extend_from_slice(b"\",\"client_ip\":");
        match self.client_ip {
            Some(std::net::IpAddr::V4(v4)) => {
                s.push(b'"');
                s.extend_from_slice(hopline_core::text::ipv4(v4, &mut [0; 15]));
                s.push(b'"');
            }
            Some(ip) => {
                let _ = write!(s, "\"{ip}\"");
            }
            None => s.extend_from_slice(b"null"),
        }
        if let Some(t) = &self.tls {
            s.extend_from_slice(b",\"tls_version\":\"");
            s.extend_from_slice(t.version.as_bytes());
            s.extend_from_slice(b"\",\"tls_handshake_ms\":");
            push_millis3(s, t.handshake);
            s.extend_from_slice(b",\"sni\":");
            json_opt(s, t.sni.as_deref());
        }
        s.extend_from_slice(b",\"protocol\":");
        json_opt(s, self.protocol);
        s.extend_from_slice(b",\"method\":");
        push_json_bytes(s, &self.method);
        s.extend_from_slice(b",\"path\":");
        push_json_bytes(s, &self.path);
        s.extend_from_slice(b",\"query\":");
        match &self.query {
            Some(q) => push_json_bytes(s, q),
            None => s.extend_from_slice(b"null"),
        }
        s.extend_from_slice(b",\"route\":");
        // The same spelling as the metrics' route label when no route matched.
        push_json_str(s, self.route.as_deref().unwrap_or(NO_ROUTE));
        s.extend_from_slice(b",\"status\":");
        push_u64(s, u64::from(self.status));
        s.extend_from_slice(b",\"upstream_status\":");
        push_opt_u64(s, self.upstream_status.map(u64::from));
        // Only on gRPC requests, so other lines stay as they were.
        if self.grpc_status.is_some() || self.upstream_grpc_status.is_some() {
            s.extend_from_slice(b",\"grpc_status\":");
            push_opt_u64(s, self.grpc_status.map(u64::from));
            s.extend_from_slice(b",\"upstream_grpc_status\":");
            push_opt_u64(s, self.upstream_grpc_status.map(u64::from));
        }
        s.extend_from_slice(b",\"flags\":[");
        for (i, f) in self.flags.iter().enumerate() {
            if i > 0 {
                s.push(b',');
            }
            push_json_str(s, f);
        }
        s.extend_from_slice(b"],\"cause\":");
        json_opt(s, self.cause.as_deref());
        s.extend_from_slice(b",\"upstream\":");
        json_opt(s, self.upstream.as_deref());
        s.extend_from_slice(b",\"endpoint\":");
        match self.endpoint {
            Some(e) => {
                s.push(b'"');
                push_socket_addr(s, e);
                s.push(b'"');
            }
            None => s.extend_from_slice(b"null"),
        }
        s.extend_from_slice(b",\"zone\":");
        json_opt(s, self.zone);
        s.extend_from_slice(b",\"phase\":");
        json_opt(s, self.phase);
        s.extend_from_slice(b",\"upstream_reused\":");
        s.extend_from_slice(match self.upstream_reused {
            Some(true) => b"true",
            Some(false) => b"false",
            None => b"null",
        });
        s.extend_from_slice(b",\"upstream_idle_ms\":");
        match self.upstream_idle {
            Some(d) => push_millis3(s, d),
            None => s.extend_from_slice(b"null"),
        }
        s.extend_from_slice(b",\"queue_ms\":");
        match self.queue {
            Some(d) => push_millis3(s, d),
            None => s.extend_from_slice(b"null"),
        }
        s.extend_from_slice(b",\"client_idle_ms\":");
        match self.client_idle {
            Some(d) => push_millis3(s, d),
            None => s.extend_from_slice(b"null"),
        }
        s.extend_from_slice(b",\"attempts\":");
        push_u64(s, u64::from(self.attempts));
        s.extend_from_slice(b",\"duration_ms\":");
        push_millis3(s, self.duration);
        s.extend_from_slice(b",\"deadline_ms\":");
        push_opt_u64(
            s,
            self.deadline
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        );
        s.extend_from_slice(b",\"degraded\":[");
        for (i, d) in self.degraded.iter().enumerate() {
            if i > 0 {
                s.push(b',');
            }
            push_json_str(s, d);
        }
        s.extend_from_slice(b"],\"bytes_sent\":");
        push_u64(s, self.bytes_sent);
        if let Some(t) = &self.tunnel {
            s.extend_from_slice(b",\"tunnel\":{\"bytes_up\":");
            push_u64(s, t.bytes_up);
            s.extend_from_slice(b",\"bytes_down\":");
            push_u64(s, t.bytes_down);
            s.extend_from_slice(b",\"closed_by\":");
            push_json_str(s, t.closed_by);
            s.push(b'}');
        }
        if !self.calls.is_empty() {
            s.extend_from_slice(b",\"calls\":[");
            for (i, c) in self.calls.iter().enumerate() {
                if i > 0 {
                    s.push(b',');
                }
                s.extend_from_slice(b"{\"name\":");
                push_json_str(s, &c.name);
                s.extend_from_slice(b",\"upstream\":");
                push_json_str(s, &c.upstream);
                s.extend_from_slice(b",\"zone\":");
                push_json_str(s, c.zone);
                s.extend_from_slice(b",\"status\":");
                push_opt_u64(s, c.status.map(u64::from));
                s.extend_from_slice(b",\"cause\":");
                json_opt(s, c.cause.as_deref());
                s.extend_from_slice(b",\"phase\":");
                json_opt(s, c.phase.map(|ph| ph.label()));
                s.extend_from_slice(if c.fallback {
                    b",\"fallback\":true,\"attempts\":"
                } else {
                    b",\"fallback\":false,\"attempts\":"
                });
                push_u64(s, u64::from(c.attempts));
                s.extend_from_slice(b",\"duration_ms\":");
                push_millis3(s, c.duration);
                s.push(b'}');
            }
            s.push(b']');
        }
        s.extend_from_slice(b"}\n");
    }
}

/// Bytes as a JSON string: as they are when valid UTF-8 (checked without building a
/// copy), invalid sequences as U+FFFD otherwise.
fn push_json_bytes(out: &mut Vec<u8>, v: &[u8]) {
    match std::str::from_utf8(v) {
        Ok(text) => push_json_str(out, text),
        Err(_) => push_json_str(out, &String::from_utf8_lossy(v)),
    }
}

fn json_opt(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(v) => push_json_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_opt_u64(out: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => push_u64(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// Where access lines go; cheap to share between connections.
///
/// Lines are appended to a 64 KiB in-memory buffer under an uncontended lock (no syscall,
/// no thread wake-up per request). A full buffer, and every [`FLUSH_EVERY`] whatever is
/// buffered ([`AccessLog::flush_every`]), is handed to **one writer thread** through a
/// bounded queue ([`QUEUE`] buffers); no worker ever waits on the output. When the output
/// does not keep up (a full container log pipe, a stalled disk) and the queue is full, the
/// buffer is dropped and its lines counted ([`AccessLog::dropped`], exported as
/// `hopline_access_log_dropped_total`): every request is either in the log or counted
/// there. [`AccessLog::flush`] (at shutdown, on drop) waits a bounded time for the writer.
#[derive(Debug)]
pub struct AccessLog {
    sink: Option<Sink>,
    /// In process tests: every record, as written.
    #[cfg(test)]
    pub(crate) tap: Option<Arc<Mutex<Vec<AccessRecord>>>>,
}

/// Longest a finished request's line waits before it is written.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(50);

const BUFFER: usize = 64 * 1024;

/// Buffers waiting for the writer thread at most (1 MiB of lines).
pub(crate) const QUEUE: usize = 16;

/// Longest [`AccessLog::flush`] waits for the writer (a stalled output must not hold a
/// shutdown for ever).
const FLUSH_WAIT: Duration = Duration::from_secs(2);

thread_local! {
    /// Where a line is rendered before it is copied into the shared buffer, so the lock is
    /// held only for the copy.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
}

struct Sink {
    /// Lines not yet handed to the writer, and how many.
    buf: Mutex<(Vec<u8>, u64)>,
    /// To the writer thread.
    tx: std::sync::mpsc::SyncSender<Job>,
    /// Buffers the writer has emptied, for the next hand-over (a 64 KiB allocation and
    /// a free on another thread per buffer otherwise).
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Lines dropped because the writer's queue was full.
    dropped: std::sync::atomic::AtomicU64,
}

/// What the writer thread is asked.
enum Job {
    /// Write these bytes out.
    Write(Vec<u8>),
    /// Say when everything before this is written.
    Flush(std::sync::mpsc::SyncSender<()>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

impl Sink {
    fn start(mut out: Box<dyn Write + Send>) -> io::Result<Sink> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
        let spare = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let back = spare.clone();
        std::thread::Builder::new()
            .name("hopline-log".into())
            .spawn(move || {
                // Ends when the last sender (the sink) is dropped.
                for job in rx {
                    match job {
                        Job::Write(mut bytes) => {
                            let _ = out.write_all(&bytes);
                            let _ = out.flush();
                            bytes.clear();
                            let mut spare = back.lock().unwrap_or_else(|p| p.into_inner());
                            if spare.is_empty() {
                                spare.push(bytes);
                            }
                        }
                        Job::Flush(done) => {
                            let _ = out.flush();
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(Sink {
            buf: Mutex::new((Vec::with_capacity(BUFFER), 0)),
            tx,
            spare,
            dropped: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Hands whatever is buffered to the writer without waiting: when its queue is full,
    /// the lines are dropped and counted. The buffer lock is held only to swap buffers.
    fn hand_over(&self) {
        let (pending, lines) = {
            let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
            if buf.0.is_empty() {
                drop(buf);
                // Nothing logged for a tick: an idle gateway keeps no spare buffer (a
                // burst's memory is returned), a busy one never gets here.
                self.spare.lock().unwrap_or_else(|p| p.into_inner()).clear();
                return;
            }
            // The writer only ever takes `spare` alone: no lock order to get wrong.
            let next = self
                .spare
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(BUFFER));
            let lines = std::mem::take(&mut buf.1);
            (std::mem::replace(&mut buf.0, next), lines)
        };
        if self.tx.try_send(Job::Write(pending)).is_err() {
            self.dropped
                .fetch_add(lines, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Hands over what is buffered and waits (at most [`FLUSH_WAIT`]) until the writer
    /// has written it.
    fn flush(&self) {
        self.hand_over();
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let mut job = Job::Flush(done);
        // The queue may be full for a moment: retry, 1 ms apart, for at most FLUSH_WAIT.
        let mut tries = FLUSH_WAIT.as_millis();
        loop {
            match self.tx.try_send(job) {
                Ok(()) => break,
                Err(std::sync::mpsc::TrySendError::Full(j)) if tries > 0 => {
                    job = j;
                    tries -= 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        let _ = wait.recv_timeout(FLUSH_WAIT);
    }
}

impl AccessLog {
    /// Opens the sink named by the config.
    pub fn open(config: &AccessLogSink) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match config {
            AccessLogSink::Off => {
                return Ok(AccessLog {
                    sink: None,
                    #[cfg(test)]
                    tap: None,
                })
            }
            AccessLogSink::Stdout => Box::new(io::stdout()),
            AccessLogSink::File(p) => Box::new(open_append(p)?),
        };
        Ok(AccessLog {
            sink: Some(Sink::start(out)?),
            #[cfg(test)]
            tap: None,
        })
    }

    /// Writes out whatever is buffered and waits (at most 2 s) until it is written (later
    /// writes buffer again and go out with the next flush, or on drop).
    pub fn flush(&self) {
        if let Some(sink) = &self.sink {
            sink.flush();
        }
    }

    /// Lines dropped so far because the output did not keep up.
    pub fn dropped(&self) -> u64 {
        self.sink
            .as_ref()
            .map_or(0, |s| s.dropped.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Flushes every [`FLUSH_EVERY`], forever (the gateway runs this on its runtime and
    /// drops it when it stops). Returns at once when the log is off.
    pub async fn flush_every(&self) {
        if self.sink.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(sink) = &self.sink {
                sink.hand_over();
            }
        }
    }

    /// Appends one record.
    pub fn write(&self, record: &AccessRecord) {
        #[cfg(test)]
        if let Some(tap) = &self.tap {
            tap.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(record.clone());
        }
        self.append(|line| record.write_json(line));
    }

    /// Writes a line for a client TLS handshake that failed (with `log.tls_errors`):
    /// `{"ts":…,"event":"tls_error","client":…,"reason":…,"cause":…,"duration_ms":…}`.
    pub fn write_tls_error(&self, client: SocketAddr, reason: &str, cause: &str, took: Duration) {
        self.append(|s| {
            s.extend_from_slice(b"{\"ts\":\"");
            push_rfc3339(s, SystemTime::now());
            s.extend_from_slice(b"\",\"event\":\"tls_error\",\"client\":\"");
            push_socket_addr(s, client);
            s.extend_from_slice(b"\",\"reason\":");
            push_json_str(s, reason);
            s.extend_from_slice(b",\"cause\":");
            push_json_str(s, cause);
            s.extend_from_slice(b",\"duration_ms\":");
            push_millis3(s, took);
            s.extend_from_slice(b"}\n");
        });
    }

    /// Says that something changed state, twice: `hopline: {human}` on stderr for the
    /// operator watching the process, and an event line in the access log for whoever
    /// reads it later: `{"ts":…,"event":EVENT,KEY:VALUE…,"state":…,"detail":…}`.
    ///
    /// The events: `endpoint` (ejected, returned, unhealthy, healthy), `upstream` (panic
    /// mode on and off), `dns` (a name's addresses changed, or it cannot be resolved),
    /// `egress` (a shared scope switched between the cluster budget and its local share),
    /// `call` (an aggregate call's fallback has another shape than its answers),
    /// `tracing` (span export failed), `accept` (a listener cannot accept).
    pub fn announce(
        &self,
        event: &str,
        about: &[(&str, &str)],
        state: &str,
        detail: &str,
        human: std::fmt::Arguments<'_>,
    ) {
        eprintln!("hopline: {human}");
        self.write_state_event(event, about, state, detail);
    }

    /// `{"ts":…,"event":EVENT,KEY:VALUE…,"state":…,"detail":…}`: something changed state.
    fn write_state_event(&self, event: &str, about: &[(&str, &str)], state: &str, detail: &str) {
        self.append(|s| {
            s.extend_from_slice(b"{\"ts\":\"");
            push_rfc3339(s, SystemTime::now());
            s.extend_from_slice(b"\",\"event\":");
            push_json_str(s, event);
            for (key, value) in about {
                s.push(b',');
                push_json_str(s, key);
                s.push(b':');
                push_json_str(s, value);
            }
            s.extend_from_slice(b",\"state\":");
            push_json_str(s, state);
            s.extend_from_slice(b",\"detail\":");
            push_json_str(s, detail);
            s.extend_from_slice(b"}\n");
        });
    }

    fn append(&self, render: impl FnOnce(&mut Vec<u8>)) {
        let Some(sink) = &self.sink else { return };
        let full = SCRATCH.with(|scratch| {
            let mut line = scratch.borrow_mut();
            line.clear();
            render(&mut line);
            let mut buf = sink.buf.lock().unwrap_or_else(|p| p.into_inner());
            buf.0.extend_from_slice(&line);
            buf.1 += 1;
            buf.0.len() >= BUFFER
        });
        if full {
            sink.hand_over();
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

fn open_append(p: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(p)
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Not started yet.
    Pending,
    /// In flight.
    Running,
    /// Finished (answered or failed).
    Done,
}

/// One call's record, for the access log.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// Call name.
    pub name: Arc<str>,
    /// Upstream name.
    pub upstream: Arc<str>,
    /// Upstream zone.
    pub zone: &'static str,
    /// State.
    pub state: CallState,
    /// Upstream status, when it answered.
    pub status: Option<u16>,
    /// Why the call fell back (or failed), if it did.
    pub cause: Option<String>,
    /// The phase of the upstream exchange it failed (or was cut off) in.
    pub phase: Option<Phase>,
    /// Served from its fallback.
    pub fallback: bool,
    /// Time from start to end.
    pub duration: Duration,
    /// Attempts made.
    pub attempts: u32,
}

/// How a tunnel ended, for its one access-log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelEnd {
    /// Bytes from the client to the upstream.
    pub bytes_up: u64,
    /// Bytes from the upstream to the client.
    pub bytes_down: u64,
    /// Who closed first: `client`, `upstream`, or `idle` (silent too long).
    pub closed_by: &'static str,
}

/// A client connection's TLS session, as the access log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSession {
    /// From accept to the end of the handshake.
    pub handshake: Duration,
    /// `"1.2"` or `"1.3"`.
    pub version: &'static str,
    /// The server name the client asked for, if any.
    pub sni: Option<Box<str>>,
    /// The client chose HTTP/2 by ALPN.
    pub h2: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_that_are_not_utf8_are_logged_as_replacement_characters() {
        let r = AccessRecord {
            method: Bytes::from_static(b"GET"),
            path: Bytes::from_static(b"/caf\xc3\xa9/\xff\xfe?q"),
            ..AccessRecord::default()
        };
        let line = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/caf\u{e9}/\u{fffd}\u{fffd}?q", "{line}");
    }

    #[test]
    fn json_escapes_and_has_every_field() {
        let r = AccessRecord {
            path: "/a\"b\n".into(),
            status: 504,
            flags: vec!["UT"],
            cause: Some("x".into()),
            ..AccessRecord::default()
        };
        let line = r.to_json();
        assert!(line.ends_with("}\n"));
        assert!(line.contains("\"path\":\"/a\\\"b\\n\""), "{line}");
        for key in [
            "ts",
            "request_id",
            "trace_id",
            "span_id",
            "method",
            "path",
            "route",
            "status",
            "flags",
            "cause",
            "upstream",
            "zone",
            "phase",
            "attempts",
            "duration_ms",
            "deadline_ms",
            "degraded",
        ] {
            assert!(
                line.contains(&format!("\"{key}\":")),
                "{key} missing in {line}"
            );
        }
    }
}
