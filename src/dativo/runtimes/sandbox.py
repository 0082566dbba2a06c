"""How a process plugin is started: executable pinning, a clean environment, limits, bubblewrap.

:func:`prepare_launch` turns a job's ``command`` / ``sha256`` / ``env`` /
``sandbox`` into the argv of the launcher (``_launch.py``), the environment to
start it with and the resources to release afterwards. Everything the machine
cannot give is either refused (``require_isolation: true``, the default) or
logged as a warning.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dativo.config.models import PluginSpec, SandboxSpec
from dativo.errors import PluginError

__all__ = ["CLEAN_PATH", "Launch", "bwrap_usable", "file_sha256", "prepare_launch"]

log = logging.getLogger("dativo.runtimes.sandbox")

#: The PATH a sandboxed plugin gets unless the job's ``env`` sets one.
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LAUNCHER = Path(__file__).with_name("_launch.py")
_PIDS_CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))


@dataclass
class Launch:
    """A ready-to-start plugin process: ``argv`` (the launcher), ``env``, and what to clean up afterwards."""

    argv: list[str]
    env: dict[str, str]
    executable: Path
    isolated: bool
    limits: dict[str, int] = field(default_factory=dict)
    cgroup: Path | None = None
    max_processes: int | None = None
    network: bool = True

    def release(self) -> None:
        """Remove the pids cgroup (once its processes are gone); never raises."""
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()
            self.cgroup = None


def file_sha256(path: Path) -> str:
    """``sha256:<hex>`` of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


