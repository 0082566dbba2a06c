"""Staged (distributed) writes for the StagingWriter tests: every partition staged in an OS process of its own.

The functions here run in ``spawn``-ed processes (``multiprocessing``), so they take
only picklable arguments: the writer's import path, its config (secrets included, as
a real executor's worker gets them from its own job file), the driver's plan and the
partition's rows. :func:`stage` is one attempt on a fresh, initialized writer;
``die_after`` makes it SIGKILL its own process after that many batches, mid-write,
before any description is returned. :func:`drive` is a whole driver run in one
process (for killing the driver at a crash point with ``DATIVO_CRASH_AT``).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pyarrow as pa

from dativo.sdk import FAULT_HOOK_KEY, DataWriter

__all__ = [
    "SPAWN",
    "attempt_killed",
    "drive",
    "drive_killed",
    "killed_retry",
    "pool",
    "split",
    "stage",
    "stage_all",
    "staged_run",
    "writer_of",
]

SPAWN = multiprocessing.get_context("spawn")


def split(table: pa.Table, parts: int) -> list[pa.Table]:
    """``table`` in ``parts`` slices of equal size (the last one shorter): one per partition."""
    size = -(-table.num_rows // parts)
    return [table.slice(i * size, size) for i in range(parts)]


def writer_of(ref: str, config: Mapping[str, Any]) -> DataWriter:
    """A fresh writer of class ``module:Class`` initialized with ``config``."""
    module, _, name = ref.partition(":")
    writer: DataWriter = getattr(importlib.import_module(module), name)()
    writer.initialize(dict(config))
    return writer


def _batches(table: pa.Table, rows: int, die_after: int | None) -> Iterator[pa.RecordBatch]:
    for count, batch in enumerate(table.to_batches(max_chunksize=rows), start=1):
        yield batch
        if die_after is not None and count >= die_after:
            os.kill(os.getpid(), signal.SIGKILL)


def stage(
    ref: str,
    config: Mapping[str, Any],
    plan: Mapping[str, Any],
    key: str,
    table: pa.Table,
    batch_rows: int = 50,
    die_after: int | None = None,
) -> dict[str, Any]:
    """One attempt: ``initialize`` a fresh writer, ``stage_partition`` the rows of ``table``, ``close``."""
    writer = writer_of(ref, config)
    try:
        return dict(writer.stage_partition(plan, key, _batches(table, batch_rows, die_after)))  # type: ignore[attr-defined]
    finally:
        writer.close()


def pool(workers: int = 2) -> ProcessPoolExecutor:
    """A pool of ``spawn``-ed worker processes."""
    return ProcessPoolExecutor(workers, mp_context=SPAWN)


def stage_all(
    executor: ProcessPoolExecutor,
    ref: str,
    config: Mapping[str, Any],
    plan: Mapping[str, Any],
    parts: Sequence[pa.Table],
    attempt: int = 1,
) -> list[dict[str, Any]]:
    """Stage every partition in the pool's processes (partition ``i`` as key ``<run>-p000i-a<attempt>``)."""
    run_id = config["job"]["run_id"]
    futures = [
        executor.submit(stage, ref, config, plan, f"{run_id}-p{index:04d}-a{attempt}", part)
        for index, part in enumerate(parts)
    ]
    return [future.result(timeout=180) for future in futures]


def attempt_killed(ref: str, config: Mapping[str, Any], plan: Mapping[str, Any], key: str, table: pa.Table) -> int:
    """Stage ``table`` in a process that SIGKILLs itself after two batches; returns its exit code."""
    process = SPAWN.Process(target=stage, args=(ref, config, plan, key, table, 20, 2))
    process.start()
    process.join(180)
    return process.exitcode if process.exitcode is not None else 0


