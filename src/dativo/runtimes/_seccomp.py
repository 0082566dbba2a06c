"""The syscall filter of the sandbox: a classic-BPF seccomp program bubblewrap loads (``--seccomp FD``).

Namespaces and dropped capabilities already refuse most of what a hostile
plugin could try; the filter refuses, with ``EPERM``, the calls that reach
other processes or the kernel itself even without capabilities: ``ptrace``
and ``process_vm_readv``/``writev`` (also of the sandbox's own reaper),
``bpf``, ``perf_event_open``, ``userfaultfd``, the keyring, module and kexec
calls, ``mount``/``umount2``/``pivot_root``/``setns``/``open_by_handle_at``.
Calls of another ABI (32-bit, x32) are refused as a whole. On an
architecture not listed here there is no filter (the rest of the sandbox
still applies).
"""

from __future__ import annotations

import errno
import functools
import platform
import struct

__all__ = ["BLOCKED", "SECCOMP_FD", "syscall_filter"]

#: Placeholder in bubblewrap's argv; the launcher replaces it with the descriptor holding the filter.
SECCOMP_FD = "{seccomp-fd}"

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
#: Refused system calls, by name, with their numbers on x86_64 and aarch64.
BLOCKED: dict[str, tuple[int, int]] = {
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "setns": (308, 268),
    "open_by_handle_at": (304, 265),
}

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_ALLOW = 0x7FFF0000
_DENY = 0x00050000 | errno.EPERM
_X32_BIT = 0x40000000


def _op(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


@functools.cache
def syscall_filter(machine: str | None = None) -> bytes | None:
    """The BPF program (``struct sock_filter[]`` bytes) for this machine, or None if it has none."""
    machine = machine or platform.machine()
    if machine not in _AUDIT_ARCH:
        return None
    column = 0 if machine == "x86_64" else 1
    numbers = [pair[column] for pair in BLOCKED.values()]
    body: list[bytes] = []
    # Each check jumps forward to the shared DENY at the end; distances count the instructions between.
    total = len(numbers)
    body.append(_op(_LD_W_ABS, 0, 0, 4))  # seccomp_data.arch
    body.append(_op(_JEQ_K, 1, 0, _AUDIT_ARCH[machine]))
    body.append(_op(_RET_K, 0, 0, _DENY))  # another ABI: refuse everything
    body.append(_op(_LD_W_ABS, 0, 0, 0))  # seccomp_data.nr
    body.append(_op(_JGE_K, total + 1, 0, _X32_BIT))  # x32 calls on x86_64
    for index, number in enumerate(numbers):
        body.append(_op(_JEQ_K, total - index, 0, number))
    body.append(_op(_RET_K, 0, 0, _ALLOW))
    body.append(_op(_RET_K, 0, 0, _DENY))
    return b"".join(body)
