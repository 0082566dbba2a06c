"""Cheaper PyIceberg imports for the Iceberg target (issue 15: the start-up stall).

Every module of this package that imports PyIceberg imports this one first. A local
run starts reading from the source before the writer is hosted; while this thread
imports PyIceberg the pump's bounded queue fills within ~0.1 s and the source's server
then waits for us. Two parts of that import are work a run mostly never uses:

* **Pydantic model classes.** PyIceberg defines ~210 models (table metadata, updates,
  requirements, REST requests, types, expressions); pydantic builds each one's
  validator and serializer when the class is defined. With
  ``defer_build`` set on PyIceberg's two model bases before the modules that subclass
  them run, a model is built when it is first validated, constructed or serialized
  (``TableMetadataV2`` when a table is loaded, ``Snapshot`` at the commit): a run
  builds ~70 of them. Pydantic documents ``defer_build`` for exactly this; the built
  validator and serializer are the same as an eager build, only built later
  (``tests/test_iceberg_imports.py`` compares both). The setting is made only when no
  subclass exists yet (PyIceberg not imported before dativo), and only with a pydantic whose
  model rebuilds are thread-safe (its global rebuild lock, pydantic#13438: two threads first
  using one deferred model could otherwise validate with its parent's validator); otherwise
  nothing changes.
* **Modules for features a write never touches**: ``pyiceberg.expressions.parser`` (and
  pyparsing under it: string row filters), ``strictyaml`` (``~/.pyiceberg.yaml``). They
  are replaced by a stand-in that imports the real module on first attribute access,
  under a lock (thread-safe, unlike ``importlib.util.LazyLoader`` on Python 3.11), and
  forwards every attribute to it; the real module is then in ``sys.modules``. A module
  imported already, or one that is not installed, is left alone.

The models a commit needs (snapshot, its summary and ref, the commit's updates and
requirements) would then be built in the run's tail, where every millisecond is wall
time: :func:`warm_commit_models` builds them on a background thread while the run
streams (the writer starts it once its first row group is encoding, which releases the
GIL, and joins it before committing).

Measured (callgrind; hosting and preparing the writer for a 50-column table): the deferral
-4%, the stand-ins -11%, together 2.37 -> 2.02 G instructions; docs/performance.md, session 7.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
import types
from typing import Any

__all__ = ["COMMIT_MODELS", "DEFERRED_MODULES", "CommitWarmUp", "LazyModule", "warm_commit_models"]

log = logging.getLogger("dativo.targets.iceberg")

#: Modules imported by PyIceberg at import time whose contents a write does not use.
DEFERRED_MODULES = ("pyiceberg.expressions.parser", "strictyaml")


class LazyModule(types.ModuleType):
    """Stands in ``sys.modules`` for a module until its first attribute access, which imports it.

    Every attribute is then read from the real module (which replaces this one in
    ``sys.modules``). An import failure raises the original ImportError at that access.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_lock"] = threading.Lock()
        self.__dict__["_lazy_real"] = None

    def _lazy_load(self) -> types.ModuleType:
        real: types.ModuleType | None = self.__dict__["_lazy_real"]
        if real is not None:
            return real
        with self.__dict__["_lazy_lock"]:
            real = self.__dict__["_lazy_real"]
            if real is None:
                if sys.modules.get(self.__name__) is self:
                    del sys.modules[self.__name__]
                real = importlib.import_module(self.__name__)
                self.__dict__["_lazy_real"] = real
        return real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lazy_load(), name)

    def __dir__(self) -> list[str]:
        return dir(self._lazy_load())


#: PyIceberg models first used by a commit (append, overwrite, merge; a created or an existing table), measured.
COMMIT_MODELS = (
    ("pyiceberg.expressions", "AlwaysFalse"),
    ("pyiceberg.table", "CommitTableResponse"),
    ("pyiceberg.table.metadata", "TableMetadataV2"),
    ("pyiceberg.table.refs", "SnapshotRef"),
    ("pyiceberg.table.snapshots", "MetadataLogEntry"),
    ("pyiceberg.table.snapshots", "Snapshot"),
    ("pyiceberg.table.snapshots", "SnapshotLogEntry"),
    ("pyiceberg.table.snapshots", "Summary"),
    ("pyiceberg.table.update", "AddSnapshotUpdate"),
    ("pyiceberg.table.update", "AssertCreate"),
    ("pyiceberg.table.update", "AssertRefSnapshotId"),
    ("pyiceberg.table.update", "AssertTableUUID"),
    ("pyiceberg.table.update", "SetSnapshotRefUpdate"),
    ("pyiceberg.transforms", "TruncateTransform"),
)


def _build_commit_models() -> None:
    for module, name in COMMIT_MODELS:
        try:
            model = getattr(importlib.import_module(module), name)
            if not model.__pydantic_complete__:
                model.model_rebuild()
        except Exception:  # only a head start: a model not built here is built when the commit first uses it
            log.debug("building PyIceberg model %s.%s ahead of the commit failed", module, name, exc_info=True)


def warm_commit_models() -> threading.Thread | None:
    """Start building :data:`COMMIT_MODELS` on a daemon thread; None when they are built already.

    Join the thread before committing (a model two threads build at once is built twice,
    harmlessly, but the join keeps the commit's CPU to itself). Never raises.
    """
    if not _deferred:
        return None
    thread = threading.Thread(target=_build_commit_models, name="dativo-iceberg-warm", daemon=True)
    thread.start()
    return thread


class CommitWarmUp:
    """A writer's :func:`warm_commit_models`: started once a row group was written, joined at the commit."""

    def __init__(self) -> None:
        self._seen = 0
        self._started = False
        self._thread: threading.Thread | None = None

    def wrote(self, nbytes: int, row_group_bytes: int) -> None:
        """Count a batch about to be written; the one completing the first row group (encoded next) starts it."""
        if self._started:
            return
        self._seen += nbytes
        if self._seen >= row_group_bytes:
            self._started = True
            self._thread = warm_commit_models()

    def join(self) -> None:
        """Wait for the models (long built when a run commits); a no-op when it never started."""
        if self._thread is not None:
            self._thread.join()


#: True when this process defers PyIceberg's model builds (set at import, below).
_deferred = False


def _defer_model_builds() -> None:
    global _deferred
    if "pyiceberg.types" in sys.modules:  # PyIceberg's models are defined already: leave them as they are
        return
    import pydantic.main

    # A deferred model is built by whichever thread first uses it. Pydantic before its global rebuild lock
    # (pydantic#13438) could then validate with the parent's validator in a concurrent thread: defer only with it.
    if getattr(pydantic.main, "_rebuild_lock", None) is None:
        return
    from pyiceberg.typedef import IcebergBaseModel, IcebergRootModel

    # Subclasses defined from now on inherit it (pydantic merges the bases' model_config at class creation).
    IcebergBaseModel.model_config["defer_build"] = True
    IcebergRootModel.model_config["defer_build"] = True
    _deferred = True


def _defer_module(name: str) -> None:
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    if parent:
        importlib.import_module(parent)  # needed anyway; find_spec needs it too
    if importlib.util.find_spec(name) is None:
        return
    stand_in = LazyModule(name)
    sys.modules[name] = stand_in
    if parent:
        setattr(sys.modules[parent], child, stand_in)


_defer_model_builds()
for _name in DEFERRED_MODULES:
    _defer_module(_name)
