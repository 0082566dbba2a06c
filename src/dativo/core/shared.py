"""What the streams of one run share (a connection pool, say): made once, closed when the run ends.

The engine opens a :func:`run_scope` around a run of streams and hands it to every stream's
thread through a context variable; in-process plugins reach it only through a public helper
of their own SDK (``dativo.postgres_sdk.shared_connections``), never through this module.
Outside a scope (a plugin under test, ``dativo serve``) :func:`current_run_resources` is None
and a plugin opens and closes what it uses itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Protocol, TypeVar

__all__ = ["Closable", "RunResources", "current_run_resources", "in_context", "run_scope"]

log = logging.getLogger("dativo.engine")


class Closable(Protocol):
    """Anything with a ``close()`` that releases what it holds."""

    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)

_current: contextvars.ContextVar[RunResources | None] = contextvars.ContextVar("dativo_run_resources", default=None)


class RunResources:
    """Objects shared by the streams of one run, keyed by what they serve; thread-safe.

    ``concurrency`` is how many streams run at once (``engine.max_concurrent_streams``):
    shared pools size themselves by it.
    """

    def __init__(self, concurrency: int = 1) -> None:
        self.concurrency = max(1, int(concurrency))
        self._lock = threading.Lock()
        self._items: dict[Hashable, Closable] = {}
        self.closed = False

    def get(self, key: Hashable, make: Callable[[], C]) -> C | None:
        """The object for ``key``, made by ``make()`` the first time; None once the run has ended.

        ``make`` runs under the lock, so it must be quick and open nothing (a pool is made
        empty). Its exceptions propagate.
        """
        with self._lock:
            if self.closed:
                return None
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = make()
            return item  # type: ignore[return-value]

    def close(self) -> None:
        """Close every object (their errors are logged, not raised) and refuse new ones; idempotent."""
        with self._lock:
            self.closed = True
            items, self._items = list(self._items.values()), {}
        for item in items:
            try:
                item.close()
            except Exception as exc:  # one pool failing to close must not keep the others open
                log.warning("closing a shared resource of the run failed: %s: %s", type(exc).__name__, exc)


def current_run_resources() -> RunResources | None:
    """The resources of the run this thread works for, or None outside a run of streams."""
    return _current.get()


@contextlib.contextmanager
def run_scope(concurrency: int = 1) -> Iterator[RunResources]:
    """Open the run's shared resources for the block (this thread and contexts copied from it); close them after.

    Threads started inside the block see the scope only when they run in a copy of this
    context (``contextvars.copy_context().run``), as the engine's stream threads do.
    """
    resources = RunResources(concurrency)
    token = _current.set(resources)
    try:
        yield resources
    finally:
        _current.reset(token)
        resources.close()


def in_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` bound to a copy of the current context (for a worker thread that must see the run's scope)."""
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.run(fn, *args, **kwargs)