@functools.cache
def bwrap_usable() -> str | None:
    """The path of a working ``bwrap`` (bubblewrap), or None when it is missing or cannot create namespaces."""
    path = shutil.which("bwrap")
    if path is None:
        return None
    try:
        probe = subprocess.run(
            [path, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "--dev", "/dev", "--proc", "/proc", "true"],
            capture_output=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if probe.returncode != 0:
        log.warning("bwrap is installed but cannot create a sandbox here: %s", probe.stderr.decode(errors="replace"))
        return None
    return path


def _resolve_executable(label: str, command: list[str], base_dir: Path) -> Path:
    first = command[0]
    if "/" in first:
        path = Path(first).expanduser()
        if not path.is_absolute():
            path = base_dir / path
    else:
        found = shutil.which(first)
        if found is None:
            raise PluginError(f"{label}: executable '{first}' is not on PATH", hint="give its path in 'command'")
        path = Path(found)
    path = path.resolve()
    if not path.is_file():
        raise PluginError(f"{label}: executable {path} does not exist", hint="check 'command' (relative to the job)")
    if not os.access(path, os.X_OK):
        raise PluginError(f"{label}: {path} is not executable", hint=f"chmod +x {path}")
    return path


def _pids_cgroup(limit: int) -> Path | None:
    """A fresh pids cgroup limited to ``limit`` tasks, or None when this machine does not let us create one."""
    for root in _PIDS_CGROUP_ROOTS:
        if not (root / "cgroup.procs").exists():
            continue
        if root.name != "pids" and "pids" not in _read(root / "cgroup.subtree_control"):
            continue
        group = root / f"dativo-{uuid.uuid4().hex[:12]}"
        try:
            group.mkdir()
            (group / "pids.max").write_text(str(limit))
            return group
        except OSError:
            with contextlib.suppress(OSError):
                group.rmdir()
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _hidden_by_private_tmp(base_dir: Path, executable: Path, arguments: list[str]) -> list[Path]:
    """Folders under /tmp the plugin needs to see: the job's, the executable's, those of path arguments
    (a script), and Python's own import locations (dativo may be installed from a checkout under /tmp)."""
    wanted = {base_dir, executable.parent}
    for argument in arguments:
        candidate = Path(argument)
        candidate = candidate if candidate.is_absolute() else base_dir / candidate
        if candidate.exists():
            wanted.add(candidate.resolve().parent)
    wanted.update(Path(entry).resolve() for entry in sys.path if entry and Path(entry).is_dir())
    spec = importlib.util.find_spec("dativo")
    for location in (spec.submodule_search_locations or []) if spec else []:
        wanted.add(Path(location).resolve().parent)
    return sorted(path for path in wanted if path.is_relative_to("/tmp") and path != Path("/tmp"))


def _bwrap_args(
    bwrap: str, sandbox: SandboxSpec, base_dir: Path, executable: Path, arguments: list[str], label: str
) -> list[str]:
    args = [
        bwrap,
        "--die-with-parent",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
    ]
    if not sandbox.network:
        args.append("--unshare-net")
    # The private /tmp hides what lives there: show what the plugin needs from it, read-only.
    for shown in _hidden_by_private_tmp(base_dir, executable, arguments):
        args += ["--ro-bind", str(shown), str(shown)]
    for raw in sandbox.writable_paths:
        path = Path(raw).expanduser()
        path = (path if path.is_absolute() else base_dir / path).resolve()
        if not path.exists():
            raise PluginError(f"{label}: sandbox.writable_paths names {path}, which does not exist")
        args += ["--bind", str(path), str(path)]
    args += ["--chdir", str(base_dir)]
    return [*args, "--"]


def prepare_launch(label: str, spec: PluginSpec, base_dir: Path, parent_pid: int | None = None) -> Launch:
    """Check the executable and build the launcher command for a ``type: process`` plugin.

    Raises PluginError when the executable is missing, its ``sha256`` differs
    from the job's pin (checked on every start), or the sandbox asks for
    isolation this machine cannot give while ``require_isolation`` is true.
    """
    assert spec.command is not None
    executable = _resolve_executable(label, spec.command, base_dir)
    if spec.sha256 is not None:
        actual = file_sha256(executable)
        if actual != spec.sha256:
            raise PluginError(
                f"{label}: refusing to start {executable}: its checksum is {actual}, the job pins {spec.sha256}",
                hint="the executable changed since the job was written; verify it and update 'sha256'",
            )
    sandbox = spec.sandbox
    argv = [str(executable), *spec.command[1:]]
    limits: dict[str, int] = {}
    cgroup: Path | None = None
    isolated = False
    if sandbox.enabled:
        env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "TMPDIR": "/tmp", **spec.env}
        if sandbox.memory_mb is not None:
            limits["AS"] = sandbox.memory_mb * 1024 * 1024
        if sandbox.cpu_seconds is not None:
            limits["CPU"] = sandbox.cpu_seconds
        if sandbox.open_files is not None:
            limits["NOFILE"] = sandbox.open_files
        missing: list[str] = []
        if sandbox.max_processes is not None:
            if os.geteuid() == 0:  # RLIMIT_NPROC does not bind root: use a pids cgroup
                cgroup = _pids_cgroup(sandbox.max_processes)
                if cgroup is None:
                    missing.append("a process limit (running as root and no writable pids cgroup)")
            else:
                limits["NPROC"] = sandbox.max_processes
        bwrap = bwrap_usable()
        if bwrap is None:
            missing.append(
                "a read-only root, a private /tmp"
                + (" and no network" if not sandbox.network else "")
                + " (bubblewrap 'bwrap' is not installed or cannot create namespaces here)"
            )
        else:
            argv = [*_bwrap_args(bwrap, sandbox, base_dir, executable, argv[1:], label), *argv]
            isolated = True
        if missing:
            what = "; ".join(missing)
            if sandbox.require_isolation:
                if cgroup is not None:
                    cgroup.rmdir()
                raise PluginError(
                    f"{label}: the sandbox cannot give {what}",
                    hint="install the Debian package 'bubblewrap' (apt-get install bubblewrap), or set "
                    "sandbox.require_isolation: false to run the plugin without that isolation",
                )
            log.warning("%s runs WITHOUT %s (sandbox.require_isolation is false)", label, what)
    else:
        env = {**os.environ, **spec.env}
    launch_spec: dict[str, Any] = {
        "argv": argv,
        "rlimits": limits,
        "parent_pid": parent_pid if parent_pid is not None else os.getpid(),
        "cgroup": str(cgroup) if cgroup else None,
        "cwd": str(base_dir),
    }
    import json

    launcher = [sys.executable, "-I", "-S", str(_LAUNCHER), json.dumps(launch_spec)]
    return Launch(
        argv=launcher,
        env=env,
        executable=executable,
        isolated=isolated,
        limits=limits,
        cgroup=cgroup,
        max_processes=sandbox.max_processes if sandbox.enabled and (cgroup or "NPROC" in limits) else None,
        network=not (isolated and not sandbox.network),
    )
