"""The process-plugin protocol (version 1), shared by the process runtime and :mod:`dativo.runtimes.serve`.

The wire format is specified in ``docs/process-protocol.md``; this module holds
its constants and the encoding of its JSON messages and error records.
In short: dativo writes one JSON *handshake* line on the plugin's stdin; the
plugin answers with one JSON *hello* line on stdout; then commands (JSON lines)
and Arrow IPC streams follow; errors travel as JSON records on stderr; the exit
code says how the plugin ended.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Final

import pyarrow as pa

from dativo.errors import ConfigError, DativoError, PluginError, SchemaError, SourceError, TargetError, TypeMappingError

__all__ = [
    "CHANGES",
    "CHANGES_TOGETHER",
    "EXIT_BAD_HANDSHAKE",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNSUPPORTED_PROTOCOL",
    "MAX_LINE_BYTES",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "EofWatchingReader",
    "ProtocolError",
    "aligned",
    "decode_line",
    "encode_line",
    "error_from_record",
    "error_record",
    "open_ipc_stream",
]

#: The protocol version this dativo speaks (the handshake's ``protocol``).
PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)

#: The hello capability of a change reader (``dativo.ChangeReader``): it answers the change commands
#: and stays alive after its batches for ``confirm`` (an addition to protocol 1; older plugins omit it).
CHANGES: Final = "changes"
#: The hello capability of a change reader that starts several tables of one slot in one plugin.
CHANGES_TOGETHER: Final = "changes_together"

EXIT_OK: Final = 0
#: The plugin failed; it wrote an error record on stderr first.
EXIT_FAILED: Final = 1
#: The handshake was not valid JSON or lacked required fields.
EXIT_BAD_HANDSHAKE: Final = 2
#: The plugin does not speak the protocol version dativo asked for.
EXIT_UNSUPPORTED_PROTOCOL: Final = 3

#: The longest JSON line either side accepts (handshake, hello, commands, results).
MAX_LINE_BYTES: Final = 16 * 1024 * 1024

_ERROR_TYPES: dict[str, type[DativoError]] = {
    "ConfigError": ConfigError,
    "PluginError": PluginError,
    "SourceError": SourceError,
    "TargetError": TargetError,
    "SchemaError": SchemaError,
    "TypeMappingError": TypeMappingError,
}


class ProtocolError(PluginError):
    """The plugin broke the protocol: bad JSON, a missing hello, garbage instead of Arrow IPC."""


def encode_line(message: Mapping[str, Any]) -> bytes:
    """One JSON message as a UTF-8 line ending in ``\\n`` (no other newline inside)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str).encode() + b"\n"


def decode_line(line: bytes, what: str) -> dict[str, Any]:
    """Parse one JSON line; raises ProtocolError (naming ``what``) unless it is a JSON object."""
    try:
        value = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        shown = line[:80].decode("utf-8", "replace")
        raise ProtocolError(f"{what} is not a JSON line ({exc}): {shown!r}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is JSON but not an object: {line[:80]!r}")
    return value


def error_record(exc: BaseException) -> dict[str, Any]:
    """The stderr error record for ``exc``: its dativo class (or PluginError), message, hint and transient flag."""
    if isinstance(exc, DativoError):
        name = next((c.__name__ for c in type(exc).__mro__ if _ERROR_TYPES.get(c.__name__) is c), "PluginError")
        return {"dativo": "error", "error": name, "message": exc.message, "hint": exc.hint, "transient": exc.transient}
    return {
        "dativo": "error",
        "error": "PluginError",
        "message": f"{type(exc).__name__}: {exc}",
        "hint": None,
        "transient": isinstance(exc, ConnectionError | TimeoutError),
    }


def error_from_record(record: Mapping[str, Any], prefix: str, default: type[DativoError]) -> DativoError:
    """Rebuild the dativo error a plugin reported; its message is prefixed with ``prefix``.

    An unknown ``error`` name becomes ``default`` (SourceError for readers, TargetError for writers).
    """
    cls = _ERROR_TYPES.get(str(record.get("error")), default)
    if cls is PluginError and default is not PluginError:
        cls = default
    message = str(record.get("message") or "failed without a message")
    hint = record.get("hint")
    return cls(f"{prefix}{message}", hint=str(hint) if hint else None, transient=bool(record.get("transient", False)))


class EofWatchingReader(ABC):
    """A read-only binary stream for ``pa.ipc.open_stream`` that notes whether a read came back short.

    Arrow reads the end-of-stream marker with exact reads and stops there, so a stream whose
    iteration ends after a short read (``hit_eof``) ended without its marker: a cut-short stream.
    Subclasses implement :meth:`_read`.
    """

    def __init__(self) -> None:
        self.closed = False
        self.hit_eof = False

    @abstractmethod
    def _read(self, size: int) -> bytes:
        """Up to ``size`` (a positive count) bytes; fewer only at the end of the stream."""

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all, for a negative size); a short result marks the end of the pipe."""
        wanted = size if size is not None and size >= 0 else 1 << 30
        data = self._read(wanted)
        if len(data) < wanted:
            self.hit_eof = True
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


# Buffers read from a pipe or a gRPC message need not be aligned; native plugins (arrow-rs
# panics on a misaligned pointer) must get aligned ones, so realign on the way in.
_ALIGNED = pa.ipc.IpcReadOptions(ensure_alignment=pa.ipc.Alignment.DataTypeSpecific)


def open_ipc_stream(source: Any) -> pa.RecordBatchStreamReader:
    """Open an Arrow IPC stream whose batches have buffers aligned for their data types."""
    return pa.ipc.open_stream(source, options=_ALIGNED)


def _needs_alignment(array: pa.Array) -> bool:
    kind = array.type
    if isinstance(kind, pa.ExtensionType):
        kind = kind.storage_type
    if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind) or pa.types.is_large_list(kind):
        width = 8
    elif pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_list(kind):
        width = 4
    else:
        try:
            width = max(1, kind.bit_width // 8)
        except ValueError:  # nested or variable-width without offsets: leave it to Arrow
            return False
    buffers = array.buffers()
    return len(buffers) > 1 and buffers[1] is not None and buffers[1].address % width != 0


def aligned(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` itself when every column's values/offsets are aligned for its type, else an aligned copy."""
    if not any(_needs_alignment(column) for column in batch.columns):
        return batch
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return open_ipc_stream(sink.getvalue()).read_next_batch()
