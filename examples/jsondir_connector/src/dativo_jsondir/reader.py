"""The ``jsondir`` connector's default reader: every matching JSON document of a folder, as Arrow batches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from dativo import ConfigError, DataReader, PluginConfig, SourceError
from dativo_jsondir.connector import JsonDirConfig

__all__ = ["JsonDirReader"]

_ARROW = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


class JsonDirReader(DataReader):
    """Reads the documents of ``folder`` matching ``pattern``, in name order.

    Raises ConfigError for invalid settings (when used without a job, e.g. by the
    conformance suite), SourceError naming the file for a missing folder, a file
    that is not JSON, a document of the wrong shape or a value of the wrong type.
    """

    def initialize(self, config: PluginConfig) -> None:
        """Validate the settings (the connector's model again: a reader may run without a job) and list the files."""
        self.config = config
        own = {key: config[key] for key in JsonDirConfig.model_fields if key in config}
        try:
            self.settings = JsonDirConfig.model_validate(own)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "source"
            raise ConfigError(f"jsondir reader: source.{where}: {first['msg']}") from None
        folder = Path(self.settings.folder).expanduser()
        if not folder.is_absolute():
            folder = Path(str(config.get("job", {}).get("dir", "."))) / folder
        if not folder.is_dir():
            if self.settings.on_missing_folder == "fail":
                raise SourceError(f"jsondir reader: folder {folder} does not exist", hint="check source.folder")
            self.files: list[Path] = []
        else:
            self.files = sorted(path for path in folder.glob(self.settings.pattern) if path.is_file())
        self.schema = pa.schema([(name, _ARROW[kind]) for name, kind in self.settings.columns.items()])

    def get_schema(self) -> pa.Schema:
        """The declared ``columns``, in order."""
        return self.schema

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Every record of every file, ``batch_size`` rows at a time; raises SourceError naming the file."""
        rows: list[dict[str, Any]] = []
        for path in self.files:
            for record in self._records(path):
                rows.append(self._row(path, record))
                if len(rows) == batch_size:
                    yield pa.RecordBatch.from_pylist(rows, schema=self.schema)
                    rows = []
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=self.schema)

    def _records(self, path: Path) -> list[Any]:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SourceError(f"jsondir reader: {path} is not a readable JSON document: {exc}") from None
        key = self.settings.records_key
        records = document.get(key) if key is not None and isinstance(document, dict) else document
        if not isinstance(records, list):
            where = f"'{key}' of {path}" if key is not None else str(path)
            raise SourceError(f"jsondir reader: {where} is not a list of records")
        return records

    def _row(self, path: Path, record: Any) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise SourceError(f"jsondir reader: {path}: a record is {type(record).__name__}, not an object")
        row: dict[str, Any] = {}
        for name, kind in self.settings.columns.items():
            value = record.get(name)
            try:
                row[name] = _convert(value, kind)
            except (TypeError, ValueError):
                raise SourceError(f"jsondir reader: {path}: column {name!r}: {value!r} is not {kind}") from None
        return row


def _convert(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "timestamp":
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if kind == "int64" and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(kind)
    if kind == "float64" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise TypeError(kind)
    if kind == "bool" and not isinstance(value, bool):
        raise TypeError(kind)
    if kind == "string" and not isinstance(value, str):
        raise TypeError(kind)
    return value
