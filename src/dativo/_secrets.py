"""Process-wide registry of secret values, and redaction of them from any text.

Configuration loading registers every value that came from a secret file, every
password in a connection string and every value under a secret-looking key.
Logging, error printing and summaries pass their text through :func:`redact`.
"""

from __future__ import annotations

import re
import threading

_lock = threading.Lock()
_secrets: set[str] = set()

# user:password@ in any URL-like connection string.
_URL_PASSWORD = re.compile(r"(?P<prefix>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?P<at>@)")
# password=... in a libpq key/value connection string.
_KV_PASSWORD = re.compile(r"(?P<prefix>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)

SECRET_KEY_PATTERN = re.compile(r"pass(word)?|secret|token|credential|private|api[_-]?key|access[_-]?key", re.I)
MASK = "***"


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that :func:`redact` hides it. Values under 4 characters are ignored."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and every connection-string password masked."""
    text = _URL_PASSWORD.sub(lambda m: m["prefix"] + MASK + m["at"], text)
    text = _KV_PASSWORD.sub(lambda m: m["prefix"] + MASK, text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text
