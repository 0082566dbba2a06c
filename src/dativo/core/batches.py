"""Turn whatever a reader yields into RecordBatches, and hold them to the declared schema."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from dativo.errors import PluginError, SchemaError

__all__ = ["as_record_batches", "conform"]


def as_record_batches(item: object, reader_name: str) -> Iterator[pa.RecordBatch]:
    """Yield the RecordBatches inside ``item`` without copying.

    Accepts ``pa.RecordBatch``, ``pa.Table``, ``pa.RecordBatchReader`` and any
    object with ``__arrow_c_stream__`` or ``__arrow_c_array__`` (imported
    through the Arrow C data interface). Raises PluginError for anything else.
    """
    if isinstance(item, pa.RecordBatch):
        yield item
    elif isinstance(item, pa.Table):
        yield from item.to_batches()
    elif isinstance(item, pa.RecordBatchReader):
        yield from item
    elif hasattr(item, "__arrow_c_stream__"):
        yield from pa.RecordBatchReader.from_stream(item)
    elif hasattr(item, "__arrow_c_array__"):
        yield pa.record_batch(item)
    else:
        raise PluginError(
            f"reader '{reader_name}' yielded a {type(item).__name__}; yield a pyarrow RecordBatch or Table, "
            "or an object implementing the Arrow PyCapsule interface (__arrow_c_stream__/__arrow_c_array__)"
        )


def conform(batch: pa.RecordBatch, schema: pa.Schema, reader_name: str, index: int) -> pa.RecordBatch:
    """Return ``batch`` labelled with ``schema`` if names and types match; else raise SchemaError.

    Field nullability and metadata may differ (they are taken from ``schema``);
    names, order and types may not.
    """
    if batch.schema.equals(schema, check_metadata=True):
        return batch
    actual = batch.schema
    for position in range(max(len(actual), len(schema))):
        if position >= len(schema):
            raise SchemaError(
                f"reader '{reader_name}' changed schema mid-stream: batch {index} has extra column "
                f"'{actual.field(position).name}' not in the declared schema"
            )
        expected = schema.field(position)
        if position >= len(actual):
            raise SchemaError(
                f"reader '{reader_name}' changed schema mid-stream: batch {index} lacks column '{expected.name}'"
            )
        field = actual.field(position)
        if field.name != expected.name:
            raise SchemaError(
                f"reader '{reader_name}' changed schema mid-stream: batch {index} has column '{field.name}' "
                f"where the declared schema has '{expected.name}'"
            )
        if field.type != expected.type:
            raise SchemaError(
                f"reader '{reader_name}' changed schema mid-stream: column '{field.name}' is {field.type} "
                f"in batch {index}, declared {expected.type}"
            )
    for position, expected in enumerate(schema):
        if not expected.nullable and batch.column(position).null_count:
            raise SchemaError(
                f"reader '{reader_name}': column '{expected.name}' is declared not-null but batch {index} has nulls"
            )
    return pa.RecordBatch.from_arrays(batch.columns, schema=schema)
