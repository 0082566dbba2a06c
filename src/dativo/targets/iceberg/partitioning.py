"""Partitioned Iceberg tables: ``target.partition_by`` / ``sort_by``, writability checks, and files split by partition.

``partition_by`` entries are ``transform(column)``, ``transform(N, column)`` or a bare
column (identity): ``identity``, ``year``, ``month``, ``day``, ``hour``, ``bucket(N, c)``,
``truncate(W, c)``, ``void``. A table's spec is written as PyIceberg writes it: each
transform's Arrow kernel (``pyiceberg-core``) computes partition values per row, and a
run writes one file per partition (rolling at the target size).
"""

from __future__ import annotations

# Before any PyIceberg import: defers its model builds and unused modules (see _pyiceberg).
from dativo.targets.iceberg import _pyiceberg  # noqa: F401

# isort: split

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.partitioning import PartitionField, PartitionFieldValue, PartitionKey, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import NullOrder, SortDirection, SortField, SortOrder
from pyiceberg.transforms import (
    BucketTransform,
    DayTransform,
    HourTransform,
    IdentityTransform,
    MonthTransform,
    Transform,
    TruncateTransform,
    VoidTransform,
    YearTransform,
)
from pyiceberg.typedef import Record

from dativo.errors import ConfigError
from dativo.targets._parquet import EncodingChoice, ParquetSettings, RollingParquetWriter, WrittenFile

__all__ = [
    "PartitionedFiles",
    "build_sort_order",
    "build_spec",
    "check_writable",
    "parse_partition_by",
]

_ENTRY = re.compile(r"^\s*(?:(\w+)\s*\(\s*(?:(\d+)\s*,\s*)?([^()\s,]+)\s*\)|([^()\s,]+))\s*$")
_TRANSFORMS: dict[str, Callable[[int | None], Transform[Any, Any]]] = {
    "identity": lambda _: IdentityTransform(),
    "year": lambda _: YearTransform(),
    "month": lambda _: MonthTransform(),
    "day": lambda _: DayTransform(),
    "hour": lambda _: HourTransform(),
    "void": lambda _: VoidTransform(),
    "bucket": lambda n: BucketTransform(int(n or 0)),
    "truncate": lambda n: TruncateTransform(int(n or 0)),
}
_SUFFIX = {"year": "year", "month": "month", "day": "day", "hour": "hour", "bucket": "bucket", "truncate": "trunc"}
# Open partition files at once; past this, the least recently written one is finished. An open file
# holds no row group (the byte budget below bounds those), only its writer's metadata and an open
# stream, so the limit is set well above the partitions one batch of a bucketed table touches.
MAX_OPEN_PARTITIONS = 128
#: Arrow data buffered across every partition's writer of a run, in row groups' worth
#: (``row_group_size_mb`` times this; 64 MiB by default): past it, the largest buffers are written
#: as row groups (their files stay open), so memory does not grow with the number of partitions.
BUFFER_ROW_GROUPS = 4


def parse_partition_by(entries: Sequence[str]) -> list[tuple[str, Transform[Any, Any], str]]:
    """``[(entry, transform, column)]``; raises ConfigError naming an entry that is not ``transform(column)``."""
    parsed = []
    for entry in entries:
        match = _ENTRY.match(str(entry))
        if match is None:
            raise ConfigError(
                f"target.partition_by: '{entry}' is not a partition transform; write e.g. day(created_at), "
                "bucket(16, id), truncate(4, sku) or a column name"
            )
        name, number, column, bare = match.groups()
        name = (name or "identity").lower()
        column = column or bare
        if name not in _TRANSFORMS:
            raise ConfigError(
                f"target.partition_by: '{entry}' uses unknown transform '{name}' (known: {', '.join(_TRANSFORMS)})"
            )
        if (name in ("bucket", "truncate")) != (number is not None) or (number is not None and int(number) <= 0):
            shape = f"{name}(N, {column})" if name in ("bucket", "truncate") else f"{name}({column})"
            raise ConfigError(f"target.partition_by: '{entry}' must be written {shape} with N > 0")
        parsed.append((str(entry), _TRANSFORMS[name](int(number) if number else None), column))
    return parsed


