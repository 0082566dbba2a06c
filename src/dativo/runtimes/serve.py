"""Serve any Python DataReader / DataWriter as a process plugin or an Arrow Flight plugin.

* ``python -m dativo.runtimes.serve process IMPLEMENTATION`` (also ``dativo serve process ...``)
  speaks the process protocol (``docs/process-protocol.md``) on stdin/stdout;
  a job runs it with ``type: process`` and ``command: [python3, -m, dativo.runtimes.serve, process, IMPL]``.
* ``python -m dativo.runtimes.serve flight IMPLEMENTATION --port 8815 [--tls-cert C --tls-key K]
  [--token-file F]`` serves it over Arrow Flight (``DoGet``/``GetSchema`` for readers,
  ``DoPut``/``DoAction('check')`` for writers); a job reaches it with ``type: flight``.

``IMPLEMENTATION`` is resolved like a job's ``implementation`` (entry-point
name, ``pkg.mod.Class`` or ``path/file.py:Class``). The same plugin class can
therefore be run in process, out of process and over the network, and the
conformance tests compare the three.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa

from dativo import _gc
from dativo.core.pump import Pump
from dativo.core.registry import PluginKind, resolve_plugin
from dativo.errors import DativoError, PluginError
from dativo.runtimes import protocol
from dativo.runtimes.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    aligned,
    decode_line,
    encode_line,
    error_record,
    open_ipc_stream,
)
from dativo.runtimes.serve_changes import (
    CHANGE_ACTIONS,
    ChangeSessions,
    change_action,
    change_capabilities,
    reads_changes,
    serve_changes,
)
from dativo.sdk import DataReader, DataWriter

__all__ = ["PluginFlightServer", "main", "schema_stream", "serve_process"]

log = logging.getLogger("dativo.serve")


def _kind_of(cls: type) -> PluginKind:
    if issubclass(cls, DataReader):
        return "reader"
    if issubclass(cls, DataWriter):
        return "writer"
    raise PluginError(f"{cls.__qualname__} is neither a DataReader nor a DataWriter")


#: Batches the plugin side reads ahead of what it has sent (dativo's side has its own queue).
_READ_AHEAD = 2


def _pump(reader: DataReader, schema: pa.Schema, name: str, batch_size: int) -> Pump:
    """The reader's batches through the engine's own pump: held to its declared schema, errors wrapped alike."""
    return Pump(reader, name, schema, batch_size, _READ_AHEAD)


# ------------------------------------------------------------------------------------------------
# The process protocol
# ------------------------------------------------------------------------------------------------


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def serve_process(plugin_cls: type, name: str | None = None) -> int:
    """Run ``plugin_cls`` as a process plugin on this process's stdin/stdout; returns the exit code.

    Nothing the plugin prints can corrupt the protocol: file descriptor 1 is
    redirected to stderr and the protocol uses a private copy of it. Every
    failure is written as an error record on stderr and gives exit code 1
    (2 for a bad handshake, 3 for an unsupported protocol version).
    """
    name = name or plugin_cls.__name__
    signal.signal(signal.SIGTERM, _terminated)
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = os.fdopen(out_fd, "wb", buffering=1 << 20)
    stdin = sys.stdin.buffer
    try:
        kind = _kind_of(plugin_cls)
        handshake = _read_handshake(stdin, kind)
        config = handshake.get("config")
        if not isinstance(config, dict):
            raise _bad_handshake("the handshake has no 'config' object")
        plugin = plugin_cls()
        try:
            if kind == "reader":
                _serve_reader(plugin, config, name, stdin, out)
            else:
                _serve_writer(plugin, config, stdin, out)
        finally:
            plugin.close()
        return protocol.EXIT_OK
    except _Exit as exc:
        return exc.code
    except BaseException as exc:
        _write_error(exc)
        return protocol.EXIT_FAILED
    finally:
        with contextlib.suppress(Exception):
            out.close()


class _Terminated(BaseException):
    """SIGTERM: dativo is stopping this plugin."""


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated("stopped by SIGTERM")


def _bad_handshake(message: str) -> _Exit:
    _write_error(ProtocolError(f"bad handshake: {message}"))
    return _Exit(protocol.EXIT_BAD_HANDSHAKE)


def _write_error(exc: BaseException) -> None:
    sys.stderr.flush()
    os.write(2, encode_line(error_record(exc)))


def _read_handshake(stdin: BinaryIO, kind: str) -> dict[str, Any]:
    line = stdin.readline(protocol.MAX_LINE_BYTES)
    if not line:
        raise _bad_handshake("stdin ended before the handshake line")
    try:
        handshake = decode_line(line, "the handshake")
    except ProtocolError as exc:
        raise _bad_handshake(str(exc)) from None
    offered = handshake.get("protocols") or [handshake.get("protocol")]
    if PROTOCOL_VERSION not in offered:
        _write_error(PluginError(f"this plugin speaks protocol {PROTOCOL_VERSION}; dativo offered {offered}"))
        raise _Exit(protocol.EXIT_UNSUPPORTED_PROTOCOL)
    if handshake.get("kind") != kind:
        raise _bad_handshake(f"the job uses this {kind} as a {handshake.get('kind')}")
    return handshake


def _hello(out: Any, schema: pa.Schema | None = None, capabilities: list[str] | None = None) -> None:
    hello: dict[str, Any] = {"dativo": "hello", "protocol": PROTOCOL_VERSION, "plugin": "dativo serve"}
    if schema is not None:
        hello["schema"] = base64.b64encode(schema_stream(schema)).decode()
    if capabilities:
        hello["capabilities"] = capabilities
    out.write(encode_line(hello))
    out.flush()


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    # pa.nulls, not pa.array([]): pyarrow cannot build an empty list<uuid> (an extension child) from a sequence.
    return pa.RecordBatch.from_arrays([pa.nulls(0, field.type) for field in schema], schema=schema)


def schema_stream(schema: pa.Schema) -> bytes:
    """An Arrow IPC stream holding only ``schema`` (what a reader's hello carries, base64-encoded)."""
    sink = pa.BufferOutputStream()
    pa.ipc.new_stream(sink, schema).close()
    return bytes(sink.getvalue().to_pybytes())


def _command(stdin: BinaryIO) -> dict[str, Any] | None:
    line = stdin.readline(protocol.MAX_LINE_BYTES)
    return decode_line(line, "the command") if line else None


def _serve_reader(reader: DataReader, config: dict[str, Any], name: str, stdin: BinaryIO, out: Any) -> None:
    reader.initialize(config)
    schema = reader.get_schema()
    if not isinstance(schema, pa.Schema):
        raise PluginError(f"reader '{name}': get_schema() returned {type(schema).__name__}, not a pyarrow.Schema")
    if reads_changes(reader):
        _hello(out, schema, change_capabilities(reader))
        serve_changes(reader, schema, name, stdin, out, stream_batches)
        return
    _hello(out, schema)
    command = _command(stdin)
    if command is None or command.get("command") == "close":
        return
    if command.get("command") != "read":
        raise ProtocolError(f"expected the 'read' or 'close' command, got {command}")
    stream_batches(reader, schema, name, int(command.get("batch_size") or 65536), out)


def stream_batches(reader: DataReader, schema: pa.Schema, name: str, batch_size: int, out: Any) -> None:
    """Write the reader's batches (through the pump) to ``out`` as one Arrow IPC stream; raises its failure."""
    failures: list[BaseException] = []
    done = threading.Event()
    pump = _pump(reader, schema, name, batch_size)

    def produce() -> None:
        try:
            stream = pa.ipc.new_stream(out, schema)
            pump.start()
            for batch in pump:
                stream.write_batch(batch)
            stream.close()
            out.flush()
        except BaseException as exc:
            failures.append(exc)
        finally:
            done.set()

    # Read and send on threads so that SIGTERM (dativo stopping us) reaches the main thread at once;
    # serve_process then closes the reader, which cancels what it is waiting for.
    threading.Thread(target=produce, name="dativo-serve-reader", daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    finally:
        pump.cancel()
    if failures:
        raise failures[0]


class _EofWatch(protocol.EofWatchingReader):
    """dativo's stdin as Arrow reads it, noting whether the pipe ended before the end-of-stream marker."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw

    def _read(self, size: int) -> bytes:
        return self._raw.read(size)


def _serve_writer(writer: DataWriter, config: dict[str, Any], stdin: BinaryIO, out: Any) -> None:
    writer.initialize(config)
    _hello(out)
    prepared = False
    try:
        while True:
            command = _command(stdin)
            verb = None if command is None else command.get("command")
            if verb is None or verb == "abort":
                if prepared:
                    writer.abort()
                if verb == "abort":
                    out.write(encode_line({"dativo": "aborted"}))
                    out.flush()
                return
            if verb == "check":
                writer.check()
                out.write(encode_line({"dativo": "checked"}))
                out.flush()
            elif verb == "write":
                source = _EofWatch(stdin)
                stream = open_ipc_stream(source)
                prepared = True
                writer.prepare(stream.schema)
                for batch in stream:
                    writer.write_batch(batch)
                if source.hit_eof:
                    raise ProtocolError(
                        f"the Arrow IPC stream on stdin ended without the end-of-stream marker after "
                        f"{stream.stats.num_record_batches} batches; nothing was published"
                    )
            elif verb == "finalize":
                metadata = writer.finalize()
                prepared = False
                out.write(encode_line({"dativo": "result", "metadata": metadata}))
                out.flush()
                return
            else:
                raise ProtocolError(f"unknown command {command}")
    except BaseException:
        if prepared:
            try:
                writer.abort()
            except Exception:
                log.exception("abort() failed")
        raise


# ------------------------------------------------------------------------------------------------
# Arrow Flight
# ------------------------------------------------------------------------------------------------


def _flight() -> Any:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # gRPC's own stderr lines; see dativo.runtimes.flight
    import pyarrow.flight as flight

    return flight


def flight_error(exc: BaseException) -> Exception:
    """A Flight error carrying the error record of ``exc`` as JSON (parsed back by the Flight runtime)."""
    error: Exception = _flight().FlightServerError(json.dumps(error_record(exc)))
    return error


def _request(raw: bytes, kind: str) -> dict[str, Any]:
    request = decode_line(raw, "the Flight request")
    if request.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {request.get('protocol')}; this server speaks 1")
    if request.get("kind") != kind:
        raise ProtocolError(f"this server hosts a {kind}, the job uses it as a {request.get('kind')}")
    if not isinstance(request.get("config"), dict):
        raise ProtocolError("the request has no 'config' object")
    return request


class PluginFlightServer(_flight().FlightServerBase):  # type: ignore[misc]  # pyarrow ships no types
    """An Arrow Flight server hosting one plugin class (a fresh instance per call).

    Requests (descriptor command, ticket, action body) are the JSON of the
    process protocol's handshake: ``{"protocol": 1, "kind": ..., "config": {...}}``
    (a ticket adds ``batch_size``). With ``token``, every call must carry
    ``authorization: Bearer <token>``. Plugin failures reach the client as
    ``FlightServerError`` whose message is the error record.
    """

    def __init__(
        self,
        plugin_cls: type,
        location: str,
        *,
        tls_certificates: list[tuple[bytes, bytes]] | None = None,
        token: str | None = None,
        name: str | None = None,
    ) -> None:
        self.plugin_cls = plugin_cls
        self.kind = _kind_of(plugin_cls)
        self.name = name or plugin_cls.__name__
        middleware = {"auth": _TokenCheck(token)} if token else None
        super().__init__(location, tls_certificates=tls_certificates or [], middleware=middleware)
        self.sessions = ChangeSessions(self._reader)

    def shutdown(self) -> None:
        """Stop serving and close the change sessions still open."""
        super().shutdown()
        self.sessions.close_all()

    def _reader(self, config: Mapping[str, Any]) -> DataReader:
        reader: DataReader = self.plugin_cls()
        try:
            reader.initialize(config)
        except BaseException:
            reader.close()
            raise
        return reader

    def get_schema(self, context: Any, descriptor: Any) -> Any:
        """GetSchema: initialize the reader with the request's config and return its schema."""
        try:
            request = _request(descriptor.command, "reader")
            reader = self._reader(request["config"])
            try:
                return _flight().SchemaResult(reader.get_schema())
            finally:
                reader.close()
        except Exception as exc:
            raise flight_error(exc) from None

    def do_get(self, context: Any, ticket: Any) -> Any:
        """DoGet: stream the reader's batches (held to its declared schema); a change session's reader stays open."""
        try:
            request = decode_line(ticket.ticket, "the Flight ticket")
            session = request.get("session")
            if session is None:
                request = _request(ticket.ticket, "reader")
                reader = self._reader(request["config"])
            else:
                reader = self.sessions.get(session)
            schema = reader.get_schema()
        except Exception as exc:
            raise flight_error(exc) from None
        # A change session's reader lives on until 'confirm' or 'close_changes'; any other is closed here.
        done = reader.close if session is None else _nothing
        batch_size = int(request.get("batch_size") or 65536)
        pump = _pump(reader, schema, self.name, batch_size)
        finished = threading.Event()

        def watch() -> None:
            # A client that cancels or goes away must not leave the reader (and its query) running.
            while not finished.wait(0.2):
                if context.is_cancelled():
                    log.info("the client cancelled DoGet; closing reader '%s'", self.name)
                    if session is None:
                        reader.close()
                    else:
                        self.sessions.close(session)
                    return

        def batches() -> Iterator[pa.RecordBatch]:
            threading.Thread(target=watch, name="dativo-flight-cancel", daemon=True).start()
            try:
                count = 0
                pump.start()
                for batch in pump:
                    count += 1
                    yield batch
                # The end marker: a zero-row batch whose app metadata says the stream is complete.
                yield _empty_batch(schema), encode_line({"dativo": "end", "batches": count})
            except Exception as exc:
                raise flight_error(exc) from None
            finally:
                finished.set()
                pump.cancel()
                done()

        return _flight().GeneratorStream(schema, batches())

    def do_put(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        """DoPut: prepare, write every batch; publish on a ``finalize`` app-metadata command, else abort."""
        plugin: DataWriter | None = None
        prepared = finished = False
        try:
            request = _request(descriptor.command, "writer")
            plugin = self.plugin_cls()
            plugin.initialize(request["config"])
            plugin.prepare(reader.schema)
            prepared = True
            while True:
                try:
                    chunk = reader.read_chunk()
                except StopIteration:
                    break
                if chunk.data is not None and chunk.data.num_rows:
                    plugin.write_batch(aligned(chunk.data))
                if chunk.app_metadata is not None:
                    command = decode_line(chunk.app_metadata.to_pybytes(), "the command").get("command")
                    if command == "finalize":
                        metadata = plugin.finalize()
                        finished = True
                        writer.write(pa.py_buffer(encode_line({"dativo": "result", "metadata": metadata})))
                    elif command == "abort":
                        break
        except Exception as exc:
            raise flight_error(exc) from None
        finally:
            if plugin is not None:
                if prepared and not finished:
                    try:
                        plugin.abort()
                    except Exception:
                        log.exception("writer '%s' failed to abort", self.name)
                plugin.close()

    def do_action(self, context: Any, action: Any) -> Iterator[Any]:
        """DoAction ``check`` (initialize the plugin and check it), or a change action (``CHANGE_ACTIONS``)."""
        if action.type in CHANGE_ACTIONS and self.kind == "reader":
            try:
                body = decode_line(action.body.to_pybytes(), f"the body of action {action.type!r}")
                if action.type == "open_changes":
                    body = _request(action.body.to_pybytes(), "reader")
                answer = change_action(self.sessions, action.type, body)
            except Exception as exc:
                raise flight_error(exc) from None
            return iter([_flight().Result(pa.py_buffer(encode_line(answer)))])
        if action.type != "check":
            raise _flight().FlightServerError(f"unknown action {action.type!r}")
        try:
            request = _request(action.body.to_pybytes(), self.kind)
            plugin = self.plugin_cls()
            try:
                plugin.initialize(request["config"])
                if self.kind == "writer":
                    plugin.check()
                else:
                    plugin.get_schema()
            finally:
                plugin.close()
        except Exception as exc:
            raise flight_error(exc) from None
        return iter([_flight().Result(pa.py_buffer(b'{"dativo":"checked"}'))])


def _nothing() -> None:
    """What ends a DoGet on a change session's reader: nothing (``confirm`` or ``close_changes`` closes it)."""


class _TokenCheck(_flight().ServerMiddlewareFactory):  # type: ignore[misc]  # pyarrow ships no types
    def __init__(self, token: str) -> None:
        super().__init__()
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info: Any, headers: Mapping[str, list[Any]]) -> None:
        for value in headers.get("authorization", []):
            given = value.encode() if isinstance(value, str) else bytes(value)
            if hmac.compare_digest(given, self._expected):
                return None
        raise _flight().FlightUnauthenticatedError("missing or wrong bearer token")


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m dativo.runtimes.serve {process,flight} IMPLEMENTATION [...]``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="dativo serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["process", "flight"])
    parser.add_argument("implementation", help="entry-point name, pkg.mod.Class or path/file.py:Class")
    parser.add_argument("--kind", choices=["reader", "writer"], default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8815)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--token-file", type=Path, help="file holding the bearer token clients must send")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        plugin_cls = _resolve(args.implementation, args.kind)
    except DativoError as exc:
        if args.mode == "process":
            _write_error(exc)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return protocol.EXIT_FAILED
    _gc.startup_done()  # a long-lived server: the `dativo` command's start-up GC deferral ends here (dativo._gc)
    if args.mode == "process":
        code = serve_process(plugin_cls, args.implementation)
        # Skip interpreter finalization: native drivers' threads must not outlive a protocol that is done.
        sys.stderr.flush()
        os._exit(code)
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            print("error: give both --tls-cert and --tls-key", file=sys.stderr)
            return 2
        tls = [(args.tls_cert.read_bytes(), args.tls_key.read_bytes())]
    token = args.token_file.read_text().strip() if args.token_file else None
    scheme = "grpc+tls" if tls else "grpc"
    server = PluginFlightServer(plugin_cls, f"{scheme}://{args.host}:{args.port}", tls_certificates=tls, token=token)
    print(f"serving {args.implementation} on {scheme}://{args.host}:{server.port}", file=sys.stderr, flush=True)
    server.serve()  # returns on SIGINT/SIGTERM (pyarrow serves with signals) or shutdown()
    server.sessions.close_all()
    # As for process plugins: skip interpreter finalization, so gRPC's and native drivers' threads
    # cannot hold up the exit a scheduler's SIGTERM asked for.
    sys.stderr.flush()
    os._exit(0)


def _resolve(implementation: str, kind: str | None) -> type:
    kinds: list[PluginKind] = [kind] if kind in ("reader", "writer") else ["reader", "writer"]  # type: ignore[list-item]
    last: DativoError | None = None
    for candidate in kinds:
        try:
            return resolve_plugin(candidate, implementation, Path.cwd()).cls
        except PluginError as exc:
            last = exc
    assert last is not None
    raise last


if __name__ == "__main__":
    sys.exit(main())
