"""The embedded Iceberg catalog: PyIceberg's SQL catalog tables in a SQLite file, through the stdlib ``sqlite3``.

PyIceberg's :class:`~pyiceberg.catalog.sql.SqlCatalog` reaches SQLite through
SQLAlchemy's engine and ORM, whose import alone costs ~0.2 s of CPU and ~18 MB of
RSS — a fifth of a one-row run (issue 15). :class:`EmbeddedCatalog` keeps the same
two tables (``iceberg_tables``, ``iceberg_namespace_properties``, the v1 schema
with ``iceberg_type``; a v0 file without that column is used as v0) and the same
rows, so either catalog reads and writes what the other wrote: PyIceberg's
``load_catalog(type="sql", uri="sqlite:///…/catalog.db")``, its CLI and dativo's
tests open the same file. A commit is one ``UPDATE … WHERE metadata_location =
<the location this commit is based on>`` (or an ``INSERT`` for a new table), as
in ``SqlCatalog``: a concurrent commit makes it fail with ``CommitFailedException``.

Table metadata files are immutable (a commit writes a new one), so the parsed
metadata is kept per location: loading a table whose pointer did not move since
the last load or commit in this process reads one row, not the metadata file.
Views are not supported (as in ``SqlCatalog``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pyiceberg.catalog import Catalog, MetastoreCatalog, PropertiesUpdateSummary
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.io import load_file_io
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.serializers import FromInputFile
from pyiceberg.table import CommitTableResponse, Table
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER, SortOrder
from pyiceberg.typedef import EMPTY_DICT, Identifier, Properties

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.table.metadata import TableMetadata
    from pyiceberg.table.update import TableRequirement, TableUpdate
    from pyiceberg.view import View
    from pyiceberg.view.metadata import ViewVersion

__all__ = ["EmbeddedCatalog", "sqlite_path"]

TABLE_TYPE = "TABLE"
_MINIMAL_NAMESPACE_PROPERTIES = {"exists": "true"}
# The DDL SQLAlchemy emits for SqlCatalog's v1 models on SQLite, so both see the same tables.
_DDL = (
    "CREATE TABLE IF NOT EXISTS iceberg_tables (\n"
    "\tcatalog_name VARCHAR(255) NOT NULL, \n\ttable_namespace VARCHAR(255) NOT NULL, \n"
    "\ttable_name VARCHAR(255) NOT NULL, \n\tmetadata_location VARCHAR(1000), \n"
    "\tprevious_metadata_location VARCHAR(1000), \n\ticeberg_type VARCHAR(5), \n"
    "\tPRIMARY KEY (catalog_name, table_namespace, table_name)\n)",
    "CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (\n"
    "\tcatalog_name VARCHAR(255) NOT NULL, \n\tnamespace VARCHAR(255) NOT NULL, \n"
    "\tproperty_key VARCHAR(255) NOT NULL, \n\tproperty_value VARCHAR(1000) NOT NULL, \n"
    "\tPRIMARY KEY (catalog_name, namespace, property_key)\n)",
)
#: Seconds a statement waits for another process's write lock on the file (SQLAlchemy's default is 5).
BUSY_TIMEOUT_S = 30.0
# Properties that only SQLAlchemy understands: a catalog naming one is opened by PyIceberg's SqlCatalog.
SQLALCHEMY_PROPERTIES = frozenset({"echo", "pool_pre_ping", "init_catalog_tables", "schema_version"})


def sqlite_path(properties: Properties) -> str | None:
    """The database file of a ``type: sql`` catalog this module can open, or None (then PyIceberg's SqlCatalog does).

    That is a plain ``sqlite:///<path>`` URI (no query string, not in-memory) and no SQLAlchemy-only property.
    """
    uri = str(properties.get("uri", ""))
    if str(properties.get("type", "sql")).lower() != "sql" or not uri.startswith("sqlite:///") or "?" in uri:
        return None
    path = uri[len("sqlite:///") :]
    if not path or path == ":memory:" or SQLALCHEMY_PROPERTIES & set(properties):
        return None
    return path


def _like_prefix(namespace: str) -> str:
    return namespace.replace("!", "!!").replace("_", "!_").replace("%", "!%") + ".%"


class EmbeddedCatalog(MetastoreCatalog):
    """PyIceberg's SQL catalog on a SQLite file without SQLAlchemy (see the module docstring).

    Raises the exceptions ``SqlCatalog`` raises (``NoSuchTableError``, ``CommitFailedException``, ...);
    ``sqlite3.Error`` for a file that cannot be opened or is not a catalog.
    """

    def __init__(self, name: str, **properties: str) -> None:
        super().__init__(name, **properties)
        path = sqlite_path(self.properties)
        if path is None:
            raise ValueError(f"catalog '{name}': the embedded catalog needs a plain sqlite:/// uri")
        self._path = path
        self._metadata: dict[str, TableMetadata] = {}  # metadata location -> parsed (immutable) metadata
        self._lock = threading.Lock()
        with self._connect() as db:
            for statement in _DDL:
                db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(iceberg_tables)")}
        self._v1 = "iceberg_type" in columns

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection per operation, in autocommit mode (``BEGIN IMMEDIATE`` where a write spans statements)."""
        db = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    def _type_filter(self) -> str:
        return " AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL)" if self._v1 else ""

    @staticmethod
    def _split(identifier: str | Identifier) -> tuple[str, str]:
        return Catalog.namespace_to_string(Catalog.namespace_from(identifier)), Catalog.table_name_from(identifier)

    # -- tables -----------------------------------------------------------------------------------------

    def _location_of(self, namespace: str, name: str) -> str:
        with self._connect() as db:
            row = db.execute(
                "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = ? AND table_namespace = ? "
                "AND table_name = ?" + self._type_filter(),
                (self.name, namespace, name),
            ).fetchone()
        if row is None:
            raise NoSuchTableError(f"Table does not exist: {namespace}.{name}")
        if not row[0]:
            raise NoSuchTableError("Table property metadata_location is missing")
        return str(row[0])

    def _table(self, namespace: str, name: str, location: str) -> Table:
        with self._lock:
            metadata = self._metadata.get(location)
        if metadata is None:
            metadata = FromInputFile.table_metadata(load_file_io(self.properties, location).new_input(location))
            self._remember(location, metadata)
        return Table(
            identifier=(*Catalog.identifier_to_tuple(namespace), name),
            metadata=metadata,
            metadata_location=location,
            io=self._load_file_io(metadata.properties, location),
            catalog=self,
        )

    def _remember(self, location: str, metadata: TableMetadata) -> None:
        with self._lock:
            if len(self._metadata) >= 16:
                self._metadata.clear()
            self._metadata[location] = metadata

    def load_table(self, identifier: str | Identifier) -> Table:
        """The table's current metadata (re-read only when its pointer moved); NoSuchTableError if missing."""
        namespace, name = self._split(identifier)
        return self._table(namespace, name, self._location_of(namespace, name))

    def _insert_table(self, namespace: str, name: str, location: str) -> None:
        columns = "catalog_name, table_namespace, table_name, metadata_location, previous_metadata_location"
        values: tuple[Any, ...] = (self.name, namespace, name, location, None)
        if self._v1:
            columns += ", iceberg_type"
            values += (TABLE_TYPE,)
        try:
            with self._connect() as db:
                db.execute(f"INSERT INTO iceberg_tables ({columns}) VALUES ({', '.join('?' * len(values))})", values)
        except sqlite3.IntegrityError as exc:
            raise TableAlreadyExistsError(f"Table {namespace}.{name} already exists") from exc

    def create_table(
        self,
        identifier: str | Identifier,
        schema: Schema | pa.Schema,
        location: str | None = None,
        partition_spec: PartitionSpec = UNPARTITIONED_PARTITION_SPEC,
        sort_order: SortOrder = UNSORTED_SORT_ORDER,
        properties: Properties = EMPTY_DICT,
    ) -> Table:
        """Create the table at once; NoSuchNamespaceError or TableAlreadyExistsError as in SqlCatalog."""
        namespace, name = self._split(identifier)
        if not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"Namespace does not exist: {namespace}")
        staged = self._create_staged_table(identifier, schema, location, partition_spec, sort_order, properties)
        self._write_metadata(staged.metadata, staged.io, staged.metadata_location)
        self._insert_table(namespace, name, staged.metadata_location)
        self._remember(staged.metadata_location, staged.metadata)
        return self.load_table(identifier)

    def register_table(self, identifier: str | Identifier, metadata_location: str, overwrite: bool = False) -> Table:
        """Point a new table at existing metadata; ``overwrite`` is not supported (as in SqlCatalog)."""
        if overwrite:
            raise NotImplementedError("`overwrite` isn't supported")
        namespace, name = self._split(identifier)
        if not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"Namespace does not exist: {namespace}")
        self._insert_table(namespace, name, metadata_location)
        return self.load_table(identifier)

    def drop_table(self, identifier: str | Identifier) -> None:
        """Remove the table from the catalog (its files stay); NoSuchTableError if missing."""
        namespace, name = self._split(identifier)
        with self._connect() as db:
            deleted = db.execute(
                "DELETE FROM iceberg_tables WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?"
                + self._type_filter(),
                (self.name, namespace, name),
            ).rowcount
        if deleted < 1:
            raise NoSuchTableError(f"Table does not exist: {namespace}.{name}")

    def rename_table(self, from_identifier: str | Identifier, to_identifier: str | Identifier) -> Table:
        """Rename a table; NoSuchTableError, TableAlreadyExistsError or NoSuchNamespaceError as in SqlCatalog."""
        from_namespace, from_name = self._split(from_identifier)
        to_namespace, to_name = self._split(to_identifier)
        if not self.namespace_exists(to_namespace):
            raise NoSuchNamespaceError(f"Namespace does not exist: {to_namespace}")
        try:
            with self._connect() as db:
                changed = db.execute(
                    "UPDATE iceberg_tables SET table_namespace = ?, table_name = ? WHERE catalog_name = ? "
                    "AND table_namespace = ? AND table_name = ?" + self._type_filter(),
                    (to_namespace, to_name, self.name, from_namespace, from_name),
                ).rowcount
        except sqlite3.IntegrityError as exc:
            raise TableAlreadyExistsError(f"Table {to_namespace}.{to_name} already exists") from exc
        if changed < 1:
            raise NoSuchTableError(f"Table does not exist: {from_name}")
        return self.load_table(to_identifier)

    def commit_table(
        self, table: Table, requirements: tuple[TableRequirement, ...], updates: tuple[TableUpdate, ...]
    ) -> CommitTableResponse:
        """Apply ``updates`` after checking ``requirements`` against the current metadata, in one conditional write.

        Raises CommitFailedException when a requirement fails or another process committed in between,
        TableAlreadyExistsError when a table this commit creates appeared meanwhile.
        """
        namespace, name = self._split(table.name())
        try:
            current: Table | None = self._table(namespace, name, self._location_of(namespace, name))
        except NoSuchTableError:
            current = None
        staged = self._update_and_stage_table(current, table.name(), requirements, updates)
        if current is not None and staged.metadata == current.metadata:
            return CommitTableResponse(metadata=current.metadata, metadata_location=current.metadata_location)  # type: ignore[call-arg]
        self._write_metadata(staged.metadata, staged.io, staged.metadata_location)
        if current is None:
            self._insert_table(namespace, name, staged.metadata_location)
        else:
            with self._connect() as db:
                changed = db.execute(
                    "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? "
                    "WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? AND metadata_location = ?",
                    (
                        staged.metadata_location,
                        current.metadata_location,
                        self.name,
                        namespace,
                        name,
                        current.metadata_location,
                    ),
                ).rowcount
            if changed < 1:
                raise CommitFailedException(f"Table has been updated by another process: {namespace}.{name}")
        self._remember(staged.metadata_location, staged.metadata)
        return CommitTableResponse(metadata=staged.metadata, metadata_location=staged.metadata_location)  # type: ignore[call-arg]

    def list_tables(self, namespace: str | Identifier) -> list[Identifier]:
        """The tables directly in ``namespace``; NoSuchNamespaceError if it does not exist."""
        if namespace and not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"Namespace does not exist: {namespace}")
        namespace_str = Catalog.namespace_to_string(namespace)
        with self._connect() as db:
            rows = db.execute(
                "SELECT table_namespace, table_name FROM iceberg_tables WHERE catalog_name = ? AND table_namespace = ?"
                + self._type_filter(),
                (self.name, namespace_str),
            ).fetchall()
        return [(*Catalog.identifier_to_tuple(row[0]), row[1]) for row in rows]

    # -- namespaces -------------------------------------------------------------------------------------

    def namespace_exists(self, namespace: str | Identifier) -> bool:
        """True when a table or a namespace property row is in ``namespace`` or below it."""
        namespace_str = Catalog.namespace_to_string(Catalog.identifier_to_tuple(namespace), NoSuchNamespaceError)
        prefix = _like_prefix(namespace_str)
        with self._connect() as db:
            for table, column in (("iceberg_tables", "table_namespace"), ("iceberg_namespace_properties", "namespace")):
                query = (
                    f"SELECT 1 FROM {table} WHERE catalog_name = ? AND ({column} = ? OR {column} LIKE ? ESCAPE '!') "
                    "LIMIT 1"
                )
                if db.execute(query, (self.name, namespace_str, prefix)).fetchone() is not None:
                    return True
        return False

    def create_namespace(self, namespace: str | Identifier, properties: Properties = EMPTY_DICT) -> None:
        """Create ``namespace``; NamespaceAlreadyExistsError if it exists (also when another process just made it)."""
        if self.namespace_exists(namespace):
            raise NamespaceAlreadyExistsError(f"Namespace {namespace} already exists")
        namespace_str = Catalog.namespace_to_string(namespace, NoSuchNamespaceError)
        given = properties or _MINIMAL_NAMESPACE_PROPERTIES
        rows = [(self.name, namespace_str, key, value) for key, value in given.items()]
        try:
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO iceberg_namespace_properties VALUES (?, ?, ?, ?)", rows)
                db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            raise NamespaceAlreadyExistsError(f"Namespace {namespace} already exists") from exc

    def drop_namespace(self, namespace: str | Identifier) -> None:
        """Drop an empty namespace; NoSuchNamespaceError or NamespaceNotEmptyError otherwise."""
        if not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"Namespace does not exist: {namespace}")
        namespace_str = Catalog.namespace_to_string(namespace)
        if tables := self.list_tables(namespace):
            raise NamespaceNotEmptyError(f"Namespace {namespace_str} is not empty. {len(tables)} tables exist.")
        with self._connect() as db:
            db.execute(
                "DELETE FROM iceberg_namespace_properties WHERE catalog_name = ? AND namespace = ?",
                (self.name, namespace_str),
            )

    def list_namespaces(self, namespace: str | Identifier = ()) -> list[Identifier]:
        """The namespaces one level below ``namespace`` (top-level ones without it)."""
        if namespace and not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"Namespace does not exist: {namespace}")
        query = (
            "SELECT table_namespace FROM iceberg_tables WHERE catalog_name = ?{t} "
            "UNION SELECT namespace FROM iceberg_namespace_properties WHERE catalog_name = ?{n}"
        )
        parameters: tuple[str, ...] = (self.name,)
        if namespace:
            like = Catalog.namespace_to_string(namespace, NoSuchNamespaceError) + "%"
            query = query.format(t=" AND table_namespace LIKE ?", n=" AND namespace LIKE ?")
            parameters = (self.name, like, self.name, like)
        else:
            query = query.format(t="", n="")
            parameters = (self.name, self.name)
        with self._connect() as db:
            found = {Catalog.identifier_to_tuple(row[0]) for row in db.execute(query, parameters)}
        parent = Catalog.identifier_to_tuple(namespace)
        level = len(parent) + 1
        return list({ns[:level] for ns in found if len(ns) >= level and ns[: level - 1] == parent})

    def load_namespace_properties(self, namespace: str | Identifier) -> Properties:
        """The namespace's properties; NoSuchNamespaceError if it does not exist."""
        namespace_str = Catalog.namespace_to_string(namespace)
        if not self.namespace_exists(namespace):
            raise NoSuchNamespaceError(f"Namespace {namespace_str} does not exists")
        with self._connect() as db:
            rows = db.execute(
                "SELECT property_key, property_value FROM iceberg_namespace_properties "
                "WHERE catalog_name = ? AND namespace = ?",
                (self.name, namespace_str),
            ).fetchall()
        return {str(key): str(value) for key, value in rows}

    def update_namespace_properties(
        self, namespace: str | Identifier, removals: set[str] | None = None, updates: Properties = EMPTY_DICT
    ) -> PropertiesUpdateSummary:
        """Remove and set namespace properties in one transaction; NoSuchNamespaceError, ValueError as in SqlCatalog."""
        namespace_str = Catalog.namespace_to_string(namespace)
        current = self.load_namespace_properties(namespace)
        summary, _ = self._get_updated_props_and_update_summary(current, removals, updates)
        where = "DELETE FROM iceberg_namespace_properties WHERE catalog_name = ? AND namespace = ? AND property_key = ?"
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(where, [(self.name, namespace_str, key) for key in {*(removals or ()), *updates}])
            db.executemany(
                "INSERT INTO iceberg_namespace_properties VALUES (?, ?, ?, ?)",
                [(self.name, namespace_str, key, value) for key, value in updates.items()],
            )
            db.execute("COMMIT")
        return summary

    # -- views: not supported, as in SqlCatalog ---------------------------------------------------------

    def create_view(
        self,
        identifier: str | Identifier,
        schema: Schema | pa.Schema,
        view_version: ViewVersion,
        location: str | None = None,
        properties: Properties = EMPTY_DICT,
    ) -> View:
        """Not supported: raises NotImplementedError."""
        raise NotImplementedError

    def list_views(self, namespace: str | Identifier) -> list[Identifier]:
        """Not supported: raises NotImplementedError."""
        raise NotImplementedError

    def view_exists(self, identifier: str | Identifier) -> bool:
        """Not supported: raises NotImplementedError."""
        raise NotImplementedError

    def register_view(self, identifier: str | Identifier, metadata_location: str) -> View:
        """Not supported: raises NotImplementedError."""
        raise NotImplementedError

    def drop_view(self, identifier: str | Identifier) -> None:
        """Not supported: raises NotImplementedError."""
        raise NotImplementedError

    def load_view(self, identifier: str | Identifier) -> View:
        """Not supported: raises NotImplementedError."""
        raise NotImplementedError
