//! The incident's Go business gateway re-created in Rust, bugs included on purpose, for
//! drills. DO NOT copy anything from here into a real service.
//!
//! Usage: `legacy-gateway --listen ADDR --coupon HOST:PORT --coin HOST:PORT --sub-coin HOST:PORT
//! [--coupon-ca FILE --coupon-sni NAME]`
//!
//! With `--coupon-ca`, the coupon (payment channel) call is HTTPS, as in the Go original:
//! verified against that CA under the name `--coupon-sni`, the handshake bounded only by Go's
//! `DefaultTransport` `TLSHandshakeTimeout` (10 s) — the one timeout the Go client had.
//!
//! `GET /api/benefits?uid=N` calls coupons → coin → sub-coin **in sequence**, as the Go
//! handler did, and reproduces each defect the post-mortem found:
//!
//! 1. **The client timeout is built but never applied** — `ClientOptions { timeout: 1s }`
//!    is passed to `http_send`, which never sets it on the client (the missing
//!    `client.Timeout = options.timeout`): calls through a sick NAT hang forever.
//! 2. **`send` races the call against the caller's context** and, when the *caller* goes
//!    away, returns `ErrClientTimeOut` — logged as `下游服务器超时` ("downstream server
//!    timeout"), the wrong cause; the original network error is never logged.
//! 3. **The call it abandoned keeps running**: it was started on its own task (the Go
//!    goroutine) and nothing stops it.
//! 4. **Degradation ignores cancellation**: after the caller is gone the handler still
//!    moves on to the next call (each immediately "times out" the same way).
//! 5. **No server timeouts**: no header/read/write/idle limits at all (Go's zero values).
//!
//! One JSON log line per request on stdout, plus one per logged error, like the Go service.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, BytesMut};
use hopline_h1::{read_body_chunk, read_request_head, watch_gone, BodyDecoder, HeadLimits};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The Go error object behind the misleading log line.
const ERR_CLIENT_TIMEOUT: (u32, &str) = (64012, "下游服务器超时");

/// Effectively forever: Go's zero timeout, i.e. none.
const NO_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// How the coupon call speaks TLS: the client config and the name verified.
type Tls = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

/// Go's `http.DefaultTransport.TLSHandshakeTimeout`.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

struct Upstreams {
    coupon: String,
    coupon_tls: Option<Tls>,
    coin: String,
    sub_coin: String,
}

/// `utils.ClientOption`: the options the Go code built.
struct ClientOptions {
    #[allow(dead_code)] // BUG 1 on purpose: built, passed, never applied.
    timeout: Duration,
}

fn log(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn ts() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `utils.HttpSend`: one GET, with the options ignored (BUG 1).
async fn http_send(
    addr: String,
    path: String,
    opts: ClientOptions,
    tls: Option<Tls>,
) -> Result<Vec<u8>, String> {
    let _ = opts; // the missing line: `client.Timeout = options.timeout`
    let s = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: {e}"))?;
    match tls {
        None => exchange(s, &addr, &path).await,
        Some((config, name)) => {
            let connector = tokio_rustls::TlsConnector::from(config);
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connector.connect(name, s)).await {
                Err(_) => Err("net/http: TLS handshake timeout".into()),
                Ok(Err(e)) => Err(format!("tls: {e}")),
                Ok(Ok(s)) => exchange(s, &addr, &path).await,
            }
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    addr: &str,
    path: &str,
) -> Result<Vec<u8>, String> {
    let mut req = BytesMut::with_capacity(128);
    let fields = [("host", addr), ("connection", "close")];
    hopline_h1::write::put_request(&mut req, b"GET", path.as_bytes(), fields, b"");
    let mut buf = BytesMut::with_capacity(4096);
    let r = hopline_h1::client::exchange(&mut s, &mut buf, &req, 64 * 1024, 16 << 20)
        .await
        .map_err(|e| hopline_core::error::cause_chain(&e))?;
    if r.head.status != 200 {
        return Err(format!("status {}", r.head.status));
    }
    Ok(r.body.to_vec())
}

/// `Send`: starts the call on its own task (the goroutine) and races it against the
/// caller's context (BUGS 2 and 3).
async fn send(
    ctx: &mut watch::Receiver<bool>,
    addr: &str,
    path: &str,
    tls: Option<Tls>,
) -> Result<Vec<u8>, (u32, String)> {
    let opts = ClientOptions {
        timeout: Duration::from_secs(1),
    };
    let call = tokio::spawn(http_send(addr.to_string(), path.to_string(), opts, tls));
    tokio::select! {
        r = call => match r {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(e)) => Err((502, e)),
            Err(e) => Err((500, e.to_string())),
        },
        // The caller went away: report it as a downstream timeout. The spawned call is
        // not aborted; it keeps running on its own.
        _ = ctx.wait_for(|gone| *gone) => Err((ERR_CLIENT_TIMEOUT.0, ERR_CLIENT_TIMEOUT.1.to_string())),
    }
}

async fn benefits(ups: &Upstreams, uid: &str, ctx: &mut watch::Receiver<bool>) -> String {
    let get = |name: &'static str, addr: String, path: String, tls: Option<Tls>| {
        let mut ctx = ctx.clone();
        async move {
            match send(&mut ctx, &addr, &path, tls).await {
                Ok(body) => String::from_utf8_lossy(&body).into_owned(),
                Err((code, msg)) => {
                    // "不返回错误 降级" — degrade, log, and carry on (BUG 4).
                    log(
                        serde_json::json!({"ts": ts(), "level": "error", "msg": format!("get {name} failed"), "code": code, "err": msg}),
                    );
                    "null".to_string()
                }
            }
        }
    };
    let coupons = get(
        "account coupon",
        ups.coupon.clone(),
        format!("/coupons?uid={uid}"),
        ups.coupon_tls.clone(),
    )
    .await;
    let coins = get(
        "account coin",
        ups.coin.clone(),
        format!("/coin?uid={uid}"),
        None,
    )
    .await;
    let sub_coins = get(
        "sub account coin",
        ups.sub_coin.clone(),
        format!("/sub-coin?uid={uid}"),
        None,
    )
    .await;
    format!("{{\"coupons\":{coupons},\"coin\":{coins},\"sub_coin\":{sub_coins}}}")
}

