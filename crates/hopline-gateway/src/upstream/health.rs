//! Active health checks (`[upstreams.NAME.health]`): every endpoint is asked `GET path`
//! once per `interval` (jittered, one check per endpoint at a time, each within
//! `timeout`) over its upstream's protocol and TLS. `unhealthy_threshold` failures in a
//! row take it out of balancing, `healthy_threshold` passes in a row bring it back; an
//! endpoint is used only when its health check and outlier detection both say yes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use hopline_core::config::HealthConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::observe::metrics::Metrics;
use crate::stream::{Stream, UpstreamStream};
use crate::upstream::endpoint::{Endpoint, EndpointSet};

/// What a checker needs besides the endpoints.
#[derive(Debug, Clone)]
pub(crate) struct Checker {
    /// The settings.
    pub config: HealthConfig,
    /// TLS client settings, when the upstream speaks TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Speak HTTP/2 (the upstream's `protocol = "h2"`).
    pub h2: bool,
    /// The largest response header list an HTTP/2 check accepts (the upstream's
    /// `max_response_header_bytes`; an HTTP/1 check reads only the status line).
    pub max_header_list: u32,
    /// The `host` header (the upstream's first endpoint as configured).
    pub host: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Starts checking the endpoints of `set` until it is dropped.
pub(crate) fn spawn(checker: Checker, set: &Arc<EndpointSet>) {
    tokio::spawn(run(checker, Arc::downgrade(set)));
}

async fn run(checker: Checker, set: Weak<EndpointSet>) {
    let checker = Arc::new(checker);
    let mut round: u64 = 0;
    loop {
        let Some(s) = set.upgrade() else {
            return;
        };
        let mut checks = JoinSet::new();
        for ep in s.list().iter() {
            let (ep, checker) = (ep.clone(), checker.clone());
            checks.spawn(async move {
                let result = checker.probe(&ep).await;
                (ep, result)
            });
        }
        drop(s);
        while let Some(done) = checks.join_next().await {
            let Ok((ep, result)) = done else { continue };
            let Some(s) = set.upgrade() else {
                return;
            };
            checker.metrics.health_check(&s.upstream, result.is_ok());
            let c = &checker.config;
            s.checked(&ep, result, (c.healthy_threshold, c.unhealthy_threshold));
        }
        round += 1;
        tokio::time::sleep(jittered(checker.config.interval, round)).await;
    }
}

/// `interval` less up to 10 %, varying by round, so checks of many gateways spread out.
fn jittered(interval: Duration, round: u64) -> Duration {
    let seed = round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id());
    let tenth_ms = (interval.as_millis() / 10).max(1) as u64;
    interval.saturating_sub(Duration::from_millis((seed >> 11) % tenth_ms))
}

impl Checker {
    /// One check of `ep`: the status when it is one of `expect_status`, else why not.
    async fn probe(&self, ep: &Endpoint) -> Result<u16, String> {
        let status = tokio::time::timeout(self.config.timeout, self.ask(ep))
            .await
            .map_err(|_| format!("no answer within {:?}", self.config.timeout))??;
        if self.config.expect_status.contains(&status) {
            Ok(status)
        } else {
            Err(format!(
                "answered {status}, expected {:?}",
                self.config.expect_status
            ))
        }
    }

    async fn ask(&self, ep: &Endpoint) -> Result<u16, String> {
        let tcp = TcpStream::connect(ep.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream: UpstreamStream = match (&self.tls, &ep.server_name) {
            (Some(tls), Some(name)) => Stream::Tls(Box::new(self.tls(tls, name, tcp).await?)),
            _ => Stream::Plain(tcp),
        };
        if self.h2 {
            self.ask_h2(stream).await
        } else {
            self.ask_h1(stream).await
        }
    }

    async fn tls(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        name: &ServerName<'static>,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))
    }

    async fn ask_h1(&self, mut s: UpstreamStream) -> Result<u16, String> {
        let mut req = bytes::BytesMut::new();
        let fields = [
            ("host", self.host.as_str()),
            ("user-agent", "hopline-health-check"),
            ("connection", "close"),
        ];
        hopline_h1::write::put_request(&mut req, b"GET", self.config.path.as_bytes(), fields, b"");
        s.write_all(&req).await.map_err(|e| format!("send: {e}"))?;
        // The status line is all a check needs.
        let mut buf = Vec::with_capacity(256);
        let mut piece = [0u8; 256];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            if buf.len() > 1024 {
                return Err("status line longer than 1024 bytes".into());
            }
            match s.read(&mut piece).await {
                Ok(0) => return Err("closed before answering".into()),
                Ok(n) => buf.extend_from_slice(&piece[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        status_of(&buf).ok_or_else(|| "not an HTTP/1 response".into())
    }

    async fn ask_h2(&self, s: UpstreamStream) -> Result<u16, String> {
        let (mut send, conn) = h2::client::Builder::new()
            .max_header_list_size(self.max_header_list)
            .handshake::<_, bytes::Bytes>(s)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(format!("http://{}{}", self.host, self.config.path))
            .header("user-agent", "hopline-health-check")
            .body(())
            .map_err(|e| format!("request: {e}"))?;
        let answer = async {
            let (response, _) = send
                .send_request(req, true)
                .map_err(|e| format!("send: {e}"))?;
            let r = response.await.map_err(|e| format!("response: {e}"))?;
            Ok::<u16, String>(r.status().as_u16())
        }
        .await;
        driver.abort();
        answer
    }
}

/// The status code of an HTTP/1 status line at the start of `buf`.
fn status_of(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|b| *b == b'\r').next()?;
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let code = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    (100..=599).contains(&code).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.0 503 x\r\n"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(status_of(b"SSH-2.0\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 999 x\r\n"), None);
    }

    #[test]
    fn jitter_stays_within_a_tenth() {
        let i = Duration::from_secs(5);
        for round in 0..100 {
            let d = jittered(i, round);
            assert!(d <= i && d >= i - i / 10, "{d:?}");
        }
    }
}
