//! The HTTP/1.1 client side: reading a whole response with [`read_response`] (requests
//! are written by [`crate::write`]). The drill's load generator, its chaos API client,
//! the OTLP exporter and the legacy gateway use it. Callers bound the waits (each with
//! its own deadline).

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::body::{BodyDecoder, BodyError};
use crate::head::ResponseHead;
use crate::io::{read_body_chunk, read_response_head, HeadError};

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// Writing the request failed.
    #[error("write failed")]
    Write(#[source] std::io::Error),
    /// The response head could not be read.
    #[error("reading the response head failed")]
    Head(#[source] HeadError),
    /// The response's framing is invalid (e.g. content-length with transfer-encoding).
    #[error("invalid response framing")]
    Framing(#[source] crate::head::ParseError),
    /// The response body could not be read.
    #[error("reading the response body failed")]
    Body(#[source] BodyError),
    /// The response body is larger than the caller reads.
    #[error("response body over {limit} bytes")]
    TooLarge {
        /// The most the caller reads.
        limit: usize,
    },
}

/// A response read whole.
#[derive(Debug)]
pub struct Response {
    /// Its head.
    pub head: ResponseHead,
    /// Its body, decoded (chunked framing removed).
    pub body: Bytes,
}

/// Writes `request` on `io` and reads the whole response (head of at most `max_head`
/// bytes, body of at most `max_body`; interim 1xx skipped), leaving any bytes after it in `buf`. A `HEAD` request's
/// response has no body.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    request: &[u8],
    max_head: usize,
    max_body: usize,
) -> Result<Response, ResponseError> {
    io.write_all(request).await.map_err(ResponseError::Write)?;
    let head = read_response_head(io, buf, max_head)
        .await
        .map_err(ResponseError::Head)?;
    let length = head
        .body_length(request.starts_with(b"HEAD "))
        .map_err(ResponseError::Framing)?;
    let mut decoder = BodyDecoder::new(length);
    let mut body = BytesMut::new();
    while let Some(piece) = read_body_chunk(io, buf, &mut decoder)
        .await
        .map_err(ResponseError::Body)?
    {
        if body.len() + piece.len() > max_body {
            return Err(ResponseError::TooLarge { limit: max_body });
        }
        body.extend_from_slice(&piece);
    }
    Ok(Response {
        head,
        body: body.freeze(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_written_and_its_response_read_whole() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let serve = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut got = vec![0u8; 1024];
            let n = server.read(&mut got).await.expect("read");
            server
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nnext")
                .await
                .expect("write");
            String::from_utf8_lossy(&got[..n]).into_owned()
        });
        let mut out = BytesMut::new();
        crate::write::put_request(&mut out, b"POST", b"/x?y=1", [("host", "h")], b"{}");
        let mut buf = BytesMut::new();
        let r = exchange(&mut client, &mut buf, &out, 4096, 4096)
            .await
            .expect("response");
        assert_eq!((r.head.status, &r.body[..]), (201, &b"abc"[..]));
        assert_eq!(&buf[..], b"next", "bytes after the response stay in buf");
        assert_eq!(
            serve.await.expect("server"),
            "POST /x?y=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\n{}"
        );
    }
}
