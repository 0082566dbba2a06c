"""Parquet Modular Encryption for the ``encrypted-parquet`` writer: settings, KMS adapter, reading back.

Shared by the writer (:mod:`dativo.targets.encrypted_parquet`) and ``dativo decrypt``.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
from pyarrow import fs as pafs

from dativo.encryption.kms import KmsClient, KmsError, scrub
from dativo.errors import ConfigError, SourceError
from dativo.sdk import redact
from dativo.storage import filesystem_for

__all__ = [
    "EncryptionSettings",
    "HashingSink",
    "ReadFile",
    "crypto_factory",
    "key_material_path",
    "read_encrypted",
    "read_encrypted_files",
    "rewrap_dataset",
]

KEY_MATERIAL_PREFIX = "_KEY_MATERIAL_FOR_"


def key_material_path(path: str) -> str:
    """Where pyarrow keeps the external key material of the Parquet file ``path`` (beside it)."""
    folder, _, name = path.rpartition("/")
    return f"{folder}/{KEY_MATERIAL_PREFIX}{name}.json"


@dataclass(frozen=True)
class EncryptionSettings:
    """Which master key protects what; built from the target's ``options:``."""

    footer_key: str
    column_keys: dict[str, list[str]]
    encrypt_other_columns: bool = True
    plaintext_footer: bool = False
    double_wrapping: bool = True
    data_key_length_bits: int = 256
    external_key_material: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EncryptionSettings:
        """Read ``footer_key``, ``column_keys`` and the switches; raises ConfigError naming the bad key."""
        footer = options.get("footer_key")
        if not isinstance(footer, str) or not footer.strip():
            raise ConfigError("encrypted-parquet target: options.footer_key is required (a master key id)")
        raw = options.get("column_keys") or {}
        if not isinstance(raw, Mapping):
            raise ConfigError("encrypted-parquet target: options.column_keys must map a master key id to column names")
        column_keys: dict[str, list[str]] = {}
        owner: dict[str, str] = {}
        for key_id, columns in raw.items():
            if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
                raise ConfigError(
                    f"encrypted-parquet target: options.column_keys.{key_id} must be a list of column names"
                )
            for column in columns:
                if column in owner:
                    raise ConfigError(
                        f"encrypted-parquet target: column '{column}' is under two master keys "
                        f"('{owner[column]}' and '{key_id}'); give each column one key"
                    )
                owner[column] = str(key_id)
            column_keys[str(key_id)] = list(columns)
        bits = options.get("data_key_length_bits", 256)
        if bits not in (128, 192, 256):
            raise ConfigError("encrypted-parquet target: options.data_key_length_bits must be 128, 192 or 256")
        switches = {}
        for name, default in (("encrypt_other_columns", True), ("plaintext_footer", False), ("double_wrapping", True)):
            value = options.get(name, default)
            if not isinstance(value, bool):
                raise ConfigError(f"encrypted-parquet target: options.{name} must be true or false")
            switches[name] = value
        material = options.get("key_material", "internal")
        if material not in ("internal", "external"):
            raise ConfigError("encrypted-parquet target: options.key_material must be internal or external")
        return cls(
            footer_key=footer.strip(),
            column_keys=column_keys,
            data_key_length_bits=int(bits),
            external_key_material=material == "external",
            **switches,
        )

    @property
    def master_key_ids(self) -> list[str]:
        """Every master key id this job uses, footer key first."""
        return list(dict.fromkeys([self.footer_key, *self.column_keys]))

    def resolve(self, schema: pa.Schema) -> dict[str, list[str]]:
        """Master key -> top-level columns it encrypts, for ``schema``; raises ConfigError for an unknown column."""
        names = set(schema.names)
        for key_id, columns in self.column_keys.items():
            missing = [c for c in columns if c not in names]
            if missing:
                raise ConfigError(
                    f"encrypted-parquet target: options.column_keys.{key_id} names column(s) "
                    f"{', '.join(repr(c) for c in missing)} that the source does not have "
                    f"(it has: {', '.join(schema.names)})"
                )
        mapping = {key_id: list(columns) for key_id, columns in self.column_keys.items() if columns}
        if self.encrypt_other_columns:
            listed = {c for columns in self.column_keys.values() for c in columns}
            others = [name for name in schema.names if name not in listed]
            if others:
                mapping.setdefault(self.footer_key, []).extend(others)
        if not mapping:
            raise ConfigError(
                "encrypted-parquet target: no column would be encrypted "
                "(list columns under options.column_keys or set encrypt_other_columns: true)"
            )
        return mapping

    def configuration(
        self, mapping: Mapping[str, list[str]], key_ids: Mapping[str, str] | None = None
    ) -> pe.EncryptionConfiguration:
        """The pyarrow ``EncryptionConfiguration`` for one file.

        ``key_ids`` maps a configured master key (an alias, say) to the id stored in
        the file (the key's resolved ARN), so that files keep opening after the alias moves.
        """
        ids = dict(key_ids or {})
        return pe.EncryptionConfiguration(
            footer_key=ids.get(self.footer_key, self.footer_key),
            column_keys={ids.get(key_id, key_id): list(columns) for key_id, columns in mapping.items()},
            encryption_algorithm="AES_GCM_V1",
            plaintext_footer=self.plaintext_footer,
            double_wrapping=self.double_wrapping,
            data_key_length_bits=self.data_key_length_bits,
            cache_lifetime=None,
            internal_key_material=not self.external_key_material,
        )


