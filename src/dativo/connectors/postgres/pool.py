"""PostgreSQL connections shared by the streams of one run.

When the engine runs a job's streams it opens a run scope (``dativo.core.shared``); the
first PostgreSQL reader that asks gets the run's :class:`SharedConnections`, one pool for
every driver and connection string. A connection is *leased* (:func:`lease`, or
:func:`lease_psycopg` for psycopg): an idle one of the same kind and settings is handed
out when it passes a liveness check, else a new one is opened. :meth:`Lease.release`
gives it back only when its user says it ended cleanly (its transaction or snapshot is
over, no statement is running); a connection that errored, was cancelled or was left
mid-transaction is closed instead, so a failed stream never passes a broken session on.
The pool keeps at most ``max_idle`` idle connections per kind and settings and closes
them all when the run ends. Outside a run (a reader under test, ``dativo serve``) a lease
is simply a connection of one's own, closed on release.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dativo.connectors.postgres.connection import PgConnectionInfo, connect_psycopg, import_psycopg
from dativo.core.shared import current_run_resources

if TYPE_CHECKING:
    import psycopg

__all__ = ["Lease", "SharedConnections", "borrow_psycopg", "lease", "lease_psycopg", "shared_connections"]

log = logging.getLogger(__name__)

_KEY = "dativo.postgres.connections"
PSYCOPG = "psycopg"


class SharedConnections:
    """Idle PostgreSQL connections of one run, keyed by (kind, connection string); thread-safe.

    ``opened`` and ``reused`` count the connections made and the leases served from the
    pool (for logs and tests). :meth:`close` closes the idle connections; a lease released
    after it is closed rather than kept.
    """

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max(1, max_idle)
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str], list[tuple[Any, Callable[[Any], None]]]] = {}
        self.closed = False
        self.opened = 0
        self.reused = 0

    def count_opened(self) -> None:
        """Count one connection opened for a lease (statistics only)."""
        with self._lock:
            self.opened += 1

    def take(self, kind: str, conninfo: str, alive: Callable[[Any], bool]) -> Any | None:
        """An idle connection of ``kind`` to ``conninfo`` that passes ``alive``, or None (dead ones are closed)."""
        while True:
            with self._lock:
                idle = self._idle.get((kind, conninfo))
                if not idle:
                    return None
                conn, close = idle.pop()
            if _safely(alive, conn):
                with self._lock:
                    self.reused += 1
                return conn
            _quietly(close, conn)

    def give_back(self, kind: str, conninfo: str, conn: Any, close: Callable[[Any], None]) -> None:
        """Keep ``conn`` idle for the next lease, or close it when the pool is full or closed."""
        with self._lock:
            idle = self._idle.setdefault((kind, conninfo), [])
            if not self.closed and len(idle) < self.max_idle:
                idle.append((conn, close))
                return
        _quietly(close, conn)

    def close(self) -> None:
        """Close every idle connection; later releases close theirs. Idempotent, never raises."""
        with self._lock:
            self.closed = True
            idle = [entry for entries in self._idle.values() for entry in entries]
            self._idle = {}
        for conn, close in idle:
            _quietly(close, conn)
        if self.opened or self.reused:
            log.debug("shared PostgreSQL connections: %d opened, %d leases reused", self.opened, self.reused)


def _safely(check: Callable[[Any], bool], conn: Any) -> bool:
    try:
        return bool(check(conn))
    except Exception:
        return False


def _quietly(close: Callable[[Any], None], conn: Any) -> None:
    with contextlib.suppress(Exception):
        close(conn)


def shared_connections() -> SharedConnections | None:
    """The current run's shared connections, or None outside a run of streams (then each reader opens its own)."""
    resources = current_run_resources()
    if resources is None:
        return None
    return resources.get(_KEY, lambda: SharedConnections(max_idle=resources.concurrency + 1))


class Lease:
    """One leased connection (``conn``): give it back with :meth:`release` once, saying whether it ended cleanly."""

    def __init__(
        self,
        pool: SharedConnections | None,
        kind: str,
        conninfo: str,
        conn: Any,
        close: Callable[[Any], None],
        clean: Callable[[Any], bool] | None = None,
    ) -> None:
        self.conn = conn
        self._pool, self._kind, self._conninfo, self._close, self._clean = pool, kind, conninfo, close, clean
        self._released = False
        self._lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """Whether the connection goes back to a run's pool on a clean release."""
        return self._pool is not None

    def release(self, *, reusable: bool) -> None:
        """Give the connection back when ``reusable`` (and its own check agrees), else close it; idempotent.

        Pass ``reusable=False`` after any error, cancellation, or a read left unfinished.
        Never raises.
        """
        with self._lock:
            if self._released:
                return
            self._released = True
        conn = self.conn
        if self._pool is None or not reusable or (self._clean is not None and not _safely(self._clean, conn)):
            _quietly(self._close, conn)
            return
        self._pool.give_back(self._kind, self._conninfo, conn, self._close)


def lease(
    kind: str,
    conninfo: str,
    connect: Callable[[], Any],
    *,
    close: Callable[[Any], None],
    alive: Callable[[Any], bool],
    clean: Callable[[Any], bool] | None = None,
) -> Lease:
    """A connection of ``kind`` (a driver's name) to ``conninfo``: from the run's pool when it shares one.

    ``alive(conn)`` checks an idle connection before it is handed out (a quick query);
    ``clean(conn)``, if given, is asked again at release. ``connect()``'s errors propagate.
    """
    pool = shared_connections()
    conn = pool.take(kind, conninfo, alive) if pool is not None else None
    if conn is None:
        conn = connect()
        if pool is not None:
            pool.count_opened()
    return Lease(pool, kind, conninfo, conn, close, clean)


def _psycopg_alive(conn: psycopg.Connection[Any]) -> bool:
    pg = import_psycopg()
    if conn.closed or conn.info.transaction_status != pg.pq.TransactionStatus.IDLE:
        return False
    conn.autocommit = True
    conn.execute("SELECT 1")
    return True


def _psycopg_clean(conn: psycopg.Connection[Any]) -> bool:
    """Idle with no transaction open (one still open is rolled back first); autocommit as a new lease expects."""
    pg = import_psycopg()
    if conn.closed:
        return False
    status = conn.info.transaction_status
    if status == pg.pq.TransactionStatus.INTRANS:
        conn.rollback()
        status = conn.info.transaction_status
    return bool(status == pg.pq.TransactionStatus.IDLE)


def lease_psycopg(info: PgConnectionInfo, *, autocommit: bool = False) -> Lease:
    """A psycopg connection to ``info`` (see :func:`lease`), in ``autocommit`` mode or not.

    Connection failures raise SourceError as :func:`connect_psycopg` does. A connection
    from the pool is exactly as a new one: no transaction, default adapters, the
    ``autocommit`` asked for. Users must not change session settings (``SET``) on it.
    """
    leased = lease(
        PSYCOPG,
        info.conninfo,
        lambda: connect_psycopg(info, autocommit=autocommit),
        close=lambda conn: conn.close(),
        alive=_psycopg_alive,
        clean=_psycopg_clean,
    )
    leased.conn.autocommit = autocommit
    return leased


@contextlib.contextmanager
def borrow_psycopg(info: PgConnectionInfo, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection for the block: given back after a clean exit (rolled back), closed after an error."""
    leased = lease_psycopg(info, autocommit=autocommit)
    ok = False
    try:
        yield leased.conn
        ok = True
    finally:
        leased.release(reusable=ok)
