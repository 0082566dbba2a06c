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

__all__ = ["FALLBACK_READER", "NATIVE_READER", "NATIVE_SETTINGS", "choose_default_reader", "native_available"]

NATIVE_READER = "postgres-rs"
FALLBACK_READER = "postgres-adbc"

#: libpq settings the native reader honours (anything else, e.g. client certificates, goes to ADBC).
NATIVE_SETTINGS = frozenset(
    {
        "dsn",
        "host",
        "hostaddr",
        "port",
        "user",
        "username",
        "password",
        "dbname",
        "database",
        "options",
        "application_name",
        "connect_timeout",
        "keepalives",
        "keepalives_idle",
        "target_session_attrs",
        "channel_binding",
        "client_encoding",
        "sslmode",
        "sslrootcert",
    }
)
_KEY_VALUE = re.compile(r"(\w+)\s*=")


@functools.cache
def native_available() -> bool:
    """True when ``dativo_postgres_rs`` imports here and what it requires is installed (checked once per process).

    Never raises: a missing or broken install (wrong platform, missing pyarrow) is simply "not available".
    """
    try:
        module = importlib.import_module("dativo_postgres_rs")
        requires = getattr(module.RustPostgresReader, "requires", {})
        # e.g. psycopg, which it describes the source with: missing, ADBC's own message names the extra
        return all(importlib.util.find_spec(name.partition(".")[0]) is not None for name in requires)
    except Exception:
        return False


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
    if not native_available():
        return FALLBACK_READER, f"{NATIVE_READER} is not installed (pip install 'dativo[native]')"
    unsupported = sorted(_settings(connection or {}) - NATIVE_SETTINGS)
    if unsupported:
        return FALLBACK_READER, f"{NATIVE_READER} does not support the connection setting(s) {', '.join(unsupported)}"
    return NATIVE_READER, f"{NATIVE_READER} is installed"
