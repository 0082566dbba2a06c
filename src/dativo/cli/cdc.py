"""``dativo cdc status|drop|follow JOB``: the replication slot(s) of a change-capture job.

A job with ``streams:`` may read several tables through one slot (docs/cdc.md): status
and drop then cover each slot of its ``source.cdc`` streams, and follow runs them all.

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

from dativo.cli.common import fail, guard, out
from dativo.config.loader import LoadedJob, load_job_file
from dativo.connectors.postgres.cdc.pgoutput import parse_lsn
from dativo.connectors.postgres.cdc.slot import CdcSettings, drop_slot, slot_info
from dativo.connectors.postgres.connection import build_connection, connect_psycopg, import_psycopg, translate_error
from dativo.connectors.postgres.types import quote_ident
from dativo.engine import pipeline
from dativo.engine.plan import build_plan
from dativo.engine.retry import run_job
from dativo.engine.streams import plan_streams
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


def _slots(path: Path) -> tuple[str, bool, list[tuple[LoadedJob, CdcSettings, dict[str, LoadedJob]]]]:
    """The job's name, whether it has streams, and each slot: a job to reach it, its settings, its tables."""
    loaded = load_job_file(path)
    if isinstance(loaded, LoadedJob):
        return loaded.name, False, [(loaded, _settings(loaded), {loaded.config.source.table or loaded.name: loaded})]
    slots: dict[tuple[str, str], tuple[LoadedJob, CdcSettings, dict[str, LoadedJob]]] = {}
    for stream in plan_streams(loaded):
        if stream.job.config.source.cdc is None:
            continue
        settings = _settings(stream.job)
        key = (settings.slot, json.dumps(stream.job.config.source.connection, sort_keys=True, default=str))
        slots.setdefault(key, (stream.job, settings, {}))[2][stream.name] = stream.job
    if not slots:
        raise ConfigError(f"job '{loaded.name}' has no stream with a source.cdc section")
    return loaded.name, True, list(slots.values())


def _slot_status(job: str, first: LoadedJob, settings: CdcSettings, tables: dict[str, LoadedJob]) -> dict[str, Any]:
    slot = _on_server(first, lambda conn: slot_info(conn, settings.slot))
    positions: dict[str, Any] = {}
    stamps: list[str] = []
    for name, loaded in tables.items():
        committed = (pipeline.load_state(build_plan(loaded)) or {}).get("cdc") or {}
        positions[name] = committed.get("lsn")
        if committed.get("committed_at"):
            stamps.append(committed["committed_at"])
    lag_s = None
    if stamps:
        lag_s = round((datetime.now(UTC) - datetime.fromisoformat(min(stamps))).total_seconds(), 1)
    known = [lsn for lsn in positions.values() if lsn]
    facts = {
        "job": job,
        "slot": settings.slot,
        "publication": settings.publication,
        "exists": slot is not None,
        "active": slot.active if slot else None,
        "wal_status": slot.wal_status if slot else None,
        "confirmed_lsn": slot.confirmed_lsn if slot else None,
        # The least of the tables' positions: what the slot may be advanced to.
        "committed_lsn": min(known, key=parse_lsn) if known else None,
        "current_lsn": slot.current_lsn if slot else None,
        "lag_bytes": slot.lag_bytes if slot else None,
        "retained_wal_bytes": slot.retained_bytes if slot else None,
        "seconds_since_last_commit": lag_s,
    }
    if len(tables) > 1:
        facts["tables"] = positions
    return facts


def status_of(job: Path) -> dict[str, Any]:
    """The slot's state, the committed position and the lag, as a JSON-ready dict; raises DativoError.

    For a job with ``streams:`` the dict is ``{"job", "slots": [...]}``, one entry per slot, each
    with the committed position of every table it serves (``tables``).
    """
    name, has_streams, slots = _slots(job)
    facts = [_slot_status(name, *slot) for slot in slots]
    return {"job": name, "slots": facts} if has_streams else facts[0]


@cdc_app.command("status")
def status(job: JobArg, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the job's slot: confirmed and committed LSN, lag in bytes and time, retained WAL."""
    facts = guard(lambda: status_of(job))
    if as_json:
        out.print_json(json.dumps(facts))
        return
    for slot in facts.get("slots", [facts]):
        table = Table(show_header=False, box=None)
        for key, value in slot.items():
            shown = ", ".join(f"{k} {v or '-'}" for k, v in value.items()) if isinstance(value, dict) else value
            table.add_row(key.replace("_", " "), "-" if shown is None else str(shown))
        out.print(table)
    for slot in facts.get("slots", [facts]):
        if not slot["exists"] and slot["committed_lsn"]:
            fail(DativoError(f"replication slot '{slot['slot']}' is gone; see docs/cdc.md (a lost slot)"))


@cdc_app.command("drop")
def drop(
    job: JobArg,
    publication: Annotated[bool, typer.Option("--publication", help="Also drop the job's publication.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop the job's replication slot (the server stops keeping WAL for it); the next run must load again."""
    _, _, slots = guard(lambda: _slots(job))
    names = ", ".join(f"'{settings.slot}'" for _, settings, _ in slots)
    if not yes and not typer.confirm(f"Drop replication slot {names}? Changes not yet read are lost"):
        fail(ConfigError("cdc drop cancelled; nothing changed"))
    for loaded, settings, _ in slots:

        def act(conn: Any, settings: CdcSettings = settings) -> list[str]:
            slot = settings.slot
            done = [f"dropped slot '{slot}'" if drop_slot(conn, slot) else f"no slot '{slot}'"]
            if publication:
                conn.execute(f"DROP PUBLICATION IF EXISTS {quote_ident(settings.publication)}")
                done.append(f"dropped publication '{settings.publication}'")
            return done

        out.print("; ".join(guard(lambda loaded=loaded, act=act: _on_server(loaded, act))))  # type: ignore[misc]
    out.print("run 'dativo state reset' before the next run to load the table again")


def _run_streams(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """One run of every stream of the job; raises the failure (one stream's error, or all of them)."""
    from dativo import api

    result = api.run(path)
    result.raise_for_failures()
    return [(stream.name, stream.summary) for stream in result.streams]


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
    _, has_streams, slots = guard(lambda: _slots(job))
    first = slots[0][0]
    cdc = first.config.source.cdc
    assert cdc is not None
    period = interval if interval is not None else cdc.commit_interval_s
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.is_set():
        summaries = guard(lambda: _run_streams(job) if has_streams else [("", run_job(first).to_dict())])
        more = False
        for name, summary in summaries:
            facts = summary.get("target", {}).get("cdc", {})
            more |= bool(facts.get("more"))
            if not quiet:
                where = f"{name}: " if name else ""
                lsn = facts.get("position", {}).get("lsn")
                out.print(f"{where}committed {summary['rows']} change(s) up to {lsn}", markup=False)
        if not more:  # max_rows cut this run short: go on at once
            stop.wait(period)
    if not quiet:
        out.print("stopped after a commit")
