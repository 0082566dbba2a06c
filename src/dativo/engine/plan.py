"""job -> plan: which reader and writer to run, with which configuration."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from dativo._faults import crash_point
from dativo.config.loader import LoadedJob
from dativo.config.models import SOURCE_CONNECTORS, TARGET_CONNECTORS, PluginSpec
from dativo.core.registry import PluginKind, PluginPlan, PluginRef, resolve_plugin
from dativo.sdk import FAULT_HOOK_KEY, DataReader, DataWriter

__all__ = ["Plan", "PluginPlan", "build_plan"]


@dataclass(frozen=True)
class Plan:
    """Everything the engine needs to run a job once."""

    job: LoadedJob
    reader: PluginPlan
    writer: PluginPlan
    run_id: str
    run_id_given: bool = False

    @property
    def batch_size(self) -> int:
        """Rows per batch asked of the reader."""
        return self.job.config.engine.batch_size

    @property
    def queue_size(self) -> int:
        """Batches the reader may run ahead of the writer."""
        return self.job.config.engine.queue_size


def build_plan(job: LoadedJob, run_id: str | None = None) -> Plan:
    """Resolve the job's reader and writer. Raises PluginError when either cannot be loaded.

    ``run_id`` names the run (a scheduler's run id, say): a run whose id the target's
    state already records as committed is not applied again. Without one, a random id is used.
    """
    source, target = job.config.source, job.config.target
    run_id_given = run_id is not None
    run_id = run_id or uuid.uuid4().hex
    job_info = {"name": job.name, "dir": str(job.dir), "run_id": run_id}
    # Change data capture has its own default reader (issue 17, docs/cdc.md).
    default_reader = "postgres-cdc" if source.cdc is not None else SOURCE_CONNECTORS[source.connector]
    if default_reader == "postgres-adbc" and source.reader is None:  # the Rust reader where installed (issue 15)
        from dativo.connectors.postgres.native import choose_default_reader

        default_reader, _ = choose_default_reader(source.connection)
    reader = _plugin_plan(
        "reader",
        source.reader,
        default_reader,
        source.model_dump(exclude={"reader"}),
        job_info,
        job,
    )
    writer = _plugin_plan(
        "writer",
        target.writer,
        TARGET_CONNECTORS[target.connector],
        target.model_dump(exclude={"writer"}),
        job_info,
        job,
    )
    return Plan(job=job, reader=reader, writer=writer, run_id=run_id, run_id_given=run_id_given)


def _plugin_plan(
    kind: PluginKind,
    spec: PluginSpec | None,
    default: str | None,
    section: dict[str, Any],
    job_info: dict[str, str],
    job: LoadedJob,
) -> PluginPlan:
    options = {**section.pop("options"), **(spec.options if spec else {})}
    config = {**section, "options": options, "job": job_info}
    if spec is not None and spec.type != "custom":
        # Out of process: nothing to import; the runtime starts or calls it.
        return PluginPlan(ref=_remote_ref(kind, spec), runtime=spec.type, config=config, spec=spec)
    config[FAULT_HOOK_KEY] = crash_point  # in process only: the crash-point hook is passed in (SDK 1.4)
    # The models guarantee a spec wherever the connector has no default.
    implementation = spec.implementation if spec is not None else default
    assert implementation is not None
    ref = resolve_plugin(kind, implementation, job.dir)
    return PluginPlan(ref=ref, runtime=spec.type if spec else "custom", config=config, spec=spec)


def _remote_ref(kind: PluginKind, spec: PluginSpec) -> PluginRef:
    """A PluginRef for a process/flight plugin: named by ``name``, else its executable or endpoint."""
    base = DataReader if kind == "reader" else DataWriter
    if spec.type == "process":
        assert spec.command is not None
        origin = "process " + " ".join(spec.command)
        name = spec.name or PurePath(spec.command[0]).name
    else:
        assert spec.endpoint is not None
        origin = f"flight {spec.endpoint}"
        name = spec.name or spec.endpoint
    return PluginRef(kind=kind, name=name, cls=base, origin=origin)
