"""The reader rules' checks (``reader.*``): each takes the certification context and returns what it saw."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from dativo.core.batches import as_record_batches
from dativo.testing._context import Context, Failed, Skipped, close_twice, describe, quietly_closed, schema_difference
from dativo.testing.type_table import FOUNDATION_TYPES, is_foundation_type, type_name

__all__ = ["LARGE_VALUE_BYTES", "READER_CHECKS", "RELEASE_WAIT_S", "Resources"]

#: The smallest value the ``large_values`` scenario must produce.
LARGE_VALUE_BYTES = 1024 * 1024
#: How long released threads, descriptors and processes may take to disappear after ``close()``.
RELEASE_WAIT_S = 5.0


def _reader_schema_before_data(ctx: Context) -> str:
    reader = ctx.target.reader(ctx.source("standard"))
    with quietly_closed(reader):
        first = reader.get_schema()
        if not isinstance(first, pa.Schema):
            raise Failed(f"get_schema() returned {type(first).__name__}, not a pyarrow.Schema")
        if len(first) == 0:
            raise Failed("get_schema() declares no columns")
        again = reader.get_schema()
        if not again.equals(first):
            raise Failed(f"get_schema() changed between two calls: {first} then {again}")
    return f"{len(first)} columns declared before any data"


def _check_batches(batches: Sequence[pa.RecordBatch], declared: pa.Schema) -> None:
    """Fails on the first batch that is not valid Arrow or does not have the declared schema."""
    for index, batch in enumerate(batches):
        try:
            batch.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise Failed(f"batch {index} is not valid Arrow: {describe(exc)}") from None
        difference = schema_difference(batch, declared)
        if difference is not None:
            raise Failed(f"batch {index} {difference}")


def _reader_batches_match(ctx: Context) -> str:
    declared, batches, _ = ctx.standard()
    rows = sum(batch.num_rows for batch in batches)
    if rows == 0:
        raise Failed("the standard scenario produced no rows; it must read a small non-empty dataset")
    _check_batches(batches, declared)
    return f"{len(batches)} batches, {rows} rows, all with the declared schema"


def _reader_schema_stable(ctx: Context) -> str:
    declared, batches, after = ctx.standard()
    rows = sum(batch.num_rows for batch in batches)
    hint = max(1, rows // 8)
    try:
        _, small, _ = ctx.read("standard", hint)  # many batches: a change after the first shows
    except Exception as exc:
        raise Failed(f"reading the standard scenario with read_batch({hint}) raised {describe(exc)}") from None
    for label, stream in (("read_batch(1024)", batches), (f"read_batch({hint})", small)):
        if stream and schema_difference(stream[0], declared) is None:
            for index, batch in enumerate(stream[1:], start=1):
                difference = schema_difference(batch, stream[0].schema)
                if difference is not None:
                    raise Failed(
                        f"the schema changed mid-stream ({label}): batch {index} {difference} (batch 0 did not)"
                    )
    if not after.equals(declared):
        raise Failed(f"get_schema() after reading returned {after}, before reading {declared}")
    return "one schema from get_schema() to the last batch"


def _reader_batch_size(ctx: Context) -> str:
    _, batches, _ = ctx.standard()
    rows = sum(batch.num_rows for batch in batches)
    if rows < 8:
        raise Skipped(f"the standard scenario has {rows} rows; 8 or more are needed to test batch sizes")
    hint = max(1, rows // 8)
    _, small, _ = ctx.read("standard", hint)
    sizes = [batch.num_rows for batch in small]
    if sum(sizes) != rows:
        raise Failed(
            f"read_batch({hint}) returned {sum(sizes)} rows, read_batch(1024) {rows}: "
            "the data must not depend on the batch size"
        )
    largest = max(sizes, default=0)
    if largest > 2 * hint:
        raise Failed(f"read_batch({hint}) yielded a batch of {largest} rows (more than twice the hint)")
    return f"read_batch({hint}): {len(sizes)} batches of at most {largest} rows"


def _reader_empty(ctx: Context) -> str:
    declared, batches, _ = ctx.read("empty", 1024)
    rows = sum(batch.num_rows for batch in batches)
    if rows:
        raise Failed(f"the empty scenario produced {rows} rows")
    for index, batch in enumerate(batches):
        difference = schema_difference(batch, declared)
        if difference is not None:
            raise Failed(f"empty batch {index} {difference}")
    return f"schema with {len(declared)} columns, zero rows, normal end"


def _reader_errors_raise(ctx: Context) -> str:
    config = ctx.source("error")
    rows = 0
    try:
        reader = ctx.target.reader(config)
    except Exception as exc:
        return f"initialize() raised {describe(exc)}"
    with quietly_closed(reader):
        try:
            reader.get_schema()
            for item in reader.read_batch(256):
                rows += sum(batch.num_rows for batch in as_record_batches(item, ctx.name))
        except Exception as exc:
            return f"raised {describe(exc)} after {rows} rows"
    raise Failed(f"the error scenario ended normally after {rows} rows: a failure must raise, never end the data early")


def _reader_close(ctx: Context) -> str:
    reader = ctx.target.reader(ctx.source("standard"))
    reader.get_schema()
    close_twice(reader, "without reading")
    reader = ctx.target.reader(ctx.source("standard"))
    stream = reader.read_batch(1)
    try:
        next(iter(stream), None)
    finally:
        with contextlib.suppress(Exception):
            stream.close()  # type: ignore[attr-defined]  # a generator, usually
    close_twice(reader, "mid-stream")
    checked = "without reading, mid-stream"
    if ctx.scenarios.error is not None:
        try:
            failing = ctx.target.reader(ctx.source("error"))
        except Exception:
            failing = None  # failed in initialize: the runtime closed it already
        if failing is not None:
            with contextlib.suppress(Exception):
                for _ in failing.read_batch(256):
                    pass
            close_twice(failing, "after the error scenario failed")
            checked += ", after an error"
    return f"close() twice is safe ({checked})"


def _open_fds() -> set[tuple[int, int, int]]:
    """This process's descriptors as (number, device, inode) of what they hold open.

    A number closed and reused for another file, socket or pipe is a new descriptor; a file
    deleted while open is still the same one.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return set()
    found: set[tuple[int, int, int]] = set()
    for name in names:
        with contextlib.suppress(OSError):  # closed since the listing (the listing's own descriptor too)
            held = os.stat(f"/proc/self/fd/{name}")
            found.add((int(name), held.st_dev, held.st_ino))
    return found


