"""The one exception hierarchy of dativo.

Every error dativo raises on purpose is a :class:`DativoError`. Each carries a
``transient`` flag: transient errors (a dropped connection, a timeout, a catalog
commit conflict) may succeed if retried; terminal ones (bad configuration, bad
credentials, a missing table, a type that cannot be mapped) will not. The CLI
prints ``str(error)`` as one line; messages therefore say *what* went wrong,
*where*, and *what to do*.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DativoError",
    "PluginError",
    "SchemaError",
    "SourceError",
    "TargetError",
    "TypeMappingError",
    "is_transient",
]


class DativoError(Exception):
    """Root of every error dativo raises on purpose.

    ``transient`` says whether retrying the same operation may succeed.
    ``hint`` is an optional sentence telling the user what to do.
    ``config_key`` names the job-file key the problem is about (``"source.table"``), so the
    CLI can point at its ``FILE:LINE``.
    """

    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        transient: bool | None = None,
        config_key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.config_key = config_key
        if transient is not None:
            self.transient = transient

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(DativoError):
    """The job file is malformed, incomplete or refers to something that does not exist."""


class PluginError(DativoError):
    """A reader or writer could not be found, loaded, checked or initialized."""


class SourceError(DativoError):
    """Reading from the source failed (connection, authentication, missing table, query error)."""


class TargetError(DativoError):
    """Writing to or committing into the target failed."""


class SchemaError(DativoError):
    """Data does not match the schema that was declared or that the target holds."""


class TypeMappingError(SchemaError):
    """A source type has no lossless mapping to Arrow or to the target's types."""


def is_transient(exc: BaseException) -> bool:
    """Return True when retrying the operation that raised ``exc`` may succeed."""
    if isinstance(exc, DativoError):
        return exc.transient
    return isinstance(exc, ConnectionError | TimeoutError)
