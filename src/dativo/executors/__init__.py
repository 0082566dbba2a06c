"""Executors other than the engine's local one, each registered under the ``dativo.executors`` entry points.

``ray`` (:data:`RAY`, docs/ray.md): a job's partitions as Ray tasks, committed once on
the driver. Its entry point is this light object: checking a job (``validate --offline``)
imports neither Ray nor pyarrow; :mod:`dativo.executors.ray` (and Ray) load when a job runs.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from dativo.errors import ConfigError

if TYPE_CHECKING:
    from dativo.engine.executor import Execution, Outcome
    from dativo.engine.plan import Plan
    from dativo.sdk import DataWriter

__all__ = ["INSTALL", "RAY", "LazyRayExecutor"]

#: The one install step, named in every "Ray is missing" message.
INSTALL = "pip install 'dativo[ray]'"


class LazyRayExecutor:
    """The ``ray`` executor's entry point: :meth:`check` here, :meth:`execute` in :mod:`dativo.executors.ray`."""

    name = "ray"

    def check(self, plan: Plan, writer: DataWriter | None = None) -> None:
        """Raise ConfigError (one line) if Ray is missing or the job's plugins cannot run on Ray workers.

        Whether the writer stages is read from ``writer`` when given (hosted), else from its
        class, unless the class builds another one in ``__new__`` (a lazy entry point such as
        the built-in iceberg writer's): that is then checked once the writer is hosted.
        """
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(f"engine.executor: ray needs Ray, which is not installed: {INSTALL}")
        if plan.job.config.source.cdc is not None:
            raise ConfigError("engine.executor: ray does not run source.cdc jobs (use engine.executor: local)")
        for side in (plan.reader, plan.writer):
            if side.runtime != "custom":
                raise ConfigError(
                    f"engine.executor: ray runs in-process plugins only; {side.ref.kind} '{side.ref.name}' "
                    f"runs in the '{side.runtime}' runtime (use engine.executor: local)"
                )
        cls = plan.writer.ref.cls
        if writer is not None:
            from dativo.sdk import StagingWriter  # here: the SDK loads pyarrow, which checking a plan needs not

            stages = isinstance(writer, StagingWriter)
        else:
            builds_another = any("__new__" in vars(k) for k in cls.__mro__[:-1])
            stages = builds_another or _stages(cls)
        if not stages:
            raise ConfigError(
                f"engine.executor: ray needs a writer that stages partitions on workers; writer "
                f"'{plan.writer.ref.name}' does not implement dativo.StagingWriter (use engine.executor: local)"
            )

    def execute(self, execution: Execution) -> Outcome:
        """Run the partitions as Ray tasks (:func:`dativo.executors.ray.execute`)."""
        from dativo.executors.ray import execute

        return execute(execution)


def _stages(cls: type) -> bool:
    return all(callable(getattr(cls, m, None)) for m in ("staging_plan", "stage_partition", "commit_staged"))


#: The executor registered as ``ray`` under the ``dativo.executors`` entry points.
RAY = LazyRayExecutor()
