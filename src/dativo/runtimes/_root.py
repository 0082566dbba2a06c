"""The minimal root a sandboxed process plugin sees, as bubblewrap arguments.

Only what a program needs to run is shown, read-only: the system directories
(``/usr``, ``/bin``, ``/sbin``, ``/lib*``), the ``/etc`` entries for name
resolution, users and TLS, the plugin's own files (its executable, the scripts
and files named in its command) and its interpreter environment (a virtualenv
anywhere -- ``pyvenv.cfg`` included --, the base interpreter's prefix, the
directories its ``.pth`` files add, the interpreter of a ``#!`` line). Never
``/root``, ``/home``, ``/run``, ``/var``, ``/sys``, the job folder or its other
files: what else a plugin must read is the job's ``sandbox.read_paths``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ETC_ENTRIES", "SYSTEM_DIRS", "plugin_paths", "system_args"]

#: Shown as they are on the host (a symlink stays a symlink, e.g. /bin -> usr/bin).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: The /etc entries shown: the loader, name resolution (hosts, DNS, users), TLS trust stores, time zone.
ETC_ENTRIES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "services",
    "protocols",
    "passwd",
    "group",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "crypto-policies",
    "localtime",
    "timezone",
)
_SYSTEM = tuple(Path(p) for p in SYSTEM_DIRS)


def system_args(etc: Path = Path("/etc")) -> list[str]:
    """bwrap arguments showing the system directories and the chosen /etc entries, read-only."""
    args: list[str] = []
    for raw in SYSTEM_DIRS:
        path = Path(raw)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), raw]
        elif path.is_dir():
            args += ["--ro-bind", raw, raw]
    for entry in ETC_ENTRIES:
        source = etc / entry
        if source.exists():  # follows a symlink (resolv.conf often points into /run): its content is shown
            args += ["--ro-bind", str(source), f"/etc/{entry}"]
    return args


def _covered(path: Path) -> bool:
    return any(path == root or path.is_relative_to(root) for root in _SYSTEM)


def _hops(path: Path) -> list[Path]:
    """``path`` and every file a chain of symlinks from it passes through (the last one is the real file)."""
    seen = [path]
    current = path
    for _ in range(40):
        if not current.is_symlink():
            break
        target = Path(os.readlink(current))
        current = target if target.is_absolute() else Path(os.path.normpath(current.parent / target))
        seen.append(current)
    seen.append(path.resolve())
    return seen


def _venv_root(executable: Path) -> Path | None:
    for candidate in (executable.parent, executable.parent.parent):
        if (candidate / "pyvenv.cfg").is_file():
            return candidate
    return None


def _venv_parts(root: Path) -> set[Path]:
    """A virtualenv: itself, its base interpreter's prefix, and the directories its .pth files add."""
    parts = {root}
    for line in (root / "pyvenv.cfg").read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            home = Path(value.strip())
            parts.add(home.parent if home.name == "bin" else home)
    for pth in root.glob("lib*/python*/site-packages/*.pth"):
        for line in pth.read_text(errors="replace").splitlines():
            entry = line.strip()
            if entry and not entry.startswith(("#", "import ")) and Path(entry).is_absolute() and Path(entry).is_dir():
                parts.add(Path(entry))
    return parts


def _environment(executable: Path, base_dir: Path) -> set[Path]:
    """What running ``executable`` needs besides the system: its files, venv, prefix, #! interpreter."""
    found: set[Path] = set()
    for hop in _hops(executable):
        found.add(hop)
        venv = _venv_root(hop)
        if venv is not None:
            found |= _venv_parts(venv)
        elif hop.parent.name == "bin" and hop.exists() and not base_dir.is_relative_to(hop.parent.parent):
            found.add(hop.parent.parent)  # an installed tree: /opt/x/bin/x -> /opt/x (never the job's folder)
        elif hop.exists() and not base_dir.is_relative_to(hop.parent):
            found.add(hop.parent)  # the plugin's own folder (its data files), unless it is the job's
    real = executable.resolve()
    try:
        with open(real, "rb") as fh:
            first = fh.readline(512)
    except OSError:
        first = b""
    if first.startswith(b"#!"):
        words = first[2:].decode(errors="replace").split()
        if words:
            interpreter = Path(words[0])
            if interpreter.name == "env" and len(words) > 1:
                named = shutil.which(words[-1], path=os.environ.get("PATH"))
                interpreter = Path(named) if named else interpreter
            if interpreter.is_absolute() and interpreter != executable:
                found |= _environment(interpreter, base_dir)
    return found


def _argument_paths(arguments: Iterable[str], base_dir: Path) -> set[Path]:
    """Files and folders named by the command's arguments (``file.py:Class`` counts as ``file.py``).

    A ``.py`` file brings its folder (sibling modules), unless that folder is the job's folder or
    one above it; the job's folder itself, or a folder above it, is never shown through an argument.
    """
    found: set[Path] = set()
    for argument in arguments:
        for text in {argument, argument.rsplit(":", 1)[0]}:
            if not text or text.startswith("-"):
                continue
            candidate = Path(text).expanduser()
            candidate = Path(os.path.abspath(candidate if candidate.is_absolute() else base_dir / candidate))
            if not candidate.exists() or base_dir == candidate or base_dir.is_relative_to(candidate):
                continue
            found.add(candidate)
            if candidate.suffix == ".py" and not base_dir.is_relative_to(candidate.parent):
                found.add(candidate.parent)
    return found


def plugin_paths(executable: Path, arguments: Iterable[str], base_dir: Path) -> list[Path]:
    """The host paths to show read-only (besides the system): outermost first, none inside another."""
    wanted = _environment(executable, base_dir) | _argument_paths(arguments, base_dir)
    kept = [p for p in wanted if p.exists() and not _covered(p) and p != Path("/")]
    kept = [p for p in kept if not any(other != p and p.is_relative_to(other) for other in kept)]
    return sorted(kept, key=lambda p: (len(p.parts), str(p)))
