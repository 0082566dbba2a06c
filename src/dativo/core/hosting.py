"""Runtimes: what hosts a planned plugin and hands the engine a DataReader / DataWriter.

A runtime is anything with ``host_reader(plan)`` and ``host_writer(plan)``
(:class:`Runtime`), registered under the ``dativo.runtimes`` entry-point group by
the name a job's ``type:`` uses. dativo's own -- ``custom`` (in process),
``process`` and ``flight`` -- are registered there exactly like a third-party one::

    [project.entry-points."dativo.runtimes"]
    my-runtime = "my_pkg.runtime"            # a module with host_reader / host_writer
    other = "my_pkg.other:runtime"           # or an object: ClassRuntime(MyReader, MyWriter),
    lazy-one = "my_pkg:lazy_runtime"         # LazyRuntime("my_pkg.heavy:runtime"), ...

Only the runtime a plan names is loaded; :class:`LazyRuntime` defers even that
import to the first plugin it hosts (Flight's gRPC is imported only by a job that
uses it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol, TypeGuard, TypeVar, runtime_checkable

from dativo.core.entrypoints import entry_point_names, load_entry_point
from dativo.core.registry import PluginPlan
from dativo.errors import PluginError
from dativo.sdk import DataReader, DataWriter

__all__ = [
    "GROUP",
    "ClassRuntime",
    "LazyRuntime",
    "Runtime",
    "find_runtime",
    "host_reader",
    "host_writer",
    "runtime_names",
]

#: The entry-point group runtimes register under.
GROUP = "dativo.runtimes"


@runtime_checkable
class Runtime(Protocol):
    """Hosts a planned plugin: start it, ``initialize`` it with ``plan.config``, return the SDK interface.

    Both methods raise PluginError when the plugin cannot be started, or the plugin's
    own dativo error (a wrong password, an unreachable endpoint) unchanged.
    """

    def host_reader(self, plan: PluginPlan) -> DataReader:
        """Start and initialize the planned reader."""
        ...

    def host_writer(self, plan: PluginPlan) -> DataWriter:
        """Start and initialize the planned writer."""
        ...


P = TypeVar("P", DataReader, DataWriter)


class ClassRuntime:
    """A runtime whose reader and writer are classes built from the plan, then initialized with ``plan.config``.

    If ``initialize`` raises, the plugin is closed and the error propagates unchanged.
    """

    def __init__(self, reader: Callable[[PluginPlan], DataReader], writer: Callable[[PluginPlan], DataWriter]) -> None:
        self.reader = reader
        self.writer = writer

    @staticmethod
    def _start(plugin: P, plan: PluginPlan) -> P:
        try:
            plugin.initialize(plan.config)
        except BaseException:
            plugin.close()
            raise
        return plugin

    def host_reader(self, plan: PluginPlan) -> DataReader:
        """Build the reader for ``plan`` and initialize it."""
        return self._start(self.reader(plan), plan)

    def host_writer(self, plan: PluginPlan) -> DataWriter:
        """Build the writer for ``plan`` and initialize it."""
        return self._start(self.writer(plan), plan)


class LazyRuntime:
    """A runtime imported when it first hosts a plugin, not when its entry point loads.

    ``target`` is ``"module"`` (a module defining ``host_reader`` and ``host_writer``) or
    ``"module:attribute"`` (a :class:`Runtime` object in it); a failure to import it, or a
    target that is no runtime, is a PluginError naming it.
    """

    def __init__(self, target: str) -> None:
        self.target = target

    def _target(self) -> Runtime:
        module, _, attribute = self.target.partition(":")
        try:
            loaded = importlib.import_module(module)
        except ImportError as exc:
            raise PluginError(f"runtime '{self.target}' failed to import: {exc}") from exc
        runtime = getattr(loaded, attribute, None) if attribute else loaded
        if not isinstance(runtime, Runtime):
            raise PluginError(f"runtime '{self.target}' does not define host_reader and host_writer")
        return runtime

    def host_reader(self, plan: PluginPlan) -> DataReader:
        """Import the module (once) and host the reader with it."""
        return self._target().host_reader(plan)

    def host_writer(self, plan: PluginPlan) -> DataWriter:
        """Import the module (once) and host the writer with it."""
        return self._target().host_writer(plan)

    def __repr__(self) -> str:
        return f"LazyRuntime({self.target!r})"


def runtime_names() -> list[str]:
    """The names of every registered runtime (what a job's ``type:`` may say), sorted."""
    return entry_point_names(GROUP)


def find_runtime(name: str, who: str = "plugin") -> Runtime:
    """Load the runtime registered as ``name`` (:func:`dativo.core.entrypoints.load_entry_point`).

    Raises PluginError, naming ``who`` (``"reader 'x'"``), the group and the registered
    runtimes, when none has that name, and naming the entry point when it fails to
    import or is not a :class:`Runtime`.
    """
    if not runtime_names():  # not even dativo's own: its installed metadata predates the entry points
        raise PluginError(
            f"{who}: no runtime is registered under the '{GROUP}' entry points, not even dativo's own",
            hint="reinstall dativo ('pip install -e .' in a checkout) so its entry points are current",
        )
    how = "a runtime is installed by a package that registers it there"
    return load_entry_point(GROUP, name, "runtime", _is_runtime, "host_reader and host_writer", who=who, how=how)


def _is_runtime(value: object) -> TypeGuard[Runtime]:
    return isinstance(value, Runtime)


def host_reader(plan: PluginPlan) -> DataReader:
    """Start the planned reader in the runtime its plan names and initialize it.

    Raises PluginError (unknown runtime, a plugin that cannot start) or the reader's own error.
    """
    return find_runtime(plan.runtime, f"reader '{plan.ref.name}'").host_reader(plan)


def host_writer(plan: PluginPlan) -> DataWriter:
    """Start the planned writer in the runtime its plan names and initialize it.

    Raises PluginError (unknown runtime, a plugin that cannot start) or the writer's own error.
    """
    return find_runtime(plan.runtime, f"writer '{plan.ref.name}'").host_writer(plan)
