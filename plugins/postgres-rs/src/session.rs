//! One PostgreSQL session: a tokio-postgres client, its connection and a current-thread runtime.
//!
//! What the `postgres` crate's blocking `Client` does, with one difference that matters for
//! COPY: its `CopyOutReader` runs one `block_on` (a runtime enter, a poll of the connection and
//! of the response channel) per CopyData message, and the server sends one message per tuple.
//! [`CopyReader`] takes every message that is already decoded in one `block_on`, so the
//! per-tuple cost is a queue pop; the connection is still driven on this thread only (no extra
//! thread competing with the server), and its errors (a terminated backend's FATAL, a dropped
//! socket) reach the caller exactly as with the blocking client.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::runtime::Runtime;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{
    AsyncMessage, CancelToken, Client, Config, CopyOutStream, Error, Row, SimpleQueryMessage, Socket, Statement,
};

/// The connection half, type-erased over the transport (plain or TLS).
trait Driver: Send {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<AsyncMessage, Error>>>;
}

impl<S, T> Driver for tokio_postgres::Connection<S, T>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<AsyncMessage, Error>>> {
        tokio_postgres::Connection::poll_message(self, cx)
    }
}

/// Drives a connection: polled before the caller's future on every wake-up.
struct Conn {
    driver: Box<dyn Driver>,
    done: bool,
}

impl Conn {
    /// Run `future` to completion on `rt`, driving the connection too; the connection's own
    /// error (if it fails first) is returned instead of the future's "connection closed".
    fn block_on<F, T>(&mut self, rt: &Runtime, future: F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let mut future = pin!(future);
        rt.block_on(poll_fn(|cx| {
            if let Err(e) = self.poll(cx) {
                return Poll::Ready(Err(e));
            }
            future.as_mut().poll(cx)
        }))
    }

    /// Poll the connection until it has nothing to do; notices and notifications are dropped.
    fn poll(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        while !self.done {
            match self.driver.poll_message(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Err(e);
                }
                Poll::Ready(None) => self.done = true,
                Poll::Pending => break,
            }
        }
        Ok(())
    }
}

/// A blocking PostgreSQL session (see the module docs).
pub struct Session {
    rt: Runtime,
    client: Option<Client>,
    conn: Conn,
}

/// A current-thread runtime with I/O and timers (connect_timeout), as the `postgres` crate uses.
pub fn runtime() -> io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

impl Session {
    /// Connect with `config` over `tls` on `rt`.
    pub fn connect<T>(rt: Runtime, config: &Config, tls: T) -> Result<Session, Error>
    where
        T: MakeTlsConnect<Socket> + 'static + Send,
        T::Stream: Send,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let (client, connection) = rt.block_on(config.connect(tls))?;
        Ok(Session { rt, client: Some(client), conn: Conn { driver: Box::new(connection), done: false } })
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the client lives as long as the session")
    }

    pub fn cancel_token(&self) -> CancelToken {
        self.client().cancel_token()
    }

    pub fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        let client = self.client.as_ref().expect("client");
        self.conn.block_on(&self.rt, client.batch_execute(sql))
    }

    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        let client = self.client.as_ref().expect("client");
        self.conn.block_on(&self.rt, client.simple_query(sql))
    }

    pub fn prepare(&mut self, sql: &str) -> Result<Statement, Error> {
        let client = self.client.as_ref().expect("client");
        self.conn.block_on(&self.rt, client.prepare(sql))
    }

    pub fn query(&mut self, statement: &Statement) -> Result<Vec<Row>, Error> {
        let client = self.client.as_ref().expect("client");
        self.conn.block_on(&self.rt, client.query(statement, &[]))
    }

    /// Start `COPY ... TO STDOUT` and read its data as one byte stream.
    pub fn copy_out(&mut self, sql: &str) -> Result<CopyReader<'_>, Error> {
        let client = self.client.as_ref().expect("client");
        let stream = self.conn.block_on(&self.rt, client.copy_out(sql))?;
        Ok(CopyReader {
            rt: &self.rt,
            conn: &mut self.conn,
            stream: Box::pin(stream),
            queue: VecDeque::new(),
            ended: false,
        })
    }
}

impl Drop for Session {
    /// Say goodbye (Terminate) and let the connection close, as the `postgres` crate's client does.
    fn drop(&mut self) {
        if let Some(mut client) = self.client.take() {
            client.__private_api_close();
            drop(client);
        }
        let conn = &mut self.conn;
        self.rt.block_on(poll_fn(|cx| match conn.poll(cx) {
            Err(_) => Poll::Ready(()),
            Ok(()) if conn.done => Poll::Ready(()),
            Ok(()) => Poll::Pending,
        }));
    }
}

/// The data of a running COPY TO STDOUT: its CopyData messages in order, each handed out whole
/// (no copy; the decoder keeps a batch's messages and points into them), refilled with every
/// message ready at once.
pub struct CopyReader<'a> {
    rt: &'a Runtime,
    conn: &'a mut Conn,
    stream: Pin<Box<CopyOutStream>>,
    queue: VecDeque<Bytes>,
    ended: bool,
}

impl CopyReader<'_> {
    /// Wait for at least one message (or the end), then take every one already decoded.
    fn refill(&mut self) -> Result<(), Error> {
        let stream = &mut self.stream;
        let queue = &mut self.queue;
        let ended = &mut self.ended;
        self.conn.block_on(
            self.rt,
            poll_fn(|cx| loop {
                match stream.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(message))) => queue.push_back(message),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => {
                        *ended = true;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Pending if queue.is_empty() => return Poll::Pending,
                    Poll::Pending => return Poll::Ready(Ok(())),
                }
            }),
        )
    }
}

impl crate::decode::Messages for CopyReader<'_> {
    fn next_message(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(next) = self.queue.pop_front() {
                return Ok(Some(next));
            }
            if self.ended {
                return Ok(None);
            }
            self.refill().map_err(io::Error::other)?;
        }
    }
}
