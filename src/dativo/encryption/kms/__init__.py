"""Key management: the small interface the encrypted writer wraps its data keys with.

A *KMS client* wraps (encrypts) and unwraps the random data keys that Parquet
Modular Encryption generates for every file and column, using *master keys*
that never leave the key management service. Built in:

* ``local`` (:class:`dativo.encryption.kms.local.LocalKeyFileKms`): master keys in a JSON
  key file with 0600 permissions, for development;
* ``aws-kms`` (:class:`dativo.encryption.kms.aws.AwsKms`): AWS KMS through boto3, every
  wrapped key bound to an encryption context naming the job, run and file.

Every client is a plugin: the built-in ones are registered in the ``dativo.kms``
entry-point group exactly like a third-party one. Anyone can add one: subclass
:class:`KmsClient` and register the class there (or name it as ``"pkg.module:Class"``).
Key material is never logged and never part of an error message.
"""

from __future__ import annotations

import base64
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from dativo._secrets import redact, register_secret
from dativo.errors import ConfigError, DativoError, PluginError

__all__ = ["KmsClient", "KmsError", "load_kms", "register_key_material", "scrub"]

ENTRY_POINT_GROUP = "dativo.kms"

# Raw bytes (key material that leaked into a message undecoded) show up as control characters.
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")


def register_key_material(key: bytes) -> None:
    """Register ``key`` in base64 (standard and URL-safe) and hex so that :func:`scrub` masks it anywhere."""
    for text in (
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode(),
        key.hex(),
        key.hex().upper(),
    ):
        register_secret(text)
        register_secret(text.rstrip("="))


def scrub(text: str) -> str:
    """Return ``text`` safe to show: registered secrets and key material masked, raw bytes removed.

    Used on every message that may carry text from pyarrow, boto3 or a KMS, so
    that no key material (raw, base64 or hex) reaches a log, an error or a summary.
    """
    return _UNPRINTABLE.sub("?", redact(text))


class KmsError(DativoError):
    """A key management operation failed (key unknown, disabled, denied, service unreachable, wrong key).

    The message names the master key and the operation, never key material.
    """


class KmsClient(ABC):
    """Wraps and unwraps data keys with master keys held by a key management service.

    ``config`` is the job's ``kms:`` mapping (``type`` included) with secrets
    resolved; relative paths resolve against ``base_dir``. ``context`` is a
    small mapping naming the job, the run and the file a key belongs to: a
    client that can bind it (AWS KMS encryption context) must do so and must
    refuse to unwrap a key under a different context. Raise :class:`KmsError`
    (or ``ConfigError`` for bad configuration) with a message that names the
    master key but never contains key bytes.
    """

    #: The ``type:`` a job uses to select this client.
    type_name: ClassVar[str] = "custom"

    def __init__(self, config: Mapping[str, Any], base_dir: Path) -> None:
        self.config = config
        self.base_dir = base_dir

    @abstractmethod
    def wrap_key(self, key: bytes, master_key_id: str, context: Mapping[str, str]) -> str:
        """Encrypt ``key`` with master key ``master_key_id``; return a printable string stored in the file."""

    @abstractmethod
    def unwrap_key(self, wrapped: str, master_key_id: str, context: Mapping[str, str] | None) -> bytes:
        """Decrypt a string made by :meth:`wrap_key`.

        ``context`` is what the caller expects the key to be bound to (``None``
        when it does not know); a mismatch raises :class:`KmsError`.
        """

    def check(self, master_key_ids: Iterable[str]) -> None:
        """Verify every master key can wrap and unwrap a throw-away key; raises KmsError naming the first failure."""
        probe = os.urandom(16)
        context = {"dativo:purpose": "check"}
        for key_id in master_key_ids:
            wrapped = self.wrap_key(probe, key_id, context)
            if self.unwrap_key(wrapped, key_id, context) != probe:
                raise KmsError(f"KMS {self.type_name}: master key '{key_id}' did not round-trip a test key")

    def resolve_key_id(self, master_key_id: str) -> str:
        """The stable id of a master key (an alias resolved to the key it names); stored in files.

        The default returns ``master_key_id`` unchanged. Raises KmsError when the KMS refuses.
        """
        return master_key_id

    def describe(self) -> dict[str, Any]:
        """Non-secret facts about this client for audit records and summaries (type, region, key file path)."""
        return {"type": self.type_name}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; safe to call twice."""


def load_kms(config: Mapping[str, Any], base_dir: Path) -> KmsClient:
    """Build the KMS client a job's ``kms:`` mapping names by ``type``.

    ``type`` is found like a reader's ``implementation`` (through the same plugin
    registry, :func:`dativo.core.registry.resolve_class`): the name of a ``dativo.kms``
    entry point (the built-in ``local`` and ``aws-kms`` are registered there like any
    third-party client), ``"pkg.module:Class"``, or ``"path/file.py:Class"`` relative
    to ``base_dir``. Raises ConfigError for a missing type, and PluginError naming the
    installed clients for an unknown one, or when the class cannot be imported, is not
    a :class:`KmsClient` or fails to start.
    """
    from dativo.core.registry import resolve_class

    if not isinstance(config, Mapping) or not config.get("type"):
        raise ConfigError("encryption: 'kms.type' is required (local, aws-kms or an installed dativo.kms plugin)")
    name = str(config["type"])
    cls, origin = resolve_class(ENTRY_POINT_GROUP, "KMS client", name, base_dir)
    if not issubclass(cls, KmsClient):
        raise PluginError(f"KMS client '{name}' ({origin}) is not a subclass of dativo.encryption.kms.KmsClient")
    try:
        return cls(config, base_dir)
    except DativoError:
        raise
    except Exception as exc:
        raise PluginError(f"KMS client '{name}' failed to start: {type(exc).__name__}: {scrub(str(exc))}") from None
