"""Structured logging for dativo: text or JSON lines on stderr, secrets always redacted."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from dativo._secrets import redact

__all__ = ["configure_logging"]

# Attributes every LogRecord has; anything else was passed through ``extra=`` and is a field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _Redacting(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: value for key, value in record.__dict__.items() if key not in _STANDARD}
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.as_json:
            entry = {
                "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": message,
                **fields,
            }
            return redact(json.dumps(entry, default=str))
        pairs = "".join(f" {key}={value}" for key, value in fields.items())
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        return redact(f"{stamp} {record.levelname:<7} {record.name}: {message}{pairs}")


def configure_logging(level: str = "warning", fmt: str = "text") -> None:
    """Send dativo's logs (and its plugins') to stderr in ``fmt`` ('text' or 'json') at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Redacting(as_json=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party libraries stay quiet unless asked for debug output.
    for noisy in ("pyiceberg", "botocore", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