def build_spec(entries: Sequence[str], schema: Schema) -> PartitionSpec:
    """The partition spec ``entries`` give on ``schema``; raises ConfigError for a missing column or a bad transform."""
    fields = []
    for index, (entry, transform, column) in enumerate(parse_partition_by(entries)):
        field = schema.find_field(column, case_sensitive=False) if _has(schema, column) else None
        if field is None:
            raise ConfigError(
                f"target.partition_by: '{entry}': column '{column}' is not in the source "
                f"({', '.join(f.name for f in schema.fields)})"
            )
        if not transform.can_transform(field.field_type):
            raise ConfigError(
                f"target.partition_by: '{entry}': transform {transform} cannot apply to column "
                f"'{field.name}' of type {field.field_type}"
            )
        kind = entry.split("(")[0].strip().lower() if "(" in entry else "identity"
        name = field.name if kind == "identity" else f"{field.name}_{_SUFFIX.get(kind, kind)}"
        fields.append(PartitionField(source_id=field.field_id, field_id=1000 + index, transform=transform, name=name))
    spec = PartitionSpec(*fields, spec_id=0)
    check_writable(spec, schema, "the new table")
    return spec


def build_sort_order(columns: Sequence[str], schema: Schema) -> SortOrder:
    """Ascending, nulls-first sort order on ``columns``; raises ConfigError for a column not in ``schema``."""
    fields = []
    for column in columns:
        if not _has(schema, column):
            raise ConfigError(f"target.sort_by: column '{column}' is not in the source")
        source = schema.find_field(column, case_sensitive=False)
        fields.append(
            SortField(
                source_id=source.field_id,
                transform=IdentityTransform(),
                direction=SortDirection.ASC,
                null_order=NullOrder.NULLS_FIRST,
            )
        )
    return SortOrder(*fields, order_id=1)


def check_writable(spec: PartitionSpec, schema: Schema, where: str) -> None:
    """Raise ConfigError naming the field and transform of ``spec`` that the writer cannot compute.

    A transform is writable when PyIceberg's Arrow kernel for it runs on the column's type.
    """
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    from dativo.targets.iceberg.schema import small_types

    arrow = small_types(schema_to_pyarrow(schema, include_field_ids=False))
    for field in spec.fields:
        source = schema.find_field(field.source_id)
        column = schema.find_column_name(field.source_id) or str(field.source_id)
        problem = None
        if not field.transform.can_transform(source.field_type):
            problem = f"PyIceberg cannot compute {field.transform} on {source.field_type}"
        else:
            try:
                kernel = field.transform.pyarrow_transform(source.field_type)
                kernel(pa.array([None], arrow.field(column).type))
            except Exception as exc:  # NotImplementedError, pyiceberg-core's FeatureUnsupported, a missing module
                problem = f"the writer cannot compute it ({type(exc).__name__}: {str(exc)[:160]})"
        if problem is not None:
            raise ConfigError(
                f"iceberg {where}: partition field '{field.name}' ({field.transform} of column '{column}', "
                f"{source.field_type}) cannot be written: {problem}. Writable transforms: identity, year, month, "
                "day, hour, bucket, truncate, void; write to a table partitioned differently"
            )


def _has(schema: Schema, column: str) -> bool:
    try:
        schema.find_field(column, case_sensitive=False)
        return True
    except ValueError:
        return False


