"""Leases that mark a live run's staging folder on an object store, where there are no locks.

On a local disk a live run holds an flock in its staging folder and a SIGKILL releases it
(``StagedFolder.hold``). An object store has neither locks nor processes, so a run there
writes a small lease object, ``<root>/_dativo_leases/<run id>``, and rewrites it every
:data:`LEASE_REFRESH_S` while it lives. A later run takes a lease older than
:data:`LEASE_STALE_S` (by the store's own clock: the object's last-modified time against
the newest lease listed — the sweeping run writes its own first — so a skewed local clock
cannot make a live run look dead) for a run that died, and deletes that run's staging folder and the lease.

A run frozen for longer than :data:`LEASE_STALE_S` (a stopped VM, SIGSTOP) can lose its
staged files this way; its publish then fails and it rolls back: nothing is committed
twice or half.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import pyarrow as pa
from pyarrow import fs as pafs

from dativo.errors import TargetError
from dativo.sdk import redact

__all__ = ["LEASES", "LEASE_REFRESH_S", "LEASE_STALE_S", "Lease", "dead_runs"]

log = logging.getLogger("dativo.targets")

#: The folder (prefix) under a target's root holding one lease object per live run.
LEASES = "_dativo_leases"
#: How often a live run rewrites its lease.
LEASE_REFRESH_S = 300.0
#: How old a lease must be before another run takes its run for dead (12 missed refreshes).
LEASE_STALE_S = 3600.0


class Lease:
    """A live run's lease on an object store: written now, rewritten on a daemon thread until :meth:`release`."""

    def __init__(self, fs: pafs.FileSystem, root: str, run_id: str, display: str, refresh_s: float) -> None:
        self.fs = fs
        self.path = f"{root}/{LEASES}/{run_id}"
        self.display = display
        self.refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> None:
        """Write the lease and start refreshing it; raises TargetError if it cannot be written."""
        try:
            self._write()
        except (OSError, pa.ArrowException) as exc:
            raise TargetError(f"target {self.display}: cannot write its staging lease: {redact(str(exc))}") from None
        self._thread = threading.Thread(target=self._refresh, name="dativo-staging-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop refreshing and delete the lease; never raises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with contextlib.suppress(OSError, pa.ArrowException):
            self.fs.delete_file(self.path)

    def _write(self) -> None:
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(b"dativo staging lease\n")

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self._write()
            except (OSError, pa.ArrowException) as exc:  # the next refresh tries again; the run goes on
                log.warning("target %s: could not refresh its staging lease: %s", self.display, redact(str(exc)))


def dead_runs(fs: pafs.FileSystem, root: str, stale_s: float) -> list[tuple[str, str]]:
    """``(run id, lease path)`` of every lease under ``root`` older than ``stale_s``; never raises.

    Ages are measured against the newest lease listed (the store's clock), not this machine's.
    """
    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{root}/{LEASES}", allow_not_found=True))
    except (OSError, pa.ArrowException):
        return []
    stamped = [(info, info.mtime) for info in infos if info.type == pafs.FileType.File and info.mtime is not None]
    if not stamped:
        return []
    newest = max(mtime.timestamp() for _, mtime in stamped)
    return [(info.base_name, info.path) for info, mtime in stamped if newest - mtime.timestamp() >= stale_s]
