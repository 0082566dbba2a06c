"""The sandbox launcher: a tiny supervisor between dativo and a process plugin (standard library only).

Run as ``python -I -S _launch.py SPEC_JSON`` with the plugin's (already clean)
environment. It

1. asks the kernel to kill it if dativo dies (``PR_SET_PDEATHSIG``) and makes
   itself a child subreaper, so orphans of the plugin become its children;
2. optionally joins a pids cgroup (``cgroup``: a directory dativo created);
3. forks; the child puts itself in its own process group, asks to be killed if
   the launcher dies, sets the resource limits (``rlimits``) and ``execve``s the
   plugin (``argv``) -- limits are set in the single-threaded child, never
   through ``preexec_fn`` in dativo's threaded process;
4. waits for the plugin. On SIGTERM from dativo it sends SIGTERM to the
   plugin's process group (so the plugin may cancel its queries) and SIGKILL
   3 seconds later. When the plugin ends it kills the plugin's process group
   and every remaining descendant, reaps them all, and exits with the
   plugin's status (re-raising the same signal on itself).

A failure to exec is reported as a protocol error record on stderr and exit 127.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_FD = "{seccomp-fd}"  # in argv, replaced by the descriptor holding the filter
GRACE_S = 3.0  # from SIGTERM to SIGKILL
LIMITS = {"AS": "RLIMIT_AS", "CPU": "RLIMIT_CPU", "NOFILE": "RLIMIT_NOFILE", "NPROC": "RLIMIT_NPROC"}


def _prctl(option: int, value: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(option, value, 0, 0, 0))


def _report(message: str) -> None:
    record = {"dativo": "error", "error": "PluginError", "message": message, "hint": None, "transient": False}
    os.write(2, (json.dumps(record) + "\n").encode())


def _processes() -> dict[int, tuple[int, bytes]]:
    """``{pid: (ppid, command name)}`` of every process we can see."""
    table: dict[int, tuple[int, bytes]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        name = stat[stat.find(b"(") + 1 : stat.rfind(b")")]
        fields = stat[stat.rfind(b")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), name)
    return table


def _children() -> list[int]:
    me = os.getpid()
    return [pid for pid, (ppid, _) in _processes().items() if ppid == me]


def _descendants(root: int) -> list[tuple[int, bytes]]:
    table = _processes()
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _name) in table.items():
            if ppid == parent and pid not in found:
                found.append(pid)
                frontier.append(pid)
    return [(pid, table[pid][1]) for pid in found]


def _kill_group(plugin_pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(plugin_pid, signal.SIGKILL)


def _ask_to_stop(plugin_pid: int, stop_at: list[float]) -> None:
    """SIGTERM the plugin's group (it may cancel its queries); SIGKILL follows after the grace period."""
    if not stop_at:
        stop_at.append(time.monotonic() + GRACE_S)
        # Not to bubblewrap itself: it would die at once and take the sandbox down with SIGKILL.
        table = _processes()
        targets = [(plugin_pid, table.get(plugin_pid, (0, b""))[1]), *_descendants(plugin_pid)]
        for pid, name in targets:
            if name != b"bwrap":
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)


def _kill_everything(plugin_pid: int) -> None:
    _kill_group(plugin_pid)
    # Orphans (also those that left the group with setsid) are re-parented to us: kill and reap them.
    for _ in range(1000):
        pids = _children()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _child(spec: dict[str, Any]) -> None:
    os.setpgid(0, 0)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    import resource

    for key, value in spec.get("rlimits", {}).items():
        which = getattr(resource, LIMITS[key])
        soft = hard = int(value)
        if key == "CPU":
            hard = soft + 5  # SIGXCPU at the soft limit, SIGKILL 5 s later
        resource.setrlimit(which, (soft, hard))
    if spec.get("cwd"):
        with contextlib.suppress(OSError):  # an unprivileged uid may not enter it; the plugin starts in /
            os.chdir(spec["cwd"])
    if spec.get("no_new_privs"):
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if spec.get("ids"):  # dativo is root and there is no bubblewrap: run as an unprivileged uid
        uid, gid = spec["ids"]
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise OSError(f"could not drop to uid {uid}")
    if spec.get("seccomp"):  # bubblewrap reads the syscall filter from a descriptor named in argv
        import base64

        readable, writable = os.pipe()
        os.write(writable, base64.b64decode(spec["seccomp"]))
        os.close(writable)
        os.set_inheritable(readable, True)
        spec["argv"] = [str(readable) if item == SECCOMP_FD else item for item in spec["argv"]]
    # The path run (the verified copy of a pinned file, or bubblewrap) and the name it is called by differ.
    os.execve(spec.get("path") or spec["argv"][0], spec["argv"], dict(os.environ))


def main() -> None:
    spec = json.loads(sys.argv[1])
    parent = int(spec["parent_pid"])
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # dativo died before the line above
        os._exit(125)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if spec.get("cgroup"):
        with open(os.path.join(spec["cgroup"], "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches dativo, which stops us with SIGTERM
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _child(spec)
        except BaseException as exc:
            _report(f"cannot start {spec['argv'][0]}: {type(exc).__name__}: {exc}")
        os._exit(127)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)  # also here, so that killpg works even before the child ran
    stop_at: list[float] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: _ask_to_stop(pid, stop_at))
    status = None
    while status is None:
        try:
            waited, raw = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            break
        if waited == pid:
            status = raw
            break
        if stop_at and time.monotonic() > stop_at[0]:
            _kill_group(pid)  # it had its grace period to cancel its work
        time.sleep(0.02 if stop_at else 0.05)
    _kill_everything(pid)
    if status is None:
        os._exit(126)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
