"""What the CLI prints for jobs with streams: a summary table, schemas per stream, one error line per failure."""

from __future__ import annotations

import json
import traceback
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from dativo._secrets import redact
from dativo.errors import DativoError

if TYPE_CHECKING:  # rich is imported when something is printed (issue 15)
    from rich.console import Console

    from dativo.api import DiscoveredStream, RunResult
    from dativo.config.loader import LoadedJob

__all__ = ["print_discovered", "print_streams_summary", "stream_errors"]


def print_streams_summary(out: Console, result: RunResult) -> None:
    """One row per stream (status, rows, files, duration, target and snapshot), then the totals."""
    from rich.markup import escape
    from rich.table import Table

    table = Table("stream", "status", "rows", "files", "duration", "target", title=f"job {result.job}")
    colours = {"succeeded": "green", "already committed": "yellow", "failed": "red"}
    for stream in result.streams:
        target = stream.target or "-"
        if stream.snapshot_id:
            target += f" (snapshot {stream.snapshot_id})"
        table.add_row(
            escape(stream.name),
            f"[{colours.get(stream.status, 'white')}]{escape(stream.status)}[/]",
            f"{stream.rows:,}",
            str(stream.files),
            f"{stream.duration_s:.2f} s",
            escape(redact(target)),
        )
    out.print(table)
    failed = len(result.failed)
    out.print(
        f"{len(result.streams) - failed} of {len(result.streams)} streams committed, {result.rows:,} rows, "
        f"{result.duration_s:.2f} s" + (f"; failed: {', '.join(result.failed)}" if failed else ""),
        markup=False,
        highlight=False,
    )


def print_discovered(out: Console, found: Sequence[DiscoveredStream], *, as_json: bool, per_stream: bool) -> None:
    """Each stream's columns: Arrow type and target type (one table per stream, or JSON)."""
    from rich.markup import escape
    from rich.table import Table

    rows = {
        item.name: [
            {
                "column": f.name,
                "arrow": str(f.type),
                "nullable": f.nullable,
                "target": (item.target_types or {}).get(f.name),
            }
            for f in item.schema
        ]
        for item in found
    }
    if as_json:
        out.print_json(json.dumps(rows if per_stream else next(iter(rows.values()))))
        return
    sides = {item.name: f"reader {item.reader}, writer {item.writer}" for item in found if item.reader}
    for name, columns in rows.items():
        caption = escape(sides[name]) if name in sides else None
        table = Table(
            "column", "arrow type", "target type", title=escape(name) if per_stream else None, caption=caption
        )
        for row in columns:
            table.add_row(escape(row["column"]), escape(row["arrow"]), escape(row["target"] or "-"))
        out.print(table)


def stream_errors(
    failures: Sequence[tuple[str, BaseException]], jobs: Mapping[str, LoadedJob], *, debug: bool
) -> Iterator[str]:
    """``error: stream NAME: [FILE:LINE: key: ]message`` lines (redacted), tracebacks first with ``debug``."""
    for name, exc in failures:
        if debug:
            yield redact("".join(traceback.format_exception(exc)))
        if isinstance(exc, KeyboardInterrupt):
            message = "interrupted; this stream committed nothing"
        elif isinstance(exc, DativoError):
            message = str(exc)
            job = jobs.get(name)
            if exc.config_key and job is not None:
                message = f"{job.locate(exc.config_key)}: {exc.config_key}: {message}"
        else:
            message = f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
        for line in redact(message).splitlines() or [""]:
            yield f"error: stream {name}: {line}"
