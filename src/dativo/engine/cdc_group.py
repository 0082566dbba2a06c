"""Several tables from one replication slot in one run: the ``streams:`` form of a ``source.cdc`` job.

The tables' readers start together (the slot is read once, up to the WAL position
at the start of the run, and its changes routed per table), then each table is
written and committed on its own, with the position it read up to in its own
snapshot. Only then is the slot advanced — to the least position every table of
the slot has committed, so a table whose commit failed reads its changes again
next run, and a table that committed skips what its committed position covers.
See docs/cdc.md.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from dativo.errors import ConfigError, SourceError, is_transient

if TYPE_CHECKING:  # the run's modules load when a group runs: planning streams stays light
    from dativo.engine.cdc import ChangeTable
    from dativo.engine.pipeline import ProgressSink
    from dativo.engine.streams import Stream, StreamOutcome

__all__ = ["change_groups", "check_whole_groups", "run_change_group"]

log = logging.getLogger("dativo.engine.cdc")


def _slot_key(stream: Stream) -> tuple[str, str] | None:
    source = stream.job.config.source
    if source.cdc is None:
        return None
    slot = source.cdc.slot or f"<default of job {stream.job.name}>"  # the default slot derives from the job's name
    return slot, json.dumps(source.connection, sort_keys=True, default=str)


def change_groups(streams: Sequence[Stream]) -> tuple[list[list[Stream]], list[Stream]]:
    """Split ``streams`` into groups of two or more ``source.cdc`` streams sharing a slot, and the rest."""
    by_slot: dict[tuple[str, str], list[Stream]] = {}
    for stream in streams:
        key = _slot_key(stream)
        if key is not None:
            by_slot.setdefault(key, []).append(stream)
    grouped = {id(s) for group in by_slot.values() if len(group) > 1 for s in group}
    return [g for g in by_slot.values() if len(g) > 1], [s for s in streams if id(s) not in grouped]


def check_whole_groups(streams: Sequence[Stream], chosen: Sequence[Stream], file: str) -> None:
    """Refuse a selection that runs some but not all of the tables of a slot.

    Raises ConfigError: the slot is advanced to the least position of the tables run
    together, so running a part of them would move it past changes another table still needs.
    """
    picked = {id(s) for s in chosen}
    for group in change_groups(streams)[0]:
        inside = [s.name for s in group if id(s) in picked]
        if inside and len(inside) < len(group):
            names = ", ".join(s.name for s in group)
            raise ConfigError(
                f"--stream: {file}: streams {names} read one replication slot and run together; "
                "select all of them or none"
            )


def run_change_group(
    streams: Sequence[Stream],
    *,
    run_id: str | None = None,
    progress: ProgressSink | None = None,
    on_done: Callable[[StreamOutcome], None] | None = None,
) -> list[StreamOutcome]:
    """Run the ``source.cdc`` streams of one slot once; one outcome per stream, in order.

    A stream that cannot start, or whose write or commit fails, has its error in its outcome
    and leaves the others to commit; a failure of the shared start (the slot) fails every
    stream, and is retried as ``engine.retry`` says when it is transient (the slot busy with
    another run, a lost connection) — nothing was committed then. The slot is advanced only to
    what every table committed; a failure to advance it is logged (the next run advances it).
    KeyboardInterrupt aborts the uncommitted tables and propagates. A table's own failure is not
    retried within the run: the next run reads again what was not committed.
    """
    policy = streams[0].job.config.engine.retry
    attempt = 1
    while True:
        outcomes, shared = _attempt(streams, run_id, progress, attempt)
        if shared is None or attempt >= policy.max_attempts or not is_transient(shared):
            break
        delay = min(policy.max_delay_s, policy.initial_delay_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        log.info(
            "attempt %d of %d to start the tables of one slot failed with a transient error; retrying in %.1f s: %s",
            attempt,
            policy.max_attempts,
            delay,
            shared,
        )
        time.sleep(delay)
        attempt += 1
    for outcome in outcomes:
        if on_done is not None:
            on_done(outcome)
    return outcomes


def _attempt(
    streams: Sequence[Stream], run_id: str | None, progress: ProgressSink | None, attempt: int
) -> tuple[list[StreamOutcome], BaseException | None]:
    """One attempt: the outcomes, and the error of the shared start if that is what failed."""
    from dativo.engine.cdc import ChangeTable
    from dativo.engine.pipeline import new_summary
    from dativo.engine.plan import build_plan
    from dativo.engine.streams import StreamOutcome

    tables: list[ChangeTable] = []
    errors: dict[int, BaseException] = {}
    shared: BaseException | None = None
    try:
        for stream in streams:
            plan = build_plan(stream.job, run_id)
            table = ChangeTable(plan, new_summary(plan))
            tables.append(table)
            try:
                table.open()
            except Exception as exc:
                table.fail(exc)
                errors[id(table)] = exc
        unknown = [t for t in tables if not t.state_loaded]
        if unknown:
            # The slot may not move past a position we cannot read: run none of the slot's tables.
            reason = errors[id(unknown[0])]
            for table in tables:
                if id(table) not in errors:
                    errors[id(table)] = _not_run(unknown[0], reason)
                    table.fail(errors[id(table)])
        ready = [t for t in tables if id(t) not in errors]
        # Tables that could not start still hold the slot back at what they committed.
        held = [t.committed for t in tables if id(t) in errors and t.committed is not None]
        starts: list[Any] = []
        if ready:
            try:
                starts = ready[0].begin_with(ready, held)
            except Exception as exc:
                shared = exc
                for table in ready:
                    table.fail(exc)
                    errors[id(table)] = exc
                ready = []
        for table, start in zip(ready, starts, strict=True):
            try:
                table.apply(start, progress)
            except Exception as exc:
                table.fail(exc)
                errors[id(table)] = exc
        if ready:
            _advance(ready, errors, held)
    except BaseException as exc:
        for table in tables:
            if id(table) not in errors:
                table.fail(exc)
        raise
    finally:
        for table in tables:
            table.close()
    outcomes = []
    for stream, table in zip(streams, tables, strict=False):
        error = errors.get(id(table))
        table.summary.attempt = attempt
        if error is None:
            table.summary.status = "succeeded"
        outcomes.append(StreamOutcome(stream, table.summary, error, attempt))
    return outcomes, shared


def _not_run(blocker: ChangeTable, reason: BaseException) -> SourceError:
    return SourceError(
        f"not run: the tables of one replication slot run together, and {blocker.plan.job.config.source.table} "
        f"could not load its committed position ({reason})"
    )


def _advance(ready: list[ChangeTable], errors: dict[int, BaseException], held: list[Any]) -> None:
    """Advance the slot to the least position every table has committed (never a failed table's new one)."""
    positions: list[Any] = list(held)
    for table in ready:
        if id(table) not in errors:
            positions.append(table.position)
        elif table.committed is not None:
            positions.append(table.committed)
        # A table with no committed position constrains nothing: its next load positions itself.
    if not positions:
        return
    owner = ready[0]
    try:
        least = dict(owner.change_reader.least_position(positions))
    except Exception as exc:
        log.warning(
            "reader '%s' could not order the positions %s (the next run advances the slot): %s",
            owner.names[0],
            positions,
            exc,
        )
        return
    from dativo.engine.cdc import _confirm

    facts = _confirm(owner.change_reader, owner.names[0], least)
    for table in ready:
        if id(table) not in errors:
            table.summary.target.setdefault("cdc", {}).update(facts | {"slot_advanced_to": least})
