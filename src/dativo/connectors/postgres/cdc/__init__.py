"""Change data capture from PostgreSQL: logical replication (``pgoutput``) into any stateful writer.

See docs/cdc.md. :class:`~dativo.connectors.postgres.cdc.reader.PostgresChangeReader` is the
``postgres-cdc`` reader; :mod:`.slot` holds the server-side operations the CLI also uses.
"""
