"""The ``dativo`` command's cyclic garbage collector during start-up (issue 15).

Importing dativo's dependencies creates a few hundred thousand container objects
(functions, classes, dicts), and CPython's cyclic GC traverses the older ones again
at every full collection: 0.18-0.26 s of a run's CPU before this. The ``dativo``
command (``dativo._entry``, never ``import dativo``: an application embedding
dativo keeps its own GC settings) defers collection while it starts; once a run is
set up (plugins hosted, the writer prepared, just before rows move)
:func:`startup_done` moves everything that survived start-up into the permanent
generation (``gc.freeze()``: later collections skip it) and restores the previous
thresholds. Both are stdlib-only and never raise.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["STARTUP_THRESHOLD", "defer_during_startup", "startup_done"]

#: Generation-0 threshold while starting (CPython's default is 700): a young collection every 100,000 net allocations
#: instead of every 700 keeps memory bounded in a command that never reaches :func:`startup_done`.
STARTUP_THRESHOLD = (100_000, 10, 10)

_lock = threading.Lock()
_saved: tuple[int, int, int] | None = None


def defer_during_startup() -> None:
    """Collect rarely until :func:`startup_done` (the ``dativo`` command only); a second call does nothing."""
    global _saved
    with _lock:
        if _saved is None:
            _saved = gc.get_threshold()
            gc.set_threshold(*STARTUP_THRESHOLD)


def startup_done() -> None:
    """Freeze what start-up left and restore the thresholds; does nothing unless :func:`defer_during_startup` ran."""
    global _saved
    with _lock:
        if _saved is None:
            return
        gc.freeze()
        gc.set_threshold(*_saved)
        _saved = None
