"""Arrow <-> Iceberg schemas for the Iceberg target: type mapping, the schema-evolution policy, file schemas.

Types are compared by structure, never by field ids: a list, map or struct column
of a table carries ids for its element/key/value/fields that a type freshly
converted from the source's Arrow schema cannot know, so ``list<int>`` in the
table equals ``list<int>`` at the source whatever ids either has.
"""

from __future__ import annotations

# Before any PyIceberg import: defers its model builds and unused modules (see _pyiceberg).
from dativo.targets.iceberg import _pyiceberg  # noqa: F401

# isort: split

import logging
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.schema import Schema
from pyiceberg.types import (
    DecimalType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    StructType,
)

from dativo.errors import SchemaError, TypeMappingError

__all__ = ["evolve", "fits", "iceberg_type_of", "same_type", "small_types", "to_file_schema"]

log = logging.getLogger("dativo.targets.iceberg")


def iceberg_type_of(field: pa.Field) -> IcebergType:
    """The Iceberg type PyIceberg gives an Arrow field; raises TypeMappingError naming the column."""
    try:
        # PyIceberg's own Arrow -> Iceberg conversion, so created tables match what it would create.
        schema = Catalog._convert_schema_if_needed(pa.schema([field]))
    except Exception as exc:
        raise TypeMappingError(
            f"column '{field.name}': Arrow type {field.type} has no Iceberg equivalent ({exc}); "
            "cast it in the source query or list it under source.cast_to_text"
        ) from None
    return schema.fields[0].field_type


def same_type(a: IcebergType, b: IcebergType) -> bool:
    """True when ``a`` and ``b`` are the same type, comparing nested types by structure and not by field ids."""
    if isinstance(a, ListType) and isinstance(b, ListType):
        return a.element_required == b.element_required and same_type(a.element_type, b.element_type)
    if isinstance(a, MapType) and isinstance(b, MapType):
        return (
            a.value_required == b.value_required
            and same_type(a.key_type, b.key_type)
            and same_type(a.value_type, b.value_type)
        )
    if isinstance(a, StructType) and isinstance(b, StructType):
        return len(a.fields) == len(b.fields) and all(
            x.name == y.name and x.required == y.required and same_type(x.field_type, y.field_type)
            for x, y in zip(a.fields, b.fields, strict=True)
        )
    if isinstance(a, ListType | MapType | StructType) or isinstance(b, ListType | MapType | StructType):
        return False
    return a == b


# Promotions Iceberg allows: a value of the first type can be stored in a column of the second.
def fits(source: IcebergType, table: IcebergType) -> bool:
    """True when a value of type ``source`` can be stored in a column of type ``table`` (equal, or promoted)."""
    if same_type(source, table):
        return True
    if isinstance(source, ListType) and isinstance(table, ListType):
        # A list's elements follow the same promotions; an optional element never fits a required one.
        return (table.element_required <= source.element_required) and fits(source.element_type, table.element_type)
    if isinstance(source, IntegerType) and isinstance(table, LongType):
        return True
    if isinstance(source, FloatType) and isinstance(table, DoubleType):
        return True
    return (
        isinstance(source, DecimalType)
        and isinstance(table, DecimalType)
        and source.scale == table.scale
        and source.precision <= table.precision
    )


def evolve(name: str, table_schema: Schema, source: pa.Schema, mode: str, transaction: Any) -> None:
    """Apply the schema-evolution policy; stages changes in ``transaction`` (evolve) or raises SchemaError.

    evolve: new source columns are added as optional, and a table column is widened
    where Iceberg allows (int -> long, float -> double, decimal precision up).
    freeze: the table schema is kept; new source columns are not written.
    fail: any change the table would need stops the run.
    Any other type change (text -> int, say) stops the run in every mode.
    """
    table_fields = {field.name: field for field in table_schema.fields}
    added: list[str] = []
    widened: list[str] = []
    for field in source:
        target = table_fields.get(field.name)
        source_type = iceberg_type_of(field)
        if target is None:
            added.append(field.name)
        elif fits(source_type, target.field_type):
            continue
        elif fits(target.field_type, source_type):
            widened.append(f"{field.name} ({target.field_type} -> {source_type})")
        else:
            raise SchemaError(
                f"iceberg table {name}: column '{field.name}' is {target.field_type} in the table but "
                f"{source_type} at the source, and Iceberg cannot change one into the other; cast it in the "
                "source query or write to a new table"
            )
    if mode == "fail" and (added or widened):
        changes = [f"new column(s) {', '.join(added)}"] if added else []
        changes += [f"wider type(s) {', '.join(widened)}"] if widened else []
        raise SchemaError(
            f"iceberg table {name}: the source schema differs ({'; '.join(changes)}) and "
            "target.schema_evolution.mode is 'fail'"
        )
    if mode == "freeze":
        if widened:
            raise SchemaError(
                f"iceberg table {name}: {', '.join(widened)} would need a wider column, and "
                "target.schema_evolution.mode is 'freeze'"
            )
        if added:
            log.warning("schema frozen: source column(s) %s are not written to %s", ", ".join(added), name)
        return
    names = set(source.names)
    for target in table_schema.fields:
        if target.name not in names and target.required:
            raise SchemaError(f"iceberg table {name}: required column '{target.name}' is missing from the source")
    if added or widened:
        log.info("evolving %s: added %s; widened %s", name, added or "-", widened or "-")
        with transaction.update_schema() as update:
            update.union_by_name(source)


def small_types(schema: pa.Schema) -> pa.Schema:
    """PyIceberg asks for large string/binary/list; the 32-bit variants store the same and avoid a copy."""
    return pa.schema([_small_field(field) for field in schema], metadata=schema.metadata)


def _small_field(field: pa.Field) -> pa.Field:
    kind = field.type
    if pa.types.is_large_string(kind):
        kind = pa.string()
    elif pa.types.is_large_binary(kind):
        kind = pa.binary()
    elif pa.types.is_large_list(kind) or pa.types.is_list(kind):
        kind = pa.list_(_small_field(kind.value_field))
    elif pa.types.is_struct(kind):
        kind = pa.struct([_small_field(child) for child in kind])
    elif pa.types.is_map(kind):
        kind = pa.map_(_small_field(kind.key_field), _small_field(kind.item_field))
    return field.with_type(kind)


def to_file_schema(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast ``batch`` to the data-file schema (with field ids); table columns the source lacks are null."""
    arrays = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            arrays.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(index)
        arrays.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