class _PyarrowKms(pe.KmsClient):  # type: ignore[misc]  # pyarrow ships no type information
    """Adapts a :class:`KmsClient` to pyarrow's callback interface, binding one file's context."""

    def __init__(self, client: KmsClient, context: Mapping[str, str] | None) -> None:
        super().__init__()
        self._client = client
        self._context = dict(context) if context is not None else None

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        return self._client.wrap_key(bytes(key_bytes), master_key_identifier, self._context or {})

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        return self._client.unwrap_key(wrapped_key, master_key_identifier, self._context)


def crypto_factory(client: KmsClient, context: Mapping[str, str] | None) -> pe.CryptoFactory:
    # A new factory per file: pyarrow caches KMS clients and key-encryption keys per factory, and
    # each file's keys must be wrapped under that file's own context.
    def make(_config: pe.KmsConnectionConfig) -> pe.KmsClient:
        return _PyarrowKms(client, context)

    return pe.CryptoFactory(make)


def connection_config(client: KmsClient) -> pe.KmsConnectionConfig:
    return pe.KmsConnectionConfig(kms_instance_id=f"dativo-{client.type_name}")


class HashingSink:
    """A write-only file object that hashes and counts what passes through to ``out`` (already ciphertext)."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._sha = hashlib.sha256()
        self._size = 0
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        self._sha.update(data)
        self._out.write(data)
        self._size += len(data)
        return len(data)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        """Nothing to do: the underlying stream buffers and uploads on close."""

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._out.close()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Reading it back
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadFile:
    """A file :func:`read_encrypted_files` decrypted: where, how big, its SHA-256 and rows."""

    path: str
    size: int
    sha256: str
    rows: int


def read_encrypted(
    location: str,
    kms: KmsClient,
    *,
    connection: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Decrypt and read one file or a dataset folder; see :func:`read_encrypted_files` (errors the same)."""
    return read_encrypted_files(location, kms, connection=connection, base_dir=base_dir, columns=columns)[0]


def read_encrypted_files(
    location: str,
    kms: KmsClient,
    *,
    connection: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
    columns: list[str] | None = None,
) -> tuple[pa.Table, list[ReadFile]]:
    """Decrypt and read one file or a folder (local or ``s3://``); returns the table and the files read.

    A folder with a dataset manifest (``_dativo/manifest-*.json``) is read as
    the manifest lists it: files of a run that never committed are not read.
    A folder without one: every ``*.parquet`` file in it.

    Each file's keys are unwrapped through ``kms`` with the file's name as the
    expected context (a key copied from another file is refused). Raises
    SourceError when a file cannot be read (no access to a column's key, wrong
    key, corrupt file) with a message free of key material, and KmsError when
    the KMS refuses.
    """
    fs, root = filesystem_for(location, connection or {}, base_dir or Path.cwd())
    shown = redact(location)
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.Directory:
            from dativo.targets.parquet import read_manifest

            manifest = read_manifest(fs, root)
            if manifest is not None:
                paths = [f"{root}/{name}" for name in manifest["files"]]
            else:
                selector = pafs.FileSelector(root, recursive=False)
                paths = sorted(
                    entry.path
                    for entry in fs.get_file_info(selector)
                    if entry.type == pafs.FileType.File
                    and entry.base_name.endswith(".parquet")
                    and not entry.base_name.startswith(("_", "."))
                )
        elif info.type == pafs.FileType.File:
            paths = [root]
        else:
            raise SourceError(f"decrypt: {shown} does not exist")
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"decrypt: cannot list {shown}: {scrub(str(exc))}") from None
    tables = []
    read: list[ReadFile] = []
    factory = properties = None
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        factory = crypto_factory(kms, {"dativo:file": name})
        # The path lets pyarrow find external key material (``_KEY_MATERIAL_FOR_<file>.json`` beside it).
        properties = factory.file_decryption_properties(connection_config(kms), pe.DecryptionConfiguration(), path, fs)
        try:
            # Whole-object reads: one GET per file, and no S3 reads left running on pyarrow's I/O threads.
            with fs.open_input_stream(path) as stream:
                data = stream.read()
            table = pq.ParquetFile(pa.BufferReader(data), decryption_properties=properties).read(columns=columns)
        except KmsError:
            raise
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise SourceError(
                f"decrypt: cannot read {name}: {scrub(str(exc))} "
                "(is it encrypted with keys this KMS configuration can unwrap, and do you have every column's key?)"
            ) from None
        tables.append(table)
        shown_path = f"s3://{path}" if location.startswith("s3://") else path
        read.append(ReadFile(shown_path, len(data), hashlib.sha256(data).hexdigest(), table.num_rows))
    # pyarrow's decryption objects end up in reference cycles; left to the interpreter's final
    # collection they are destroyed after pyarrow has shut S3 down, which aborts the process
    # ("terminate called without an active exception"). Collect them now.
    del factory, properties
    gc.collect()
    if not tables:
        raise SourceError(f"decrypt: no Parquet files in {shown}")
    return pa.concat_tables(tables), read