def _children() -> set[int]:
    me = str(os.getpid())
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(entry))
    return found


def _stop_early_and_close(ctx: Context, rows: int) -> None:
    reader = ctx.target.reader(ctx.source("standard"))
    try:
        reader.get_schema()
        stream = reader.read_batch(max(1, rows // 8))
        next(iter(stream), None)
        try:
            stream.close()  # type: ignore[attr-defined]  # what the engine does when it stops early
        except RuntimeError as exc:
            raise Failed(
                f"stopping the stream failed: {describe(exc)} (a generator must not swallow GeneratorExit)"
            ) from None
    finally:
        with contextlib.suppress(Exception):
            reader.close()


def _reader_cancel(ctx: Context) -> str:
    _, batches, _ = ctx.standard()  # also warms up lazily created pools (gRPC, drivers)
    rows = sum(batch.num_rows for batch in batches)
    # One untimed cycle first: what a stop-and-close creates once (a cache, a pool) is not a leak.
    _stop_early_and_close(ctx, rows)
    # A leak recurs with every cycle; a descriptor a background thread (gRPC, a server in the
    # same process) happened to hold during one measurement does not. Fail only if two cycles leak.
    leaks = _leaks_of_one_cycle(ctx, rows)
    if leaks:
        leaks = _leaks_of_one_cycle(ctx, rows)
    if leaks:
        raise Failed(f"{RELEASE_WAIT_S:g} s after close(), still running/open: {'; '.join(leaks)}")
    return "after stopping mid-stream and close(): no thread, file descriptor or process left"


class Resources:
    """The threads, descriptors and child processes this process has now, to compare with later.

    Threads are kept as objects, not idents: an ident (and a descriptor number) is reused as soon
    as its thread ended (or its descriptor closed), so a thread a plugin leaks may carry the ident of
    one that existed before and ended meanwhile.
    """

    def __init__(self) -> None:
        self.threads = set(threading.enumerate())
        self.fds = _open_fds()
        self.children = _children()

    def added_since(self, before: Resources) -> list[str]:
        """What is running or open now and was not in ``before``, described; empty when nothing."""
        threads = [t for t in self.threads if t not in before.threads and t.is_alive()]
        fds = self.fds - before.fds
        children = self.children - before.children
        added = []
        if threads:
            added.append(f"{len(threads)} thread(s) ({', '.join(sorted(t.name for t in threads))})")
        if fds:
            added.append(f"{len(fds)} file descriptor(s)")
        if children:
            added.append(f"{len(children)} child process(es)")
        return added


def _leaks_of_one_cycle(ctx: Context, rows: int) -> list[str]:
    """Stop a read early, close it, and list what it left behind after waiting up to RELEASE_WAIT_S."""
    before = Resources()
    _stop_early_and_close(ctx, rows)
    deadline = time.monotonic() + RELEASE_WAIT_S
    while True:
        leaks = Resources().added_since(before)
        if not leaks or time.monotonic() > deadline:
            return leaks
        time.sleep(0.05)


def _reader_large_values(ctx: Context) -> str:
    declared, batches, _ = ctx.read("large_values", 1024)
    largest = 0
    for index, batch in enumerate(batches):
        batch.validate(full=True)
        difference = schema_difference(batch, declared)
        if difference is not None:
            raise Failed(f"batch {index} {difference}")
        for column in batch.columns:
            if (
                pa.types.is_string(column.type)
                or pa.types.is_binary(column.type)
                or pa.types.is_large_string(column.type)
                or pa.types.is_large_binary(column.type)
            ):
                lengths = pc.max(pc.binary_length(column)).as_py()
                largest = max(largest, lengths or 0)
    if largest < LARGE_VALUE_BYTES:
        raise Failed(
            f"the largest text/binary value read is {largest} bytes; the large_values scenario must produce "
            f"one of at least {LARGE_VALUE_BYTES} bytes"
        )
    return f"largest value {largest / 1e6:.1f} MB, batches valid"


def _reader_types(ctx: Context) -> str:
    declared, batches, _ = ctx.read("all_types", 1024)
    odd = [f"'{f.name}' ({f.type})" for f in declared if not is_foundation_type(f.type)]
    if odd:
        raise Failed(f"column(s) {', '.join(odd)} are not types of the type table (docs/types.md)")
    _check_batches(batches, declared)
    produced = {type_name(f.type.value_type if pa.types.is_list(f.type) else f.type) for f in declared}
    missing = [type_name(t) for t in FOUNDATION_TYPES if type_name(t) not in produced]
    rows = sum(batch.num_rows for batch in batches)
    note = f"; not produced: {', '.join(missing)}" if missing else ""
    return f"{len(declared)} columns, {rows} rows, all table types{note}"


READER_CHECKS: dict[str, Callable[[Context], str]] = {
    "reader.schema-before-data": _reader_schema_before_data,
    "reader.batches-match-schema": _reader_batches_match,
    "reader.schema-stable": _reader_schema_stable,
    "reader.batch-size-hint": _reader_batch_size,
    "reader.empty-source": _reader_empty,
    "reader.errors-raise": _reader_errors_raise,
    "reader.close-idempotent": _reader_close,
    "reader.cancel-releases": _reader_cancel,
    "reader.large-values": _reader_large_values,
    "reader.types": _reader_types,
}
