"""The public plugin SDK: everything a reader or writer author imports.

A *reader* pulls data out of a source and yields Arrow record batches; a
*writer* lands those batches in a target and publishes them in one step at
:meth:`DataWriter.finalize`. Both are plain Python classes; dativo finds them by
import path, by file path or through the ``dativo.readers`` / ``dativo.writers``
entry-point groups, and hosts them in a runtime: in process, as a subprocess
over Arrow IPC, or behind Arrow Flight.

Optional abilities are small opt-in interfaces (:class:`IncrementalReader`, :class:`ChangeReader`,
:class:`PartitionedReader`, :class:`StatefulWriter`, :class:`StagingWriter`, :class:`DescribesTargetTypes`),
never methods every plugin must carry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeAlias, runtime_checkable

import pyarrow as pa

from dativo import _secrets
from dativo._sdk_version import SDK_API_VERSION as _SDK_API_VERSION

__all__ = [
    "CHANGE_COLUMNS",
    "FAULT_HOOK_KEY",
    "SDK_API_VERSION",
    "ArrowArrayExportable",
    "ArrowStreamExportable",
    "BatchLike",
    "ChangeReader",
    "DataReader",
    "DataWriter",
    "DescribesTargetTypes",
    "FaultHook",
    "IncrementalReader",
    "ListsTables",
    "PartitionedReader",
    "PluginConfig",
    "ReadPartition",
    "StagingWriter",
    "StatefulWriter",
    "WriteMode",
    "fault_hook",
    "redact",
    "register_secret",
]

#: The version of this SDK (semver ``MAJOR.MINOR.PATCH``, distinct from dativo's own
#: version; see docs/sdk-changelog.md). A plugin declares the SDK versions it supports
#: in its ``api_version`` class attribute: a range such as ``">=1.0,<2"`` or a plain
#: version such as ``"1.0"``, meaning ``">=1.0,<2"`` (same MAJOR, that MINOR or newer).
#: The engine refuses a plugin whose range does not contain this version.
SDK_API_VERSION = _SDK_API_VERSION

#: What ``initialize`` receives: the job's ``source`` (for a reader) or
#: ``target`` (for a writer) section with environment variables and secrets
#: already resolved, ``options`` holding the plugin's own ``options:`` block, and
#: ``job`` holding ``{"name": ..., "dir": ..., "run_id": ...}`` (relative paths
#: resolve against ``dir``; ``run_id`` is unique to this run).
PluginConfig = Mapping[str, Any]

#: A crash-point hook (SDK 1.4): a plugin calls it with a point's name (``"files_published"``) at each
#: step where a crash test may stop the process; outside such tests it does nothing. See :func:`fault_hook`.
FaultHook: TypeAlias = Callable[[str], None]

#: The ``initialize`` config key under which the host passes the :data:`FaultHook` (SDK 1.4). It is only
#: present in process (a Python callable is never sent over a wire); read it with :func:`fault_hook`.
FAULT_HOOK_KEY = "fault_hook"


def _no_fault(name: str) -> None:
    """The hook of a plugin whose host passed none: every point is passed through."""


def fault_hook(config: PluginConfig) -> FaultHook:
    """The crash-point hook the host passed in ``config`` (SDK 1.4), or a hook that does nothing.

    A writer that publishes in several steps calls the hook between them, so that
    dativo's crash tests (``DATIVO_CRASH_AT=NAME``) can SIGKILL the process exactly
    there and prove that a run leaves either nothing or everything visible::

        def initialize(self, config):
            self._crash_point = fault_hook(config)
        ...
            self._crash_point("files_published")

    Never raises; a hook that is missing or not callable counts as none.
    """
    hook = config.get(FAULT_HOOK_KEY) if isinstance(config, Mapping) else None
    return hook if callable(hook) else _no_fault


def register_secret(value: str | None) -> None:
    """Have dativo mask ``value`` (as ``***``) in every log line, error message and summary (SDK 1.4).

    Call it as soon as a plugin learns a secret dativo did not give it (a token it
    fetched, a password inside a setting of its own); values from the job's secrets
    and connection passwords are registered already. Values shorter than 4
    characters are ignored (masking them would garble ordinary text). Never raises.
    """
    _secrets.register_secret(value)


def redact(text: str) -> str:
    """``text`` with every registered secret and every connection-string password masked (SDK 1.4).

    Use it on driver messages before putting them into an error. Never raises.
    """
    return _secrets.redact(text)


@runtime_checkable
class ArrowStreamExportable(Protocol):
    """Any object implementing the Arrow PyCapsule stream interface (polars, duckdb, nanoarrow, arrow-rs)."""

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object: ...


@runtime_checkable
class ArrowArrayExportable(Protocol):
    """Any object implementing the Arrow PyCapsule array interface for one struct array (a batch)."""

    def __arrow_c_array__(self, requested_schema: object | None = None) -> tuple[object, object]: ...


#: What ``read_batch`` may yield. Objects exposing the PyCapsule interface are
#: imported without copying, so a plugin needs no pyarrow dependency of its own.
BatchLike: TypeAlias = pa.RecordBatch | pa.Table | ArrowStreamExportable | ArrowArrayExportable


class _Plugin(ABC):  # noqa: B024 - shared hooks only; the abstract methods live in the subclasses
    #: SDK versions this plugin supports: a range (``">=1.0,<2"``) or the version it was written
    #: against (``"1.1"`` meaning ``">=1.1,<2"``); see :data:`SDK_API_VERSION`.
    api_version: ClassVar[str] = SDK_API_VERSION
    #: Python modules the plugin imports lazily, each with the command that installs it, e.g.
    #: ``{"psycopg": "pip install 'dativo[postgres]'"}`` (SDK 1.2). dativo checks them when it
    #: loads the plugin, so ``dativo validate`` and ``dativo plugins list`` report a missing one
    #: as one line naming the command, before any run starts.
    requires: ClassVar[Mapping[str, str]] = {}

    def initialize(self, config: PluginConfig) -> None:
        """Receive the job's configuration for this plugin; open connections here.

        The default stores ``config`` as ``self.config``. Raise a
        :class:`dativo.DativoError` subclass (``SourceError``, ``TargetError``,
        ``ConfigError``) with a message naming what is wrong; any other exception
        is reported as a failure of this plugin's ``initialize``.
        """
        self.config = config

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release every resource (connections, files, threads).

        Called exactly once at the end of every run, successful or not, even
        after an error inside the plugin. Must not raise for a plugin that was
        never initialized or already closed.
        """


