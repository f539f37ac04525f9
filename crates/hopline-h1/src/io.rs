//! Async reading of heads and bodies with the waits the caller chooses, and detection of a
//! peer that went away.

use std::future::pending;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

use crate::body::{BodyDecoder, BodyError, Decoded};
use crate::head::{
    parse_request, parse_response, HeadLimits, ParseError, RequestHead, ResponseHead,
};

const READ_CHUNK: usize = 8 * 1024;

/// Buffer allocated when a new message starts arriving: enough for typical request heads.
const FIRST_READ: usize = 4 * 1024;

/// Why no head could be read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// No byte of a new message arrived within the idle wait (normal keep-alive expiry).
    #[error("no request within the idle timeout")]
    Idle,
    /// The peer closed before sending any byte of a new message (normal close).
    #[error("connection closed")]
    Closed,
    /// The peer closed in the middle of a head.
    #[error("connection closed in the middle of a head")]
    Incomplete,
    /// The head did not complete in time.
    #[error("head not complete within {0:?}")]
    Timeout(Duration),
    /// The head is invalid or too large.
    #[error("bad head")]
    Parse(#[source] ParseError),
    /// Reading failed.
    #[error("read failed")]
    Io(#[source] io::Error),
}

async fn fill<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    io.read_buf(buf).await
}

/// Waits up to `wait` for the first byte of a new message, keeping `buf`'s memory.
///
/// [`HeadError::Idle`] when none comes (keep-alive expiry, or a silent new connection),
/// [`HeadError::Closed`] when the peer closes first. Cancel-safe.
pub async fn wait_first_byte<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    wait: Duration,
) -> Result<(), HeadError> {
    if !buf.is_empty() {
        return Ok(());
    }
    first_read(timeout(wait, fill(io, buf)).await)
}

/// Like [`wait_first_byte`], but an idle connection holds no read buffer meanwhile (as
/// nginx frees its client header buffer on idle keep-alive connections): an empty `buf` is
/// released, readiness is awaited without one, and a fresh buffer is allocated only when
/// bytes are there to read. Thousands of idle keep-alive connections then cost little
/// more than their sockets. Cancel-safe.
pub async fn wait_first_byte_unbuffered(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    wait: Duration,
) -> Result<(), HeadError> {
    if !buf.is_empty() {
        return Ok(());
    }
    *buf = BytesMut::new();
    let first = async {
        // `poll_read_ready` rather than `readable()`: the same wake-up, but this future is
        // a reference (8 bytes) where `readable()`'s is 152, and it is part of every idle
        // keep-alive connection's task.
        std::future::poll_fn(|cx| io.poll_read_ready(cx)).await?;
        buf.reserve(FIRST_READ);
        // `read_buf` (not `try_read_buf`): a short read tells tokio the socket is drained,
        // which saves the next read's EAGAIN round trip.
        io.read_buf(buf).await
    };
    first_read(timeout(wait, first).await)
}

fn first_read(r: Result<io::Result<usize>, tokio::time::error::Elapsed>) -> Result<(), HeadError> {
    match r {
        Err(_) => Err(HeadError::Idle),
        Ok(Ok(0)) => Err(HeadError::Closed),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(HeadError::Io(e)),
    }
}

/// Reads a request head that must be complete by `deadline`; `limit` is the configured
/// timeout, reported in [`HeadError::Timeout`].
pub async fn read_request_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    limits: HeadLimits,
    deadline: Instant,
    limit: Duration,
) -> Result<RequestHead, HeadError> {
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_request(buf, limits).map_err(HeadError::Parse)? {
                return Ok(head);
            }
        }
        match timeout_at(deadline, fill(io, buf)).await {
            Err(_) => return Err(HeadError::Timeout(limit)),
            Ok(Ok(0)) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(Ok(0)) => return Err(HeadError::Incomplete),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(HeadError::Io(e)),
        }
    }
}

/// Reads a response head, skipping interim 1xx responses (except 101). The caller bounds
/// the wait. `Closed` means the peer closed before sending any byte.
pub async fn read_response_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<ResponseHead, HeadError> {
    read_response_head_noting(io, buf, max_head, &mut false).await
}

/// [`read_response_head`] that sets `received` once any byte of a response arrived — an
/// interim 1xx included, whose bytes are gone from `buf` once skipped. A connection that
/// dies after that is not the stale keep-alive race and must not be retried.
pub async fn read_response_head_noting<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max_head: usize,
    received: &mut bool,
) -> Result<ResponseHead, HeadError> {
    loop {
        if !buf.is_empty() {
            *received = true;
            if let Some(head) = parse_response(buf, max_head).map_err(HeadError::Parse)? {
                if (100..200).contains(&head.status) && head.status != 101 {
                    continue;
                }
                return Ok(head);
            }
        }
        match fill(io, buf).await {
            Ok(0) if buf.is_empty() && !*received => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Incomplete),
            Ok(_) => {}
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Reads the next piece of a body; `Ok(None)` at its end. Cancel-safe.
pub async fn read_body_chunk<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    decoder: &mut BodyDecoder,
) -> Result<Option<Bytes>, BodyError> {
    loop {
        match decoder.decode(buf)? {
            Decoded::Data(d) => return Ok(Some(d)),
            Decoded::End => return Ok(None),
            Decoded::NeedMore => {
                if fill(io, buf).await.map_err(BodyError::Io)? == 0 {
                    decoder.on_eof()?;
                    return Ok(None);
                }
            }
        }
    }
}

/// Appends to `buf` what the peer has already sent, without waiting: `Some` with the
/// bytes read (0 at EOF), `None` when nothing is there yet. On a tokio socket whose last
/// read drained it, nothing is read (no system call) until it is ready again.
pub async fn fill_ready<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> Option<io::Result<usize>> {
    let mut read = std::pin::pin!(fill(io, buf));
    std::future::poll_fn(|cx| match std::future::Future::poll(read.as_mut(), cx) {
        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// Resolves when the peer has gone away: EOF (FIN) or a read error (e.g. RST). Bytes that
/// arrive meanwhile (pipelined requests) are kept in `buf`; once `buf` holds `cap` bytes,
/// reading stops and this never resolves (the write side will notice instead). Cancel-safe.
pub async fn watch_gone<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cap: usize,
) -> io::Error {
    loop {
        if buf.len() >= cap {
            return pending().await;
        }
        match fill(io, buf).await {
            Ok(0) => {
                return io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed the connection (FIN)",
                )
            }
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn fill_ready_reads_what_is_there_and_never_waits() {
        let (mut peer, mut io) = tokio::io::duplex(64);
        let mut buf = BytesMut::new();
        assert!(
            fill_ready(&mut io, &mut buf).await.is_none(),
            "nothing sent yet"
        );
        peer.write_all(b"abc").await.expect("write");
        assert_eq!(
            fill_ready(&mut io, &mut buf)
                .await
                .expect("ready")
                .expect("read"),
            3
        );
        assert_eq!(&buf[..], b"abc");
        assert!(fill_ready(&mut io, &mut buf).await.is_none(), "drained");
        drop(peer);
        assert_eq!(
            fill_ready(&mut io, &mut buf)
                .await
                .expect("eof")
                .expect("read"),
            0
        );
    }
}
