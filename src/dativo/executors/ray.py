"""The Ray executor's run (``engine.executor: ray``): one plain Ray task per partition, one commit on the driver.

Its entry point and plan check are in :mod:`dativo.executors` (light: no Ray, no pyarrow).

The driver (this process) keeps the reader and the writer the pipeline hosted. It plans
the partitions (``PartitionedReader.plan_partitions``: PostgreSQL ctid ranges in one
exported snapshot, which stays open on the driver until the pipeline closes the reader,
after the commit or the failure; files one per file; a reader that is not partitioned is
one task), asks the writer for its ``staging_plan``, and launches one task per partition
(``_ray_task.run_partition``) with Ray's ``max_retries`` for dead workers and nodes. It
gathers the descriptions and returns an :class:`~dativo.engine.executor.Outcome` whose
commit is ``commit_staged`` of exactly one attempt per partition. On the first terminal
failure it cancels the other tasks (``ray.cancel(force=True)``), waits for them, and
raises; the pipeline then ``abort()``s the writer, which removes every file staged for
the run. Ray is imported only when a job runs here (``pip install 'dativo[ray]'``).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from dativo.config.models import RayConfig
from dativo.core.calls import call
from dativo.core.registry import PluginPlan
from dativo.engine.executor import Execution, Outcome
from dativo.errors import ConfigError, DativoError, SourceError
from dativo.executors import INSTALL
from dativo.executors._ray_task import PartitionTask, run_partition
from dativo.executors._sealed import seal, secret_references
from dativo.sdk import FAULT_HOOK_KEY, DataReader, DataWriter, PartitionedReader, ReadPartition

__all__ = ["CANCEL_WAIT_S", "execute"]

log = logging.getLogger("dativo.engine")

#: Seconds to wait for cancelled tasks to end before aborting the writer.
CANCEL_WAIT_S = 60.0

#: Held while connecting: the streams of a ``streams:`` job run on threads and connect at once.
_CONNECTING = threading.Lock()


def _import_ray() -> Any:
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"engine.executor: ray needs Ray, which is not installed: {INSTALL}")
    import ray

    return ray


def execute(execution: Execution) -> Outcome:
    """Plan, launch one task per partition, gather; raise the first terminal failure after cancelling the rest.

    The executor's check (``dativo.executors.LazyRayExecutor.check``) has passed: Ray is installed
    and the writer is a StagingWriter.
    """
    ray = _import_ray()
    plan, settings = execution.plan, execution.plan.job.config.engine.ray
    _connect(ray, settings)
    partitions = _partitions(execution)
    writer, name = execution.writer, plan.writer.ref.name
    staging_plan = dict(call(writer.staging_plan, name, "staging_plan"))  # type: ignore[attr-defined]
    tasks = _tasks(execution, partitions, staging_plan)
    remote = ray.remote(run_partition).options(
        max_retries=settings.max_retries, retry_exceptions=False, num_cpus=settings.num_cpus
    )
    results = _gather(ray, remote, tasks, execution, settings)
    staged = [r["staged"] for r in sorted(results, key=lambda r: r["index"])]
    highs = [r["high_water"] for r in results if r["high_water"] is not None]
    execution.summary.executor = _report(settings, results, len(tasks))
    return Outcome(
        high_water=max(highs) if highs else None,
        commit=lambda: call(writer.commit_staged, name, "commit_staged", staged),  # type: ignore[attr-defined]
    )


def _connect(ray: Any, settings: RayConfig) -> None:
    """Connect this process to the cluster once (serialized: concurrent streams share the connection)."""
    with _CONNECTING:
        if not ray.is_initialized():
            _init(ray, settings)


def _init(ray: Any, settings: RayConfig) -> None:
    address = None if settings.address == "local" else settings.address
    try:
        ray.init(
            address=address,
            runtime_env=settings.runtime_env or None,
            log_to_driver=False,
            include_dashboard=False,
            configure_logging=False,
        )
    except ConnectionError as exc:
        raise ConfigError(
            f"engine.ray.address: cannot reach the Ray cluster at '{settings.address}' ({exc})",
            hint="start one with 'ray start --head', or give its address (ray://host:10001)",
        ) from exc


def _partitions(execution: Execution) -> list[ReadPartition | None]:
    reader, plan = execution.reader, execution.plan
    parallelism = plan.job.config.source.parallelism
    if parallelism == 1 or not isinstance(reader, PartitionedReader):
        return [None]
    planned = list(call(reader.plan_partitions, plan.reader.ref.name, "plan_partitions", parallelism, role="reader"))
    if len(planned) < 2:
        return [None]
    log.info("reading in %d partitions on Ray", len(planned), extra={"reader": plan.reader.ref.name})
    return list(planned)


def _for_workers(side: PluginPlan, references: Mapping[str, str]) -> PluginPlan:
    config = {k: v for k, v in side.config.items() if k not in (FAULT_HOOK_KEY, "postgres_plan")}
    # The class travels by its implementation name (a file plugin's module exists only where it was loaded).
    base = DataReader if side.ref.kind == "reader" else DataWriter
    return replace(side, ref=replace(side.ref, cls=base), config=seal(config, references))


def _tasks(
    execution: Execution, partitions: Sequence[ReadPartition | None], staging_plan: dict[str, Any]
) -> list[PartitionTask]:
    plan = execution.plan
    job = plan.job
    references = secret_references(job.path, job.dir)
    reader, writer = _for_workers(plan.reader, references), _for_workers(plan.writer, references)
    return [
        PartitionTask(
            job_file=job.path,
            job_dir=job.dir,
            source_connector=job.config.source.connector,
            reader=reader,
            writer=writer,
            schema=execution.schema,
            staging_plan=staging_plan,
            partition=partition,
            index=index,
            batch_size=plan.batch_size,
            incremental=execution.incremental,
            run_id=plan.run_id,
        )
        for index, partition in enumerate(partitions)
    ]


def _gather(
    ray: Any, remote: Any, tasks: list[PartitionTask], execution: Execution, settings: RayConfig
) -> list[dict[str, Any]]:
    """Submit (at most ``max_in_flight`` at once) and collect; on failure cancel the rest and raise."""
    waiting = list(tasks)
    running: dict[Any, PartitionTask] = {}
    results: list[dict[str, Any]] = []
    limit = settings.max_in_flight or len(tasks)
    progress, summary = execution.progress, execution.summary
    try:
        while waiting or running:
            while waiting and len(running) < limit:
                task = waiting.pop(0)
                running[remote.remote(task)] = task
            _report_partitions(progress, len(results), len(running), results)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            if execution.stopped():
                raise KeyboardInterrupt
            for ref in ready:
                task = running.pop(ref)
                result = _result(ray, ref, task)
                results.append(result)
                summary.rows += result["rows"]
                summary.bytes += result["bytes"]
                summary.batches += result["batches"]
                if progress is not None:
                    progress.advance(result["rows"], result["bytes"])
        _report_partitions(progress, len(results), 0, results)
        return results
    except BaseException:
        _cancel(ray, list(running))
        raise


def _result(ray: Any, ref: Any, task: PartitionTask) -> dict[str, Any]:
    """The task's result, or its failure as a DativoError (the reader's or writer's own, when it was one)."""
    try:
        return dict(ray.get(ref))
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
        if isinstance(cause, DativoError):
            raise cause from None
        raise SourceError(f"partition {task.label} failed on Ray: {cause or exc}") from None
    except ray.exceptions.RayError as exc:  # the worker or node died more often than max_retries allows
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"partition {task.label} failed on Ray after its retries: {type(exc).__name__}: {first}",
            hint="raise engine.ray.max_retries, or check the Ray workers' logs",
        ) from None


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Force-cancel ``refs`` and wait (bounded) until none runs, so no task stages files after the abort.

    The cancellation is sent again every second to the tasks still pending: Ray loses one
    sent while a task is being handed to a freshly started worker (it then runs to its end).
    """
    deadline = time.monotonic() + CANCEL_WAIT_S
    pending = list(refs)
    while pending and time.monotonic() < deadline:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:
                log.debug("cancelling a Ray task raised", exc_info=True)
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
    if pending:
        log.warning("%d cancelled Ray task(s) still running after %.0f s", len(pending), CANCEL_WAIT_S)


def _report_partitions(progress: Any, done: int, running: int, results: list[dict[str, Any]]) -> None:
    show = getattr(progress, "partitions", None)
    if callable(show):
        show(done, running, sum(1 for r in results if r["attempt"] > 0))


def _report(settings: RayConfig, results: list[dict[str, Any]], partitions: int) -> dict[str, Any]:
    """The summary's ``executor`` block: partitions done and retried, throughput per worker node."""
    nodes: dict[str, dict[str, Any]] = {}
    for r in results:
        node = nodes.setdefault(r["node"], {"partitions": 0, "rows": 0, "bytes": 0, "seconds": 0.0})
        node["partitions"] += 1
        node["rows"] += r["rows"]
        node["bytes"] += r["bytes"]
        node["seconds"] += r["seconds"]
    for node in nodes.values():
        node["rows_per_s"] = round(node["rows"] / node["seconds"]) if node["seconds"] > 0 else None
        node["seconds"] = round(node["seconds"], 3)
    return {
        "name": "ray",
        "address": settings.address,
        "partitions": partitions,
        "done": len(results),
        "retried": sum(1 for r in results if r["attempt"] > 0),
        "attempts": sum(r["attempt"] + 1 for r in results),
        "workers": nodes,
    }
