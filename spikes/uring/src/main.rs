//! `hopline-uring-spike epoll|uring LISTEN UPSTREAM`: a deliberately minimal HTTP/1.1
//! keep-alive reverse proxy, written twice with the same logic — once on tokio's
//! current-thread runtime (epoll, one `read`/`write` system call per operation) and once
//! on tokio-uring (every read, write, accept and connect an io_uring submission; the
//! runtime submits what is queued and reaps completions in one `io_uring_enter` per turn).
//!
//! Each client connection gets its own upstream keep-alive connection. Requests must be
//! bodiless (GET); responses must carry `content-length`. No timeouts, no access log, no
//! header rewriting: the point is the difference between the two I/O models, not a
//! proxy. Measured by `spikes/uring/run.sh`.

use std::net::SocketAddr;

/// Bytes of a complete request head at the start of `buf`, if there is one.
fn request_len(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Some(n),
        _ => None,
    }
}

/// Bytes of a complete response (head + content-length body) at the start of `buf`.
fn response_len(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    match res.parse(buf) {
        Ok(httparse::Status::Complete(head)) => {
            let body = res
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })?;
            (buf.len() >= head + body).then_some(head + body)
        }
        _ => None,
    }
}

mod epoll {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Reads into `acc` until `complete` finds a whole message: its length, or `None` at EOF.
    async fn read_message(
        io: &mut TcpStream,
        acc: &mut Vec<u8>,
        complete: fn(&[u8]) -> Option<usize>,
    ) -> std::io::Result<Option<usize>> {
        acc.clear();
        loop {
            if io.read_buf(acc).await? == 0 {
                return Ok(None);
            }
            if let Some(n) = complete(acc) {
                return Ok(Some(n));
            }
        }
    }

    async fn relay(mut client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
        client.set_nodelay(true)?;
        let mut up = TcpStream::connect(upstream).await?;
        up.set_nodelay(true)?;
        let mut req = Vec::with_capacity(4096);
        let mut res = Vec::with_capacity(4096);
        loop {
            let Some(n) = read_message(&mut client, &mut req, request_len).await? else {
                return Ok(());
            };
            up.write_all(&req[..n]).await?;
            let Some(m) = read_message(&mut up, &mut res, response_len).await? else {
                return Ok(());
            };
            client.write_all(&res[..m]).await?;
        }
    }

    pub fn run(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        rt.block_on(async {
            let listener = TcpListener::bind(listen).await?;
            loop {
                let (client, _) = listener.accept().await?;
                tokio::spawn(async move {
                    let _ = relay(client, upstream).await;
                });
            }
        })
    }
}

mod uring {
    use super::*;
    use tokio_uring::net::{TcpListener, TcpStream};

    /// Reads into `acc` (through the owned `chunk` io_uring fills) until `complete` finds a
    /// whole message: its length, or `None` at EOF. `acc` keeps just the message.
    async fn read_message(
        io: &TcpStream,
        chunk: &mut Vec<u8>,
        acc: &mut Vec<u8>,
        complete: fn(&[u8]) -> Option<usize>,
    ) -> std::io::Result<Option<usize>> {
        acc.clear();
        loop {
            let (r, c) = io.read(std::mem::take(chunk)).await;
            *chunk = c;
            let got = r?;
            if got == 0 {
                return Ok(None);
            }
            acc.extend_from_slice(&chunk[..got]);
            if let Some(n) = complete(acc) {
                acc.truncate(n);
                return Ok(Some(n));
            }
        }
    }

    async fn relay(client: TcpStream, upstream: SocketAddr) -> std::io::Result<()> {
        client.set_nodelay(true)?;
        let up = TcpStream::connect(upstream).await?;
        up.set_nodelay(true)?;
        // Owned buffers: io_uring holds them while the kernel works on them.
        let mut req: Vec<u8> = Vec::with_capacity(4096);
        let mut res: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 4096];
        loop {
            if read_message(&client, &mut chunk, &mut req, request_len)
                .await?
                .is_none()
            {
                return Ok(());
            }
            let (r, b) = up.write_all(req).await;
            req = b;
            r?;
            if read_message(&up, &mut chunk, &mut res, response_len)
                .await?
                .is_none()
            {
                return Ok(());
            }
            let (r, b) = client.write_all(res).await;
            res = b;
            r?;
        }
    }

    pub fn run(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
        tokio_uring::start(async {
            let listener = TcpListener::bind(listen)?;
            loop {
                let (client, _) = listener.accept().await?;
                tokio_uring::spawn(async move {
                    let _ = relay(client, upstream).await;
                });
            }
        })
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || std::io::Error::other("usage: hopline-uring-spike epoll|uring LISTEN UPSTREAM");
    let listen: SocketAddr = args
        .get(2)
        .ok_or_else(usage)?
        .parse()
        .map_err(std::io::Error::other)?;
    let upstream: SocketAddr = args
        .get(3)
        .ok_or_else(usage)?
        .parse()
        .map_err(std::io::Error::other)?;
    match args.get(1).map(String::as_str) {
        Some("epoll") => epoll::run(listen, upstream),
        Some("uring") => uring::run(listen, upstream),
        _ => Err(usage()),
    }
}
