//! A tiny request/response server for control APIs (hopline's admin API, the chaos
//! proxy's Toxiproxy API): whole bodies, keep-alive, bounded waits. Not for proxying.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::head::RequestHead;
use crate::write::put_response;
use crate::{read_body_chunk, read_request_head, wait_first_byte, BodyDecoder, HeadLimits};

/// Keep-alive idle limit of an API connection.
const IDLE: Duration = Duration::from_secs(120);
/// Limit for a whole request head.
const HEAD: Duration = Duration::from_secs(10);
/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// An API answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `content-type` (sent only with a body).
    pub content_type: &'static str,
    /// More header fields.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: String,
}

impl Reply {
    /// A reply with a body of `content_type` and no extra fields.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

/// Serves `listener` until `shutdown` resolves, answering each request with `handler`
/// (which may wait, e.g. for a listener to close, before it answers).
pub async fn serve<F, Fut>(listener: TcpListener, shutdown: impl Future<Output = ()>, handler: F)
where
    F: Fn(RequestHead, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send,
{
    let handler = Arc::new(handler);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => if let Ok((s, _)) = a {
                let h = handler.clone();
                conns.spawn(async move { connection(s, h.as_ref()).await });
            },
        }
        while conns.try_join_next().is_some() {}
    }
    conns.abort_all();
}

async fn connection<F, Fut>(mut s: TcpStream, handler: &F)
where
    F: Fn(RequestHead, Vec<u8>) -> Fut,
    Fut: Future<Output = Reply>,
{
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if wait_first_byte(&mut s, &mut buf, IDLE).await.is_err() {
            return;
        }
        let until = tokio::time::Instant::now() + HEAD;
        let Ok(head) =
            read_request_head(&mut s, &mut buf, HeadLimits::new(64 * 1024), until, HEAD).await
        else {
            return;
        };
        let length = head.body_length();
        let mut decoder = BodyDecoder::new(length);
        let mut body = Vec::new();
        loop {
            match read_body_chunk(&mut s, &mut buf, &mut decoder).await {
                Ok(Some(p)) if body.len() + p.len() <= MAX_BODY => body.extend_from_slice(&p),
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => break,
            }
        }
        let keep_alive = head.keep_alive();
        let head_only = &head.method[..] == b"HEAD";
        let reply = handler(head, body).await;
        let mut out = BytesMut::new();
        let content_type = (!reply.body.is_empty()).then_some(("content-type", reply.content_type));
        let fields = content_type
            .into_iter()
            .chain(reply.headers.iter().map(|(n, v)| (*n, v.as_str())));
        put_response(
            &mut out,
            reply.status,
            fields,
            reply.body.as_bytes(),
            !keep_alive,
            head_only,
        );
        if s.write_all(&out).await.is_err() || !keep_alive {
            return;
        }
    }
}
