"""The process runtime: a reader or writer in any language, in a child process, speaking Arrow IPC over pipes.

The protocol is specified in ``docs/process-protocol.md`` (constants in
:mod:`dativo.runtimes.protocol`). :class:`ProcessReader` and
:class:`ProcessWriter` implement the SDK's ``DataReader`` / ``DataWriter`` so
the engine cannot tell them from in-process plugins. The plugin is started
through the sandbox launcher (:mod:`dativo.runtimes.sandbox`); its stderr
becomes log lines of the logger ``dativo.plugin.<name>``. Every failure -- a
non-zero exit, a signal, garbage on stdout, a timeout -- becomes one
``SourceError`` / ``TargetError`` / ``PluginError`` naming the plugin and
what it did, and the plugin's whole process tree is ended.
"""

from __future__ import annotations

import base64
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from dativo.config.models import PluginSpec
from dativo.engine.plan import PluginPlan
from dativo.errors import DativoError, PluginError, SchemaError, SourceError, TargetError
from dativo.runtimes import protocol
from dativo.runtimes.protocol import PROTOCOL_VERSION, ProtocolError, decode_line, encode_line, open_ipc_stream
from dativo.runtimes.sandbox import Launch, prepare_launch
from dativo.sdk import DataReader, DataWriter, PluginConfig

__all__ = ["ProcessReader", "ProcessWriter", "host_reader", "host_writer"]

log = logging.getLogger("dativo.runtimes.process")

_PIPE_BYTES = 1 << 20
_STOP_GRACE_S = 5.0
_QUIT_WAIT_S = 0.5
_EXIT_WAIT_S = 10.0
_STDERR_TAIL = 20
_MAX_STDERR_LINE = 8192
_SIGNALS = frozenset(s.value for s in signal.Signals)
_NETWORK_MARKERS = ("Network is unreachable", "Connection refused", "Name or service not known", "name resolution")
_OOM_MARKERS = ("MemoryError", "out of memory", "Cannot allocate memory", "bad_alloc", "failed to allocate")


def host_reader(plan: PluginPlan) -> DataReader:
    """Start the planned process reader and initialize it; raises PluginError or the reader's own error."""
    reader = ProcessReader(plan)
    reader.initialize(plan.config)
    return reader


def host_writer(plan: PluginPlan) -> DataWriter:
    """Start the planned process writer and initialize it; raises PluginError or the writer's own error."""
    writer = ProcessWriter(plan)
    writer.initialize(plan.config)
    return writer


class _Stopped(Exception):
    """Raised inside the pipes when dativo stopped the plugin (timeout); the reason is on the process."""


class _PluginProcess:
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
        plugin_log = logging.getLogger(f"dativo.plugin.{self.name}")
        stream = self.proc.stderr
        assert stream is not None
        for raw in iter(lambda: stream.readline(_MAX_STDERR_LINE), b""):
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if not line.strip():
                continue
            if line.startswith("{") and '"dativo"' in line:
                with contextlib.suppress(ProtocolError):
                    record = decode_line(raw, "stderr record")
                    if record.get("dativo") == "error":
                        self.error_record = record
                        plugin_log.debug("error record: %s", record.get("message"), extra={"plugin": self.name})
                        continue
                    if record.get("dativo") == "log":
                        level = logging.getLevelName(str(record.get("level", "info")).upper())
                        plugin_log.log(
                            level if isinstance(level, int) else logging.INFO,
                            "%s",
                            record.get("message", ""),
                            extra={"plugin": self.name},
                        )
                        continue
            self.stderr_tail.append(line)
            plugin_log.info("%s", line, extra={"plugin": self.name})

    # -- pipes -----------------------------------------------------------------------------------

    def _deadline_wait(self, fd: int, events: int, timeout: float | None, what: str) -> None:
        """Wait until ``fd`` is ready; on timeout kill the plugin and raise _Stopped."""
        poller = select.poll()
        poller.register(fd, events | select.POLLHUP | select.POLLERR)
        started = time.monotonic()
        while True:
            if self.stop_reason is not None:
                raise _Stopped
            remaining = None if timeout is None else timeout - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                self.kill(what)
                raise _Stopped
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
                self.proc.wait(_STOP_GRACE_S)
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
        code = self.wait_exit(_EXIT_WAIT_S if self.stop_reason is None else _STOP_GRACE_S)
        if code is None:
            self.kill()
            code = self.proc.poll()
        self._stderr_thread.join(timeout=5)
        after = f" after {self.batches} batch{'es' if self.batches != 1 else ''}" if self.batches else ""
        if self.stop_reason is not None:
            return PluginError(f"{self.label} {self.stop_reason} ({doing}{after}); it was stopped")
        if self.error_record is not None and code != 0:
            return protocol.error_from_record(self.error_record, f"{self.label}: ", self.error_cls)
        tail = f"; last stderr line: {self.stderr_tail[-1]!r}" if self.stderr_tail else ""
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


def _handshake(plan: PluginPlan, kind: str, config: PluginConfig) -> dict[str, Any]:
    return {
        "dativo": "handshake",
        "protocol": PROTOCOL_VERSION,
        "protocols": list(protocol.SUPPORTED_VERSIONS),
        "kind": kind,
        "plugin": plan.ref.name,
        "config": dict(config),
    }


