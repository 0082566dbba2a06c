"""The public PostgreSQL helper SDK: what a PostgreSQL reader needs besides its driver (SDK 1.4).

A reader of a ``connector: postgres`` source built on these names runs exactly the SQL the
built-in readers run, produces exactly their Arrow schema, rejects exactly the values they
reject, and reports failures (transient or terminal) exactly as they do::

    from dativo.postgres_sdk import SnapshotPartitionedReader, snapshot_setup_sql

    class MyReader(SnapshotPartitionedReader):
        def initialize(self, config):
            self.setup_source(config)            # spec, connection info, plan (SQL + schema)
            plan, spec, info = self.source()
            self._conn = my_driver.connect(info.conninfo)

        def read_batch(self, batch_size):
            try:
                yield from my_driver.copy_arrow(self._conn, self.plan().sql, batch_size)
            except my_driver.Error as exc:      # a SQLSTATE on it decides transient vs terminal
                raise self.translate(exc) from exc

When the engine runs a job's streams, connections are shared between them: ``setup_source``
describes on a connection of the run's pool, and a reader may lease its own read connection
there too (:func:`lease` for any driver, :func:`lease_psycopg`), giving it back with
``Lease.release(reusable=...)`` only when its read ended cleanly (docs/many-tables.md).

The module is versioned on its own (:data:`POSTGRES_SDK_VERSION`, semver, see
docs/sdk-changelog.md): within a MAJOR version nothing listed in ``__all__`` is removed or
changed incompatibly. The built-in readers (``postgres-adbc``, ``postgres-psycopg``) and the
native ``postgres-rs`` plugin are built on it. Everything here needs ``dativo[postgres]``
(psycopg) at call time; importing it does not.
"""

from __future__ import annotations

from dativo.connectors.postgres.base import CancelRegistry, PlannedPostgresReader, SnapshotPartitionedReader
from dativo.connectors.postgres.connection import (
    PgConnectionInfo,
    PostgresDriverError,
    build_connection,
    connect_psycopg,
    import_psycopg,
    is_transient_error,
    is_transient_sqlstate,
    sqlstate_of,
    translate_error,
)
from dativo.connectors.postgres.partitions import SnapshotPartitioner, ctid_partitions, snapshot_setup_sql
from dativo.connectors.postgres.pool import (
    Lease,
    SharedConnections,
    borrow_psycopg,
    lease,
    lease_psycopg,
    shared_connections,
)
from dativo.connectors.postgres.types import (
    ColumnPlan,
    Kind,
    SourcePlan,
    SourceSpec,
    check_array_dims,
    check_temporal_range,
    decimal_from_strings,
    describe_source,
    quote_ident,
    rebuild_list,
    split_qualified_name,
    with_lower_bound,
)

__all__ = [
    "POSTGRES_SDK_VERSION",
    "CancelRegistry",
    "ColumnPlan",
    "Kind",
    "Lease",
    "PgConnectionInfo",
    "PlannedPostgresReader",
    "PostgresDriverError",
    "SharedConnections",
    "SnapshotPartitionedReader",
    "SnapshotPartitioner",
    "SourcePlan",
    "SourceSpec",
    "borrow_psycopg",
    "build_connection",
    "check_array_dims",
    "check_temporal_range",
    "connect_psycopg",
    "ctid_partitions",
    "decimal_from_strings",
    "describe_source",
    "import_psycopg",
    "is_transient_error",
    "is_transient_sqlstate",
    "lease",
    "lease_psycopg",
    "quote_ident",
    "rebuild_list",
    "shared_connections",
    "snapshot_setup_sql",
    "split_qualified_name",
    "sqlstate_of",
    "translate_error",
    "with_lower_bound",
]

#: The version of this module's contract (semver; 1.0.0 came with plugin SDK 1.4.0; 1.1.0 added the
#: run's shared connections: ``lease``, ``lease_psycopg``, ``borrow_psycopg``, ``shared_connections``).
POSTGRES_SDK_VERSION = "1.1.0"
