"""``dativo maintain JOB``: expire snapshots, remove orphan files and compact small files of a job's Iceberg table.

Registered on the main ``dativo`` app by :mod:`dativo.cli`. Errors print as one line
(``error: ...``); exit code 2 for a bad command line or job file, 1 for a failure
while maintaining.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from dativo._secrets import redact
from dativo.cli.common import fail, guard, out
from dativo.config.loader import load_job
from dativo.errors import ConfigError, TargetError

if TYPE_CHECKING:
    from pyiceberg.table import Table

__all__ = ["maintain"]

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(option: str, value: str) -> timedelta:
    """``'90s'``, ``'15m'``, ``'2h'``, ``'7d'``, ``'1w'`` as a timedelta; raises ConfigError naming the option."""
    match = _DURATION.match(value)
    if match is None:
        raise ConfigError(f"{option}: '{value}' is not a duration (use e.g. 90s, 15m, 2h, 7d, 1w)")
    return timedelta(seconds=float(match.group(1)) * _UNIT[match.group(2).lower()])


def maintain(
    job: Annotated[
        Path, typer.Argument(help="The job file (YAML) whose Iceberg target to maintain.", show_default=False)
    ],
    expire: Annotated[bool, typer.Option(help="Expire old snapshots.")] = True,
    retain_last: Annotated[int, typer.Option(help="Snapshots always kept, newest first.", min=1)] = 10,
    expire_older_than: Annotated[str, typer.Option(help="Expire only snapshots older than this (e.g. 7d).")] = "7d",
    orphans: Annotated[bool, typer.Option(help="Delete files no snapshot references.")] = True,
    orphan_age: Annotated[str, typer.Option(help="Delete only orphan files older than this (safety age).")] = "3d",
    compact: Annotated[bool, typer.Option(help="Rewrite small data files into target-size files.")] = True,
    target_file_size_mb: Annotated[float, typer.Option(help="Size of compacted files.", min=0.001)] = 512,
    small_file_size_mb: Annotated[
        float | None, typer.Option(help="Files below this are compacted (default: half the target).", min=0.001)
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be done; change nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Expire snapshots, remove orphan files and compact small files of the job's Iceberg table.

    Safe while the job (or others) write the table: every change is one optimistic commit.
    """
    from dativo.targets.iceberg.catalog import open_catalog
    from dativo.targets.iceberg.maintain import MaintainOptions
    from dativo.targets.iceberg.maintain import maintain as run_maintenance

    loaded = guard(lambda: load_job(job))
    target = loaded.config.target
    if target.connector != "iceberg" or target.writer is not None:
        fail(ConfigError(f"{job}: maintain works on iceberg targets; this job's target is '{target.connector}'"))
    options = guard(
        lambda: MaintainOptions(
            expire=expire,
            retain_last=retain_last,
            older_than=parse_age("--expire-older-than", expire_older_than),
            orphans=orphans,
            orphan_age=parse_age("--orphan-age", orphan_age),
            compact=compact,
            target_file_bytes=int(target_file_size_mb * 1024 * 1024),
            small_file_bytes=int(small_file_size_mb * 1024 * 1024) if small_file_size_mb else None,
            dry_run=dry_run,
        )
    )
    name = str(target.table)
    identifier = tuple(part for part in name.split(".") if part)
    catalog = guard(lambda: open_catalog(dict(target.get("catalog") or {}), loaded.dir))

    def load() -> Table | None:
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return catalog.load_table(identifier)
        except NoSuchTableError:
            return None
        except Exception as exc:
            raise TargetError(f"iceberg table {name} cannot be loaded: {redact(str(exc))}") from exc

    report = guard(lambda: run_maintenance(load, name, options))
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
        return
    for line in report.lines():
        out.print(line, highlight=False, markup=False, soft_wrap=True)
