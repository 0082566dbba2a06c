"""Cheaper PyIceberg imports for the Iceberg target (issue 15: the start-up stall).

Every module of this package that imports PyIceberg imports this one first. A local
run starts reading from the source before the writer is hosted; while this thread
imports PyIceberg the pump's bounded queue fills within ~0.1 s and the source's server
then waits for us. Two parts of that import are work a run mostly never uses:

* **Pydantic model classes.** PyIceberg defines ~210 models (table metadata, updates,
  requirements, REST requests, types, expressions); pydantic builds each one's
  validator and serializer when the class is defined, ~40 ms of CPU at import. With
  ``defer_build`` set on PyIceberg's two model bases before the modules that subclass
  them run, a model is built when it is first validated, constructed or serialized
  (``TableMetadataV2`` when a table is loaded, ``Snapshot`` at the commit): a run
  builds ~70 of them. Pydantic documents ``defer_build`` for exactly this; the built
  validator and serializer are the same as an eager build, only built later
  (``tests/test_iceberg_imports.py`` compares both). The setting is made only when no
  subclass exists yet (PyIceberg not imported before dativo); otherwise nothing changes.
* **Modules for features a write never touches**: ``pyiceberg.expressions.parser`` (and
  pyparsing under it: string row filters), ``strictyaml`` (``~/.pyiceberg.yaml``). They
  are replaced by a stand-in that imports the real module on first attribute access,
  under a lock (thread-safe, unlike ``importlib.util.LazyLoader`` on Python 3.11), and
  forwards every attribute to it; the real module is then in ``sys.modules``. A module
  imported already, or one that is not installed, is left alone.

Measured (one core, interleaved runs, medians): ~80 ms less CPU importing PyIceberg;
docs/performance.md, session 7.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

__all__ = ["DEFERRED_MODULES", "LazyModule"]

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


def _defer_model_builds() -> None:
    if "pyiceberg.types" in sys.modules:  # PyIceberg's models are defined already: leave them as they are
        return
    from pyiceberg.typedef import IcebergBaseModel, IcebergRootModel

    # Subclasses defined from now on inherit it (pydantic merges the bases' model_config at class creation).
    IcebergBaseModel.model_config["defer_build"] = True
    IcebergRootModel.model_config["defer_build"] = True


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
