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
use std::os::fd::RawFd;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::runtime::Runtime;

use crate::lowat;
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
    /// The connection's TCP socket, when it could be found (lowat.rs).
    socket: Option<RawFd>,
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
        let mut session = Session {
            rt,
            client: Some(client),
            conn: Conn { driver: Box::new(connection), done: false },
            socket: None,
        };
        session.socket = session.find_socket();
        Ok(session)
    }

    /// This connection's socket (see lowat.rs); None when the server cannot say or it is not unique.
    fn find_socket(&mut self) -> Option<RawFd> {
        let rows = self.simple_query("SELECT inet_client_port(), inet_server_port()").ok()?;
        let row = rows.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })?;
        let local = row.get(0)?.parse::<u16>().ok()?;
        let peer = row.get(1)?.parse::<u16>().ok()?;
        lowat::find_socket(local, peer)
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
        let socket = self.socket.filter(|&fd| lowat::set(fd, lowat::COPY_LOWAT));
        Ok(CopyReader {
            rt: &self.rt,
            conn: &mut self.conn,
            stream: Box::pin(stream),
            queue: VecDeque::new(),
            ended: false,
            socket,
            dropped: false,
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
    /// The socket whose low-water mark is raised for this COPY (lowat.rs), and whether a long wait dropped it.
    socket: Option<RawFd>,
    dropped: bool,
}

impl Drop for CopyReader<'_> {
    /// The mark back at 1 before the session runs anything else.
    fn drop(&mut self) {
        if let Some(fd) = self.socket {
            lowat::set(fd, 1);
        }
    }
}

impl CopyReader<'_> {
    /// Wait for at least one message (or the end), then take every one already decoded.
    fn refill(&mut self) -> Result<(), Error> {
        let stream = &mut self.stream;
        let queue = &mut self.queue;
        let ended = &mut self.ended;
        let socket = self.socket;
        let dropped = &mut self.dropped;
        // Due FALLBACK after this refill began (a refill starts when every message is consumed);
        // created inside the runtime, which owns the timers.
        let mut fallback = {
            let _runtime = self.rt.enter();
            socket.map(|_| Box::pin(tokio::time::sleep(lowat::FALLBACK)))
        };
        self.conn.block_on(
            self.rt,
            poll_fn(|cx| loop {
                match stream.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(message))) => {
                        if let (Some(fd), true) = (socket, *dropped) {
                            *dropped = !lowat::set(fd, lowat::COPY_LOWAT);
                        }
                        queue.push_back(message)
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => {
                        *ended = true;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Pending if queue.is_empty() => {
                        // A wait longer than FALLBACK: let whatever has arrived wake the reader.
                        if let (Some(fd), Some(timer)) = (socket, fallback.as_mut()) {
                            if !*dropped && timer.as_mut().poll(cx).is_ready() {
                                *dropped = lowat::set(fd, 1);
                            }
                        }
                        return Poll::Pending;
                    }
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
