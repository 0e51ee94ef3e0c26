//! A connection that may or may not be wrapped in TLS, split into halves so
//! that the two directions of a session run independently.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;
type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TCP connection, plain or TLS (either role).
pub enum Stream {
    Plain(TcpStream),
    ServerTls(Box<ServerTls>),
    ClientTls(Box<ClientTls>),
}

/// The read half of a [`Stream`].
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    ServerTls(tokio::io::ReadHalf<ServerTls>),
    ClientTls(tokio::io::ReadHalf<ClientTls>),
}

/// The write half of a [`Stream`].
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    ServerTls(tokio::io::WriteHalf<ServerTls>),
    ClientTls(tokio::io::WriteHalf<ClientTls>),
}

impl Stream {
    /// Plain TCP splits without a lock; TLS needs tokio's locked split.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::ServerTls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::ServerTls(r), WriteHalf::ServerTls(w))
            }
            Stream::ClientTls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::ClientTls(r), WriteHalf::ClientTls(w))
            }
        }
    }

    /// Joins the halves [`Stream::split`] made; `None` when they come from
    /// different streams.
    pub fn unsplit(read: ReadHalf, write: WriteHalf) -> Option<Stream> {
        match (read, write) {
            (ReadHalf::Plain(r), WriteHalf::Plain(w)) => r.reunite(w).ok().map(Stream::Plain),
            (ReadHalf::ServerTls(r), WriteHalf::ServerTls(w)) => r
                .is_pair_of(&w)
                .then(|| Stream::ServerTls(Box::new(r.unsplit(w)))),
            (ReadHalf::ClientTls(r), WriteHalf::ClientTls(w)) => r
                .is_pair_of(&w)
                .then(|| Stream::ClientTls(Box::new(r.unsplit(w)))),
            _ => None,
        }
    }

    /// The TCP connection under any TLS.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::ServerTls(s) => s.get_ref().0,
            Stream::ClientTls(s) => s.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

/// Runs the same expression on whichever variant is present.
macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Self::Plain($s) => $e,
            Self::ServerTls($s) => $e,
            Self::ClientTls($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
