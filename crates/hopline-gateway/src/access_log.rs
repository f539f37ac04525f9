//! The access log: one JSON object per request, written by a dedicated thread.
//!
//! Requests hand a finished line to a channel and never wait on the disk; the writer
//! batches whatever is queued and flushes whenever the queue runs dry, so a line is
//! visible within microseconds at low load and costs one write per batch at high load.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use hopline_core::config::LogConfig;

/// One request, as logged.
#[derive(Debug, Clone, Default)]
pub struct AccessRecord {
    /// When the request arrived.
    pub ts: Option<SystemTime>,
    /// `x-request-id` (received or generated).
    pub request_id: String,
    /// Client address.
    pub client: String,
    /// Method.
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// Route name, empty when none matched.
    pub route: String,
    /// Status sent (499 when the client left first).
    pub status: u16,
    /// The upstream's own status, when it answered.
    pub upstream_status: Option<u16>,
    /// Flags, e.g. `["UT"]`.
    pub flags: Vec<&'static str>,
    /// The true cause of a failure, with its source chain.
    pub cause: Option<String>,
    /// Upstream name of the last attempt.
    pub upstream: Option<String>,
    /// Endpoint of the last attempt.
    pub endpoint: Option<String>,
    /// Zone of the upstream.
    pub zone: Option<&'static str>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Time from arrival to the end of the response (or of the failure).
    pub duration: Duration,
    /// The request's deadline budget.
    pub deadline: Option<Duration>,
    /// Calls served from fallbacks (aggregate routes).
    pub degraded: Vec<String>,
    /// Bytes of response body sent.
    pub bytes_sent: u64,
    /// Aggregate routes: one record per call.
    pub calls: Vec<crate::aggregate::CallRecord>,
}

impl AccessRecord {
    /// The record as one JSON line (with the trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(384);
        s.push_str("{\"ts\":");
        json_str(
            &mut s,
            &hopline_core::time::rfc3339(self.ts.unwrap_or_else(SystemTime::now)),
        );
        s.push_str(",\"request_id\":");
        json_str(&mut s, &self.request_id);
        s.push_str(",\"client\":");
        json_str(&mut s, &self.client);
        s.push_str(",\"method\":");
        json_str(&mut s, &self.method);
        s.push_str(",\"path\":");
        json_str(&mut s, &self.path);
        s.push_str(",\"route\":");
        json_str(&mut s, &self.route);
        let _ = write!(s, ",\"status\":{}", self.status);
        match self.upstream_status {
            Some(u) => {
                let _ = write!(s, ",\"upstream_status\":{u}");
            }
            None => s.push_str(",\"upstream_status\":null"),
        }
        s.push_str(",\"flags\":[");
        for (i, f) in self.flags.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            json_str(&mut s, f);
        }
        s.push_str("],\"cause\":");
        json_opt(&mut s, self.cause.as_deref());
        s.push_str(",\"upstream\":");
        json_opt(&mut s, self.upstream.as_deref());
        s.push_str(",\"endpoint\":");
        json_opt(&mut s, self.endpoint.as_deref());
        s.push_str(",\"zone\":");
        json_opt(&mut s, self.zone);
        let _ = write!(
            s,
            ",\"attempts\":{},\"duration_ms\":{:.3},\"deadline_ms\":",
            self.attempts,
            self.duration.as_secs_f64() * 1000.0
        );
        match self.deadline {
            Some(d) => {
                let _ = write!(s, "{}", d.as_millis());
            }
            None => s.push_str("null"),
        }
        s.push_str(",\"degraded\":[");
        for (i, d) in self.degraded.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            json_str(&mut s, d);
        }
        let _ = write!(s, "],\"bytes_sent\":{}", self.bytes_sent);
        if !self.calls.is_empty() {
            s.push_str(",\"calls\":[");
            for (i, c) in self.calls.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str("{\"name\":");
                json_str(&mut s, &c.name);
                s.push_str(",\"upstream\":");
                json_str(&mut s, &c.upstream);
                s.push_str(",\"zone\":");
                json_str(&mut s, c.zone);
                match c.status {
                    Some(st) => {
                        let _ = write!(s, ",\"status\":{st}");
                    }
                    None => s.push_str(",\"status\":null"),
                }
                s.push_str(",\"cause\":");
                json_opt(&mut s, c.cause.as_deref());
                let _ = write!(
                    s,
                    ",\"fallback\":{},\"attempts\":{},\"duration_ms\":{:.3}}}",
                    c.fallback,
                    c.attempts,
                    c.duration.as_secs_f64() * 1000.0
                );
            }
            s.push(']');
        }
        s.push('}');
        s.push('\n');
        s
    }
}

fn json_opt(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.push_str("null"),
    }
}

/// Appends `v` as a JSON string literal.
pub fn json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Where access lines go; cheap to share between connections.
///
/// Lines are appended to a 64 KiB in-memory buffer under an uncontended lock (no syscall,
/// no thread wake-up per request); the buffer is written out when it fills and at least
/// every [`FLUSH_EVERY`] by a small flusher thread, and on [`AccessLog::close`].
#[derive(Debug)]
pub struct AccessLog {
    sink: Option<Arc<Sink>>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

/// Longest a finished request's line waits before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

const BUFFER: usize = 64 * 1024;

struct Sink {
    buf: Mutex<Vec<u8>>,
    out: Mutex<Box<dyn Write + Send>>,
    stop: AtomicBool,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

impl Sink {
    /// Writes out whatever is buffered. The buffer lock is held only to swap buffers.
    fn flush(&self) {
        let pending = {
            let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
            if buf.is_empty() {
                return;
            }
            std::mem::replace(&mut *buf, Vec::with_capacity(BUFFER))
        };
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(&pending);
        let _ = out.flush();
    }
}

impl AccessLog {
    /// Opens the sink named by the config.
    pub fn open(config: &LogConfig) -> io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match config {
            LogConfig::Off => {
                return Ok(AccessLog {
                    sink: None,
                    flusher: Mutex::new(None),
                })
            }
            LogConfig::Stdout => Box::new(io::stdout()),
            LogConfig::File(p) => Box::new(open_append(p)?),
        };
        let sink = Arc::new(Sink {
            buf: Mutex::new(Vec::with_capacity(BUFFER)),
            out: Mutex::new(out),
            stop: AtomicBool::new(false),
        });
        let s = sink.clone();
        let handle = std::thread::Builder::new()
            .name("hopline-access-log".into())
            .spawn(move || {
                while !s.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(FLUSH_EVERY);
                    s.flush();
                }
                s.flush();
            })?;
        Ok(AccessLog {
            sink: Some(sink),
            flusher: Mutex::new(Some(handle)),
        })
    }

    /// Appends one record.
    pub fn write(&self, record: &AccessRecord) {
        let Some(sink) = &self.sink else { return };
        let line = record.to_json();
        let full = {
            let mut buf = sink.buf.lock().unwrap_or_else(|p| p.into_inner());
            buf.extend_from_slice(line.as_bytes());
            buf.len() >= BUFFER
        };
        if full {
            sink.flush();
        }
    }

    /// Writes out everything and stops the flusher. Later writes still buffer, and are
    /// written by the next `close`.
    pub fn close(&self) {
        let Some(sink) = &self.sink else { return };
        sink.stop.store(true, Ordering::Release);
        if let Some(h) = self
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.thread().unpark();
            let _ = h.join();
        }
        sink.flush();
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_append(p: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(p)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "method",
            "path",
            "route",
            "status",
            "flags",
            "cause",
            "upstream",
            "zone",
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
