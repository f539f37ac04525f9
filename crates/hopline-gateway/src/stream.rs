//! A connection that is plain TCP or TLS over TCP, and its borrowed halves.
//!
//! An enum rather than a trait object or generics: one branch per poll, and the plain
//! path keeps tokio's lock-free borrowed TCP split (a TLS stream splits through
//! `tokio::io::split`, whose halves share the one TLS session).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The TLS streams hopline uses: both wrap a TCP stream.
pub trait TlsIo: AsyncRead + AsyncWrite + Unpin {
    /// The TCP stream under the TLS session.
    fn tcp(&self) -> &TcpStream;
}

impl TlsIo for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl TlsIo for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Plain TCP, or TLS over TCP.
#[derive(Debug)]
pub enum Stream<T> {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (boxed: the session state is large).
    Tls(Box<T>),
    /// An in-memory connection (in-process tests: `tokio::io::duplex`, perhaps under TLS).
    #[cfg(test)]
    Memory(Box<dyn MemoryIo>),
}

/// What an in-memory test connection is.
#[cfg(test)]
pub trait MemoryIo: AsyncRead + AsyncWrite + Unpin + Send + Sync + std::fmt::Debug {}

#[cfg(test)]
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + std::fmt::Debug> MemoryIo for T {}

/// Sets TCP keepalive (and `TCP_USER_TIMEOUT`, when given) on `tcp`: an idle connection's
/// NAT and conntrack entries stay alive, and a peer gone without a word is found. Errors
/// are ignored: a socket that cannot take the option works without it.
pub(crate) fn set_keepalive(
    tcp: &TcpStream,
    keepalive: Option<&hopline_core::config::TcpKeepalive>,
    user_timeout: Option<std::time::Duration>,
) {
    let sock = socket2::SockRef::from(tcp);
    if let Some(k) = keepalive {
        let params = socket2::TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.count);
        let _ = sock.set_tcp_keepalive(&params);
    }
    if user_timeout.is_some() {
        let _ = sock.set_tcp_user_timeout(user_timeout);
    }
}

/// A client connection.
pub(crate) type ClientStream = Stream<tokio_rustls::server::TlsStream<TcpStream>>;
/// An upstream connection.
pub(crate) type UpstreamStream = Stream<tokio_rustls::client::TlsStream<TcpStream>>;

impl<T: TlsIo> Stream<T> {
    /// Sets `TCP_NODELAY` (nothing to set in memory).
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.set_nodelay(true),
            Stream::Tls(t) => t.tcp().set_nodelay(true),
            #[cfg(test)]
            Stream::Memory(_) => Ok(()),
        }
    }

    /// True while the peer has neither closed the connection nor sent anything (an idle
    /// pooled connection that is still good); reads nothing.
    pub fn quiet(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self {
            Stream::Plain(s) => quiet(s.try_read(&mut probe)),
            Stream::Tls(t) => quiet(t.tcp().try_read(&mut probe)),
            #[cfg(test)]
            Stream::Memory(m) => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(&mut **m).poll_read(&mut cx, &mut buf).is_pending()
            }
        }
    }

    /// Borrowed read and write halves, usable at the same time.
    pub fn split(&mut self) -> (ReadHalf<'_, T>, WriteHalf<'_, T>) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(t) => {
                let (r, w) = tokio::io::split(&mut **t);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
            #[cfg(test)]
            Stream::Memory(m) => {
                let (r, w) = tokio::io::split(m);
                (ReadHalf::Memory(r), WriteHalf::Memory(w))
            }
        }
    }
}

/// A non-blocking read found nothing to read and no end of stream.
fn quiet(read: io::Result<usize>) -> bool {
    matches!(read, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The read half of a [`Stream`].
#[derive(Debug)]
pub enum ReadHalf<'a, T> {
    /// Plain TCP.
    Plain(tokio::net::tcp::ReadHalf<'a>),
    /// TLS.
    Tls(tokio::io::ReadHalf<&'a mut T>),
    /// In memory (tests).
    #[cfg(test)]
    Memory(tokio::io::ReadHalf<&'a mut Box<dyn MemoryIo>>),
}

/// The write half of a [`Stream`].
#[derive(Debug)]
pub enum WriteHalf<'a, T> {
    /// Plain TCP.
    Plain(tokio::net::tcp::WriteHalf<'a>),
    /// TLS.
    Tls(tokio::io::WriteHalf<&'a mut T>),
    /// In memory (tests).
    #[cfg(test)]
    Memory(tokio::io::WriteHalf<&'a mut Box<dyn MemoryIo>>),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Self::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Self::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            #[cfg(test)]
            Self::Memory($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

macro_rules! dispatch_half {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Self::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Self::Tls($s) => {
                let $s = Pin::new($s);
                $e
            }
            #[cfg(test)]
            Self::Memory($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl<T: TlsIo> AsyncRead for Stream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_read(cx, buf))
    }
}

impl<T: TlsIo> AsyncWrite for Stream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(t) => t.is_write_vectored(),
            #[cfg(test)]
            Stream::Memory(m) => m.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => s.poll_shutdown(cx))
    }
}

impl<T: TlsIo> AsyncRead for ReadHalf<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch_half!(self, s => s.poll_read(cx, buf))
    }
}

impl<T: TlsIo> AsyncWrite for WriteHalf<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch_half!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        dispatch_half!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Plain(s) => s.is_write_vectored(),
            WriteHalf::Tls(t) => t.is_write_vectored(),
            #[cfg(test)]
            WriteHalf::Memory(m) => m.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch_half!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch_half!(self, s => s.poll_shutdown(cx))
    }
}

/// A stream whose first bytes were already read (to tell HTTP/2's preface from an
/// HTTP/1 request): reads give those bytes again first, then the stream's own.
#[derive(Debug)]
pub(crate) struct Prefixed<T> {
    prefix: bytes::Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    /// `inner`, with `prefix` read first.
    pub(crate) fn new(prefix: bytes::Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = buf.remaining().min(self.prefix.len());
        let head = self.prefix.split_to(n);
        buf.put_slice(&head);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