class DataReader(_Plugin):
    """Base class of every reader. Override :meth:`get_schema` and :meth:`read_batch`.

    The engine calls ``initialize(config)``, then ``get_schema()``, then iterates
    ``read_batch(batch_size)`` on a thread of its own, then ``close()``.
    """

    @abstractmethod
    def get_schema(self) -> pa.Schema:
        """Return the schema every batch will have, before any data is read.

        Every batch yielded by :meth:`read_batch` must have exactly these column
        names and types, in this order; a batch that differs fails the run with
        the differing column named.
        """

    @abstractmethod
    def read_batch(self, batch_size: int) -> Iterator[BatchLike]:
        """Yield the source's data as Arrow batches of about ``batch_size`` rows.

        Yield ``pyarrow.RecordBatch``, ``pyarrow.Table`` or any object with
        ``__arrow_c_stream__`` / ``__arrow_c_array__``. Signal failure by
        raising (never by ending the iteration early): the run then fails and
        the target is left unchanged. The engine may stop iterating at any time
        (another failure, Ctrl-C); ``close()`` is still called.
        """


#: How a run changes the target: add rows, replace the table, or upsert on a key.
WriteMode = Literal["append", "overwrite", "merge"]


class DataWriter(_Plugin):
    """Base class of every writer. Override :meth:`write_batch` and :meth:`finalize`.

    The engine calls ``initialize(config)``, ``prepare(schema)``, then
    ``write_batch`` for each batch, then ``finalize()`` to publish everything
    at once. If anything fails before ``finalize`` returns, the engine calls
    ``abort()`` instead; ``close()`` is called in every case.
    """

    #: Write modes (``target.mode``) this writer implements; a job asking for another fails validation.
    supported_modes: ClassVar[frozenset[str]] = frozenset({"append"})

    def check(self) -> None:
        """Verify the target can be reached with the job's credentials (``dativo check``).

        Called after ``initialize``; raise ``TargetError`` naming what failed.
        The default does nothing beyond what ``initialize`` checked.
        """

    def prepare(self, schema: pa.Schema) -> None:
        """Receive the schema of the batches to come, once, before any batch (even for zero rows).

        Create or check the destination here, so a mismatch fails before anything is written (a run that
        reads everything may already be reading its source into the engine's bounded queue meanwhile).
        """

    @abstractmethod
    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Stage one batch. Nothing staged may be visible to readers of the target before ``finalize``."""

    @abstractmethod
    def finalize(self) -> dict[str, Any]:
        """Publish everything staged in one atomic step and return metadata about it.

        Return a JSON-serialisable dict; dativo reports the keys ``rows``,
        ``files`` (a list of paths), ``bytes`` and ``snapshot_id`` when present.
        If publishing fails, raise: the engine then calls :meth:`abort`.
        """

    def abort(self) -> None:
        """Throw away everything staged since ``prepare``; the target must look untouched.

        Called instead of ``finalize`` (or after ``finalize`` raised). Must not
        raise for work that was never started.
        """


@runtime_checkable
class IncrementalReader(Protocol):
    """Opt-in for readers: read only rows past a high-water mark (``source.incremental``).

    The engine tracks the greatest cursor value it sees and commits it with the data;
    the reader only has to filter.
    """

    def set_incremental(self, cursor: str, after: Any | None) -> None:
        """Before ``read_batch``: yield only rows whose ``cursor`` column is greater than ``after``.

        ``after`` is an ``int``, ``datetime.date`` or ``datetime.datetime`` (aware for
        timestamptz), or None for every row. Raise ConfigError if the column cannot be filtered.
        """
        ...


@runtime_checkable
class StatefulWriter(Protocol):
    """Opt-in for writers: keep a job's state (cursor, run id) in the same atomic commit as its data."""

    def load_state(self) -> dict[str, Any] | None:
        """Return the state committed by the latest successful run of this job (``config['job']['name']``), or None."""
        ...

    def stage_state(self, state: dict[str, Any]) -> None:
        """Remember ``state`` (JSON-ready) so that ``finalize`` commits it together with the data."""
        ...

    def reset_state(self, force: bool) -> str:
        """Forget this job's state (``dativo state reset``); return a sentence saying what was done.

        Raise TargetError when other jobs also write the target, unless ``force``.
        """
        ...


