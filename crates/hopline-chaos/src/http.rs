//! HTTP-aware proxying for proxies declared `http = true`: requests are parsed at their
//! boundaries so faults can answer in place of the upstream (`abort`, `cc_defense`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use hopline_h1::body::{encode_chunk, LAST_CHUNK};
use hopline_h1::head::reason_phrase;
use hopline_h1::write::{
    end_head, put_framing, put_request, put_response, put_status_line, Framing,
};
use hopline_h1::{
    read_body_chunk, read_request_head, read_response_head, BodyDecoder, BodyLength, HeadLimits,
    RequestHead,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::pipe::{Dice, ToxicList};
use crate::toxic::ToxicKind;

const MAX_HEAD: usize = 64 * 1024;
/// The largest request body an HTTP-mode proxy reads (it reads bodies whole): larger is
/// answered 413 and the connection closed.
const MAX_BODY: usize = 16 << 20;
const IDLE: Duration = Duration::from_secs(300);

/// Requests per client IP in the current second, for `cc_defense`.
#[derive(Debug, Default)]
pub(crate) struct ClientRates {
    counts: Mutex<HashMap<IpAddr, (u64, u64)>>,
}

impl ClientRates {
    /// Counts one request from `ip` and returns how many it sent in this second.
    fn hit(&self, ip: IpAddr) -> u64 {
        let sec = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 100_000 {
            m.retain(|_, (s, _)| *s == sec);
        }
        let e = m.entry(ip).or_insert((sec, 0));
        if e.0 != sec {
            *e = (sec, 0);
        }
        e.1 += 1;
        e.1
    }
}

fn local_answer(status: u16, location: Option<&str>) -> BytesMut {
    let body = format!(
        "{status} {} (injected by hopline chaos)\n",
        reason_phrase(status)
    );
    let mut out = BytesMut::new();
    let fields = location.map(|l| ("location", l)).into_iter().chain([
        ("x-hopline-chaos", "injected"),
        ("content-type", "text/plain"),
    ]);
    put_response(&mut out, status, fields, body.as_bytes(), false, false);
    out
}

fn render_request(head: &RequestHead, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    // The body was read whole: it goes on with a length of its own.
    let fields = head.headers.iter().filter(|(n, _)| {
        !n.eq_ignore_ascii_case(b"content-length") && !n.eq_ignore_ascii_case(b"transfer-encoding")
    });
    put_request(&mut out, &head.method, &head.target, fields, body);
    out
}

/// Serves one client connection request by request. `connect` opens the upstream
/// connection the first time a request has to be forwarded.
pub(crate) async fn serve<F, Fut>(
    mut client: TcpStream,
    ip: IpAddr,
    rx: watch::Receiver<ToxicList>,
    mut dice: Dice,
    rates: &ClientRates,
    connect: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<TcpStream>>,
{
    let mut cbuf = BytesMut::with_capacity(8192);
    let mut upstream: Option<(TcpStream, BytesMut)> = None;
    loop {
        if hopline_h1::wait_first_byte(&mut client, &mut cbuf, IDLE)
            .await
            .is_err()
        {
            return;
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        let Ok(head) = read_request_head(
            &mut client,
            &mut cbuf,
            HeadLimits::new(MAX_HEAD),
            until,
            Duration::from_secs(30),
        )
        .await
        else {
            return;
        };
        let length = head.body_length();
        let too_big = matches!(length, BodyLength::Length(n) if n > MAX_BODY as u64);
        let mut decoder = BodyDecoder::new(length);
        let mut body = BytesMut::new();
        if !too_big {
            loop {
                match read_body_chunk(&mut client, &mut cbuf, &mut decoder).await {
                    Ok(Some(p)) if body.len() + p.len() <= MAX_BODY => body.extend_from_slice(&p),
                    Ok(Some(_)) | Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
        if too_big || !decoder.is_done() {
            let _ = client.write_all(&local_answer(413, None)).await;
            return;
        }
        let keep_alive = head.keep_alive();

        let list = rx.borrow().clone();
        let mut answer = None;
        for t in list.iter().filter(|t| t.kind.is_http()) {
            if !dice.active(t) {
                continue;
            }
            match &t.kind {
                ToxicKind::CcDefense {
                    max_rps_per_client,
                    status,
                    location,
                } if rates.hit(ip) > *max_rps_per_client => {
                    answer = Some(local_answer(*status, Some(location)));
                    break;
                }
                ToxicKind::Abort {
                    status,
                    probability,
                } if dice.rng().chance(*probability) => {
                    answer = Some(local_answer(*status, None));
                    break;
                }
                _ => {}
            }
        }
        if let Some(a) = answer {
            if client.write_all(&a).await.is_err() || !keep_alive {
                return;
            }
            continue;
        }

        if upstream.is_none() {
            match connect().await {
                Some(s) => upstream = Some((s, BytesMut::with_capacity(8192))),
                None => return,
            }
        }
        let Some((up, ubuf)) = upstream.as_mut() else {
            return;
        };
        if up.write_all(&render_request(&head, &body)).await.is_err() {
            return;
        }
        let Ok(resp) = read_response_head(up, ubuf, MAX_HEAD).await else {
            return;
        };
        let Ok(rlen) = resp.body_length(&head.method[..] == b"HEAD") else {
            return;
        };
        let mut out = BytesMut::with_capacity(1024);
        put_status_line(&mut out, resp.status, &resp.reason);
        resp.headers.write_to(&mut out);
        // A body that ends with the upstream's connection goes on chunked, so that the
        // client's connection can stay open.
        let framing = match rlen {
            BodyLength::UntilClose => Framing::Coded(b"chunked"),
            _ => Framing::Unstated,
        };
        put_framing(&mut out, framing);
        end_head(&mut out, false);
        let chunked = matches!(rlen, BodyLength::Chunked | BodyLength::UntilClose);
        let mut rdec = BodyDecoder::new(rlen);
        loop {
            match read_body_chunk(up, ubuf, &mut rdec).await {
                Ok(Some(p)) if chunked => encode_chunk(&mut out, &p),
                Ok(Some(p)) => out.extend_from_slice(&p),
                Ok(None) => {
                    if chunked {
                        out.put_slice(LAST_CHUNK);
                    }
                    break;
                }
                Err(_) => return,
            }
            if out.len() > 64 * 1024 {
                if client.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
        if client.write_all(&out).await.is_err() || !keep_alive {
            return;
        }
        if !resp.keep_alive() || rlen == BodyLength::UntilClose {
            upstream = None;
        }
    }
}
