"""``dativo cdc status JOB`` and ``dativo cdc drop JOB``: the replication slot of a change-capture job.

Registered on the main ``dativo`` app by :mod:`dativo.cli`. Errors print as one
line (``error: ...``); exit code 1 for a server failure, 2 for a bad job file.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from dativo.cli_common import fail, guard, out
from dativo.config.loader import LoadedJob, load_job
from dativo.connectors.postgres.cdc.slot import CdcSettings, drop_slot, slot_info
from dativo.connectors.postgres.connection import build_connection, connect_psycopg, import_psycopg, translate_error
from dativo.connectors.postgres.types import quote_ident
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.engine.retry import run_job
from dativo.errors import ConfigError, DativoError

__all__ = ["cdc_app"]

T = TypeVar("T")

cdc_app = typer.Typer(help="Inspect or drop the replication slot of a change-capture job.", no_args_is_help=True)
JobArg = Annotated[Path, typer.Argument(help="The job file (YAML) with source.cdc.", show_default=False)]


def _settings(loaded: LoadedJob) -> CdcSettings:
    source = loaded.config.source
    if source.cdc is None:
        raise ConfigError(f"job '{loaded.name}' has no source.cdc section")
    return CdcSettings.from_config({"cdc": source.cdc.model_dump(), "job": {"name": loaded.name}})


def _on_server(loaded: LoadedJob, action: Callable[[Any], T]) -> T:
    info = build_connection(loaded.config.source.connection)
    psycopg = import_psycopg()
    conn = connect_psycopg(info, autocommit=True)
    try:
        return action(conn)
    except psycopg.Error as exc:
        raise translate_error(exc, info) from exc
    finally:
        conn.close()


def status_of(job: Path) -> dict[str, Any]:
    """The slot's state, the committed position and the lag, as a JSON-ready dict; raises DativoError."""
    loaded = load_job(job)
    settings = _settings(loaded)
    slot = _on_server(loaded, lambda conn: slot_info(conn, settings.slot))
    state = pipeline.load_state(build_plan(loaded)) or {}
    committed = state.get("cdc") or {}
    committed_at = committed.get("committed_at")
    lag_s = None
    if committed_at:
        lag_s = round((datetime.now(UTC) - datetime.fromisoformat(committed_at)).total_seconds(), 1)
    return {
        "job": loaded.name,
        "slot": settings.slot,
        "publication": settings.publication,
        "exists": slot is not None,
        "active": slot.active if slot else None,
        "wal_status": slot.wal_status if slot else None,
        "confirmed_lsn": slot.confirmed_lsn if slot else None,
        "committed_lsn": committed.get("lsn"),
        "current_lsn": slot.current_lsn if slot else None,
        "lag_bytes": slot.lag_bytes if slot else None,
        "retained_wal_bytes": slot.retained_bytes if slot else None,
        "seconds_since_last_commit": lag_s,
    }


@cdc_app.command("status")
def status(job: JobArg, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the job's slot: confirmed and committed LSN, lag in bytes and time, retained WAL."""
    facts = guard(lambda: status_of(job))
    if as_json:
        out.print_json(json.dumps(facts))
        return
    table = Table(show_header=False, box=None)
    for key, value in facts.items():
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    out.print(table)
    if not facts["exists"] and facts["committed_lsn"]:
        fail(DativoError(f"replication slot '{facts['slot']}' is gone; see docs/cdc.md (a lost slot)"))


@cdc_app.command("drop")
def drop(
    job: JobArg,
    publication: Annotated[bool, typer.Option("--publication", help="Also drop the job's publication.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop the job's replication slot (the server stops keeping WAL for it); the next run must load again."""
    loaded = guard(lambda: load_job(job))
    settings = guard(lambda: _settings(loaded))
    if not yes and not typer.confirm(f"Drop replication slot '{settings.slot}'? Changes not yet read are lost"):
        fail(ConfigError("cdc drop cancelled; nothing changed"))

    def act(conn: Any) -> list[str]:
        done = [f"dropped slot '{settings.slot}'" if drop_slot(conn, settings.slot) else f"no slot '{settings.slot}'"]
        if publication:
            conn.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(settings.publication)}")
            done.append(f"dropped publication '{settings.publication}'")
        return done

    out.print("; ".join(guard(lambda: _on_server(loaded, act))))
    out.print("run 'dativo state reset' before the next run to load the table again")


@cdc_app.command("follow")
def follow(
    job: JobArg,
    interval: Annotated[
        float | None, typer.Option(help="Seconds between commits (default: the job's source.cdc.commit_interval_s).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No line per commit.")] = False,
) -> None:
    """Keep the job running: one change run (one commit) every interval; SIGTERM/Ctrl-C stop after a commit.

    A signal never interrupts a run: the run in progress commits and confirms, then the command
    exits 0. A failed run (after the job's retries) exits 1 with its error; kill -9 is safe at any
    moment (the next run or follow continues from the committed position).
    """
    loaded = guard(lambda: load_job(job))
    cdc = loaded.config.source.cdc
    if cdc is None:
        fail(ConfigError(f"job '{loaded.name}' has no source.cdc section"))
    period = interval if interval is not None else cdc.commit_interval_s
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.is_set():
        summary = guard(lambda: run_job(loaded))
        if not quiet:
            facts = summary.target.get("cdc", {})
            out.print(f"committed {summary.rows} change(s) up to {facts.get('position', {}).get('lsn')}")
        if not summary.target.get("cdc", {}).get("more"):  # max_rows cut this run short: go on at once
            stop.wait(period)
    if not quiet:
        out.print("stopped after a commit")
