"""One running process plugin: its pipes, its stderr, its timeouts and how it ended.

Used by :mod:`dativo.runtimes.process`. The plugin's stdout/stdin are read and
written with poll + non-blocking system calls so every wait has a deadline; its
stderr is read in blocks on a thread, cut into bounded lines and turned into
log lines of ``dativo.plugin.<name>`` (JSON error/log records are recognised).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from dativo.config.models import PluginSpec
from dativo.errors import DativoError, PluginError, SourceError, TargetError
from dativo.runtimes import protocol
from dativo.runtimes.protocol import ProtocolError, decode_line, encode_line
from dativo.runtimes.sandbox import Launch, prepare_launch

__all__ = ["PluginProcess", "Stopped"]

log = logging.getLogger("dativo.runtimes.process")

_PIPE_BYTES = 1 << 20
STOP_GRACE_S = 5.0
_QUIT_WAIT_S = 0.5
_EXIT_WAIT_S = 10.0
_STDERR_TAIL = 20
_MAX_STDERR_LINE = 65536  # longer stderr lines are cut (and marked so)
_STDERR_BLOCK = 1 << 16
_SHOWN_LINE = 300  # how much of the last stderr line an error message quotes
_SIGNALS = frozenset(s.value for s in signal.Signals)
_NETWORK_MARKERS = ("Network is unreachable", "Connection refused", "Name or service not known", "name resolution")
_OOM_MARKERS = ("MemoryError", "out of memory", "Cannot allocate memory", "bad_alloc", "failed to allocate")


class Stopped(Exception):
    """Raised inside the pipes when dativo stopped the plugin (timeout); the reason is on the process."""


class PluginProcess:
    """One running plugin: its pipes, its stderr logger, its timeouts and its end."""

    def __init__(self, kind: str, name: str, spec: PluginSpec, base_dir: Path) -> None:
        self.kind = kind
        self.name = name
        self.label = f"{kind} plugin '{name}'"
        self.spec = spec
        self.error_cls: type[DativoError] = SourceError if kind == "reader" else TargetError
        self.stop_reason: str | None = None
        self.error_record: dict[str, Any] | None = None
        self.stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL)
        self.batches = 0
        self.hello: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._launch: Launch = prepare_launch(self.label, spec, base_dir)
        try:
            self.proc = subprocess.Popen(
                self._launch.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._launch.env,
                start_new_session=True,  # its own process group: killed as a whole at the end
                close_fds=True,
                bufsize=0,
            )
        except OSError as exc:
            self._launch.release()
            raise PluginError(f"{self.label}: cannot start the sandbox launcher: {exc}") from exc
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self.stdin_fd = self.proc.stdin.fileno()
        self.stdout_fd = self.proc.stdout.fileno()
        for fd in (self.stdin_fd, self.stdout_fd):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        os.set_blocking(self.stdin_fd, False)
        self._buffer = bytearray()
        self._stderr_thread = threading.Thread(
            target=self._pump_stderr, name=f"dativo-plugin-stderr-{name}", daemon=True
        )
        self._stderr_thread.start()
        self._timer: threading.Timer | None = None
        total = spec.timeouts.total_s
        if total is not None:
            self._timer = threading.Timer(total, self.kill, (f"ran longer than timeouts.total_s = {total:g} s",))
            self._timer.daemon = True
            self._timer.start()
        log.debug("%s started (pid %s): %s", self.label, self.proc.pid, " ".join(spec.command or []))

    # -- stderr ----------------------------------------------------------------------------------

    def _pump_stderr(self) -> None:
        """Read stderr in blocks (never a byte per call) and cut it into lines of at most _MAX_STDERR_LINE."""
        stream = self.proc.stderr
        assert stream is not None
        fd = stream.fileno()
        pending = bytearray()
        skipping = False  # inside the rest of an over-long line
        while True:
            try:
                chunk = os.read(fd, _STDERR_BLOCK)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            while True:
                end = pending.find(b"\n")
                if end < 0:
                    if len(pending) > _MAX_STDERR_LINE:
                        if not skipping:
                            self._stderr_line(bytes(pending[:_MAX_STDERR_LINE]), cut=True)
                        skipping = True
                        pending.clear()
                    break
                if skipping:
                    skipping = False
                else:
                    self._stderr_line(bytes(pending[: min(end, _MAX_STDERR_LINE)]), cut=end > _MAX_STDERR_LINE)
                del pending[: end + 1]
        if pending and not skipping:
            self._stderr_line(bytes(pending), cut=False)

    def _stderr_line(self, raw: bytes, *, cut: bool) -> None:
        plugin_log = logging.getLogger(f"dativo.plugin.{self.name}")
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        if not line.strip():
            return
        if not cut and line.startswith("{") and '"dativo"' in line:
            with contextlib.suppress(ProtocolError):
                record = decode_line(raw, "stderr record")
                if record.get("dativo") == "error":
                    self.error_record = record
                    plugin_log.debug("error record: %s", record.get("message"), extra={"plugin": self.name})
                    return
                if record.get("dativo") == "log":
                    level = logging.getLevelName(str(record.get("level", "info")).upper())
                    plugin_log.log(
                        level if isinstance(level, int) else logging.INFO,
                        "%s",
                        record.get("message", ""),
                        extra={"plugin": self.name},
                    )
                    return
        if cut:
            line += " [line cut]"
        self.stderr_tail.append(line)
        plugin_log.info("%s", line, extra={"plugin": self.name})

    # -- pipes -----------------------------------------------------------------------------------

    def _deadline_wait(self, fd: int, events: int, timeout: float | None, what: str) -> None:
        """Wait until ``fd`` is ready; on timeout kill the plugin and raise Stopped."""
        poller = select.poll()
        poller.register(fd, events | select.POLLHUP | select.POLLERR)
        started = time.monotonic()
        while True:
            if self.stop_reason is not None:
                raise Stopped
            remaining = None if timeout is None else timeout - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                self.kill(what)
                raise Stopped
            step = 0.5 if remaining is None else min(0.5, remaining)
            if poller.poll(step * 1000):
                return

    def read_some(self, limit: int, timeout: float | None, what: str) -> bytes:
        """Up to ``limit`` bytes from the plugin's stdout (b'' at end of file)."""
        if self._buffer:
            data = bytes(self._buffer[:limit])
            del self._buffer[:limit]
            return data
        self._deadline_wait(self.stdout_fd, select.POLLIN, timeout, what)
        return os.read(self.stdout_fd, min(limit, _PIPE_BYTES))

    def read_exact(self, size: int, timeout: float | None, what: str) -> bytes:
        """``size`` bytes from stdout, fewer only at end of file."""
        if len(self._buffer) >= size:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            return data
        parts = [bytes(self._buffer)]
        got = len(self._buffer)
        self._buffer.clear()
        while got < size:
            chunk = self.read_some(size - got, timeout, what)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def read_line(self, timeout: float | None, what: str) -> bytes | None:
        """One line from stdout, or None at end of file. Raises ProtocolError for an over-long line."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > protocol.MAX_LINE_BYTES:
                raise ProtocolError(f"{self.label} wrote a line longer than {protocol.MAX_LINE_BYTES} bytes")
            self._deadline_wait(self.stdout_fd, select.POLLIN, timeout, what)
            chunk = os.read(self.stdout_fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        end = self._buffer.index(b"\n") + 1
        line = bytes(self._buffer[:end])
        del self._buffer[:end]
        return line

    def write_all(self, data: bytes | memoryview, timeout: float | None, what: str) -> None:
        """Write everything to the plugin's stdin; BrokenPipeError when it stopped reading for good."""
        view = memoryview(data).cast("B")
        while view:
            self._deadline_wait(self.stdin_fd, select.POLLOUT, timeout, what)
            try:
                written = os.write(self.stdin_fd, view[:_PIPE_BYTES])
            except BlockingIOError:
                continue
            view = view[written:]

    def send(self, message: dict[str, Any], what: str) -> None:
        """One JSON line on the plugin's stdin."""
        self.write_all(encode_line(message), self.spec.timeouts.idle_s, what)

    def close_stdin(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    # -- ending ----------------------------------------------------------------------------------

    def kill(self, reason: str | None = None) -> None:
        """Stop the plugin and its whole process tree now; ``reason`` explains it in the failure message."""
        with self._lock:
            if reason is not None and self.stop_reason is None and self.proc.poll() is None:
                self.stop_reason = reason
                log.warning("%s %s; stopping it", self.label, reason)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)  # the launcher kills and reaps the plugin's tree
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)

    def wait_exit(self, timeout: float) -> int | None:
        """The launcher's exit code once it ended (negative: signal), or None if still running after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def finish(self) -> None:
        """End everything (idempotent): the process tree, the pipes, the timer, the cgroup."""
        if self._timer is not None:
            self._timer.cancel()
        self.close_stdin()
        if self.proc.poll() is None and self.stop_reason is None:
            self.wait_exit(_QUIT_WAIT_S)  # end of stdin asks a plugin to quit; give it a moment
        if self.proc.poll() is None:
            self.kill()
        self.proc.wait()
        self._stderr_thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self._launch.release()

    def failure(self, doing: str, detail: str | None = None) -> DativoError:
        """The one error describing how the plugin failed while ``doing``; ends the process first."""
        code = self.wait_exit(_EXIT_WAIT_S if self.stop_reason is None else STOP_GRACE_S)
        if code is None:
            self.kill()
            code = self.proc.poll()
        self._stderr_thread.join(timeout=5)
        after = f" after {self.batches} batch{'es' if self.batches != 1 else ''}" if self.batches else ""
        if self.stop_reason is not None:
            return PluginError(f"{self.label} {self.stop_reason} ({doing}{after}); it was stopped")
        if self.error_record is not None and code != 0:
            return protocol.error_from_record(self.error_record, f"{self.label}: ", self.error_cls)
        tail = f"; last stderr line: {_shown(self.stderr_tail[-1])!r}" if self.stderr_tail else ""
        limits = self._launch.limits
        if code is not None and code > 128 and self._launch.isolated and code - 128 in _SIGNALS:
            code = 128 - code  # bubblewrap reports a signal as 128 + N
        if code is not None and code < 0:
            sig = signal.Signals(-code)
            what = f"was killed by signal {sig.name}"
            if sig == signal.SIGXCPU and "CPU" in limits:
                what += f": it exceeded its CPU-time limit (sandbox.cpu_seconds = {limits['CPU']})"
            return self.error_cls(f"{self.label} {what} ({doing}{after}){tail}")
        if code not in (None, 0):
            what = f"exited with code {code}"
            said = " ".join(self.stderr_tail)
            if "AS" in limits and any(marker in said for marker in _OOM_MARKERS):
                what += f": it ran out of memory (sandbox.memory_mb = {limits['AS'] // (1024 * 1024)})"
            elif self._launch.max_processes is not None and "Resource temporarily unavailable" in said:
                what += f": it hit the process limit (sandbox.max_processes = {self._launch.max_processes})"
            elif not self._launch.network and any(marker in said for marker in _NETWORK_MARKERS):
                what += ": it tried to use the network, which the sandbox forbids (sandbox.network: false)"
            return self.error_cls(f"{self.label} {what} ({doing}{after}){tail}")
        if detail is not None:
            return ProtocolError(f"{self.label} broke the protocol ({doing}{after}): {detail}")
        return ProtocolError(f"{self.label} ended without finishing ({doing}{after}){tail}")

    def check_clean_exit(self, doing: str) -> None:
        """Wait for the plugin to exit after it finished; raise its failure unless it exited with 0."""
        idle = self.spec.timeouts.idle_s
        code = self.wait_exit(idle if idle is not None else 3600.0)
        if code is None:
            self.kill(f"did not exit within timeouts.idle_s = {idle:g} s after {doing}" if idle else None)
        if code != 0 or self.stop_reason is not None:
            raise self.failure(doing)


def _shown(line: str) -> str:
    return line if len(line) <= _SHOWN_LINE else line[:_SHOWN_LINE] + "..."
