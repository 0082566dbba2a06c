"""Installed connectors: the ``dativo.connectors`` entry-point group, read once per process.

Each entry point names a :class:`dativo.sdk_connectors.Connector`. The built-in ones
(postgres, sqlite, files, iceberg, parquet, encrypted-parquet, custom) are registered in
dativo's own pyproject.toml exactly like a third party's.
"""

from __future__ import annotations

import difflib
import threading
from typing import Literal

from dativo._installed import entry_points
from dativo.errors import ConfigError
from dativo.sdk_connectors import Connector

__all__ = [
    "ENTRY_POINT_GROUP",
    "connector",
    "connector_keys",
    "connectors",
    "did_you_mean",
    "known",
    "reset_connectors",
]

ENTRY_POINT_GROUP = "dativo.connectors"
Role = Literal["source", "target"]

_lock = threading.Lock()
_cache: dict[str, Connector] | None = None


def connectors() -> dict[str, Connector]:
    """Every installed connector by name (loaded on first use, then cached).

    Raises ConfigError naming the entry point when one cannot be imported, is not a
    ``Connector``, or repeats a name another package already registered.
    """
    global _cache
    with _lock:
        if _cache is None:
            _cache = _load()
        return _cache


def reset_connectors() -> None:
    """Forget the cache, so connectors installed since (``pip install`` in a test) are found."""
    global _cache
    with _lock:
        _cache = None


def _load() -> dict[str, Connector]:
    found: dict[str, Connector] = {}
    origins: dict[str, str] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        origin = f"entry point {point.name!r} = {point.value!r}"
        try:
            declared = point.load()
        except Exception as exc:  # a broken third-party package must say which one it is
            raise ConfigError(
                f"{origin} of group {ENTRY_POINT_GROUP} cannot be loaded: {type(exc).__name__}: {exc}",
                hint="reinstall or uninstall the package that provides it",
            ) from None
        if not isinstance(declared, Connector):
            raise ConfigError(
                f"{origin} of group {ENTRY_POINT_GROUP} is a {type(declared).__name__}, not a "
                "dativo.sdk_connectors.Connector"
            )
        if declared.name in found:
            raise ConfigError(
                f"connector '{declared.name}' is registered twice: {origins[declared.name]} and {origin}",
                hint="uninstall one of the two packages",
            )
        found[declared.name] = declared
        origins[declared.name] = origin
    return dict(sorted(found.items()))


def did_you_mean(value: str, known: list[str]) -> str:
    """`` (did you mean 'x'? known: a, b)`` — the closest known name first, then all of them."""
    close = difflib.get_close_matches(value, known, n=1, cutoff=0.5)
    return f" ({f'did you mean {close[0]!r}? ' if close else ''}known: {', '.join(known)})"


def known(role: Role) -> list[str]:
    """Names of the installed connectors usable as ``role``."""
    return [name for name, c in connectors().items() if (c.is_source if role == "source" else c.is_target)]


def connector_keys(role: Role) -> list[str]:
    """Every key some installed ``role`` connector's model declares (for a section naming no connector)."""
    keys: dict[str, None] = {}
    for name in known(role):
        keys.update(dict.fromkeys(connectors()[name].config.model_fields))
    return list(keys)


def connector(name: str, role: Role) -> Connector:
    """The connector ``name`` for ``role``; raises ValueError ``unknown source connector 'x' (did you mean ...)``."""
    found = connectors().get(name)
    if found is None or not (found.is_source if role == "source" else found.is_target):
        names = known(role)
        raise ValueError(f"unknown {role} connector '{name}'{did_you_mean(name, names)}")
    return found
