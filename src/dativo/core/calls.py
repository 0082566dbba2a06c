"""Calling plugin methods: the one place a plugin's own exception becomes a dativo error.

A :class:`~dativo.errors.DativoError` raised by a plugin passes through unchanged.
Any other exception becomes a ``SourceError`` (reader) or ``TargetError`` (writer)
naming the plugin and what it was doing, with ``transient`` decided by
:func:`dativo.errors.is_transient` (a ``ConnectionError`` or ``TimeoutError`` may
succeed if retried). Every path that runs a plugin -- the single stream, the
partitioned read, change runs -- wraps through here, so the retry policy sees the
same flag whichever path raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import pyarrow as pa

from dativo.errors import DativoError, PluginError, SourceError, TargetError, is_transient
from dativo.sdk import DataReader, DataWriter

__all__ = ["Role", "abort_quietly", "call", "close_quietly", "declared_schema", "plugin_error"]

log = logging.getLogger("dativo.engine")

Role = Literal["reader", "writer"]
T = TypeVar("T")


def plugin_error(exc: BaseException, role: Role, name: str, doing: str) -> DativoError:
    """``exc`` as one dativo error: ``{role} '{name}' {doing}: {Type}: {message}``, ``transient`` kept.

    A DativoError is returned as it is. ``exc`` becomes the new error's ``__cause__``.
    """
    if isinstance(exc, DativoError):
        return exc
    error_cls = SourceError if role == "reader" else TargetError
    error = error_cls(f"{role} '{name}' {doing}: {type(exc).__name__}: {exc}", transient=is_transient(exc))
    error.__cause__ = exc
    return error


def call(fn: Callable[..., T], name: str, method: str, *args: Any, role: Role = "writer") -> T:
    """Call a plugin method; a non-dativo exception becomes an error naming the plugin and method."""
    try:
        return fn(*args)
    except DativoError:
        raise
    except Exception as exc:
        raise plugin_error(exc, role, name, f"failed in {method}()") from exc


def declared_schema(reader: DataReader, name: str) -> pa.Schema:
    """The reader's ``get_schema()``; raises PluginError when it is not a ``pyarrow.Schema``."""
    schema = call(reader.get_schema, name, "get_schema", role="reader")
    if not isinstance(schema, pa.Schema):
        raise PluginError(f"reader '{name}': get_schema() returned {type(schema).__name__}, not a pyarrow.Schema")
    return schema


def abort_quietly(writer: DataWriter, name: str) -> None:
    """Call the writer's ``abort()``; a failure is logged (staged files may remain), never raised."""
    try:
        writer.abort()
    except Exception:
        log.exception("writer '%s' failed to abort; staged files may remain", name)


def close_quietly(plugin: DataReader | DataWriter, name: str) -> None:
    """Call the plugin's ``close()``; a failure is logged, never raised."""
    try:
        plugin.close()
    except Exception:
        log.exception("plugin '%s' failed to close", name)
