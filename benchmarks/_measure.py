"""Measuring one child process: wall time, exact peak RSS and CPU time (``_launch.py``), summed tree RSS."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import HERE

from support.procs import PAGE, descendants, scan


class TreeRssSampler(threading.Thread):
    """Samples the summed RSS of all descendants of ``root_pid`` (the launcher) from ``/proc``.

    ``wait4``'s ``ru_maxrss`` is exact but is the peak of the *largest single
    process* of a tree; a variant that fans out into worker processes needs the
    sum, which only sampling can give (it can miss a short spike between samples).
    """

    def __init__(self, root_pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop_event = threading.Event()

    def _tree_rss(self) -> int:
        procs = scan()
        return sum(procs[pid].rss_pages for pid in descendants(self.root_pid, procs) - {self.root_pid}) * PAGE

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_bytes = max(self.peak_bytes, self._tree_rss())
            self._stop_event.wait(self.interval_s)

    def stop(self) -> float:
        """Stop sampling; returns the peak in MB."""
        self._stop_event.set()
        self.join()
        return self.peak_bytes / 1e6


@dataclass
class ProcessResult:
    """What the OS says about one finished child."""

    exit_code: int
    wall_s: float
    peak_rss_mb: float
    user_s: float
    sys_s: float
    tree_rss_mb: float | None
    timed_out: bool


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stdout: Path,
    stderr: Path,
    timeout_s: float,
    sample_tree: bool = False,
) -> ProcessResult:
    """Run ``argv`` and return its wall time, peak RSS and CPU time.

    The command is started by ``_launch.py``, a bare interpreter that forks it,
    times it and reaps it with ``os.wait4`` (see that file for why run.py does
    not fork it itself). Output goes to files, never pipes, so the child cannot
    block on a full pipe. On timeout the whole process group is killed.
    """
    result_file = stdout.with_name("rusage.txt")
    result_file.unlink(missing_ok=True)
    launcher = [sys.executable, "-I", "-S", str(HERE / "_launch.py"), str(result_file)]
    timed_out = False
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [*launcher, *argv],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,  # its own process group, so a timeout can kill the whole tree
        )
        sampler = TreeRssSampler(proc.pid) if sample_tree else None
        if sampler:
            sampler.start()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            tree = sampler.stop() if sampler else None
    figures: dict[str, str] = {}
    with contextlib.suppress(OSError):
        figures = dict(line.split("=", 1) for line in result_file.read_text().splitlines() if "=" in line)
    if not figures:
        return ProcessResult(proc.returncode or -1, 0.0, 0.0, 0.0, 0.0, tree, timed_out)
    return ProcessResult(
        exit_code=int(figures["exit_code"]),
        wall_s=float(figures["wall_s"]),
        peak_rss_mb=int(figures["maxrss_kb"]) * 1024 / 1e6,  # Linux reports KiB
        user_s=float(figures["user_s"]),
        sys_s=float(figures["sys_s"]),
        tree_rss_mb=tree,
        timed_out=timed_out,
    )


def rss_measurement_floor(workdir: Path) -> float:
    """Peak RSS reported for ``true``: the launcher's pre-exec share, a lower bound of every RSS figure."""
    probe = workdir / "rss-floor"
    probe.mkdir(parents=True, exist_ok=True)
    result = run_measured(
        ["true"],
        env=os.environ,
        cwd=probe,
        stdout=probe / "stdout.txt",
        stderr=probe / "stderr.txt",
        timeout_s=60,
    )
    shutil.rmtree(probe, ignore_errors=True)
    return round(result.peak_rss_mb, 1)
