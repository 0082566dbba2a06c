"""How a process plugin is started: pinning, a clean environment, limits, a least-privilege bubblewrap sandbox.

:func:`prepare_launch` turns a job's ``command`` / ``sha256`` / ``env`` /
``sandbox`` into the argv of the launcher (``_launch.py``), the environment to
start it with and the resources to release afterwards. With bubblewrap the
plugin runs in a new user namespace without capabilities, behind a syscall
filter (:mod:`._seccomp`), in a minimal read-only root (:mod:`._root`). Without
it the run is refused, or (``require_isolation: false``) the fallback keeps the
clean environment, the limits and an unprivileged uid and warns what is lost.
Pinned files run from a verified private copy. See docs/process-protocol.md §7.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dativo.config.models import PluginSpec, SandboxSpec
from dativo.errors import PluginError
from dativo.runtimes._root import plugin_paths, system_args
from dativo.runtimes._seccomp import SECCOMP_FD, syscall_filter

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
    private: Path | None = None

    def release(self) -> None:
        """Remove the pids cgroup (once its processes are gone) and the pinned copies; never raises."""
        _cleanup(self.cgroup, self.private)
        self.cgroup = None
        self.private = None


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
            [
                *(path, "--unshare-user", "--cap-drop", "ALL", "--ro-bind", "/", "/", "--unshare-net"),
                *("--unshare-pid", "--dev", "/dev", "--proc", "/proc", "true"),
            ],
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
    """The absolute path of ``command[0]``, symlinks NOT resolved: ``venv/bin/python`` stays the venv's
    interpreter and a multi-call binary keeps the name it is called by. A bare name is looked up on
    dativo's PATH, then next to dativo's own interpreter (its virtualenv's ``bin``)."""
    first = command[0]
    if "/" in first:
        path = Path(first).expanduser()
        if not path.is_absolute():
            path = base_dir / path
    else:
        found = shutil.which(first) or shutil.which(first, path=str(Path(sys.executable).parent))
        if found is None:
            raise PluginError(f"{label}: executable '{first}' is not on PATH", hint="give its path in 'command'")
        path = Path(found)
    path = Path(os.path.abspath(path))
    if not path.is_file():
        raise PluginError(f"{label}: executable {path} does not exist", hint="check 'command' (relative to the job)")
    if not os.access(path, os.X_OK):
        raise PluginError(f"{label}: {path} is not executable", hint=f"chmod +x {path}")
    return path


@dataclass
class _Pinned:
    """A pinned command item: the file it names (symlinks resolved) and the verified private copy to run."""

    index: int
    real: Path
    copy: Path


def _pin_files(label: str, spec: PluginSpec, executable: Path, base_dir: Path, private: Path) -> list[_Pinned]:
    """Check every pin and copy what was checked into ``private``: the copy is what runs.

    The file is read once; the bytes hashed are the bytes copied, so swapping the file after the
    check changes nothing. Raises PluginError on a mismatch or an unreadable file.
    """
    assert spec.command is not None
    raw = spec.sha256
    pins = {spec.command[0]: raw} if isinstance(raw, str) else dict(raw or {})
    pinned: list[_Pinned] = []
    for index, item in enumerate(spec.command):
        expected = pins.pop(item, None)
        if expected is None:
            continue
        path = executable if index == 0 else Path(os.path.abspath(base_dir / Path(item).expanduser()))
        real = path.resolve()
        try:
            with open(real, "rb") as fh:
                content = fh.read()
        except OSError as exc:
            raise PluginError(f"{label}: cannot read pinned file {path}: {exc.strerror}") from None
        actual = "sha256:" + hashlib.sha256(content).hexdigest()
        if actual != expected:
            raise PluginError(
                f"{label}: refusing to start {path}: its checksum is {actual}, the job pins {expected}",
                hint="the file changed since the job was written; verify it and update 'sha256'",
            )
        copy = private / f"{index}-{real.name}"
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o500)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        copy.chmod(0o555)
        pinned.append(_Pinned(index, real, copy))
    return pinned


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


def _job_path(label: str, key: str, raw: str, base_dir: Path) -> Path:
    path = Path(raw).expanduser()
    path = Path(os.path.abspath(path if path.is_absolute() else base_dir / path))
    if not path.exists():
        raise PluginError(f"{label}: sandbox.{key} names {path}, which does not exist", hint=f"create it or fix {key}")
    return path


def _bwrap_args(
    bwrap: str,
    sandbox: SandboxSpec,
    base_dir: Path,
    executable: Path,
    arguments: list[str],
    pinned: list[_Pinned],
    label: str,
) -> list[str]:
    """bubblewrap with least privilege: a new user namespace without capabilities, new PID/IPC/UTS
    (and, unless ``network``, network) namespaces, a minimal read-only root, private /dev, /proc, /tmp."""
    args = [
        bwrap,
        "--die-with-parent",
        "--unshare-user",
        "--disable-userns",
        "--cap-drop",
        "ALL",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        *(["--seccomp", SECCOMP_FD] if syscall_filter() is not None else []),
        *system_args(),
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
    ]
    if not sandbox.network:
        args.append("--unshare-net")
    # The job's folder is the plugin's working directory: an empty read-only folder, in which only
    # what the plugin needs (its files, read_paths, writable_paths) appears -- never secrets/.
    args += ["--tmpfs", str(base_dir)]
    for shown in plugin_paths(executable, arguments, base_dir):
        args += ["--ro-bind", str(shown), str(shown)]
    for raw in sandbox.read_paths:
        shown = _job_path(label, "read_paths", raw, base_dir)
        args += ["--ro-bind", str(shown), str(shown)]
    writable = [_job_path(label, "writable_paths", raw, base_dir) for raw in sandbox.writable_paths]
    for path in writable:
        args += ["--bind", str(path), str(path)]
    for pin in pinned:  # the verified copy replaces the file, at the file's own path
        args += ["--ro-bind", str(pin.copy), str(pin.real)]
    if not any(base_dir.is_relative_to(path) for path in writable):
        args += ["--remount-ro", str(base_dir)]
    args += ["--chdir", str(base_dir), "--remount-ro", "/"]
    return [*args, "--"]


