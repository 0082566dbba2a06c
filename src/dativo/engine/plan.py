"""job -> plan: which reader and writer to run, with which configuration."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any

from dativo._faults import crash_point
from dativo.config.connectors import connector
from dativo.config.loader import LoadedJob
from dativo.config.models import PluginSpec
from dativo.core.registry import PluginKind, PluginPlan, PluginRef, resolve_plugin
from dativo.errors import ConfigError
from dativo.sdk import FAULT_HOOK_KEY, DataReader, DataWriter, PluginConfig
from dativo.sdk_connectors import Connector

__all__ = ["Plan", "PluginPlan", "build_plan", "wants_source_plan", "with_source_plan"]


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

    @property
    def queue_bytes(self) -> int:
        """Bytes of Arrow data the reader may run ahead of the writer (``engine.queue_mb``)."""
        return int(self.job.config.engine.queue_mb * 1024 * 1024)


def build_plan(job: LoadedJob, run_id: str | None = None, *, contact_source: bool = True) -> Plan:
    """Resolve the job's reader and writer. Raises PluginError when either cannot be loaded.

    ``run_id`` names the run (a scheduler's run id, say): a run whose id the target's
    state already records as committed is not applied again. Without one, a random id is used.

    ``contact_source=False`` builds a plan that never reaches the source: the connector's
    source planner is not run, so a reader that asks for a source plan gets none in its
    config (such a plan is for checking and for the target's state, never for reading).
    ``validate --offline`` and the state commands plan this way. Otherwise the planner's errors (SourceError naming the
    source, transient when a retry may help) propagate.
    """
    source, target = job.config.source, job.config.target
    source_connector = connector(source.connector, "source")
    target_connector = connector(target.connector, "target")
    run_id_given = run_id is not None
    run_id = run_id or uuid.uuid4().hex
    job_info = {"name": job.name, "dir": str(job.dir), "run_id": run_id}
    # Change data capture has its own default reader (issue 17, docs/cdc.md).
    if source.cdc is not None:
        default_reader = source_connector.change_reader
    elif source.reader is None:  # the connector may pick its default by the job (postgres: postgres-rs if installed)
        default_reader = source_connector.default_reader(source.model_dump(exclude={"reader"}))
    else:
        default_reader = source_connector.reader
    reader = _plugin_plan(
        "reader",
        source.reader,
        default_reader,
        source.model_dump(exclude={"reader"}),
        job_info,
        job,
    )
    if contact_source and wants_source_plan(reader):  # offline: no planner (it connects to the source)
        reader = replace(reader, config=dict(with_source_plan(reader.config, source_connector, reader.ref.name)))
    writer = _plugin_plan(
        "writer",
        target.writer,
        target_connector.writer,
        target.model_dump(exclude={"writer"}),
        job_info,
        job,
    )
    return Plan(job=job, reader=reader, writer=writer, run_id=run_id, run_id_given=run_id_given)


def wants_source_plan(reader: PluginPlan) -> bool:
    """Whether the reader asks for its source connector's plan (docs/writing-plugins.md, "source plans").

    A Python reader asks with the class attribute ``wants_source_plan = True``; a
    process or Flight reader, which has no class dativo can look at, with
    ``source_plan: true`` in the job's ``reader:`` block.
    """
    if reader.spec is not None and reader.spec.source_plan:
        return True
    return bool(getattr(reader.ref.cls, "wants_source_plan", False))


def with_source_plan(config: PluginConfig, source: Connector, reader: str) -> PluginConfig:
    """``config`` plus what the source connector's planner returns (e.g. ``postgres_plan``).

    Runs the planner now, at plan time, the same for every runtime. Raises ConfigError
    when the connector has no planner; the planner's own errors (SourceError,
    transient when a retry may help) pass through.
    """
    planner = source.load_planner()
    if planner is None:
        raise ConfigError(
            f"reader '{reader}' asks for a source plan, and connector '{source.name}' has no planner",
            hint="use a reader made for this connector, or drop source_plan: true from reader:",
        )
    return {**config, **planner(config)}


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
    runtime = spec.type if spec is not None else "custom"
    if spec is not None and spec.implementation is None:
        # Out of process (process, flight, or a third-party runtime given a name): nothing to import.
        return PluginPlan(ref=_remote_ref(kind, spec), runtime=runtime, config=config, spec=spec)
    if runtime == "custom":  # in dativo's process: the crash-point hook is passed in (SDK 1.4)
        config[FAULT_HOOK_KEY] = crash_point
    # The models guarantee a spec wherever the connector has no default. A third-party runtime
    # given an implementation gets it resolved exactly as `custom` does (plan.ref.cls).
    implementation = spec.implementation if spec is not None else default
    assert implementation is not None
    ref = resolve_plugin(kind, implementation, job.dir)
    return PluginPlan(ref=ref, runtime=runtime, config=config, spec=spec)


def _remote_ref(kind: PluginKind, spec: PluginSpec) -> PluginRef:
    """A PluginRef for a plugin dativo does not import: named by ``name``, else its executable or endpoint."""
    base = DataReader if kind == "reader" else DataWriter
    if spec.type == "process":
        assert spec.command is not None
        origin = "process " + " ".join(spec.command)
        name = spec.name or PurePath(spec.command[0]).name
    elif spec.type == "flight":
        assert spec.endpoint is not None
        origin = f"flight {spec.endpoint}"
        name = spec.name or spec.endpoint
    else:  # a third-party runtime hosting what its `name` and options say
        assert spec.name is not None
        origin = f"runtime {spec.type}"
        name = spec.name
    return PluginRef(kind=kind, name=name, cls=base, origin=origin)
