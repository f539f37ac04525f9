//! Test support: spawn the real `hopline` binary, read its logs, talk HTTP over loopback.
//!
//! Every spawned process is owned by a [`Proc`] that kills it when dropped, even when a
//! test fails. Nothing listens on a fixed port: processes bind port 0 and print the address.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub(crate) mod dns;
pub(crate) mod pki;

/// Lines a process printed, with a condvar to wait for more.
#[derive(Default)]
pub(crate) struct Lines {
    lines: Mutex<Vec<String>>,
    more: Condvar,
}

impl Lines {
    fn push(&self, l: String) {
        self.lines.lock().expect("lock").push(l);
        self.more.notify_all();
    }

    /// Waits until a line satisfies `pred`, or panics after `within`.
    pub(crate) fn wait_for(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let end = Instant::now() + within;
        let mut lines = self.lines.lock().expect("lock");
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return l.clone();
            }
            let now = Instant::now();
            if now >= end {
                panic!(
                    "timed out waiting for {what}; lines so far:\n{}",
                    lines.join("\n")
                );
            }
            lines = self.more.wait_timeout(lines, end - now).expect("lock").0;
        }
    }

    /// Every line so far.
    pub(crate) fn all(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }
}

/// A running `hopline` process, killed on drop.
pub(crate) struct Proc {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its stdout lines.
    pub stdout: Arc<Lines>,
    /// Its stderr lines.
    pub stderr: Arc<Lines>,
}

fn reader(stream: impl Read + Send + 'static, sink: Arc<Lines>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(l) => sink.push(l),
                Err(_) => break,
            }
        }
    });
}

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hopline")
}

impl Proc {
    /// Starts `hopline ARGS` and waits for its "listening on ADDR" line.
    pub(crate) fn spawn(args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.args(args);
        Proc::spawn_command(cmd)
    }

    /// Starts any program that prints "listening on ADDR" on stderr.
    pub(crate) fn spawn_command(cmd: Command) -> Proc {
        Proc::start(cmd, true).0
    }

    /// Starts `hopline ARGS` with its stdout a pipe nobody reads (a stalled container
    /// log): the test gets the pipe to read when it chooses.
    pub(crate) fn spawn_holding_stdout(args: &[&str]) -> (Proc, std::process::ChildStdout) {
        let mut cmd = Command::new(bin());
        cmd.args(args);
        let (proc, out) = Proc::start(cmd, false);
        (proc, out.expect("stdout held"))
    }

    fn start(mut cmd: Command, read_stdout: bool) -> (Proc, Option<std::process::ChildStdout>) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        let held = child.stdout.take();
        let held = match read_stdout {
            true => {
                reader(held.expect("stdout"), stdout.clone());
                None
            }
            false => held,
        };
        reader(child.stderr.take().expect("stderr"), stderr.clone());
        let mut proc = Proc {
            child,
            addr: "0.0.0.0:0".parse().expect("addr"),
            stdout,
            stderr,
        };
        let line = proc
            .stderr
            .wait_for(Duration::from_secs(20), "listening line", |l| {
                l.contains("listening on ")
            });
        proc.addr = line
            .rsplit("listening on ")
            .next()
            .expect("addr")
            .trim()
            .parse()
            .expect("socket addr");
        (proc, held)
    }

    /// Waits for a JSON stdout line matching `pred`.
    pub(crate) fn wait_json(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let l = self.stdout.wait_for(within, what, |l| {
            serde_json::from_str::<Value>(l)
                .map(|v| pred(&v))
                .unwrap_or(false)
        });
        serde_json::from_str(&l).expect("json")
    }

    /// Every JSON stdout line so far.
    pub(crate) fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .all()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory in KiB (`VmRSS` in `/proc/PID/status`).
    pub(crate) fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for exit, up to `within`.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static CONFIGS: AtomicUsize = AtomicUsize::new(0);

/// Writes `text` to a fresh temp file and returns its path.
pub(crate) fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = temp_dir().join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// The TLS listener's address a gateway printed ("TLS on ADDR").
pub(crate) fn tls_addr(gw: &Proc) -> SocketAddr {
    gw.stderr
        .wait_for(Duration::from_secs(10), "TLS line", |l| {
            l.contains("TLS on ")
        })
        .rsplit("TLS on ")
        .next()
        .expect("addr")
        .trim()
        .parse()
        .expect("tls addr")
}

/// A path as the `&str` a config or a command line needs.
pub(crate) fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("utf8")
}