def _unprivileged_ids() -> tuple[int, int]:
    """The uid/gid the fallback runs a plugin as when dativo is root: ``nobody``, else 65534."""
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def prepare_launch(label: str, spec: PluginSpec, base_dir: Path, parent_pid: int | None = None) -> Launch:
    """Check the executable (and its pins) and build the launcher command for a ``type: process`` plugin.

    Raises PluginError when the executable is missing, a pinned file's ``sha256``
    differs from the job's pin (checked on every start; the checked bytes are
    what runs), or bubblewrap is missing while ``require_isolation`` is true.
    Without bubblewrap and with ``require_isolation: false`` the plugin keeps a
    clean environment, its limits, no new privileges and -- when dativo is
    root -- an unprivileged uid; a warning names what is lost.
    """
    assert spec.command is not None
    base_dir = Path(os.path.abspath(base_dir))
    executable = _resolve_executable(label, spec.command, base_dir)
    sandbox = spec.sandbox
    private: Path | None = None
    pinned: list[_Pinned] = []
    if spec.sha256 is not None:
        private = Path(tempfile.mkdtemp(prefix="dativo-pinned-"))
        private.chmod(0o711)  # an unprivileged plugin may run the copy, not list or change it
        try:
            pinned = _pin_files(label, spec, executable, base_dir, private)
        except BaseException:
            shutil.rmtree(private, ignore_errors=True)
            raise
    argv = [str(executable), *spec.command[1:]]
    path = str(executable)
    limits: dict[str, int] = {}
    cgroup: Path | None = None
    isolated = False
    ids: tuple[int, int] | None = None
    if sandbox.enabled:
        env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "TMPDIR": "/tmp", **spec.env}
        if sandbox.memory_mb is not None:
            limits["AS"] = sandbox.memory_mb * 1024 * 1024
        if sandbox.cpu_seconds is not None:
            limits["CPU"] = sandbox.cpu_seconds
        if sandbox.open_files is not None:
            limits["NOFILE"] = sandbox.open_files
        if sandbox.max_processes is not None:
            # RLIMIT_NPROC binds a plugin without capabilities (in bwrap, or as the fallback's
            # unprivileged uid); as root a pids cgroup, where writable, counts the plugin's tree alone.
            limits["NPROC"] = sandbox.max_processes
            if os.geteuid() == 0:
                cgroup = _pids_cgroup(sandbox.max_processes)
        bwrap = bwrap_usable()
        if bwrap is not None:
            argv = [*_bwrap_args(bwrap, sandbox, base_dir, executable, argv[1:], pinned, label), *argv]
            path = bwrap
            isolated = True
            if sandbox.max_processes is not None and os.geteuid() == 0 and cgroup is None:
                # The kernel never applies RLIMIT_NPROC to host uid 0, even without capabilities.
                limits.pop("NPROC", None)
                log.warning(
                    "%s runs without its process limit (sandbox.max_processes): dativo runs as root and no "
                    "pids cgroup is writable here; everything else of the sandbox applies",
                    label,
                )
        else:
            lost = (
                "a minimal root (it sees every file its uid can read), a private /tmp and /dev, its own PID "
                "namespace, dropped capabilities" + (" and network isolation" if not sandbox.network else "")
            )
            if sandbox.require_isolation:
                _cleanup(cgroup, private)
                raise PluginError(
                    f"{label}: the sandbox needs bubblewrap, which is not installed or cannot create namespaces "
                    f"here; without it the plugin would lose {lost}",
                    hint="install the Debian package 'bubblewrap' (apt-get install bubblewrap), or set "
                    "sandbox.require_isolation: false to run it with a clean environment, its limits and "
                    "an unprivileged uid only",
                )
            if os.geteuid() == 0:
                ids = _unprivileged_ids()
            log.warning(
                "%s runs WITHOUT bubblewrap (sandbox.require_isolation is false): it keeps a clean environment, "
                "its limits, no new privileges%s, but loses %s",
                label,
                f" and uid {ids[0]} instead of root" if ids else "",
                lost,
            )
            path = _run_copies(pinned, argv, path)
    else:
        env = {**os.environ, **spec.env}
        path = _run_copies(pinned, argv, path)
    launch_spec: dict[str, Any] = {
        "argv": argv,
        "path": path,
        "rlimits": limits,
        "parent_pid": parent_pid if parent_pid is not None else os.getpid(),
        "cgroup": str(cgroup) if cgroup else None,
        "cwd": str(base_dir),
        "ids": list(ids) if ids else None,
        "no_new_privs": sandbox.enabled and not isolated,
        "seccomp": base64.b64encode(syscall_filter() or b"").decode() if isolated else "",
    }
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
        private=private,
    )


def _run_copies(pinned: list[_Pinned], argv: list[str], path: str) -> str:
    """Without bubblewrap (which binds the copies over the originals): point ``argv`` at the verified
    copies; returns the executable to run. ``argv[0]`` keeps the name the job gave."""
    for pin in pinned:
        if pin.index == 0:
            path = str(pin.copy)
        else:
            argv[pin.index] = str(pin.copy)
    return path


def _cleanup(cgroup: Path | None, private: Path | None) -> None:
    if cgroup is not None:
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    if private is not None:
        shutil.rmtree(private, ignore_errors=True)
