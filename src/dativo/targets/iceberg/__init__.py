"""Built-in writer: an Apache Iceberg table through PyIceberg (see :mod:`dativo.targets.iceberg.writer`)."""

from dativo.targets.iceberg.schema import iceberg_type_of
from dativo.targets.iceberg.state import job_snapshots
from dativo.targets.iceberg.writer import IcebergWriter

__all__ = ["IcebergWriter", "iceberg_type_of", "job_snapshots"]
