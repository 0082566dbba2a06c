"""Which reader a ``postgres`` source uses when the job names none: ``postgres-rs`` where it can, else ADBC.

``postgres-rs`` (the Rust reader, ``pip install 'dativo[native]'``; see docs/performance.md)
decodes binary COPY into Arrow at 1.2-1.5x less client CPU than ADBC, with the same
schema and values (tests/test_postgres_readers.py compares them). It is chosen when
its package imports and it can honour every connection setting the job gives;
otherwise the default stays ``postgres-adbc``. A job that names ``source.reader``
always gets that reader.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["FALLBACK_READER", "NATIVE_READER", "choose_default_reader", "native_available", "native_settings"]

NATIVE_READER = "postgres-rs"
FALLBACK_READER = "postgres-adbc"

_KEY_VALUE = re.compile(r"(\w+)\s*=")


@functools.cache
def native_settings() -> frozenset[str] | None:
    """The connection settings ``postgres-rs`` honours (its ``connection_settings`` plus dativo's keys), or None.

    None when ``dativo_postgres_rs`` does not import here or what it requires is missing (checked
    once per process). Never raises: a missing or broken install (wrong platform, missing pyarrow)
    is simply "not available".
    """
    try:
        reader = importlib.import_module("dativo_postgres_rs").RustPostgresReader
        requires = getattr(reader, "requires", {})
        # what the plugin declares it needs (postgres-rs itself declares nothing since it describes
        # the source on its own connection); missing, ADBC's own message names the extra
        if not all(importlib.util.find_spec(name.partition(".")[0]) is not None for name in requires):
            return None
        # plus dativo's own keys: the DSN and the aliases connection.py maps to libpq names
        return frozenset(reader.connection_settings) | {"dsn", "database", "username"}
    except Exception:
        return None


def native_available() -> bool:
    """True when ``postgres-rs`` can be used here (see :func:`native_settings`). Never raises."""
    return native_settings() is not None


def _settings(connection: Mapping[str, Any]) -> set[str]:
    keys = {str(key) for key, value in connection.items() if value is not None}
    dsn = connection.get("dsn")
    if isinstance(dsn, str) and dsn:
        if "://" in dsn:
            keys |= {key for key, _ in parse_qsl(urlsplit(dsn).query)}
        else:
            keys |= set(_KEY_VALUE.findall(dsn))
    return keys


def choose_default_reader(connection: Mapping[str, Any] | None) -> tuple[str, str]:
    """The reader for a ``postgres`` source without ``source.reader``, and why (one phrase for users).

    ``postgres-rs`` when it is installed and supports every setting in ``connection`` (a job's
    ``source.connection``: ``dsn`` and/or libpq keywords), else ``postgres-adbc``. Never raises.
    """
    supported = native_settings()
    if supported is None:
        return FALLBACK_READER, f"{NATIVE_READER} is not installed (pip install 'dativo[native]')"
    unsupported = sorted(_settings(connection or {}) - supported)
    if unsupported:
        return FALLBACK_READER, f"{NATIVE_READER} does not support the connection setting(s) {', '.join(unsupported)}"
    return NATIVE_READER, f"{NATIVE_READER} is installed"
