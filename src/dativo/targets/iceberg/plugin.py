"""The ``iceberg`` writer's entry point: a class that imports PyIceberg only when a writer is made.

``dativo validate --offline``, ``dativo plugins list`` and plan building load the
writer class to check its SDK version and modes; importing PyIceberg's catalog for
that cost ~0.6 s (issue 15). :class:`IcebergWriter` here is the class the
``dativo.writers`` entry point names; instantiating it returns the full writer,
:class:`dativo.targets.iceberg.writer.IcebergWriter` (a subclass of this one), so
``isinstance`` checks and every method behave as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dativo.sdk import DataWriter

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["IcebergWriter"]


class IcebergWriter(DataWriter):
    """Appends to, overwrites or merges into an Iceberg table (created if missing) in one commit per run.

    Creating one imports PyIceberg and returns :class:`dativo.targets.iceberg.writer.IcebergWriter`;
    an ImportError there (PyIceberg missing or broken) propagates unchanged.
    """

    supported_modes = frozenset({"append", "overwrite", "merge"})

    def __new__(cls, *args: Any, **kwargs: Any) -> IcebergWriter:
        if cls is IcebergWriter:
            from dativo.targets.iceberg.writer import IcebergWriter as TableWriter

            cls = TableWriter
        return super().__new__(cls)

    # The full writer overrides both; they exist so this class is concrete for the registry's checks.
    def write_batch(self, batch: pa.RecordBatch) -> None:  # pragma: no cover - never called on this class
        """Implemented by :class:`dativo.targets.iceberg.writer.IcebergWriter`."""
        raise NotImplementedError

    def finalize(self) -> dict[str, Any]:  # pragma: no cover - never called on this class
        """Implemented by :class:`dativo.targets.iceberg.writer.IcebergWriter`."""
        raise NotImplementedError
