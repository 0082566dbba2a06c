"""Executors: where a run's partitions are read and written (``engine.executor``).

The pipeline (``engine/pipeline.py``) is the same for every executor: it hosts the
reader and the writer on the driver, loads the state, prepares the writer, then hands
an :class:`Execution` to the executor, which reads every partition and writes (or
stages) it and returns an :class:`Outcome`; the pipeline stages the state and calls
``outcome.commit()`` once. (A local run that reads everything has its read started by
:meth:`LocalExecutor.start_read` before the writer is hosted, handed over as ``Execution.read``.)
Only *where* partitions run differs:

* ``local`` (:data:`LOCAL`, today's path): the pump's threads in this process, each
  batch handed to the writer's ``write_batch``; the commit is ``finalize()``;
* ``ray`` (``dativo.executors.ray``, ``pip install 'dativo[ray]'``): one Ray task per
  partition, each staging its files with a :class:`~dativo.sdk.StagingWriter`; the
  commit is ``commit_staged`` on the driver.

Executors are found through the ``dativo.executors`` entry-point group, like runtimes::

    [project.entry-points."dativo.executors"]
    my-executor = "my_pkg.executor:executor"   # an object with name, check and execute
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, runtime_checkable

from dativo.core.entrypoints import entry_point_names, load_entry_point

if TYPE_CHECKING:  # this module stays light: `validate --offline` checks the executor without pyarrow
    import pyarrow as pa

    from dativo.core.pump import Pump
    from dativo.engine.incremental import IncrementalPlan
    from dativo.engine.pipeline import ProgressSink, RunSummary
    from dativo.engine.plan import Plan
    from dativo.sdk import DataReader, DataWriter

__all__ = ["GROUP", "LOCAL", "Execution", "Executor", "LocalExecutor", "Outcome", "executor_names", "find_executor"]

#: The entry-point group executors register under.
GROUP = "dativo.executors"


@dataclass
class Execution:
    """What the pipeline hands an executor: plugins hosted on the driver, ready to read and write.

    The reader has declared ``schema`` (and been told where an incremental read starts);
    the writer has loaded the state and been prepared. ``summary`` is filled as batches
    land (rows, bytes, batches); ``progress`` is advanced likewise; ``stop`` set by another
    thread means: stop everything and raise KeyboardInterrupt. ``read`` is a read the pipeline
    already started with :meth:`LocalExecutor.start_read` (local executor only; None otherwise).
    """

    plan: Plan
    reader: DataReader
    writer: DataWriter
    schema: pa.Schema
    incremental: IncrementalPlan | None
    summary: RunSummary
    progress: ProgressSink | None = None
    stop: threading.Event | None = None
    read: Pump | None = None

    def stopped(self) -> bool:
        """Whether another thread asked the run to stop."""
        return self.stop is not None and self.stop.is_set()


@dataclass
class Outcome:
    """What an executor read: the new cursor high-water mark, and how to publish what it wrote."""

    #: The greatest value of the incremental cursor seen (None: no incremental read, or no row).
    high_water: Any | None
    #: Publishes everything in one atomic step and returns the writer's metadata; raises on failure.
    commit: Callable[[], Any]


@runtime_checkable
class Executor(Protocol):
    """Runs a job's partitions somewhere and returns how to commit them (see the module docstring)."""

    name: str

    def check(self, plan: Plan, writer: DataWriter | None = None) -> None:
        """Raise ConfigError (one line: what and what to do) if this job cannot run on this executor.

        Called by ``validate`` (also ``--offline``) and before a run hosts any plugin, with
        the plan only (the plugins' classes and runtimes), then again with the hosted
        ``writer``; it never contacts the source.
        """
        ...

    def execute(self, execution: Execution) -> Outcome:
        """Read and write (or stage) every partition; nothing may be visible before ``Outcome.commit``.

        On any failure (and KeyboardInterrupt) stop everything started, wait for it, and
        raise: the pipeline then aborts the writer, which removes what was written.
        """
        ...


class LocalExecutor:
    """Partitions on the pump's threads in this process; every batch to ``write_batch``; commit is ``finalize``."""

    name = "local"

    def check(self, plan: Plan, writer: DataWriter | None = None) -> None:
        """Every job runs locally."""

    def start_read(self, plan: Plan, reader: DataReader, schema: pa.Schema, startup_bytes: int = 0) -> Pump:
        """Plan the reader's partitions and start the pump's threads; the batches wait in its bounded queue.

        The pipeline calls this before the writer is hosted when the read does not depend on the
        target's state (docs/performance.md, start-up session 6), and :meth:`execute` otherwise.
        ``startup_bytes``: how much more the queue may hold until the first batch is taken (the
        pipeline's early read, while the writer is hosted; see :class:`~dativo.core.pump.Pump`).
        Planning failures propagate (wrapped like any plugin call); the caller cancels and joins the pump.
        """
        from dativo.core.pump import Pump, plan_read

        read = plan_read(reader, plan.reader.ref.name, plan.job.config.source.parallelism)
        pump = Pump(
            reader,
            plan.reader.ref.name,
            schema,
            plan.batch_size,
            plan.queue_size,
            read,
            max_bytes=plan.queue_bytes,
            read_bytes=int(plan.job.config.engine.read_mb * 1024 * 1024),
            startup_bytes=startup_bytes,
        )
        pump.start()
        return pump

    def execute(self, execution: Execution) -> Outcome:
        """Pump the reader's partitions into the writer (see ``core/pump.py``); raises the first failure."""
        from dativo._faults import crash_point
        from dativo.core.calls import call
        from dativo.engine.incremental import CursorTracker

        plan, writer, summary = execution.plan, execution.writer, execution.summary
        tracker = CursorTracker(execution.incremental, execution.schema) if execution.incremental else None
        pump = execution.read
        if pump is None:
            pump = self.start_read(plan, execution.reader, execution.schema)
        try:
            for batch in pump:
                if execution.stopped():
                    raise KeyboardInterrupt
                call(writer.write_batch, plan.writer.ref.name, "write_batch", batch)
                crash_point("batch")
                if tracker is not None:
                    tracker.update(batch)
                summary.rows += batch.num_rows
                summary.bytes += batch.nbytes
                summary.batches += 1
                if execution.progress is not None:
                    execution.progress.advance(batch.num_rows, batch.nbytes)
        except BaseException:
            pump.cancel()
            raise
        finally:
            pump.join(timeout=30)
        return Outcome(
            high_water=tracker.high_water if tracker is not None else None,
            commit=lambda: call(writer.finalize, plan.writer.ref.name, "finalize"),
        )


#: The local executor (registered as ``local``).
LOCAL = LocalExecutor()


def executor_names() -> list[str]:
    """The names of every registered executor (what ``engine.executor`` may say), sorted."""
    return sorted({*entry_point_names(GROUP), "local"})


def find_executor(name: str) -> Executor:
    """The executor registered as ``name`` (``local`` always exists), found by ``core/entrypoints.py``.

    Raises PluginError naming the group and the registered executors when none has that
    name, and naming the entry point when it fails to import or is not an :class:`Executor`.
    """
    if name == "local":
        return LOCAL
    how = "'ray' is installed with pip install 'dativo[ray]'"
    return load_entry_point(
        GROUP, name, "executor", _is_executor, "name, check and execute", who="engine.executor", how=how
    )


def _is_executor(value: object) -> TypeGuard[Executor]:
    return isinstance(value, Executor)
