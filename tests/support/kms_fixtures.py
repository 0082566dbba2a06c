"""pytest plugin: AWS KMS on the same real moto server as S3 (``support.s3server``), plus key files.

Registered from ``tests/conftest.py``. moto's threaded server answers every AWS
API on one port, so KMS is reached over HTTP exactly like S3: nothing is
patched into dativo.

* ``kms`` (function): a :class:`KmsHelper` bound to the session's server.
* ``key_file`` (function): a 0600 JSON key file for the ``local`` KMS with
  master keys ``footer_key`` and ``phi_key``; returns ``(path, {id: key bytes})``.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from support.s3server import S3Server


class KmsHelper:
    """Create and manage KMS keys on the moto server; build the ``kms:`` mapping of a job."""

    def __init__(self, server: S3Server) -> None:
        self.server = server

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "kms",
            endpoint_url=self.server.endpoint_url,
            region_name=self.server.region,
            aws_access_key_id=self.server.access_key_id,
            aws_secret_access_key=self.server.secret_access_key,
        )

    def create_key(self, name: str) -> str:
        """Create a symmetric key with alias ``alias/<name>-<random>``; return the alias."""
        client = self.client()
        key_id = client.create_key(Description=f"dativo test {name}")["KeyMetadata"]["KeyId"]
        alias = f"alias/{name}-{uuid.uuid4().hex[:8]}"
        client.create_alias(AliasName=alias, TargetKeyId=key_id)
        return alias

    def disable(self, alias: str) -> None:
        client = self.client()
        key_id = client.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"]
        client.disable_key(KeyId=key_id)

    def config(self, **overrides: Any) -> dict[str, Any]:
        """The ``kms:`` mapping of a job for this server."""
        return {
            "type": "aws-kms",
            "endpoint_url": self.server.endpoint_url,
            "region": self.server.region,
            "access_key_id": self.server.access_key_id,
            "secret_access_key": self.server.secret_access_key,
            **overrides,
        }


@pytest.fixture
def kms(s3_server: S3Server) -> KmsHelper:
    """KMS on the session's moto server."""
    return KmsHelper(s3_server)


def write_key_file(path: Path, keys: dict[str, bytes], mode: int = 0o600) -> Path:
    """Write a ``local`` KMS key file holding ``keys`` with permissions ``mode``."""
    path.write_text(json.dumps({k: base64.b64encode(v).decode() for k, v in keys.items()}))
    path.chmod(mode)
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A 0600 key file with fresh 256-bit master keys ``footer_key`` and ``phi_key``."""
    keys = {"footer_key": os.urandom(32), "phi_key": os.urandom(32)}
    return write_key_file(tmp_path / "keys.json", keys), keys


def encrypted_parquet_scenario(keys: Path) -> dict[str, Any]:
    """The conformance kit's scenarios for the ``encrypted-parquet`` writer, its key material in ``keys``.

    A fresh local key file (master keys ``footer_key`` and ``phi_key``, the latter for the
    ``label``, ``raw`` and ``uid`` columns) and the audit log, both in ``keys``: the audit trail
    outlives an aborted run by design, so it lives beside the job, not the data.
    """
    key_file = write_key_file(keys / "keys.json", {"footer_key": os.urandom(32), "phi_key": os.urandom(32)})
    return {
        "standard": {
            "connector": "encrypted-parquet",
            "options": {
                "footer_key": "footer_key",
                "column_keys": {"phi_key": ["label", "raw", "uid"]},
                "kms": {"type": "local", "key_file": str(key_file)},
                "audit": {"log": str(keys / "audit.jsonl")},
            },
        },
        "read_back": "dativo.targets.encrypted_parquet:read_back",
    }