/// A third-party server (nginx, HAProxy) started by a test: stopped with SIGTERM when
/// dropped, so a master process takes its workers down with it (SIGKILL would leave
/// them running), and killed if it has not exited within 3 s.
pub(crate) struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh directory under the system's temp directory.
pub(crate) fn temp_dir() -> PathBuf {
    let n = CONFIGS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hopline-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Starts a gateway with `[server] listen = 127.0.0.1:0` plus `rest`.
pub(crate) fn gateway(server_extra: &str, rest: &str) -> Proc {
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n{rest}");
    let path = temp_file("hopline.toml", &text);
    Proc::spawn(&[
        "serve",
        "-c",
        path.to_str().expect("utf8"),
        "--threads",
        "2",
    ])
}

/// Config that sends every path to the upstream at `up` (upstream `m`, route `r`).
pub(crate) fn route_all(up: SocketAddr) -> String {
    format!("[upstreams.m]\nendpoints = [\"{up}\"]\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n")
}

/// The admin API address a gateway printed ("admin on ADDR").
pub(crate) fn admin_addr(gw: &Proc) -> SocketAddr {
    gw.stderr
        .wait_for(Duration::from_secs(10), "admin line", |l| {
            l.contains("admin on ")
        })
        .rsplit("admin on ")
        .next()
        .expect("addr")
        .trim()
        .parse()
        .expect("admin addr")
}

/// The value of the first `/metrics` line of `gw` starting with `prefix` (0 when absent).
pub(crate) fn metric(gw: &Proc, prefix: &str) -> f64 {
    let body = get(admin_addr(gw), "/metrics", "").body;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Starts `hopline mock` on a free port with extra args.
pub(crate) fn mock(args: &[&str]) -> Proc {
    let mut all = vec!["mock", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Proc::spawn(&all)
}

/// A loopback port with nothing listening on it.
pub(crate) fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A parsed HTTP response.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Connects with generous timeouts.
pub(crate) fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Reads one response (content-length framed, or until close) from `s`.
pub(crate) fn read_response(s: &mut TcpStream) -> Response {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => panic!(
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(_) => buf.push(byte[0]),
            Err(e) => panic!("read failed: {e}; got {:?}", String::from_utf8_lossy(&buf)),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .expect("status")
        .parse()
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header");
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let mut resp = Response {
        status,
        headers,
        body: String::new(),
    };
    if let Some(len) = resp.header("content-length") {
        let mut body = vec![0u8; len.parse().expect("length")];
        s.read_exact(&mut body).expect("body");
        resp.body = String::from_utf8_lossy(&body).into_owned();
    } else if resp.status == 204 || resp.status == 304 || resp.status < 200 {
        // No content by its status (RFC 9110 §6.4.1): nothing to wait for.
    } else if resp.header("transfer-encoding").is_none() {
        let mut body = Vec::new();
        let _ = s.read_to_end(&mut body);
        resp.body = String::from_utf8_lossy(&body).into_owned();
    }
    resp
}

/// Sends a GET with extra header lines and reads the response on a new connection.
pub(crate) fn get(addr: SocketAddr, path: &str, extra: &str) -> Response {
    let mut s = connect(addr);
    // The address as curl names it (the admin and chaos APIs answer IP literals).
    write!(s, "GET {path} HTTP/1.1\r\nhost: {addr}\r\n{extra}\r\n").expect("write");
    read_response(&mut s)
}

/// Parses a JSON line field as f64.
pub(crate) fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// A hand-written upstream for behaviours a real server only shows by accident
/// (resets, garbage, closing a kept-alive connection). Each accepted connection runs
/// `behave(conn_index, stream)` on its own thread. Stops accepting when dropped.
pub(crate) struct FakeUpstream {
    pub addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeUpstream {
    pub(crate) fn start(behave: impl Fn(usize, TcpStream) + Send + Sync + 'static) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let behave = Arc::new(behave);
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let behave = behave.clone();
                std::thread::spawn(move || behave(i, conn));
            }
        });
        FakeUpstream { addr, stop }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Reads one request head (and ignores any body) from a raw upstream connection.
pub(crate) fn read_request(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) => buf.push(byte[0]),
        }
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A small fixed 200 response.
pub(crate) const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Calls the chaos API: `(status, JSON body or Null)`.
pub(crate) fn api(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = connect(addr);
    write!(s, "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        .expect("write");
    let r = read_response(&mut s);
    let v = if r.body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&r.body).expect("json body")
    };
    (r.status, v)
}

/// Starts `hopline chaos` with its API on a free port.
pub(crate) fn chaos(extra: &[&str]) -> Proc {
    let mut args = vec!["chaos", "--api", "127.0.0.1:0", "--seed", "42"];
    args.extend_from_slice(extra);
    Proc::spawn(&args)
}

/// Creates a proxy to `upstream` and returns its listen address.
pub(crate) fn proxy(chaos: &Proc, name: &str, upstream: SocketAddr, http: bool) -> SocketAddr {
    let (status, v) = api(
        chaos.addr,
        "POST",
        "/proxies",
        &format!(
            r#"{{"name":"{name}","listen":"127.0.0.1:0","upstream":"{upstream}","http":{http}}}"#
        ),
    );
    assert_eq!(status, 201, "{v}");
    v["listen"].as_str().expect("listen").parse().expect("addr")
}

/// Adds a toxic, asserting success.
pub(crate) fn add_toxic(chaos: &Proc, proxy: &str, json: &str) {
    let (status, v) = api(
        chaos.addr,
        "POST",
        &format!("/proxies/{proxy}/toxics"),
        json,
    );
    assert_eq!(status, 200, "{v}");
}

/// An upstream that echoes every byte back and closes its write side at EOF.
pub(crate) fn echo_upstream() -> FakeUpstream {
    FakeUpstream::start(|_, mut s| {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
    })
}

/// Runs `python3 SCRIPT ARGS` (a script in `tests/`) and parses the one JSON line it prints.
pub(crate) fn python_json(script: &str, args: &[&str]) -> Value {
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

/// Runs `hopline check` on a config of `server` (the `[server]` table's lines) and one
/// upstream and route, expects exit 2 (the config is refused) and returns stderr.
#[allow(dead_code)]
pub(crate) fn check_refuses(server: &str) -> String {
    let config = temp_file(
        "refused.toml",
        &format!(
            "[server]\n{server}\n[upstreams.m]\nendpoints = [\"127.0.0.1:9\"]\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"m\"\n"
        ),
    );
    let out = std::process::Command::new(bin())
        .args(["check", "-c", config.to_str().expect("utf8")])
        .output()
        .expect("check");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}
