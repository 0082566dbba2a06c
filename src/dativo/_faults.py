"""Crash points for dativo's own crash-injection tests; inert unless ``DATIVO_CRASH_AT`` is set.

``DATIVO_CRASH_AT=NAME`` or ``NAME:N`` kills the process with SIGKILL the first
(or N-th) time the code passes the point called NAME — the same as ``kill -9``
at that instant, which is what the exactly-once tests need to prove.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["crash_point"]

_target = os.environ.get("DATIVO_CRASH_AT", "")
_name, _, _count = _target.partition(":")
_remaining = int(_count) if _count.isdigit() else 1
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """SIGKILL this process if ``DATIVO_CRASH_AT`` names this point and its count is reached."""
    global _remaining
    if not _target or name != _name:
        return
    with _lock:
        _remaining -= 1
        if _remaining == 0:
            os.kill(os.getpid(), signal.SIGKILL)