@runtime_checkable
class ListsTables(Protocol):
    """Opt-in for readers: name the tables a source holds, so ``streams:`` wildcards (``public.*``) can be resolved.

    Called on a reader instance that was **not** initialized (SDK 1.3).
    """

    def list_tables(self, config: PluginConfig) -> list[str]:
        """Return every table and view ``config`` (the stream's source section) can read, as ``schema.table``.

        Raise :class:`dativo.SourceError` when the source cannot be reached (``transient`` for a dropped
        connection) and :class:`dativo.ConfigError` for a bad connection setting.
        """
        ...


@runtime_checkable
class DescribesTargetTypes(Protocol):
    """Opt-in for writers: say which target type each Arrow column becomes (``dativo discover``)."""

    def describe_types(self, schema: pa.Schema) -> list[tuple[str, str]]:
        """Return ``(column, target type)`` pairs; raise ``TypeMappingError`` for a column that cannot be mapped."""
        ...


@dataclass(frozen=True)
class ReadPartition:
    """One slice of a partitioned read, planned by :meth:`PartitionedReader.plan_partitions`.

    ``label`` appears in messages (e.g. ``ctid pages 0-1249``); ``spec`` is the
    reader's own description of the slice (SQL, snapshot id, key range), opaque
    to the engine.
    """

    index: int
    label: str
    spec: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class PartitionedReader(Protocol):
    """Opt-in for readers: read one source as partitions on parallel connections, in one consistent snapshot.

    When ``source.parallelism`` is not 1, the engine calls ``plan_partitions``
    once (after ``get_schema``), then ``read_partition`` for each partition,
    from up to ``parallelism`` threads at once, and finally ``close()``. The
    union of the partitions must be exactly what ``read_batch`` would return at
    the moment of planning (e.g. all partitions join a snapshot the plan
    exported). Returning fewer than two partitions makes the engine fall back
    to ``read_batch``.

    In distributed execution (``engine.executor: ray``) ``read_partition`` runs on
    another instance, initialized with the same config (in another process, on another
    machine), while the planning instance stays open on the driver until the run
    committed or failed: a partition's ``spec`` must be picklable and self-sufficient
    (e.g. the exported snapshot's id and the ctid range, a file's path), and whatever
    the partitions share (the snapshot) must live as long as the planning instance.
    """

    def plan_partitions(self, parallelism: int | None) -> Sequence[ReadPartition]:
        """Split the source into partitions; ``parallelism`` is the job's setting (None: choose from its size).

        Raise a :class:`dativo.DativoError` subclass if planning fails; the run then fails before anything is written.
        """
        ...

    def read_partition(self, partition: ReadPartition, batch_size: int) -> Iterator[BatchLike]:
        """Yield one partition's batches, like ``read_batch``; safe to run concurrently for different partitions.

        Signal failure by raising (never by ending early); the engine then
        stops the other partitions and fails the run.
        """
        ...


#: Columns every batch of a :class:`ChangeReader` ends with, after the row's own columns.
CHANGE_COLUMNS = ("_cdc_op", "_cdc_lsn", "_cdc_ts")