def killed_retry(
    executor: ProcessPoolExecutor, ref: str, config: Mapping[str, Any], parts: Sequence[pa.Table]
) -> DataWriter:
    """A driver of a run whose partitions all staged, then whose retry of the last one was SIGKILLed mid-write.

    The driver has loaded the state and been prepared; every partition of ``parts`` is staged in
    ``executor``'s processes (attempt 1), then attempt 2 of the last one dies by SIGKILL after two
    batches, leaving its files (asserted). The caller commits or aborts the driver, and closes it.
    """
    driver = writer_of(ref, config)
    driver.load_state()  # type: ignore[attr-defined]
    driver.prepare(parts[0].schema)
    plan = driver.staging_plan()  # type: ignore[attr-defined]
    stage_all(executor, ref, config, plan, parts)
    key = f"{config['job']['run_id']}-p{len(parts) - 1:04d}-a2"
    assert attempt_killed(ref, config, plan, key, parts[-1]) == -signal.SIGKILL
    return driver


def drive(
    ref: str,
    config: Mapping[str, Any],
    schema: pa.Schema,
    parts: Sequence[pa.Table],
    state: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A whole driver run in this process: prepare, plan, stage every partition (inline), commit.

    The writer gets dativo's crash-point hook, so ``DATIVO_CRASH_AT`` in this process's
    environment SIGKILLs it at that point of ``commit_staged``.
    """
    from dativo._faults import crash_point

    def inline(plan: Mapping[str, Any]) -> list[dict[str, Any]]:
        run_id = config["job"]["run_id"]
        return [stage(ref, config, plan, f"{run_id}-p{index:04d}-a1", part) for index, part in enumerate(parts)]

    return _driver_run(ref, {**config, FAULT_HOOK_KEY: crash_point}, schema, inline, state)


def drive_killed(
    ref: str, config: Mapping[str, Any], schema: pa.Schema, parts: Sequence[pa.Table], state: Any, point: str
) -> int:
    """Run :func:`drive` in a process with ``DATIVO_CRASH_AT=point``; returns its exit code."""
    previous = os.environ.get("DATIVO_CRASH_AT")
    os.environ["DATIVO_CRASH_AT"] = point
    try:
        process = SPAWN.Process(target=drive, args=(ref, config, schema, parts, state))
        process.start()
    finally:
        if previous is None:
            os.environ.pop("DATIVO_CRASH_AT", None)
        else:
            os.environ["DATIVO_CRASH_AT"] = previous
    process.join(240)
    return process.exitcode if process.exitcode is not None else 0


def staged_run(
    executor: ProcessPoolExecutor,
    ref: str,
    config: Mapping[str, Any],
    parts: Sequence[pa.Table],
    state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A driver in this process, every partition staged in a worker process of ``executor``, then one commit.

    The state committed is ``state`` or ``{"run_id": <the run id>}``; on failure the driver aborts.
    """

    def in_pool(plan: Mapping[str, Any]) -> list[dict[str, Any]]:
        return stage_all(executor, ref, config, plan, parts)

    return _driver_run(ref, config, parts[0].schema, in_pool, state or {"run_id": config["job"]["run_id"]})


def _driver_run(
    ref: str,
    config: Mapping[str, Any],
    schema: pa.Schema,
    stage_parts: Callable[[Mapping[str, Any]], list[dict[str, Any]]],
    state: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The driver's side: load the state, prepare, plan, ``stage_parts(plan)``, stage ``state``, commit once.

    On any failure the driver aborts (removing what was staged) and the exception propagates.
    """
    driver = writer_of(ref, config)
    try:
        driver.load_state()  # type: ignore[attr-defined]
        driver.prepare(schema)
        staged = stage_parts(driver.staging_plan())  # type: ignore[attr-defined]
        if state is not None:
            driver.stage_state(dict(state))  # type: ignore[attr-defined]
        return dict(driver.commit_staged(staged))  # type: ignore[attr-defined]
    except BaseException:
        driver.abort()
        raise
    finally:
        driver.close()
