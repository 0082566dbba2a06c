"""The files reader's one place that decides whether a storage error is worth retrying.

Order of evidence (issue 13, item 6):

1. **Exception types.** ``ConnectionError`` / ``TimeoutError`` (and their subclasses,
   which is what local and Python-level network failures raise) are transient.
2. **HTTP status.** pyarrow's S3 file system reports an S3 failure as an ``OSError``
   whose text carries the AWS error name and, for HTTP failures, the status code;
   pyarrow exposes neither as an attribute, so they are read from the text with
   anchored patterns: a 5xx status, 408 or 429 is transient, as are the AWS
   error names that mean "network / throttled / server-side" (``NETWORK_CONNECTION``,
   ``SLOW_DOWN``, ``SERVICE_UNAVAILABLE``, ``INTERNAL_FAILURE``, ``REQUEST_TIMEOUT``,
   ``THROTTLING``, ``REQUEST_TIME_TOO_SKEWED``).
3. **Last resort.** Only when neither names the failure, curl's own connection and
   timeout phrases (``Could not connect``, ``timed out``) mark it transient.

Everything else (a missing bucket, access denied, a garbled file) is terminal.
"""

from __future__ import annotations

import re

from dativo.sdk import redact

__all__ = ["is_transient", "one_line"]

_AWS_ERROR = re.compile(r"AWS Error (?:\[code (\d+)\]: )?([A-Z_]+)")
_HTTP_STATUS = re.compile(r"(?:HTTP status|HTTP response code|response code:?)\s*(\d{3})", re.I)
_TRANSIENT_AWS_ERRORS = frozenset(
    {
        "NETWORK_CONNECTION",
        "SLOW_DOWN",
        "SERVICE_UNAVAILABLE",
        "INTERNAL_FAILURE",
        "REQUEST_TIMEOUT",
        "THROTTLING",
        "REQUEST_TIME_TOO_SKEWED",
    }
)
_TERMINAL_AWS_ERRORS = frozenset({"ACCESS_DENIED", "NO_SUCH_BUCKET", "NO_SUCH_KEY", "RESOURCE_NOT_FOUND"})
_LAST_RESORT = ("Could not connect", "Couldn't connect", "timed out", "Timeout was reached")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line, with secrets masked."""
    return redact(" ".join(str(exc).split()) or type(exc).__name__)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the storage call that raised ``exc`` may succeed (see the module docstring)."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if not isinstance(exc, OSError):
        return False
    text = str(exc)
    status = _HTTP_STATUS.search(text)
    if status is not None:
        code = int(status[1])
        return code >= 500 or code in (408, 429)
    aws = _AWS_ERROR.search(text)
    if aws is not None and aws[2] != "UNKNOWN":
        if aws[2] in _TRANSIENT_AWS_ERRORS:
            return True
        if aws[2] in _TERMINAL_AWS_ERRORS:
            return False
    return any(phrase in text for phrase in _LAST_RESORT)
