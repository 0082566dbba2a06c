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
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from dativo.core.hosting import ClassRuntime
from dativo.core.registry import PluginPlan
from dativo.errors import PluginError, SchemaError, SourceError
from dativo.runtimes import protocol
from dativo.runtimes._plugin_process import STOP_GRACE_S, PluginProcess, Stopped
from dativo.runtimes._process_changes import ProcessChanges, reply
from dativo.runtimes.protocol import (
    PROTOCOL_VERSION,
    EofWatchingReader,
    ProtocolError,
    decode_line,
    open_ipc_stream,
)
from dativo.sdk import DataReader, DataWriter, PluginConfig

__all__ = ["ProcessReader", "ProcessWriter", "runtime"]

log = logging.getLogger("dativo.runtimes.process")


def _handshake(plan: PluginPlan, kind: str, config: PluginConfig) -> dict[str, Any]:
    return {
        "dativo": "handshake",
        "protocol": PROTOCOL_VERSION,
        "protocols": list(protocol.SUPPORTED_VERSIONS),
        "kind": kind,
        "plugin": plan.ref.name,
        "config": dict(config),
    }


def _start(plan: PluginPlan, kind: str, config: PluginConfig) -> PluginProcess:
    """Start the plugin, send the handshake, read the hello. Raises the plugin's failure."""
    spec = plan.spec
    if spec is None or spec.command is None:
        raise PluginError(f"{kind} '{plan.ref.name}': type process needs 'command'")
    base_dir = Path(str(config.get("job", {}).get("dir", ".")))
    proc = PluginProcess(kind, plan.ref.name, spec, base_dir)
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
    except Stopped:
        error = proc.failure("starting up")
        proc.finish()
        raise error from None
    except BaseException:
        proc.finish()
        raise


class _StdoutFile(EofWatchingReader):
    """The plugin's stdout as a file pyarrow can read, with the idle timeout applied to every read."""

    def __init__(self, proc: PluginProcess) -> None:
        super().__init__()
        self._proc = proc

    def _read(self, size: int) -> bytes:
        idle = self._proc.spec.timeouts.idle_s
        what = f"produced no output for timeouts.idle_s = {idle:g} s" if idle is not None else "stalled"
        try:
            return self._proc.read_exact(size, idle, what)
        except Stopped:
            return b""


class _StdinFile:
    """The plugin's stdin as a file pyarrow can write, with the idle timeout applied to every write."""

    def __init__(self, proc: PluginProcess) -> None:
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


class ProcessReader(ProcessChanges, DataReader):
    """A reader running as a child process (see the module docstring).

    ``initialize`` starts it and reads its schema; ``read_batch`` asks for the
    batches and yields them; ``close`` ends its process tree. Failures raise
    one error naming the plugin and what it did (see ``docs/process-protocol.md``).
    """

    def __init__(self, plan: PluginPlan) -> None:
        self._plan = plan
        self._proc: PluginProcess | None = None
        self._stream: Any = None
        self._schema: pa.Schema | None = None
        self._changing = False
        self._owner: tuple[ProcessReader, int] | None = None

    def initialize(self, config: PluginConfig) -> None:
        """Start the plugin, handshake, and read its schema; raises its failure as a dativo error."""
        self.config = config
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
        """Ask the plugin for its batches and yield them; raises its failure (never ends early).

        A table started with others of its slot (``begin_changes_together``) is read from the
        plugin that started them, whose process holds the changes of every table.
        """
        if self._schema is None:
            raise PluginError(f"reader '{self._plan.ref.name}' is closed")
        if self._owner is not None:
            owner, member = self._owner
            yield from owner._read(batch_size, self._schema, member)
        else:
            yield from self._read(batch_size, self._schema, None)

    def _read(self, batch_size: int, schema: pa.Schema, member: int | None) -> Iterator[pa.RecordBatch]:
        proc = self._proc
        if proc is None:
            raise PluginError(f"reader '{self._plan.ref.name}' is closed")
        source = _StdoutFile(proc)
        command: dict[str, Any] = {"command": "read", "batch_size": int(batch_size)}
        if member is not None:
            command["member"] = member
        try:
            proc.send(command, "asking for batches")
            stream = open_ipc_stream(source)
        except (BrokenPipeError, Stopped):
            raise proc.failure("starting to read") from None
        except (pa.ArrowException, OSError) as exc:
            detail, _ = _arrow_detail(exc)
            raise proc.failure("starting its stream", f"stdout is not an Arrow IPC stream: {detail}") from None
        if not stream.schema.equals(schema):
            proc.kill()
            raise SchemaError(
                f"{proc.label} changed schema: its stream has {stream.schema.to_string(show_schema_metadata=False)!r}"
                f" but its hello declared {schema.to_string(show_schema_metadata=False)!r}"
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
        if source.hit_eof:  # a cut-short stream is never a complete one, whatever the exit code
            raise proc.failure("streaming batches", "its Arrow IPC stream ended without the end-of-stream marker")
        if not self._changing:  # a change reader stays alive for 'confirm'
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
        self._proc: PluginProcess | None = None
        self._sink: _StdinFile | None = None
        self._stream: Any = None

    def initialize(self, config: PluginConfig) -> None:
        """Start the plugin and handshake; raises its failure as a dativo error."""
        self.config = config
        self._proc = _start(self._plan, "writer", config)

    def _require(self) -> PluginProcess:
        if self._proc is None:
            raise PluginError(f"writer '{self._plan.ref.name}' is not running")
        return self._proc

    def check(self) -> None:
        """Ask the plugin to verify its target; raises its failure."""
        proc = self._require()
        try:
            proc.send({"command": "check"}, "checking")
        except (BrokenPipeError, Stopped):
            raise proc.failure("checking") from None
        answer = reply(proc, "checking")
        if answer.get("dativo") != "checked":
            raise ProtocolError(f"{proc.label} answered 'check' with {answer}; expected {{'dativo': 'checked'}}")

    def prepare(self, schema: pa.Schema) -> None:
        """Start the Arrow IPC stream (its schema message); raises the plugin's failure."""
        proc = self._require()
        self._sink = _StdinFile(proc)
        try:
            proc.send({"command": "write"}, "starting the stream")
            self._stream = pa.ipc.new_stream(self._sink, schema)
        except (BrokenPipeError, Stopped, pa.ArrowException, OSError):
            raise proc.failure("receiving the schema") from None

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Send one batch; raises the plugin's failure."""
        proc = self._require()
        if self._stream is None:
            raise PluginError(f"{proc.label}: write_batch() before prepare()")
        try:
            self._stream.write_batch(batch)
        except (BrokenPipeError, Stopped, pa.ArrowException, OSError):
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
        except (BrokenPipeError, Stopped, pa.ArrowException, OSError):
            raise proc.failure("finalizing") from None
        answer = reply(proc, "finalizing")
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
            proc.wait_exit(STOP_GRACE_S)
        except Exception:
            log.debug("%s did not take the abort command", proc.label, exc_info=True)

    def close(self) -> None:
        """End the plugin's process tree; idempotent."""
        proc, self._proc = self._proc, None
        self._stream = None
        if proc is not None:
            proc.finish()


#: The ``process`` runtime (entry point ``dativo.runtimes: process``): starting a plugin is
#: ``initialize``; a failure raises PluginError or the plugin's own error, after ending its process tree.
runtime = ClassRuntime(ProcessReader, ProcessWriter)
