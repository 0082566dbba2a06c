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
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from dativo._secrets import redact, register_secret
from dativo.errors import ConfigError, DativoError, PluginError, SourceError

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "PG_EXTRA_HINT",
    "PgConnectionInfo",
    "build_connection",
    "connect_psycopg",
    "import_psycopg",
    "translate_error",
]

PG_EXTRA_HINT = "pip install 'dativo[postgres]'"

_ALIASES = {"database": "dbname", "username": "user"}
_DEFAULTS = {"connect_timeout": "10", "application_name": "dativo"}

# SQLSTATE classes / codes worth retrying: connection exceptions, resources,
# shutdowns, serialization failures and deadlocks.
_TRANSIENT_CLASSES = ("08", "53", "57P")
_TRANSIENT_CODES = {"40001", "40P01", "55P03", "58000", "58030"}

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
_CONNECTION_LOST = (
    "server closed the connection",
    "connection to server was lost",
    "terminating connection",
    "no connection to the server",
    "could not receive data from server",
    "could not send data to server",
    "SSL SYSCALL error",
    "connection is closed",
    "the connection is lost",
)


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


def build_connection(connection: Mapping[str, Any] | None) -> PgConnectionInfo:
    """Build a libpq connection string from a job's ``connection:`` mapping.

    Accepts ``dsn`` (a ``postgresql://`` URI or ``key=value`` string) and/or
    libpq keywords (``host``, ``port``, ``user``, ``password``, ``dbname``,
    ``sslmode``, ...; ``database`` and ``username`` are aliases); keywords
    override the DSN. ``client_encoding`` is always UTF8; ``connect_timeout``
    defaults to 10 seconds. The password is registered for redaction. Raises
    :class:`ConfigError` for a missing mapping, a malformed DSN or an unknown
    keyword.
    """
    psycopg = import_psycopg()
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

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
        merged = conninfo_to_dict(dsn or "")
        register_secret(str(merged.get("password") or ""))
        merged.update(params)
        for key, default in _DEFAULTS.items():
            merged.setdefault(key, default)
        merged["client_encoding"] = "UTF8"
        conninfo = make_conninfo("", **merged)
    except psycopg.Error as exc:
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
    """Turn a psycopg / ADBC / socket exception into a dativo error; the message is redacted.

    * server unreachable (refused, timeout, DNS, connection lost, too many
      connections) -> ``SourceError(transient=True)`` naming ``host:port``;
    * authentication failure -> terminal ``SourceError`` naming user and host;
    * missing database or table -> terminal ``SourceError`` naming it;
    * any other PostgreSQL error -> ``SourceError`` carrying PostgreSQL's message,
      transient for SQLSTATE classes 08/53/57P and serialization failures.
    """
    if isinstance(exc, DativoError):
        return exc
    text = str(exc)
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    message = primary or _server_message(text)
    where = f"PostgreSQL at {info.address} (database {info.dbname!r})"

    def err(msg: str, *, hint: str | None = None, transient: bool = False, key: str | None = None) -> SourceError:
        return SourceError(redact(msg), hint=redact(hint) if hint else None, transient=transient, config_key=key)

    if connecting or (sqlstate is None and re.search(r"Failed to connect|connection to server at", text)):
        if (sqlstate and sqlstate.startswith("28")) or any(p in text for p in _AUTH_PATTERNS):
            return err(
                f"authentication failed for user {info.user!r} at PostgreSQL {info.address}: {message}",
                hint="check connection.user and connection.password, or the secret they come from",
            )
        if re.search(r'database ".*" does not exist', text):
            return err(
                f"database {info.dbname!r} does not exist on PostgreSQL {info.address}",
                hint="check connection.dbname",
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
    if sqlstate is not None and (sqlstate.startswith(_TRANSIENT_CLASSES) or sqlstate in _TRANSIENT_CODES):
        return err(f"{where} failed while reading: {message}", transient=True)
    if sqlstate is None and any(p in text for p in _CONNECTION_LOST):
        return err(f"lost the connection to PostgreSQL at {info.address}: {message}", transient=True)
    if sqlstate is None and isinstance(exc, ConnectionError | TimeoutError):
        return err(f"lost the connection to PostgreSQL at {info.address}: {message}", transient=True)
    code = f" [SQLSTATE {sqlstate}]" if sqlstate else ""
    return err(f"{where} reported an error{code}: {message}")