async fn connection(mut s: TcpStream, peer: SocketAddr, ups: Arc<Upstreams>) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // BUG 5: no ReadHeaderTimeout / IdleTimeout.
        let Ok(head) = read_request_head(
            &mut s,
            &mut buf,
            HeadLimits::new(1 << 20),
            tokio::time::Instant::now() + NO_TIMEOUT,
            NO_TIMEOUT,
        )
        .await
        else {
            return;
        };
        let start = Instant::now();
        let len = head.body_length();
        let mut dec = BodyDecoder::new(len);
        while let Ok(Some(_)) = read_body_chunk(&mut s, &mut buf, &mut dec).await {}
        let uid = head
            .target_str()
            .split("uid=")
            .nth(1)
            .unwrap_or("0")
            .split('&')
            .next()
            .unwrap_or("0")
            .to_string();
        let (status, body) = if head.path() == "/api/benefits" {
            // net/http cancels the request context when the connection's background read
            // sees the client go away.
            let (tx, mut ctx) = watch::channel(false);
            let body = {
                let (mut rd, _) = s.split();
                let handler = benefits(&ups, &uid, &mut ctx);
                tokio::pin!(handler);
                let mut gone = false;
                loop {
                    tokio::select! {
                        b = &mut handler => break b,
                        _ = watch_gone(&mut rd, &mut buf, 64 * 1024), if !gone => {
                            gone = true;
                            let _ = tx.send(true);
                        }
                    }
                }
            };
            (200, body)
        } else {
            (404, "{\"error\":\"not found\"}".to_string())
        };
        let mut out = BytesMut::new();
        out.put_slice(format!("HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", if status == 200 { "OK" } else { "Not Found" }, body.len()).as_bytes());
        out.put_slice(body.as_bytes());
        let written = s.write_all(&out).await.is_ok();
        log(serde_json::json!({
            "ts": ts(), "level": "info", "client": peer.to_string(), "path": head.target_str(),
            "status": status, "written": written, "duration_ms": start.elapsed().as_secs_f64() * 1e3,
        }));
        if !written || !head.keep_alive() {
            return;
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(coupon), Some(coin), Some(sub_coin)) = (
        arg(&args, "--listen"),
        arg(&args, "--coupon"),
        arg(&args, "--coin"),
        arg(&args, "--sub-coin"),
    ) else {
        eprintln!("usage: legacy-gateway --listen ADDR --coupon HOST:PORT --coin HOST:PORT --sub-coin HOST:PORT [--coupon-ca FILE --coupon-sni NAME]");
        std::process::exit(2);
    };
    let coupon_tls = arg(&args, "--coupon-ca").map(|ca| {
        let sni = arg(&args, "--coupon-sni").unwrap_or_else(|| {
            coupon
                .rsplit_once(':')
                .map_or(coupon.as_str(), |(h, _)| h)
                .to_string()
        });
        let settings = hopline_core::config::UpstreamTlsConfig {
            ca: Some(ca.into()),
            alpn: vec!["http/1.1".into()],
            ..Default::default()
        };
        let config = hopline_tls::client::client_config(&settings).unwrap_or_else(|e| {
            eprintln!("legacy-gateway: {}", hopline_core::error::cause_chain(&e));
            std::process::exit(2);
        });
        let name = rustls::pki_types::ServerName::try_from(sni).unwrap_or_else(|e| {
            eprintln!("legacy-gateway: --coupon-sni: {e}");
            std::process::exit(2);
        });
        (config, name)
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("legacy-gateway: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("legacy-gateway: cannot listen on {listen}: {e}");
                std::process::exit(1);
            }
        };
        if let Ok(a) = listener.local_addr() {
            eprintln!("legacy-gateway: listening on {a}");
        }
        let ups = Arc::new(Upstreams {
            coupon,
            coupon_tls,
            coin,
            sub_coin,
        });
        loop {
            if let Ok((s, peer)) = listener.accept().await {
                tokio::spawn(connection(s, peer, ups.clone()));
            }
        }
    });
}
