"""Connection settings for the PostgreSQL readers, and translation of driver errors.

:func:`build_connection` turns a job's ``connection:`` mapping into a libpq
connection string; :func:`translate_error` turns psycopg and ADBC exceptions
into :class:`dativo.SourceError` / :class:`dativo.ConfigError` with messages
that name the server, the user or the table, and never contain the password.
"""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from dativo.errors import ConfigError, DativoError, PluginError, SourceError
from dativo.sdk import redact, register_secret

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "PG_EXTRA_HINT",
    "PgConnectionInfo",
    "PostgresDriverError",
    "build_connection",
    "connect_psycopg",
    "import_psycopg",
    "is_transient_error",
    "is_transient_sqlstate",
    "sqlstate_of",
    "translate_error",
]

PG_EXTRA_HINT = "pip install 'dativo[postgres]'"

_ALIASES = {"database": "dbname", "username": "user"}
_DEFAULTS = {"connect_timeout": "10", "application_name": "dativo"}

# Transient vs terminal is decided by SQLSTATE (see is_transient_sqlstate) and by exception type
# (is_transient_error). libpq gives no SQLSTATE for a failure while *connecting* (the server's FATAL
# reaches the client as text only), so connection failures are classified by libpq's message text:
# the documented last resort, used only in _connect_failure below.
_TRANSIENT_CLASSES = ("08", "53", "58")  # connection exception, insufficient resources, system error
_TRANSIENT_CODES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57P01",  # admin_shutdown (pg_terminate_backend, a fast shutdown)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, recovery)
        "57P05",  # idle_session_timeout
    }
)

# libpq's connection-time texts (no SQLSTATE available there; see above).
_AUTH_PATTERNS = (
    "password authentication failed",
    "authentication failed",
    "no password supplied",
    "fe_sendauth",
    "SCRAM",
    "pg_hba.conf",
)
_TRANSIENT_FATAL = (
    "too many connections",
    "remaining connection slots",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
)
# libpq's text for a session the server ended or the network dropped (see is_transient_error).
_SESSION_LOST = ("FATAL:", "server closed the connection", "connection to server was lost", "could not receive data")


class PostgresDriverError(Exception):
    """A driver's error in the shape :func:`translate_error` understands, for readers on other clients.

    ``sqlstate`` is the server's five-character code, or None when the client failed on its own
    (socket closed, I/O error, TLS): a ``sqlstate`` of None with ``connection_lost`` is transient.
    """

    def __init__(self, sqlstate: str | None, message: str, *, connection_lost: bool = False) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.connection_lost = connection_lost