# ---------------------------------------------------------------------------------------------------
# Re-wrapping keys under another master key
# ---------------------------------------------------------------------------------------------------


def rewrap_dataset(
    location: str,
    kms: KmsClient,
    old_key: str,
    new_key: str,
    *,
    connection: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Re-wrap, under ``new_key``, every key of a dataset's files that ``old_key`` wraps; data is not touched.

    Works on files written with ``key_material: external`` (the wrapped keys live
    in ``_KEY_MATERIAL_FOR_<file>.json`` beside each file); each key is unwrapped
    with the old master key and wrapped with the new one, and the key material
    file is replaced in one step. Returns one entry per file (path, keys re-wrapped,
    SHA-256 of the key material before and after). Raises SourceError for a file
    whose keys are inside it (``key_material: internal``) or unreadable, KmsError
    when the KMS refuses; files already done stay done (run it again to finish).
    """
    from dativo.targets.parquet import read_manifest

    fs, root = filesystem_for(location, connection or {}, base_dir or Path.cwd())
    shown = redact(location)
    try:
        manifest = read_manifest(fs, root)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"kms rewrap: cannot read {shown}: {scrub(str(exc))}") from None
    if manifest is None:
        raise SourceError(f"kms rewrap: {shown} is not an encrypted-parquet dataset (no _dativo/manifest-*.json)")
    old_ids = {old_key, kms.resolve_key_id(old_key)}
    new_id = kms.resolve_key_id(new_key)
    done = []
    for name in manifest["files"]:
        path = key_material_path(f"{root}/{name}")
        try:
            with fs.open_input_stream(path) as stream:
                before = stream.read()
        except (OSError, pa.ArrowException):
            raise SourceError(
                f"kms rewrap: {name} keeps its keys inside the file (key_material: internal); "
                "only files written with key_material: external can be re-wrapped — re-write this one instead"
            ) from None
        after, count = _rewrap_material(before, kms, old_ids, new_id, name)
        if count:
            _replace(fs, path, after)
        done.append(
            {
                "path": f"s3://{root}/{name}" if location.startswith("s3://") else f"{root}/{name}",
                "keys": count,
                "key_material_sha256_before": hashlib.sha256(before).hexdigest(),
                "key_material_sha256_after": hashlib.sha256(after).hexdigest(),
            }
        )
    return done


def _rewrap_material(data: bytes, kms: KmsClient, old_ids: set[str], new_id: str, name: str) -> tuple[bytes, int]:
    import json

    try:
        entries = json.loads(data)
        materials = {ref: json.loads(text) for ref, text in entries.items()}
    except (ValueError, AttributeError, TypeError):
        raise SourceError(f"kms rewrap: the key material of {name} is not pyarrow's JSON format") from None
    count = 0
    context = {"dativo:file": name}
    for material in materials.values():
        if material.get("masterKeyID") not in old_ids:
            continue
        field_name = "wrappedKEK" if material.get("doubleWrapping") else "wrappedDEK"
        key = kms.unwrap_key(str(material[field_name]), str(material["masterKeyID"]), context)
        material[field_name] = kms.wrap_key(key, new_id, context)
        material["masterKeyID"] = new_id
        count += 1
    text = {ref: json.dumps(material, separators=(",", ":")) for ref, material in materials.items()}
    return json.dumps(text, separators=(",", ":")).encode(), count


def _replace(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Replace ``path`` in one step: a rename locally, one PUT on object storage."""
    import os

    if isinstance(fs, pafs.LocalFileSystem):
        temp = f"{path}.rewrap.tmp"
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        return
    with fs.open_output_stream(path) as stream:
        stream.write(data)