@runtime_checkable
class ChangeReader(Protocol):
    """Opt-in for readers: emit changes (change data capture, ``source.cdc``) instead of whole tables.

    The engine calls ``change_keys()`` and ``begin_changes(committed, keys)`` before
    ``read_batch``; every batch holds the row's columns followed by ``_cdc_op``
    (string: ``snapshot``, ``insert``, ``update`` or ``delete``), ``_cdc_lsn``
    (int64, the source position of the change) and ``_cdc_ts`` (timestamp[us, UTC]
    of the source commit, NULL for snapshot rows), in source commit order. A delete
    carries at least the key columns. After the target committed the run together
    with the returned position, the engine calls ``confirm(position)``; the reader
    may then release what it kept for the source (a slot, a file, an offset).
    """

    def change_keys(self) -> Sequence[str]:
        """The source's primary-key columns, or an empty sequence when it has none."""
        ...

    def check_changes(self, keys: Sequence[str]) -> list[str]:
        """Everything that stops change capture with ``keys`` as the row key, each with its fix; empty when ready."""
        ...

    def begin_changes(self, committed: Mapping[str, Any] | None, keys: Sequence[str]) -> Mapping[str, Any]:
        """Decide what this run reads, after the ``committed`` position (None: nothing committed yet).

        Return ``{"position": {...JSON-ready...}, "replace": bool, "snapshot": bool}``: the
        position to commit with the data, whether the batches replace the target's whole
        content (an initial load, or a TRUNCATE among the changes: only what follows it is
        read), and whether they are a snapshot (one row per key, no deletes). Changes
        the ``committed`` position already covers must not be read again. Raise a
        :class:`dativo.DativoError` subclass naming what is wrong (a lost slot, say).
        """
        ...

    def confirm(self, position: Mapping[str, Any]) -> Mapping[str, Any]:
        """Called once the target committed ``position``; return facts for the run summary (may be empty).

        Raise only for a failure worth reporting: the data is committed, and an unconfirmed
        position is confirmed again by the next run.
        """
        ...


@runtime_checkable
class StagingWriter(Protocol):
    """Opt-in for writers (SDK 1.5): write partitions in other processes or on other machines, publish once.

    A distributed executor (``engine.executor: ray``) uses it; a writer without it
    cannot run there, and ``dativo validate`` says so. The sequence is:

    1. **driver**: ``initialize(config)``, ``prepare(schema)`` (and ``load_state`` for
       a :class:`StatefulWriter`), then :meth:`staging_plan`;
    2. **each partition, on a worker**: a fresh instance of the same class gets
       ``initialize(config)`` (the same config, the same ``job.run_id``), then
       :meth:`stage_partition` with the driver's plan, then ``close()``. A partition
       may be attempted more than once (a worker died, a node left); every attempt
       has its own ``key``;
    3. **driver**: ``stage_state(state)`` for a :class:`StatefulWriter`, then
       :meth:`commit_staged` with the descriptions of exactly one attempt per
       partition, or ``abort()`` if anything failed; then ``close()``.

    Nothing staged may be visible to readers of the target before
    :meth:`commit_staged` returns. ``abort()`` on the driver removes every file staged
    for this run, including those of attempts whose description never came back
    (they are found by the run id in their names); :meth:`commit_staged` removes
    those of attempts it did not commit.
    """

    def staging_plan(self) -> Mapping[str, Any]:
        """On the driver, after ``prepare``: what every worker needs to stage files the driver can commit.

        For example the target's schema with its field ids, the partition spec, the
        staging location. Must be picklable (plain values, bytes, Arrow schemas) and
        small: it is sent to every task. Must hold no secret in plain text.
        """
        ...

    def stage_partition(
        self, plan: Mapping[str, Any], key: str, batches: Iterator[pa.RecordBatch]
    ) -> Mapping[str, Any]:
        """On a worker: write ``batches`` as files invisible to the target's readers; describe them.

        ``key`` is unique to this run, partition and attempt (e.g. ``<run_id>-p0007-a2``;
        letters, digits, ``.``, ``_`` and ``-`` only) and must appear in every staged
        file's name. Return a small picklable
        description of what was written, with at least ``rows`` (int), ``bytes`` (int,
        on storage) and ``files`` (list of paths); per-file sizes, row counts and column
        statistics may follow. Raise a :class:`dativo.DativoError` subclass on failure
        (``transient`` when a retry may succeed); files written before the failure may
        be left for ``abort`` or :meth:`commit_staged` to remove.
        """
        ...

    def commit_staged(self, staged: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """On the driver: publish exactly the files described by ``staged`` in one atomic step.

        Returns metadata like :meth:`DataWriter.finalize` (``rows``, ``files``,
        ``bytes``, ``snapshot_id``); the state given to ``stage_state`` is committed in
        the same step. If publishing fails, raise: the engine then calls ``abort()``.
        """
        ...
