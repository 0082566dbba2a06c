"""Processes as ``/proc`` shows them (Linux): process trees, their RSS, PSS and CPU time.

Shared by the tests (tests/support/raycluster.py kills a Ray node's whole tree) and the
benchmarks (benchmarks/_measure.py samples a variant's tree, benchmarks/_raycluster.py
each Ray node's). Every reader tolerates processes that exit while it reads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PAGE", "TICK", "Proc", "alive", "descendants", "pss_kb", "scan", "tree_pids"]

#: Bytes per page (RSS is counted in pages) and clock ticks per second (CPU times are counted in ticks).
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    """One process's line of ``/proc/<pid>/stat``: its parent, CPU ticks used (user + system), resident pages."""

    ppid: int
    cpu_ticks: int
    rss_pages: int


def scan() -> dict[int, Proc]:
    """Every process now, by pid (one that exits while being read is left out)."""
    procs: dict[int, Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        f = stat[stat.rfind(b")") + 2 :].split()
        # fields after the name: state ppid ... utime(11) stime(12) ... rss(21)
        procs[int(entry.name)] = Proc(int(f[1]), int(f[11]) + int(f[12]), int(f[21]))
    return procs


def descendants(root: int, procs: Mapping[int, Proc]) -> set[int]:
    """``root`` (when in ``procs``) and every process below it in ``procs``."""
    children: dict[int, list[int]] = {}
    for pid, p in procs.items():
        children.setdefault(p.ppid, []).append(pid)
    tree, frontier = {root} if root in procs else set(), [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def tree_pids(root: int) -> set[int]:
    """``root`` and all its descendants now."""
    return descendants(root, scan())


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b")")[-1].split()[0] != b"Z"
    except OSError:
        return False


def pss_kb(pid: int) -> int:
    """``pid``'s proportional set size in KiB (0 when it is gone or unreadable)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
        for line in fh:
            if line.startswith(b"Pss:"):
                return int(line.split()[1])
    return 0