def _start(plan: PluginPlan, kind: str, config: PluginConfig) -> _PluginProcess:
    """Start the plugin, send the handshake, read the hello. Raises the plugin's failure."""
    spec = plan.spec
    if spec is None or spec.command is None:
        raise PluginError(f"{kind} '{plan.ref.name}': type process needs 'command'")
    base_dir = Path(str(config.get("job", {}).get("dir", ".")))
    proc = _PluginProcess(kind, plan.ref.name, spec, base_dir)
    startup = spec.timeouts.startup_s
    try:
        try:
            proc.send(_handshake(plan, kind, config), "sending the handshake")
        except BrokenPipeError:
            raise proc.failure("starting up") from None
        line = proc.read_line(startup, f"did not answer the handshake within timeouts.startup_s = {startup:g} s")
        if line is None:
            raise proc.failure("starting up")
        hello = decode_line(line, f"{proc.label}'s hello")
        if hello.get("dativo") != "hello" or hello.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(
                f"{proc.label} answered the handshake with {line[:120]!r}; expected "
                f'{{"dativo": "hello", "protocol": {PROTOCOL_VERSION}}} (see docs/process-protocol.md)'
            )
        log.debug("%s says hello: %s", proc.label, {k: v for k, v in hello.items() if k != "schema"})
        proc.hello = hello
        return proc
    except _Stopped:
        error = proc.failure("starting up")
        proc.finish()
        raise error from None
    except BaseException:
        proc.finish()
        raise


class _StdoutFile:
    """The plugin's stdout as a file pyarrow can read, with the idle timeout applied to every read."""

    def __init__(self, proc: _PluginProcess) -> None:
        self._proc = proc
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        idle = self._proc.spec.timeouts.idle_s
        what = f"produced no output for timeouts.idle_s = {idle:g} s" if idle is not None else "stalled"
        if size is None or size < 0:
            size = 1 << 30
        try:
            return self._proc.read_exact(size, idle, what)
        except _Stopped:
            return b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


class _StdinFile:
    """The plugin's stdin as a file pyarrow can write, with the idle timeout applied to every write."""

    def __init__(self, proc: _PluginProcess) -> None:
        self._proc = proc
        self.closed = False

    def write(self, data: Any) -> int:
        idle = self._proc.spec.timeouts.idle_s
        what = f"stopped reading its input for timeouts.idle_s = {idle:g} s" if idle is not None else "stalled"
        view = memoryview(data)
        self._proc.write_all(view, idle, what)
        return view.nbytes

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


def _arrow_detail(exc: BaseException) -> tuple[str, bool]:
    """Describe an Arrow error while reading the plugin's stream; True when it is a schema change."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text, "is not RecordBatch" in text and "Header-type" in text


class ProcessReader(DataReader):
    """A reader running as a child process (see the module docstring).

    ``initialize`` starts it and reads its schema; ``read_batch`` asks for the
    batches and yields them; ``close`` ends its process tree. Failures raise
    one error naming the plugin and what it did (see ``docs/process-protocol.md``).
    """

    def __init__(self, plan: PluginPlan) -> None:
        self._plan = plan
        self._proc: _PluginProcess | None = None
        self._stream: Any = None
        self._schema: pa.Schema | None = None

    def initialize(self, config: PluginConfig) -> None:
        """Start the plugin, handshake, and read its schema; raises its failure as a dativo error."""
        self.config = config
        config = _with_source_plan(config)
        proc = self._proc = _start(self._plan, "reader", config)
        try:
            self._schema = pa.ipc.open_stream(base64.b64decode(proc.hello["schema"], validate=True)).schema
        except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
            self.close()
            raise ProtocolError(
                f"{proc.label}'s hello lacks a valid 'schema' (base64 of an Arrow IPC stream): "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def get_schema(self) -> pa.Schema:
        """The schema the plugin sent; raises PluginError before ``initialize``."""
        if self._schema is None:
            raise SourceError(f"reader '{self._plan.ref.name}' was not initialized")
        return self._schema

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Ask the plugin for its batches and yield them; raises its failure (never ends early)."""
        proc = self._proc
        if proc is None or self._schema is None:
            raise PluginError(f"reader '{self._plan.ref.name}' is closed")
        try:
            proc.send({"command": "read", "batch_size": int(batch_size)}, "asking for batches")
            stream = open_ipc_stream(_StdoutFile(proc))
        except (BrokenPipeError, _Stopped):
            raise proc.failure("starting to read") from None
        except (pa.ArrowException, OSError) as exc:
            detail, _ = _arrow_detail(exc)
            raise proc.failure("starting its stream", f"stdout is not an Arrow IPC stream: {detail}") from None
        if not stream.schema.equals(self._schema):
            proc.kill()
            raise SchemaError(
                f"{proc.label} changed schema: its stream has {stream.schema.to_string(show_schema_metadata=False)!r}"
                f" but its hello declared {self._schema.to_string(show_schema_metadata=False)!r}"
            )
        while True:
            try:
                batch = stream.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as exc:
                detail, schema_change = _arrow_detail(exc)
                error = proc.failure("streaming batches", f"stdout is not a valid Arrow IPC stream: {detail}")
                if schema_change and isinstance(error, ProtocolError):
                    error = SchemaError(
                        f"{proc.label} changed schema mid-stream after {proc.batches} batches "
                        "(it sent a second schema; one stream has one schema)"
                    )
                raise error from None
            proc.batches += 1
            yield batch
        if proc.stop_reason is not None:
            raise proc.failure("streaming batches")
        proc.check_clean_exit("streaming batches")

    def close(self) -> None:
        """End the plugin's process tree; idempotent."""
        proc, self._proc = self._proc, None
        self._stream = None
        if proc is not None:
            proc.finish()