def is_transient_sqlstate(sqlstate: str) -> bool:
    """True when an error with this SQLSTATE is worth retrying.

    Transient: class 08 (connection exception), 53 (insufficient resources), 58 (system
    error), 40001 serialization failure, 40P01 deadlock, 55P03 lock not available,
    57P01/57P02/57P03/57P05 (the server ended or refused the session: terminated by an
    administrator, crash, starting up, idle timeout). Everything else is terminal: 28
    (authentication), 42 (syntax, undefined table or column, privileges), 22 (data),
    3D (no such database), 57014 (query cancelled) ...
    """
    return sqlstate.startswith(_TRANSIENT_CLASSES) or sqlstate in _TRANSIENT_CODES


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE an exception carries (psycopg's ``sqlstate``, ADBC's ``sqlstate``), or None."""
    code = getattr(exc, "sqlstate", None)
    if isinstance(code, str) and len(code) == 5 and code != "00000":
        return code
    return None


def is_transient_error(exc: BaseException) -> bool:
    """Whether a driver exception is worth retrying, decided by its SQLSTATE, else by its type.

    With a SQLSTATE: :func:`is_transient_sqlstate`. Without one, the client lost or never
    had the connection, which is transient: ``ConnectionError`` / ``TimeoutError``,
    :class:`PostgresDriverError` with ``connection_lost``, psycopg's ``OperationalError`` and
    ``InterfaceError`` (libpq reports a dropped connection through them without a SQLSTATE) and
    ``InternalError`` without a SQLSTATE (a backend terminated mid-``FETCH``),
    and ADBC errors with the IO / timeout status. Anything else is terminal.
    """
    code = sqlstate_of(exc)
    if code is not None:
        return is_transient_sqlstate(code)
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, PostgresDriverError):
        return exc.connection_lost
    if type(exc).__module__.startswith("psycopg"):
        import psycopg

        # InternalError without a SQLSTATE: psycopg lost track of the protocol, as when a backend is
        # terminated mid-FETCH ("received 2 results from command"); a fresh connection is the fix.
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | psycopg.InternalError)
    if type(exc).__module__.startswith("adbc_driver_manager"):
        status = getattr(exc, "status_code", None)
        return getattr(status, "name", None) in ("IO", "TIMEOUT")
    if isinstance(exc, OSError) and str(exc).startswith("[libpq]"):
        # Last resort: an Arrow stream error carries an errno and libpq's text, no SQLSTATE (the ADBC
        # reader reads through ADBC's wrapper, which adds it; this covers a driver without one). A
        # FATAL mid-read means the server ended the session; the rest are libpq's lost-connection texts.
        return any(marker in str(exc) for marker in _SESSION_LOST)
    return False


def import_psycopg() -> ModuleType:
    """Import psycopg 3, or raise :class:`PluginError` telling how to install it."""
    try:
        import psycopg
    except ImportError as exc:
        raise PluginError(f"the PostgreSQL readers require the PostgreSQL extra: {PG_EXTRA_HINT}") from exc
    return psycopg


@dataclass(frozen=True)
class PgConnectionInfo:
    """A libpq connection string plus the parts messages may show (never the password)."""

    conninfo: str
    host: str
    port: str
    user: str
    dbname: str

    @property
    def address(self) -> str:
        """``host:port`` of the server."""
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"PgConnectionInfo(host={self.host!r}, port={self.port!r}, user={self.user!r}, dbname={self.dbname!r})"


def build_connection(
    connection: Mapping[str, Any] | None,
    *,
    parse: Callable[[str], Mapping[str, Any]] | None = None,
    make: Callable[[dict[str, Any]], str] | None = None,
) -> PgConnectionInfo:
    """Build a libpq connection string from a job's ``connection:`` mapping.

    Accepts ``dsn`` (a ``postgresql://`` URI or ``key=value`` string) and/or
    libpq keywords (``host``, ``port``, ``user``, ``password``, ``dbname``,
    ``sslmode``, ...; ``database`` and ``username`` are aliases); keywords
    override the DSN. ``client_encoding`` is always UTF8; ``connect_timeout``
    defaults to 10 seconds. The password is registered for redaction. Raises
    :class:`ConfigError` for a missing mapping, a malformed DSN or an unknown
    keyword. ``parse`` and ``make`` replace psycopg's ``conninfo_to_dict`` and
    ``make_conninfo`` for a reader that does not use psycopg (a ValueError from them
    is a malformed DSN); by default psycopg parses.
    """
    errors: tuple[type[Exception], ...] = (ValueError,)
    if parse is None or make is None:
        psycopg = import_psycopg()
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        parse, make, errors = conninfo_to_dict, lambda params: make_conninfo("", **params), (psycopg.Error,)

    if not connection or not isinstance(connection, Mapping):
        raise ConfigError(
            "a PostgreSQL source needs a 'connection' mapping",
            hint="set source.connection.dsn: postgresql://user:password@host:5432/db, or host/user/password/dbname",
        )
    params: dict[str, str] = {}
    dsn = connection.get("dsn")
    for key, value in connection.items():
        if key == "dsn" or value is None:
            continue
        params[_ALIASES.get(key, key)] = str(value)
    register_secret(params.get("password"))
    if dsn is not None and not isinstance(dsn, str):
        raise ConfigError("connection.dsn must be a string")
    try:
        merged = dict(parse(dsn or ""))
        register_secret(str(merged.get("password") or ""))
        merged.update(params)
        for key, default in _DEFAULTS.items():
            merged.setdefault(key, default)
        merged["client_encoding"] = "UTF8"
        conninfo = make(merged)
    except errors as exc:
        raise ConfigError(
            f"invalid PostgreSQL connection settings: {redact(str(exc))}",
            hint="use a postgresql:// URI in connection.dsn or libpq keywords (host, port, user, password, dbname)",
        ) from None
    host = str(merged.get("host") or merged.get("hostaddr") or os.environ.get("PGHOST") or "localhost")
    port = str(merged.get("port") or os.environ.get("PGPORT") or "5432")
    user = str(merged.get("user") or os.environ.get("PGUSER") or _os_user())
    dbname = str(merged.get("dbname") or os.environ.get("PGDATABASE") or user)
    return PgConnectionInfo(conninfo=conninfo, host=host, port=port, user=user, dbname=dbname)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "?"


def connect_psycopg(info: PgConnectionInfo, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open a psycopg connection; failures become :class:`SourceError` (see :func:`translate_error`)."""
    pg = import_psycopg()
    try:
        conn: psycopg.Connection[Any] = pg.connect(info.conninfo, autocommit=autocommit)
    except pg.Error as exc:
        raise translate_error(exc, info, connecting=True) from exc
    return conn


def _server_message(text: str) -> str:
    """The PostgreSQL message inside a driver error text, without ADBC/libpq prefixes and query echo."""
    m = re.search(r"(?:ERROR|FATAL):\s+(.*)", text)
    line = m.group(1) if m else text.strip().splitlines()[0] if text.strip() else text
    return line.strip()


def _connect_detail(text: str) -> str:
    """The reason in 'connection to server at "h", port p failed: REASON'."""
    found = re.findall(r"failed:\s*(.+)", text)
    return (found[-1] if found else text.strip().splitlines()[0] if text.strip() else "unknown error").strip()


def translate_error(
    exc: BaseException,
    info: PgConnectionInfo,
    *,
    connecting: bool = False,
    table: str | None = None,
) -> DativoError:
    """Turn a psycopg / ADBC / :class:`PostgresDriverError` / socket exception into a dativo error.

    The message is redacted and names the server (never the password). Transient or
    terminal is decided once, by :func:`is_transient_error` (SQLSTATE, else exception type):

    * server unreachable or connection lost -> ``SourceError(transient=True)`` naming ``host:port``;
    * authentication failure (SQLSTATE 28) -> terminal ``SourceError`` naming user and host;
    * missing database or table (3D000, 42P01) -> terminal ``SourceError`` naming it;
    * any other PostgreSQL error -> ``SourceError`` carrying PostgreSQL's message and SQLSTATE,
      transient only for the codes :func:`is_transient_sqlstate` lists.

    A failure while connecting (``connecting``, or an ADBC "Failed to connect") usually has no
    SQLSTATE: libpq hands the server's FATAL over as text. Only there is libpq's text matched,
    as the last resort, for authentication, a missing database or role, and a server that is
    full or starting up.
    """
    if isinstance(exc, DativoError):
        return exc
    text = str(exc)
    sqlstate = sqlstate_of(exc)
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    message = primary or (exc.message if isinstance(exc, PostgresDriverError) else None) or _server_message(text)
    where = f"PostgreSQL at {info.address} (database {info.dbname!r})"
    transient = is_transient_error(exc)

    def err(msg: str, *, hint: str | None = None, transient: bool = False, key: str | None = None) -> SourceError:
        return SourceError(redact(msg), hint=redact(hint) if hint else None, transient=transient, config_key=key)

    if sqlstate is not None and sqlstate.startswith("28"):
        return err(
            f"authentication failed for user {info.user!r} at PostgreSQL {info.address}: {message}",
            hint="check connection.user and connection.password, or the secret they come from",
        )
    if sqlstate == "3D000":
        return err(
            f"database {info.dbname!r} does not exist on PostgreSQL {info.address}", hint="check connection.dbname"
        )
    if sqlstate is None and (connecting or re.search(r"Failed to connect|connection to server at", text)):
        return _connect_failure(text, message, info, where, err)
    if sqlstate == "42P01":
        if table is not None:
            return err(
                f"table {table!r} does not exist in {where}: {message}", hint="check source.table", key="source.table"
            )
        return err(f"the query refers to a table that does not exist in {where}: {message}")
    if sqlstate == "42501":
        return err(
            f"permission denied reading from {where}: {message}",
            hint=f"grant SELECT on the source to user {info.user!r}",
        )
    if sqlstate is None and transient:
        return err(f"lost the connection to PostgreSQL at {info.address}: {message}", transient=True)
    if transient:
        return err(f"{where} failed while reading [SQLSTATE {sqlstate}]: {message}", transient=True)
    code = f" [SQLSTATE {sqlstate}]" if sqlstate else ""
    return err(f"{where} reported an error{code}: {message}")


def _connect_failure(
    text: str, message: str, info: PgConnectionInfo, where: str, err: Callable[..., SourceError]
) -> SourceError:
    """A failure to connect without a SQLSTATE: libpq's text is all there is (the last resort)."""
    if any(p in text for p in _AUTH_PATTERNS):
        return err(
            f"authentication failed for user {info.user!r} at PostgreSQL {info.address}: {message}",
            hint="check connection.user and connection.password, or the secret they come from",
        )
    if re.search(r'database ".*" does not exist', text):
        return err(
            f"database {info.dbname!r} does not exist on PostgreSQL {info.address}", hint="check connection.dbname"
        )
    if re.search(r'role ".*" does not exist', text):
        return err(f"user {info.user!r} does not exist on PostgreSQL {info.address}", hint="check connection.user")
    if any(p in text for p in _TRANSIENT_FATAL):
        return err(f"cannot connect to {where}: {message}", transient=True)
    if "FATAL" in text or "SSL" in text or "certificate" in text:
        return err(f"cannot connect to {where}: {message}")
    return err(
        f"cannot connect to PostgreSQL at {info.address}: {_connect_detail(text)}",
        hint="check that the server is running and reachable, and connection.host / connection.port",
        transient=True,
    )
