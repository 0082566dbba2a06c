"""``local`` KMS: master keys in a key file on this machine, for development.

The key file is JSON mapping master key ids to base64-encoded AES keys of 16,
24 or 32 bytes::

    {"footer_key": "q0B1...==", "phi_key": "Zt3k...=="}

It must be readable by its owner only (``chmod 600``); a file with looser
permissions is refused. A data key is wrapped with AES-GCM under the master key,
the master key id as additional authenticated data, and stored as
``base64(nonce[12] || ciphertext || tag[16])`` — the layout of parquet-mr's
``KeyToolkit.encryptKeyLocally`` used by its in-memory KMS.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from dativo.encryption.kms import KmsClient, KmsError, register_key_material
from dativo.errors import ConfigError

__all__ = ["LocalKeyFileKms", "new_key_file"]

_NONCE = 12


class LocalKeyFileKms(KmsClient):
    """Master keys from ``key_file`` (JSON, 0600). Raises ConfigError for a missing, loose or malformed file."""

    type_name: ClassVar[str] = "local"

    def __init__(self, config: Mapping[str, Any], base_dir: Path) -> None:
        super().__init__(config, base_dir)
        unknown = set(config) - {"type", "key_file"}
        if unknown:
            raise ConfigError(f"kms (local): unknown key(s) {', '.join(sorted(unknown))} (allowed: type, key_file)")
        raw = config.get("key_file")
        if not raw:
            raise ConfigError("kms (local): 'key_file' is required (a JSON file of base64 master keys, chmod 600)")
        path = Path(os.path.expanduser(str(raw)))
        self.path = path if path.is_absolute() else base_dir / path
        self._keys = _read_key_file(self.path)

    def wrap_key(self, key: bytes, master_key_id: str, context: Mapping[str, str]) -> str:
        """AES-GCM-encrypt ``key`` under the master key; raises KmsError for an unknown key id."""
        aead = self._aead(master_key_id)
        register_key_material(key)
        nonce = os.urandom(_NONCE)
        return base64.b64encode(nonce + aead.encrypt(nonce, key, master_key_id.encode())).decode()

    def unwrap_key(self, wrapped: str, master_key_id: str, context: Mapping[str, str] | None) -> bytes:
        """Decrypt a wrapped key; raises KmsError when the key id is unknown or the key was wrapped by another key."""
        from cryptography.exceptions import InvalidTag

        aead = self._aead(master_key_id)
        try:
            raw = base64.b64decode(wrapped, validate=True)
            key: bytes = aead.decrypt(raw[:_NONCE], raw[_NONCE:], master_key_id.encode())
        except (binascii.Error, ValueError, InvalidTag):
            raise KmsError(
                f"KMS local ({self.path}): master key '{master_key_id}' cannot unwrap this file's key "
                "(wrong key file, or the key was rotated)"
            ) from None
        register_key_material(key)
        return key

    def describe(self) -> dict[str, Any]:
        """``{"type": "local", "key_file": path}``."""
        return {"type": self.type_name, "key_file": str(self.path)}

    def _aead(self, master_key_id: str) -> Any:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = self._keys.get(master_key_id)
        if key is None:
            raise KmsError(
                f"KMS local ({self.path}): no master key '{master_key_id}' "
                f"(the file has: {', '.join(sorted(self._keys)) or 'none'})"
            )
        return AESGCM(key)


def _read_key_file(path: Path) -> dict[str, bytes]:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"kms (local): key file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"kms (local): key file {path} cannot be read ({exc.strerror})") from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"kms (local): key file {path} has permissions {mode:04o}; it must be private to its owner "
            f"(run: chmod 600 {path})"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"kms (local): key file {path} is not a JSON object of master key id -> base64 key") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"kms (local): key file {path} must be a non-empty JSON object of key id -> base64 key")
    keys: dict[str, bytes] = {}
    for key_id, encoded in data.items():
        try:
            key = base64.b64decode(str(encoded), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"kms (local): key '{key_id}' in {path} is not valid base64") from None
        register_key_material(key)
        if len(key) not in (16, 24, 32):
            raise ConfigError(f"kms (local): key '{key_id}' in {path} is {len(key)} bytes; use 16, 24 or 32")
        keys[str(key_id)] = key
    return keys


def new_key_file(path: Path, key_ids: list[str], key_bytes: int = 32) -> None:
    """Create a key file at ``path`` (mode 0600) with a fresh random key per id; raises ConfigError if it exists."""
    if key_bytes not in (16, 24, 32):
        raise ConfigError("key length must be 16, 24 or 32 bytes")
    content = json.dumps({key_id: base64.b64encode(os.urandom(key_bytes)).decode() for key_id in key_ids}, indent=2)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"key file {path} already exists; refusing to overwrite keys") from None
    except OSError as exc:
        raise ConfigError(f"key file {path} cannot be created ({exc.strerror})") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content + "\n")