class ProcessWriter(DataWriter):
    """A writer running as a child process (see the module docstring).

    Batches are streamed to its stdin as one Arrow IPC stream; ``finalize``
    asks it to publish and returns its metadata; ``abort`` asks it to discard
    (and in any case ends its process tree, so nothing it staged is published).
    """

    def __init__(self, plan: PluginPlan) -> None:
        self._plan = plan
        self._proc: _PluginProcess | None = None
        self._sink: _StdinFile | None = None
        self._stream: Any = None

    def initialize(self, config: PluginConfig) -> None:
        """Start the plugin and handshake; raises its failure as a dativo error."""
        self.config = config
        self._proc = _start(self._plan, "writer", config)

    def _require(self) -> _PluginProcess:
        if self._proc is None:
            raise PluginError(f"writer '{self._plan.ref.name}' is not running")
        return self._proc

    def _reply(self, proc: _PluginProcess, doing: str) -> dict[str, Any]:
        idle = proc.spec.timeouts.idle_s
        what = f"did not answer within timeouts.idle_s = {idle:g} s" if idle is not None else "stalled"
        try:
            line = proc.read_line(idle, what)
        except _Stopped:
            line = None
        if line is None:
            raise proc.failure(doing)
        return decode_line(line, f"{proc.label}'s answer to {doing}")

    def check(self) -> None:
        """Ask the plugin to verify its target; raises its failure."""
        proc = self._require()
        try:
            proc.send({"command": "check"}, "checking")
        except (BrokenPipeError, _Stopped):
            raise proc.failure("checking") from None
        answer = self._reply(proc, "checking")
        if answer.get("dativo") != "checked":
            raise ProtocolError(f"{proc.label} answered 'check' with {answer}; expected {{'dativo': 'checked'}}")

    def prepare(self, schema: pa.Schema) -> None:
        """Start the Arrow IPC stream (its schema message); raises the plugin's failure."""
        proc = self._require()
        self._sink = _StdinFile(proc)
        try:
            proc.send({"command": "write"}, "starting the stream")
            self._stream = pa.ipc.new_stream(self._sink, schema)
        except (BrokenPipeError, _Stopped, pa.ArrowException, OSError):
            raise proc.failure("receiving the schema") from None

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Send one batch; raises the plugin's failure."""
        proc = self._require()
        if self._stream is None:
            raise PluginError(f"{proc.label}: write_batch() before prepare()")
        try:
            self._stream.write_batch(batch)
        except (BrokenPipeError, _Stopped, pa.ArrowException, OSError):
            raise proc.failure("receiving batches") from None
        proc.batches += 1

    def finalize(self) -> dict[str, Any]:
        """End the stream, ask the plugin to publish, return its metadata; raises its failure."""
        proc = self._require()
        try:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
            proc.send({"command": "finalize"}, "finalizing")
        except (BrokenPipeError, _Stopped, pa.ArrowException, OSError):
            raise proc.failure("finalizing") from None
        answer = self._reply(proc, "finalizing")
        if answer.get("dativo") != "result" or not isinstance(answer.get("metadata"), dict):
            raise ProtocolError(f"{proc.label} answered 'finalize' with {str(answer)[:200]}")
        proc.close_stdin()
        proc.check_clean_exit("finalizing")
        return dict(answer["metadata"])

    def abort(self) -> None:
        """Ask the plugin to discard what it staged, then end it; never raises."""
        proc = self._proc
        if proc is None or proc.proc.poll() is not None:
            return
        try:
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    self._stream.close()
                self._stream = None
            proc.send({"command": "abort"}, "aborting")
            proc.close_stdin()
            proc.wait_exit(_STOP_GRACE_S)
        except Exception:
            log.debug("%s did not take the abort command", proc.label, exc_info=True)

    def close(self) -> None:
        """End the plugin's process tree; idempotent."""
        proc, self._proc = self._proc, None
        self._stream = None
        if proc is not None:
            proc.finish()


def _with_source_plan(config: PluginConfig) -> PluginConfig:
    """For a PostgreSQL source, add ``postgres_plan``: the canonical SQL and schema (see docs)."""
    if config.get("connector") != "postgres":
        return config
    from dativo.connectors.postgres.remote import source_plan_for_plugin

    return {**config, "postgres_plan": source_plan_for_plugin(config)}
