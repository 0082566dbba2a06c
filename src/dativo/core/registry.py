"""Find reader and writer classes: by entry-point name, import path or file path.

Built-in plugins are registered through the same ``dativo.readers`` /
``dativo.writers`` entry points as third-party ones; nothing here knows them.
Other plugin groups (KMS clients, ``dativo.kms``) are found the same way through
:func:`resolve_class`. Entry points are looked up in ``core/entrypoints.py``, as runtimes'
and executors' are: a name nothing registers fails the same way for every kind.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import threading
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dativo.core.entrypoints import entries, load, unknown_name
from dativo.errors import PluginError
from dativo.sdk import SDK_API_VERSION, DataReader, DataWriter

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

    from dativo.config.models import PluginSpec

__all__ = [
    "PluginKind",
    "PluginPlan",
    "PluginRef",
    "check_api_version",
    "list_plugins",
    "resolve_class",
    "resolve_plugin",
    "supported_sdk_range",
]

PluginKind = Literal["reader", "writer"]
_GROUPS: dict[PluginKind, str] = {"reader": "dativo.readers", "writer": "dativo.writers"}
_BASES: dict[PluginKind, type] = {"reader": DataReader, "writer": DataWriter}


@dataclass(frozen=True)
class PluginRef:
    """A resolved plugin class and where it came from."""

    kind: PluginKind
    name: str
    cls: type
    origin: str

    @property
    def api_version(self) -> str:
        """The SDK version the plugin declares."""
        return str(getattr(self.cls, "api_version", "?"))


@dataclass(frozen=True)
class PluginPlan:
    """One side of the run: the plugin, the runtime that hosts it, and its ``initialize`` config."""

    ref: PluginRef
    runtime: str
    config: dict[str, Any]
    #: The job's ``reader:`` / ``writer:`` block (None when the connector's default is used);
    #: out-of-process runtimes read their command, endpoint, sandbox and timeouts from it.
    spec: PluginSpec | None = None


def resolve_plugin(kind: PluginKind, implementation: str, base_dir: Path) -> PluginRef:
    """Return the plugin class that ``implementation`` names.

    ``implementation`` is an entry-point name (``postgres-adbc``), a dotted path
    (``pkg.mod.Class`` / ``pkg.mod:Class``) or a file (``plugins/x.py:Class``,
    relative to ``base_dir``). Raises PluginError naming the plugin and the cause
    when it cannot be found or imported, is not a DataReader/DataWriter, or was
    written for an SDK version this engine does not support.
    """
    spec = implementation.strip()
    cls, origin = _find(kind, spec, base_dir, _GROUPS[kind])
    _check_class(kind, spec, cls)
    check_api_version(kind, spec, cls)
    return PluginRef(kind=kind, name=spec, cls=cls, origin=origin)


def resolve_class(group: str, what: str, spec: str, base_dir: Path) -> tuple[type, str]:
    """The class ``spec`` names in another plugin group (KMS clients: ``dativo.kms``), and where it came from.

    ``spec`` is resolved exactly like a reader's implementation: a name registered in
    the entry-point ``group``, a dotted path or a file relative to ``base_dir``. ``what``
    names the kind in messages (``"KMS client"``). The caller checks the class's base.
    Raises PluginError naming ``spec``, the cause and the installed names.
    """
    return _find(what, spec.strip(), base_dir, group)


def _find(what: str, spec: str, base_dir: Path, group: str) -> tuple[type, str]:
    entry = entries(group).get(spec)
    if entry is not None:
        return _as_class(what, entry.name, load(what, entry)), _origin(entry)
    if ".py:" in spec or spec.endswith(".py"):
        return _load_from_file(what, spec, base_dir)
    if ":" in spec or "." in spec:
        return _load_from_module(what, spec)
    raise PluginError(
        unknown_name(what, spec, group) + f"; use an import path like 'my_pkg.module.Class' or a file like "
        f"'plugins/my_{what.lower().replace(' ', '_')}.py:Class'"
    )


def supported_sdk_range(declared: str) -> SpecifierSet:
    """The SDK versions ``declared`` (a plugin's ``api_version``) accepts.

    A range (``">=1.0,<2"``, PEP 440 specifiers) is taken as written; a plain
    version (``"1.0"``, ``"1.1.0"``, also ``"^1.1"``) means that version up to
    the next MAJOR (``">=1.0,<2"``), the semver caret rule. Raises
    InvalidSpecifier/InvalidVersion when ``declared`` is neither.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    text = declared.strip()
    if text.startswith("^"):
        text = text[1:]
    if text and text[0].isdigit():
        version = Version(text)
        upper = f"{version.major + 1}" if version.major > 0 else f"0.{version.minor + 1}"
        return SpecifierSet(f">={version},<{upper}")
    return SpecifierSet(text)


def check_api_version(kind: PluginKind, name: str, cls: type) -> None:
    """Raise PluginError unless ``cls.api_version`` accepts this SDK's version (:data:`SDK_API_VERSION`).

    The message states both: the range the plugin declares and the SDK version this dativo provides.
    """
    declared = str(getattr(cls, "api_version", ""))
    if _plain_version_accepts(declared):
        return
    from packaging.specifiers import InvalidSpecifier
    from packaging.version import InvalidVersion

    try:
        accepted = supported_sdk_range(declared)
        if not str(accepted):
            raise InvalidSpecifier(declared)
    except (InvalidSpecifier, InvalidVersion):
        raise PluginError(
            f"{kind} '{name}' declares api_version '{declared}', which is neither a version ('1.1') nor a range "
            f"('>=1.0,<2'); this dativo provides plugin SDK {SDK_API_VERSION}"
        ) from None
    if not accepted.contains(SDK_API_VERSION, prereleases=True):
        raise PluginError(
            f"{kind} '{name}' supports plugin SDK {_show(accepted)} (api_version '{declared}'), "
            f"but this dativo provides SDK {SDK_API_VERSION}; install a dativo whose SDK is in that range "
            f"or a release of the plugin that supports SDK {SDK_API_VERSION}"
        )


#: A plain release (``1.5.0``, ``^1.1``): digits and dots, nothing PEP 440 would treat specially.
_PLAIN_RELEASE = re.compile(r"\^?([0-9]+(?:\.[0-9]+)*)")


def _release(text: str) -> tuple[int, ...]:
    """A release's numbers without trailing zeros: PEP 440 compares ``1.5`` and ``1.5.0`` as equal."""
    numbers = [int(part) for part in text.split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def _plain_version_accepts(declared: str) -> bool:
    """True when ``declared`` is a plain version whose range (:func:`supported_sdk_range`) holds this SDK.

    Decided without importing packaging (~5 ms of every run's start-up, issue 15), with the same
    result: ``>=V,<next major`` (``<0.(minor+1)`` below 1.0) compared as PEP 440 compares plain
    releases. False means "ask packaging": a range, anything else, or a version that is not accepted
    (whose message packaging's range states).
    """
    found = _PLAIN_RELEASE.fullmatch(declared.strip())
    sdk = _PLAIN_RELEASE.fullmatch(SDK_API_VERSION)
    if found is None or sdk is None:
        return False
    numbers = [int(part) for part in found.group(1).split(".")]
    major, minor = numbers[0], numbers[1] if len(numbers) > 1 else 0
    upper = (major + 1,) if major > 0 else (0, minor + 1)
    return _release(found.group(1)) <= _release(sdk.group(1)) < upper


def _show(accepted: SpecifierSet) -> str:
    """``>=1.0,<2`` rather than packaging's sorted ``<2,>=1.0``."""
    return ",".join(sorted((str(spec) for spec in accepted), key=lambda spec: (not spec.startswith(">"), spec)))


def list_plugins() -> list[tuple[PluginKind, str, str, str, str | None]]:
    """Every installed reader and writer: ``(kind, name, origin, api_version, problem or None)``."""
    rows: list[tuple[PluginKind, str, str, str, str | None]] = []
    for kind in ("reader", "writer"):
        for name, entry in sorted(entries(_GROUPS[kind]).items()):
            origin = _distribution(entry)
            try:
                ref = resolve_plugin(kind, name, Path.cwd())
                rows.append((kind, name, origin, ref.api_version, None))
            except PluginError as exc:
                rows.append((kind, name, origin, "?", str(exc)))
    return rows


def _distribution(entry: EntryPoint) -> str:
    dist = entry.dist
    return f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"


def _origin(entry: EntryPoint) -> str:
    return f"entry point {entry.group}:{entry.name} ({_distribution(entry)})"


def _load_from_module(kind: str, spec: str) -> tuple[type, str]:
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise PluginError(f"{kind} '{spec}': expected 'package.module.Class' or 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise PluginError(
                f"{kind} '{spec}': module '{module_name}' not found "
                f"(is its package installed in this Python environment, or is the path misspelled?)"
            ) from None
        raise PluginError(
            f"{kind} '{spec}': importing module '{module_name}' failed: {exc} (a dependency of the plugin is missing)"
        ) from exc
    except Exception as exc:
        raise PluginError(
            f"{kind} '{spec}': importing module '{module_name}' failed: {type(exc).__name__}: {exc}"
        ) from exc
    return _attribute(kind, spec, module, attr), f"module {module_name}"


def _load_from_file(kind: str, spec: str, base_dir: Path) -> tuple[type, str]:
    file_part, sep, attr = spec.rpartition(":") if ".py:" in spec else (spec, "", "")
    if not sep or not attr:
        raise PluginError(f"{kind} '{spec}': name the class after the file, as 'path/to/file.py:ClassName'")
    path = Path(file_part).expanduser()
    if not path.is_absolute():
        path = (base_dir / path).resolve()
    if not path.is_file():
        raise PluginError(f"{kind} '{spec}': file {path} does not exist")
    # One module per file path, so two jobs naming the same file share the class.
    module_name = "dativo_plugin_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    # Streams of one job load plugins on several threads: the lock keeps a second thread from
    # taking the module out of sys.modules while the first is still executing it.
    with _FILE_IMPORT_LOCK:
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise PluginError(f"{kind} '{spec}': {path} is not a Python file that can be imported")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[module_name]
                raise PluginError(f"{kind} '{spec}': importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return _attribute(kind, spec, module, attr), f"file {path}"


_FILE_IMPORT_LOCK = threading.RLock()


def _attribute(kind: str, spec: str, module: object, attr: str) -> type:
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise PluginError(
            f"{kind} '{spec}': module {getattr(module, '__name__', module)} has no attribute '{attr}'"
        ) from None
    return _as_class(kind, spec, value)


def _as_class(kind: str, spec: str, value: object) -> type:
    if not isinstance(value, type):
        raise PluginError(f"{kind} '{spec}' is a {type(value).__name__}, not a class")
    return value


def _check_class(kind: PluginKind, spec: str, cls: type) -> None:
    base = _BASES[kind]
    if not issubclass(cls, base):
        raise PluginError(
            f"{kind} '{spec}': class {cls.__qualname__} does not subclass dativo.{base.__name__} "
            f"(derive it from 'from dativo import {base.__name__}')"
        )
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    if abstract:
        raise PluginError(f"{kind} '{spec}': class {cls.__qualname__} does not implement {', '.join(abstract)}")
    missing = [(module, how) for module, how in getattr(cls, "requires", {}).items() if not _importable(module)]
    if missing:
        modules = " and ".join(f"'{module}'" for module, _ in missing)
        installs = "; ".join(dict.fromkeys(how for _, how in missing))
        noun = "module" if len(missing) == 1 else "modules"
        raise PluginError(f"{kind} '{spec}' needs the Python {noun} {modules}, not installed here: {installs}")


def _importable(module: str) -> bool:
    """Whether ``module`` (top-level name) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module.partition(".")[0]) is not None
    except (ImportError, ValueError):
        return False
