"""The environment: the PostgreSQL server (started or given), the ``dativo`` command, facts about the machine."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from _common import REPO, log


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    return None


def dist_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or ``"not installed"``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_facts(dsn: str, psql: str) -> dict[str, Any]:
    """CPU, memory, versions and the server settings that matter for a read benchmark."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, current_setting(name) FROM unnest(%s::text[]) AS name",
                [["shared_buffers", "work_mem", "jit", "fsync", "max_parallel_workers_per_gather"]],
            ).fetchall()
        )
    psql_version = subprocess.run([psql, "--version"], capture_output=True, text=True).stdout.strip()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} ({affinity} usable)",
        "ram_gb": _ram_gb(),
        "kernel": platform.release(),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "postgresql": pg_version[0] if pg_version else "unknown",
        "postgresql_settings": ", ".join(f"{k}={v}" for k, v in sorted(settings.items())),
        "psql": psql_version,
        "python": platform.python_version(),
        "dativo": f"{dist_version('dativo')} @ {_git_revision()}",
        "pyarrow": dist_version("pyarrow"),
        "pyiceberg": dist_version("pyiceberg"),
        "adbc-driver-postgresql": dist_version("adbc-driver-postgresql"),
        "psycopg": dist_version("psycopg"),
        "sqlalchemy": dist_version("sqlalchemy"),
        "workdir_filesystem": None,  # filled by main
    }


def filesystem_of(path: Path) -> str:
    """The file system ``path`` is on, as ``<type> on <mount point> (<device>)``, from ``/proc/mounts``."""
    best, fs = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mount, fstype, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best):
                best, fs = mount, f"{fstype} on {mount} ({dev})"
    return fs


@contextlib.contextmanager
def postgres(args: argparse.Namespace) -> Iterator[tuple[str, str, str]]:
    """Yield (dsn, psql path, description) for ``--dsn`` or for a server started here."""
    if args.dsn:
        yield args.dsn, shutil.which("psql") or "psql", "given with --dsn"
        return
    from support.pgserver import PostgresServer  # tests/ is on sys.path (_common)

    settings = dict(s.split("=", 1) for s in args.pg_setting)
    log("starting a PostgreSQL server ...")
    with PostgresServer(settings=settings) as pg:
        psql = pg.bindir / "psql"
        yield (
            pg.dsn,
            str(psql) if psql.is_file() else (shutil.which("psql") or "psql"),
            ("started by run.py (tests/support/pgserver.py: fsync off, 127.0.0.1 TCP, SCRAM)"),
        )
        log("stopping the PostgreSQL server")


def dativo_command() -> tuple[str, ...]:
    """The ``dativo`` console script of this environment (``python -m dativo`` without one), dativo byte-compiled."""
    # Byte-compile dativo once, as `pip install` does: an editable install run with PYTHONDONTWRITEBYTECODE
    # would otherwise compile every dativo module from source in every measured run (~0.05-0.1 s of CPU).
    import compileall

    import dativo

    compileall.compile_dir(Path(dativo.__file__).parent, quiet=1)
    script = Path(sys.executable).parent / "dativo"
    if script.is_file():
        return (str(script),)
    found = shutil.which("dativo")
    return (found,) if found else (sys.executable, "-m", "dativo")