class PartitionedFiles:
    """Rolling Parquet files per partition of ``spec``: the same interface as :class:`RollingParquetWriter`.

    ``write`` splits each batch by partition value (one sort of the batch's partition
    keys, one ``take`` per partition); every partition has its own rolling file (one
    lane). The Arrow data buffered across all partitions is bounded by
    ``BUFFER_ROW_GROUPS`` row groups: past it, the largest buffers are written as row
    groups into their open files. At most :data:`MAX_OPEN_PARTITIONS` files are open:
    past that, the least recently written is finished (a later row of that partition
    starts a new file). ``partition_of[path]`` is each file's partition record.
    """

    def __init__(
        self,
        file_schema: pa.Schema,
        spec: PartitionSpec,
        schema: Schema,
        open_file: Callable[[int, PartitionKey], tuple[str, Any]],
        settings: ParquetSettings,
        sort_by: Sequence[str] = (),
    ) -> None:
        self._file_schema = file_schema
        self._spec = spec
        self._schema = schema
        self._open_file = open_file
        self._settings = settings
        self._sort = [(column, "ascending") for column in sort_by]
        self._open: OrderedDict[tuple[Any, ...], tuple[RollingParquetWriter, Record]] = OrderedDict()
        self._finished: list[WrittenFile] = []
        self._writers: list[RollingParquetWriter] = []
        self._choice = EncodingChoice()  # one dictionary decision for every partition's files
        self._sources = [_source_column(schema, field) for field in spec.fields]
        self.budget_bytes = BUFFER_ROW_GROUPS * settings.row_group_bytes
        self.partition_of: dict[str, Record] = {}

    @property
    def paths(self) -> list[str]:
        return [path for writer in self._writers for path in writer.paths]

    @property
    def buffered_bytes(self) -> int:
        """Arrow bytes buffered across every open partition's writer (at most :attr:`budget_bytes` between writes)."""
        return sum(writer.buffered_bytes for writer, _record in self._open.values())

    def write(self, batch: pa.RecordBatch) -> None:
        """Split ``batch`` by partition and write each part into its partition's file.

        Raises the error of a row group's encoding or upload, if one failed.
        """
        for values, rows in self._split(batch):
            entry = self._open.pop(values, None)
            if entry is None:
                entry = self._start(values)
            self._open[values] = entry
            if self._sort:
                rows = rows.sort_by(self._sort)
            entry[0].write(rows)
            if len(self._open) > MAX_OPEN_PARTITIONS:
                _, (oldest, _record) = self._open.popitem(last=False)
                self._finished.extend(oldest.close())
        self._hold_budget()

    def _hold_budget(self) -> None:
        buffered = {writer: writer.buffered_bytes for writer, _record in self._open.values()}
        total = sum(buffered.values())
        # Largest first: the row groups written are as large as the budget allows.
        for writer in sorted(buffered, key=buffered.__getitem__, reverse=True):
            if total <= self.budget_bytes:
                break
            total -= buffered[writer]
            writer.flush()

    def _split(self, batch: pa.RecordBatch) -> list[tuple[tuple[Any, ...], pa.RecordBatch]]:
        """``[(partition values, rows)]`` of ``batch``: each partition's rows in arrival order, copied once."""
        if batch.num_rows == 0:
            return []
        # Each row's partition as one int64 code below the row count, ``keys[code]`` its values:
        # field by field, (code so far, this field's dictionary index) is encoded again, so the
        # code never overflows however many fields the spec has.
        codes: pa.Array | None = None
        keys: list[tuple[Any, ...]] = [()]
        for field, (name, source_type) in zip(self._spec.fields, self._sources, strict=True):
            # A top-level column: check_writable refuses a struct's field as a partition source.
            values = field.transform.pyarrow_transform(source_type)(batch.column(name))
            if isinstance(values, pa.ChunkedArray):
                values = values.combine_chunks()
            encoded = pc.dictionary_encode(values, null_encoding="encode")
            found = encoded.dictionary.to_pylist()
            indices = pc.cast(encoded.indices, pa.int64())
            if codes is None:
                codes, keys = indices, [(value,) for value in found]
                continue
            pairs = pc.dictionary_encode(pc.add(pc.multiply(codes, len(found)), indices))
            keys = [keys[pair // len(found)] + (found[pair % len(found)],) for pair in pairs.dictionary.to_pylist()]
            codes = pc.cast(pairs.indices, pa.int64())
        assert codes is not None
        if len(keys) == 1:
            return [(keys[0], batch)]
        order = pc.sort_indices(codes)  # stable: rows keep their order within a partition
        ordered = codes.take(order)
        changes = pc.indices_nonzero(pc.not_equal(ordered[1:], ordered[:-1])).to_pylist()
        starts = [0, *(change + 1 for change in changes)]
        return [
            (keys[ordered[begin].as_py()], batch.take(order[begin:end]))
            for begin, end in zip(starts, [*starts[1:], len(ordered)], strict=True)
        ]

    def _start(self, values: tuple[Any, ...]) -> tuple[RollingParquetWriter, Record]:
        key = PartitionKey(
            field_values=[
                PartitionFieldValue(field=field, value=value)
                for field, value in zip(self._spec.fields, values, strict=True)
            ],
            partition_spec=self._spec,
            schema=self._schema,
        )
        record = key.partition

        def open_file(index: int) -> tuple[str, Any]:
            path, stream = self._open_file(index, key)
            self.partition_of[path] = record
            return path, stream

        writer = RollingParquetWriter(self._file_schema, open_file, self._settings, lanes=1, choice=self._choice)
        self._writers.append(writer)
        return writer, record

    def close(self) -> list[WrittenFile]:
        """Finish every open file; return every file written."""
        for writer, _record in self._open.values():
            self._finished.extend(writer.close())
        self._open.clear()
        return list(self._finished)

    def abandon(self) -> None:
        """Close every open stream without finishing its file (the paths stay in :attr:`paths`)."""
        for writer, _record in self._open.values():
            writer.abandon()
        self._open.clear()


def _source_column(schema: Schema, field: PartitionField) -> tuple[str, Any]:
    """The (top-level) column name and Iceberg type a partition field is computed from."""
    name = schema.find_column_name(field.source_id)
    if name is None:
        raise ConfigError(f"iceberg: partition field '{field.name}' has no source column (field id {field.source_id})")
    return name, schema.find_field(field.source_id).field_type
