"""A real, throw-away PostgreSQL server on loopback for tests and benchmarks.

``PostgresServer`` runs ``initdb`` into a temporary directory, starts the server
with ``pg_ctl`` on a free port of 127.0.0.1 with password (SCRAM) authentication
for a superuser, and removes everything on exit::

    with PostgresServer() as pg:
        pg.psql("CREATE TABLE t (i int)")
        print(pg.dsn)

PostgreSQL refuses to run as root; when the tests run as root the server runs as
an unprivileged system user (``dativo-pg``, created on first use).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

__all__ = ["PostgresDatabase", "PostgresServer", "PostgresServerError", "find_pg_bindir"]

SYSTEM_USER = "dativo-pg"


class PostgresServerError(RuntimeError):
    """PostgreSQL binaries are missing or the server failed to start."""


def find_pg_bindir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks at ``$PG_BINDIR``, ``PATH``, ``pg_config --bindir`` and
    ``/usr/lib/postgresql/*/bin`` (newest version first); raises
    :class:`PostgresServerError` when none has all three.
    """
    candidates: list[Path] = []
    if env := os.environ.get("PG_BINDIR"):
        candidates.append(Path(env))
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(Path(out.stdout.strip()))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")[-2].split(".")], reverse=True)
    candidates.extend(Path(p) for p in versions)
    for cand in candidates:
        if all((cand / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return cand
    raise PostgresServerError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH, via pg_config "
        "or in /usr/lib/postgresql/*/bin; install the PostgreSQL server package or set PG_BINDIR"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    res = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
    )
    # Exit code 9: created concurrently by another test process.
    if res.returncode not in (0, 9):
        raise PostgresServerError(f"could not create system user {name!r} for PostgreSQL: {res.stderr.strip()}")
    return pwd.getpwnam(name)


class PostgresServer:
    """A PostgreSQL server in a temporary directory, listening on 127.0.0.1 only.

    Use as a context manager (or call :meth:`start` / :meth:`stop`). ``fsync``
    is off: the data is thrown away at :meth:`stop`. Attributes ``host``,
    ``port``, ``user``, ``password``, ``dbname`` and :attr:`dsn` describe how
    to connect; :meth:`dsn_for` names another database on the same server.
    """

    def __init__(
        self,
        *,
        user: str = "dativo",
        password: str | None = None,
        bindir: Path | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = bindir or find_pg_bindir()
        self.host = "127.0.0.1"
        self.port = 0
        self.user = user
        self.password = password or "pw-" + secrets.token_hex(8)
        self.dbname = "postgres"
        self.settings = dict(settings or {})
        self._base: Path | None = None
        self._run_as: str | None = None
        self._started = False

    # -- connection strings -------------------------------------------------
    @property
    def dsn(self) -> str:
        """``postgresql://user:password@127.0.0.1:port/postgres``."""
        return self.dsn_for(self.dbname)

    def dsn_for(self, dbname: str) -> str:
        """A URI connecting to database ``dbname`` on this server as the superuser."""
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(dbname, safe='')}"
        )

    def connection_params(self, dbname: str | None = None) -> dict[str, Any]:
        """The ``connection:`` mapping of a dativo job (host, port, user, password, dbname, connect_timeout).

        ``connect_timeout`` is 30 s, not dativo's default 10: on the 2-core CI machine a 3-node Ray
        cluster starting beside the suite once held a backend's start-up past 10 s. A job retries a
        connection timeout (it is transient); a reader certified directly does not.
        """
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": dbname or self.dbname,
            "connect_timeout": 30,
        }

    @property
    def datadir(self) -> Path:
        if self._base is None:
            raise PostgresServerError("server not started")
        return self._base / "data"

    # -- lifecycle ----------------------------------------------------------
    def _cmd(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", self._run_as, "--", *args] if self._run_as else args

    def _run(self, args: list[str], what: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update({"LC_ALL": "C", "LANG": "C"})
        res = subprocess.run(self._cmd(args), capture_output=True, text=True, env=env, cwd=self._base)
        if res.returncode != 0:
            raise PostgresServerError(f"{what} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")

    def start(self) -> PostgresServer:
        """Create the cluster and start the server; waits until it accepts connections."""
        if self._started:
            return self
        self._base = Path(tempfile.mkdtemp(prefix="dativo-pg-"))
        try:
            if os.geteuid() == 0:
                account = _ensure_system_user(SYSTEM_USER)
                self._run_as = account.pw_name
                os.chown(self._base, account.pw_uid, account.pw_gid)
            pwfile = self._base / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self._run_as:
                account = pwd.getpwnam(self._run_as)
                os.chown(pwfile, account.pw_uid, account.pw_gid)
            pwfile.chmod(0o600)
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                "initdb",
            )
            pwfile.unlink()
            self._start_server()
            self._started = True
            atexit.register(self.stop)  # a run that dies without stopping us must not leave the server behind
        except BaseException:
            self._cleanup()
            raise
        return self

    def _start_server(self) -> None:
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self._base}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
            # Logical decoding for the change-capture tests (issue 17): slots, walsenders for exported snapshots.
            "wal_level": "logical",
            "max_replication_slots": "40",
            "max_wal_senders": "20",
        }
        conf.update(self.settings)
        last_error: Exception | None = None
        for _ in range(5):  # a free port can be taken between probing and binding
            self.port = _free_port()
            conf["port"] = str(self.port)
            auto = self.datadir / "postgresql.auto.conf"
            auto.write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
            try:
                self._run(
                    [
                        str(self.bindir / "pg_ctl"),
                        "-D",
                        str(self.datadir),
                        "-l",
                        str(self._base / "server.log"),
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ],
                    "pg_ctl start",
                )
                return
            except PostgresServerError as exc:
                last_error = exc
                time.sleep(0.2)
        log = self._base / "server.log" if self._base else None
        tail = log.read_text()[-2000:] if log and log.exists() else ""
        raise PostgresServerError(f"{last_error}\n{tail}")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory. Safe to call twice."""
        atexit.unregister(self.stop)
        if self._started:
            self._started = False
            with contextlib.suppress(PostgresServerError):
                self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"], "stop")
        self._cleanup()

    def _cleanup(self) -> None:
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- helpers ------------------------------------------------------------
    def psql(self, sql: str, *, dbname: str | None = None) -> str:
        """Run ``sql`` with the ``psql`` client (ON_ERROR_STOP) and return its unaligned output."""
        psql = self.bindir / "psql"
        exe = str(psql) if psql.is_file() else (shutil.which("psql") or "psql")
        env = dict(os.environ, PGPASSWORD=self.password)
        res = subprocess.run(
            [
                exe,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                dbname or self.dbname,
            ],
            input=sql,
            capture_output=True,
            text=True,
            env=env,
        )
        if res.returncode != 0:
            raise PostgresServerError(f"psql failed: {res.stderr.strip()}")
        return res.stdout

    @contextlib.contextmanager
    def connect(self, dbname: str | None = None, *, autocommit: bool = True) -> Iterator[Any]:
        """A psycopg connection to ``dbname`` (default ``postgres``), closed on exit."""
        import psycopg

        conn = psycopg.connect(self.dsn_for(dbname or self.dbname), autocommit=autocommit)
        try:
            yield conn
        finally:
            conn.close()

    def execute(self, sql: str, params: Any = None, *, dbname: str | None = None) -> list[tuple[Any, ...]]:
        """Execute one statement with psycopg (autocommit) and return its rows, if any."""
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (from template0) and return its DSN."""
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, disconnecting any session still using it."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def new_database(self, prefix: str = "db") -> PostgresDatabase:
        """Create a fresh, empty database with a unique name (drop it with :meth:`PostgresDatabase.drop`)."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        self.create_database(name)
        return PostgresDatabase(self, name)


class PostgresDatabase:
    """One database on a :class:`PostgresServer`, with the same helpers bound to it."""

    def __init__(self, server: PostgresServer, name: str) -> None:
        self.server = server
        self.name = name

    @property
    def dsn(self) -> str:
        """URI of this database, password included."""
        return self.server.dsn_for(self.name)

    @property
    def connection(self) -> dict[str, Any]:
        """The ``connection:`` mapping of a dativo job reading this database (host, port, user, ...)."""
        return self.server.connection_params(self.name)

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Execute one statement (autocommit) and return its rows, if any."""
        return self.server.execute(sql, params, dbname=self.name)

    def psql(self, sql: str) -> str:
        """Run a script with ``psql`` (ON_ERROR_STOP) in this database and return its output."""
        return self.server.psql(sql, dbname=self.name)

    def connect(self, *, autocommit: bool = True) -> contextlib.AbstractContextManager[Any]:
        """A psycopg connection to this database, closed on exit."""
        return self.server.connect(self.name, autocommit=autocommit)

    def drop(self) -> None:
        """Drop the database (sessions still connected are terminated)."""
        self.server.drop_database(self.name)
