//! The TLS listener's side of a connection: the handshake, bounded by
//! `header_read_timeout` from accept; a plain-HTTP request answered 400 instead of a hang;
//! every failure counted by reason (and logged only with `log.tls_errors`).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ProtocolVersion;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::gateway::Gateway;
use crate::observe::access_log::TlsSession;
use crate::stream::{ClientStream, Stream};

/// The first byte of a TLS handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;

/// The 400 for a client that spoke plain HTTP to the TLS port.
fn plain_http_answer() -> bytes::BytesMut {
    let mut out = bytes::BytesMut::new();
    let body = b"hopline: plain HTTP sent to the TLS port; use https://\r\n";
    let fields = [("content-type", "text/plain")];
    hopline_h1::write::put_response(&mut out, 400, fields, body, true, false);
    out
}

/// Why a client handshake failed: the `reason` label of
/// `hopline_tls_handshake_errors_total`.
fn reason(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        None => "io",
        // The client refused us: usually it does not trust our certificate.
        Some(rustls::Error::AlertReceived(_)) => "client_alert",
        Some(rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol) => {
            "incompatible"
        }
        Some(_) => "protocol",
    }
}

/// Runs the server handshake on `tcp`, accepted at `accepted`. `None` when the
/// connection ended in the handshake (counted, logged if asked, closed).
pub(crate) async fn handshake(
    gw: &Gateway,
    config: Arc<rustls::ServerConfig>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
) -> Option<(ClientStream, TlsSession)> {
    let until = accepted + gw.config.server.header_read_timeout;
    let mut first = [0u8; 1];
    let failed = |reason: &'static str, detail: String| {
        gw.metrics.tls_handshake_failed(reason);
        if gw.config.log.tls_errors {
            gw.log
                .write_tls_error(peer, reason, &detail, accepted.elapsed());
        }
    };
    match timeout_at(until, tcp.peek(&mut first)).await {
        Err(_) => {
            failed(
                "timeout",
                "no TLS client hello within header_read_timeout".into(),
            );
            return None;
        }
        // Connected and left (a probe): not a handshake.
        Ok(Ok(0)) => return None,
        Ok(Err(e)) => {
            failed("io", e.to_string());
            return None;
        }
        Ok(Ok(_)) if first[0] != HANDSHAKE_RECORD && first[0].is_ascii_alphabetic() => {
            failed("plain_http", "plain HTTP request on the TLS port".into());
            // The rest of the request is still arriving: read it away after the
            // answer, or the close becomes an RST that can destroy the answer.
            if let Ok(Ok(())) = timeout_at(until, tcp.write_all(&plain_http_answer())).await {
                crate::client::h1::linger(&mut tcp, &mut bytes::BytesMut::new()).await;
            }
            return None;
        }
        Ok(Ok(_)) => {}
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match timeout_at(until, acceptor.accept(tcp)).await {
        Err(_) => {
            failed(
                "timeout",
                "TLS handshake not done within header_read_timeout".into(),
            );
            None
        }
        Ok(Err(e)) => {
            failed(reason(&e), hopline_core::error::cause_chain(&e));
            None
        }
        Ok(Ok(tls)) => {
            let took = accepted.elapsed();
            gw.metrics.tls_handshake_done(took);
            let conn = tls.get_ref().1;
            let session = TlsSession {
                handshake: took,
                version: match conn.protocol_version() {
                    Some(ProtocolVersion::TLSv1_3) => "1.3",
                    _ => "1.2",
                },
                sni: conn.server_name().map(Into::into),
                h2: conn.alpn_protocol() == Some(b"h2"),
            };
            Some((Stream::Tls(Box::new(tls)), session))
        }
    }
}
