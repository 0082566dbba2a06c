"""Built-in writer: an Apache Iceberg table through PyIceberg (see :mod:`dativo.targets.iceberg.writer`).

Importing this package does not import PyIceberg: :class:`IcebergWriter` loads it when a
writer is created, ``iceberg_type_of`` and ``job_snapshots`` on first use (issue 15).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dativo.targets.iceberg.plugin import IcebergWriter

if TYPE_CHECKING:
    from dativo.targets.iceberg.schema import iceberg_type_of
    from dativo.targets.iceberg.state import job_snapshots

__all__ = ["IcebergWriter", "iceberg_type_of", "job_snapshots"]

_LAZY = {"iceberg_type_of": "dativo.targets.iceberg.schema", "job_snapshots": "dativo.targets.iceberg.state"}


def __getattr__(name: str) -> Any:
    """``iceberg_type_of`` and ``job_snapshots`` import PyIceberg on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
