#!/usr/bin/env python3
"""A hostile process plugin (standard library only): it tries one attack, then reports and exits 1.

``hostile_plugin.py ATTACK``, the targets as a JSON list in ``$HOSTILE_ARGS``.
It never speaks the protocol: it writes one error record whose message is ``ATTACK: refused (...)`` when the sandbox
held, or ``ATTACK: ESCAPED (...)`` when the attack worked, and exits 1. The
tests read that message from dativo's one-line error.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import socket
import sys
from collections.abc import Callable

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
PTRACE_ATTACH = 16


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _errno_name() -> str:
    code = ctypes.get_errno()
    return errno.errorcode.get(code, str(code))


def remount(_: list[str]) -> str:
    """Make the read-only root writable, or mount a tmpfs over it; then write a file into /usr."""
    libc = _libc()
    results = []
    for target, flags in ((b"/", MS_REMOUNT | MS_BIND), (b"/usr", MS_REMOUNT | MS_BIND)):
        if libc.mount(None, target, None, flags, None) == 0:
            return f"ESCAPED (remounted {target.decode()} read-write)"
        results.append(_errno_name())
    if libc.mount(b"none", b"/usr", b"tmpfs", 0, None) == 0:
        return "ESCAPED (mounted a tmpfs over /usr)"
    results.append(_errno_name())
    try:
        with open("/usr/dativo-hostile", "w") as fh:
            fh.write("x")
        return "ESCAPED (wrote /usr/dativo-hostile)"
    except OSError as exc:
        results.append(errno.errorcode[exc.errno or 0])
    return f"refused ({', '.join(results)})"


def ptrace(args: list[str]) -> str:
    """Attach to every other process it can see, and to the pids given (dativo's, from the host)."""
    libc = _libc()
    me = os.getpid()
    visible = {int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me}
    targets = visible | {int(a) for a in args}
    outcomes = []
    for pid in sorted(targets):
        if libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0:
            return f"ESCAPED (attached to pid {pid})"
        outcomes.append(f"{pid}:{_errno_name()}")
    return f"refused ({' '.join(outcomes)}; other processes visible: {sorted(visible)})"


def read(args: list[str]) -> str:
    """Read each path given (files or folders)."""
    outcomes = []
    for path in args:
        try:
            if os.path.isdir(path):
                return f"ESCAPED (listed {path}: {sorted(os.listdir(path))[:5]})"
            with open(path, "rb") as fh:
                return f"ESCAPED (read {path}: {fh.read(40)!r})"
        except OSError as exc:
            outcomes.append(f"{path}:{errno.errorcode[exc.errno or 0]}")
    return f"refused ({' '.join(outcomes)})"


def unix(args: list[str]) -> str:
    """Connect to each Unix socket given (a path, or @name for the abstract namespace)."""
    outcomes = []
    for target in args:
        address = "\0" + target[1:] if target.startswith("@") else target
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(address)
                return f"ESCAPED (connected to {target})"
            except OSError as exc:
                outcomes.append(f"{target}:{errno.errorcode.get(exc.errno or 0, str(exc.errno))}")
    return f"refused ({' '.join(outcomes)})"


def rlimits(_: list[str]) -> str:
    """Raise the hard limits the sandbox set (open files, address space, processes)."""
    outcomes = []
    for name in ("RLIMIT_NOFILE", "RLIMIT_AS", "RLIMIT_NPROC"):
        which = getattr(resource, name)
        _soft, hard = resource.getrlimit(which)
        wanted = resource.RLIM_INFINITY if name != "RLIMIT_NOFILE" else hard * 2
        if hard == resource.RLIM_INFINITY:
            return f"ESCAPED ({name} has no hard limit)"
        try:
            resource.setrlimit(which, (wanted, wanted))
            return f"ESCAPED (raised {name} from {hard} to {wanted})"
        except (OSError, ValueError) as exc:
            outcomes.append(f"{name}:{type(exc).__name__}")
    return f"refused ({' '.join(outcomes)})"


def capabilities(_: list[str]) -> str:
    """Any effective or bounding capability left."""
    with open("/proc/self/status") as fh:
        fields = dict(line.split(":\t", 1) for line in fh.read().splitlines() if ":\t" in line)
    if int(fields["CapEff"], 16) or int(fields["CapBnd"], 16) or int(fields["CapPrm"], 16):
        return f"ESCAPED (CapEff {fields['CapEff'].strip()}, CapBnd {fields['CapBnd'].strip()})"
    return f"refused (no capabilities; uid {os.getuid()})"


ATTACKS: dict[str, Callable[[list[str]], str]] = {
    "remount": remount,
    "ptrace": ptrace,
    "read": read,
    "unix": unix,
    "rlimits": rlimits,
    "capabilities": capabilities,
}


def main() -> None:
    attack = sys.argv[1]
    # Targets come through the environment: a path named in the command is shown to the plugin
    # on purpose (the job's author named it), so an attack must not name its targets there.
    args = json.loads(os.environ.get("HOSTILE_ARGS", "[]"))
    try:
        outcome = ATTACKS[attack](args)
    except Exception as exc:  # an attack that crashed did not escape, but say what happened
        outcome = f"crashed ({type(exc).__name__}: {exc})"
    record = {"dativo": "error", "error": "SourceError", "message": f"{attack}: {outcome}", "transient": False}
    sys.stderr.write(json.dumps(record) + "\n")
    sys.stderr.flush()
    sys.exit(1)


if __name__ == "__main__":
    main()
