//! The connection's byte stream: TLS negotiated here, and the socket read in large chunks.
//!
//! tokio-postgres reads its stream into an 8 KiB buffer, one `recvfrom` per read (~140K calls
//! and ~60K `epoll_wait`s for the 1M-row benchmark table). Handing it a stream that reads the
//! socket (or the TLS session) into a [`READ_BUFFER`]-sized buffer makes each system call bring
//! whatever the kernel holds. tokio-postgres only lets a caller supply the stream through its TLS
//! hook, so the connection is made with `sslnegotiation=direct`: tokio-postgres then passes every
//! new socket to [`ConnectOne::connect`] without sending anything, and that does what
//! tokio-postgres would have done for the user's `sslmode` (the SSLRequest, the rustls handshake
//! or none, the same error when the server refuses TLS that `require` needs) before wrapping the
//! result. Cancel requests go through the same path. Needs a host name (TCP): a Unix-socket or
//! `hostaddr`-only connection is made as before (see `tls.rs`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::SslMode;

/// Bytes asked of the socket per read: a few hundred CopyData messages of a wide table.
pub const READ_BUFFER: usize = 256 * 1024;

type RustlsConnect = <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect;
type RustlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// Makes every connection (and cancel request) of one reader: the user's `sslmode` over `tls`.
#[derive(Clone)]
pub struct Connect {
    mode: SslMode,
    tls: Option<MakeRustlsConnect>,
}

impl Connect {
    /// `tls` is needed for every mode but `disable`.
    pub fn new(mode: SslMode, tls: Option<MakeRustlsConnect>) -> Connect {
        Connect { mode, tls }
    }
}

impl MakeTlsConnect<Socket> for Connect {
    type Stream = PgStream;
    type TlsConnect = ConnectOne;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<ConnectOne> {
        let tls = match (&mut self.tls, self.mode) {
            (_, SslMode::Disable) => None,
            (Some(tls), _) => match <MakeRustlsConnect as MakeTlsConnect<Socket>>::make_tls_connect(tls, domain) {
                Ok(connect) => Some(connect),
                Err(never) => match never {},
            },
            (None, _) => return Err(io::Error::other("TLS is not set up for this connection")),
        };
        Ok(ConnectOne { mode: self.mode, tls })
    }
}

/// One connection attempt (see the module docs).
pub struct ConnectOne {
    mode: SslMode,
    tls: Option<RustlsConnect>,
}

/// PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

impl TlsConnect<Socket> for ConnectOne {
    type Stream = PgStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgStream>> + Send>>;

    fn connect(self, mut socket: Socket) -> Self::Future {
        Box::pin(async move {
            let tls = match (self.mode, self.tls) {
                (SslMode::Disable, _) => return Ok(PgStream::new(Inner::Plain(socket))),
                (_, Some(tls)) => tls,
                (_, None) => return Err(io::Error::other("TLS is not set up for this connection")),
            };
            socket.write_all(&SSL_REQUEST).await?;
            let mut answer = [0u8; 1];
            socket.read_exact(&mut answer).await?;
            if answer[0] != b'S' {
                if self.mode == SslMode::Prefer {
                    return Ok(PgStream::new(Inner::Plain(socket)));
                }
                // tokio-postgres's own words for this case (tls.rs matches them for its hint).
                return Err(io::Error::other("server does not support TLS"));
            }
            let stream = tls.connect(socket).await?;
            Ok(PgStream::new(Inner::Tls(Box::new(stream))))
        })
    }
}

/// The transport under the read buffer.
pub enum Inner {
    Plain(Socket),
    Tls(Box<RustlsStream>),
}

/// The stream tokio-postgres reads and writes: [`Inner`] read through a [`READ_BUFFER`]-byte buffer.
pub struct PgStream {
    inner: BufReader<Inner>,
}

impl PgStream {
    fn new(inner: Inner) -> PgStream {
        PgStream { inner: BufReader::with_capacity(READ_BUFFER, inner) }
    }
}

impl TlsStream for PgStream {
    fn channel_binding(&self) -> ChannelBinding {
        match self.inner.get_ref() {
            Inner::Plain(_) => ChannelBinding::none(),
            Inner::Tls(stream) => stream.channel_binding(),
        }
    }
}

impl AsyncRead for PgStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for Inner {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Inner {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
