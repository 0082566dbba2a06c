"""Encryption at rest: key management clients and the KMS-keyed audit chain.

* :mod:`dativo.encryption.kms`: the :class:`~dativo.encryption.kms.KmsClient`
  interface, the built-in ``local`` and ``aws-kms`` clients, and their loader
  (every client, built-in or not, is found through the ``dativo.kms``
  entry-point group);
* :mod:`dativo.encryption.audit`: the append-only, HMAC-chained audit log the
  encrypted-parquet writer keeps;
* :mod:`dativo.encryption.audit_verify`: ``dativo audit verify``.

The writer itself is an ordinary target plugin (``dativo.targets.encrypted_parquet``).
Nothing is imported here, so importing one submodule costs only that submodule.
"""
