"""The Flight runtime: a reader or writer served by an Arrow Flight (gRPC) endpoint, here or on another machine.

Requests carry the process protocol's handshake as JSON (``{"protocol": 1,
"kind": ..., "config": {...}}``): in the ``GetSchema`` descriptor and the
``DoGet`` ticket (plus ``batch_size``) for a reader, in the ``DoPut``
descriptor and the ``check`` action for a writer. A writer's batches end with
an app-metadata message ``{"command": "finalize"}`` (or ``abort``); the server
answers ``finalize`` with ``{"dativo": "result", "metadata": {...}}``. The
endpoint is ``grpc://host:port`` or ``grpc+tls://host:port`` (``tls.ca_file``,
``tls.server_name``); ``token`` is sent as ``authorization: Bearer <token>``.
:mod:`dativo.runtimes.serve` serves any Python plugin this way.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

# gRPC's own logging goes straight to stderr from C++ (a dozen lines for one failed TLS handshake,
# before dativo's one error line). Silence it before gRPC starts, unless the user chose a level.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import pyarrow as pa  # after the environment above
import pyarrow.flight as flight

from dativo.core.hosting import ClassRuntime
from dativo.core.registry import PluginPlan
from dativo.errors import ConfigError, DativoError, PluginError, SourceError, TargetError
from dativo.runtimes import protocol
from dativo.runtimes.protocol import PROTOCOL_VERSION, ProtocolError, decode_line, encode_line
from dativo.sdk import DataReader, DataWriter, PluginConfig

__all__ = ["FlightReader", "FlightWriter", "runtime"]

log = logging.getLogger("dativo.runtimes.flight")


#: A TLS failure in a gRPC message: terminal (retrying cannot make a certificate trusted).
_TLS_FAILURE = re.compile(
    r"(certificate verify failed|CERTIFICATE_VERIFY_FAILED|certificate (has expired|is not yet valid)|"
    r"Peer name \S+ is not in peer certificate|wrong version number|unknown ca|bad certificate)[^.\n]*",
    re.IGNORECASE,
)


class _Connection:
    """A Flight client for one plugin plus the call options (token, timeout) and error translation."""

    def __init__(self, plan: PluginPlan, kind: str) -> None:
        spec = plan.spec
        if spec is None or spec.endpoint is None:
            raise PluginError(f"{kind} '{plan.ref.name}': type flight needs 'endpoint'")
        self.kind = kind
        self.label = f"{kind} plugin '{plan.ref.name}'" + (
            f" ({spec.endpoint})" if plan.ref.name != spec.endpoint else ""
        )
        self.error_cls: type[DativoError] = SourceError if kind == "reader" else TargetError
        kwargs: dict[str, Any] = {}
        if spec.tls.ca_file is not None:
            path = Path(spec.tls.ca_file).expanduser()
            if not path.is_absolute():
                path = Path(str(plan.config.get("job", {}).get("dir", "."))) / path
            try:
                kwargs["tls_root_certs"] = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{self.label}: cannot read tls.ca_file {path}: {exc.strerror}") from None
        if spec.tls.server_name is not None:
            kwargs["override_hostname"] = spec.tls.server_name
        headers = [(b"authorization", f"Bearer {spec.token}".encode())] if spec.token else []
        self.options = flight.FlightCallOptions(headers=headers, timeout=spec.timeouts.total_s)
        try:
            self.client = flight.FlightClient(spec.endpoint, **kwargs)
        except (pa.ArrowException, OSError) as exc:
            raise ConfigError(f"{self.label}: cannot create a Flight client: {exc}") from None

    def request(self, config: PluginConfig, **extra: Any) -> bytes:
        message = {"protocol": PROTOCOL_VERSION, "kind": self.kind, "config": dict(config), **extra}
        return encode_line(message)

    def error(self, exc: BaseException, doing: str) -> DativoError:
        """Translate a Flight/Arrow exception into one dativo error naming the plugin."""
        text = str(exc)
        start = text.find('{"dativo"')
        if start >= 0:
            try:
                record, _ = json.JSONDecoder().raw_decode(text[start:])
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and record.get("dativo") == "error":
                return protocol.error_from_record(record, f"{self.label}: ", self.error_cls)
        first = text.splitlines()[0] if text else type(exc).__name__
        # pyarrow does not always raise the specific class; the gRPC status is in the message's "Detail:".
        status = text.rsplit("Detail: ", 1)[-1].strip() if "Detail: " in text else ""
        if status in ("Unauthenticated", "Unauthorized"):
            first = first.split(". Detail:")[0]
        if isinstance(exc, flight.FlightUnauthenticatedError | flight.FlightUnauthorizedError) or status in (
            "Unauthenticated",
            "Unauthorized",
        ):
            return PluginError(
                f"{self.label} refused the call ({doing}): {first}",
                hint="check the plugin's 'token' (a bearer token)",
            )
        tls = _TLS_FAILURE.search(text)
        if tls is not None:
            return PluginError(
                f"{self.label} failed the TLS handshake ({doing}): {tls.group(0).rstrip('. ')}",
                hint="the server's certificate is not trusted or names another host: check tls.ca_file "
                "and tls.server_name",
            )
        if isinstance(exc, flight.FlightUnavailableError) or status == "Unavailable":
            return self.error_cls(
                f"{self.label} is unreachable ({doing}): {first}",
                hint="check 'endpoint', that the server runs, and its TLS settings",
                transient=True,
            )
        if isinstance(exc, flight.FlightTimedOutError) or status == "DeadlineExceeded":
            return PluginError(f"{self.label} ran longer than timeouts.total_s ({doing})")
        return self.error_cls(f"{self.label} failed ({doing}): {type(exc).__name__}: {first}")

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            log.debug("closing the Flight client of %s failed", self.label, exc_info=True)


class FlightReader(DataReader):
    """A reader behind a Flight endpoint: ``GetSchema`` in ``initialize``, ``DoGet`` in ``read_batch``."""

    def __init__(self, plan: PluginPlan) -> None:
        self._plan = plan
        self._conn: _Connection | None = None
        self._schema: pa.Schema | None = None
        self._stream: Any = None
        self._closing = threading.Lock()  # close() and read_batch's start: a DoGet is cancelled either way
        self._session: str | None = None
        self._changes: bool | None = None

    def initialize(self, config: PluginConfig) -> None:
        """Ask the endpoint for the schema (the server initializes the reader); raises its failure."""
        self.config = config
        self._conn = conn = _Connection(self._plan, "reader")
        descriptor = flight.FlightDescriptor.for_command(conn.request(config))
        try:
            self._schema = conn.client.get_schema(descriptor, conn.options).schema
        except (pa.ArrowException, OSError) as exc:
            raise conn.error(exc, "getting the schema") from None

    def get_schema(self) -> pa.Schema:
        """The schema the endpoint declared; raises PluginError before ``initialize``."""
        if self._schema is None:
            raise SourceError(f"reader '{self._plan.ref.name}' was not initialized")
        return self._schema

    def read_batch(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Stream the batches of one ``DoGet``; raises the server's failure (never ends early)."""
        conn = self._conn
        if conn is None:
            raise PluginError(f"reader '{self._plan.ref.name}' is closed")
        if self._session is not None:  # a change session: the batches of its begin_changes
            ticket = flight.Ticket(encode_line({"session": self._session, "batch_size": int(batch_size)}))
        else:
            ticket = flight.Ticket(conn.request(self.config, batch_size=int(batch_size)))
        ended = False
        batches = 0
        try:
            stream = conn.client.do_get(ticket, conn.options)
            with self._closing:  # close() from another thread while do_get was starting: cancel now
                if self._conn is None:
                    stream.cancel()
                    raise SourceError(f"{conn.label} was closed while reading")
                self._stream = stream
            while True:
                try:
                    chunk = stream.read_chunk()
                except StopIteration:
                    break
                if ended:
                    raise ProtocolError(f"{conn.label} sent data after its end-of-stream marker")
                if chunk.app_metadata is not None:
                    marker = decode_line(chunk.app_metadata.to_pybytes(), f"{conn.label}'s stream metadata")
                    ended = marker.get("dativo") == "end"
                    if ended and marker.get("batches") not in (None, batches):
                        raise ProtocolError(
                            f"{conn.label} says it sent {marker.get('batches')} batches; {batches} arrived"
                        )
                if chunk.data is not None and chunk.data.num_rows:
                    batches += 1
                    yield chunk.data
        except (pa.ArrowException, OSError) as exc:
            if self._conn is None:
                raise SourceError(f"{conn.label} was closed while reading") from None
            raise conn.error(exc, "streaming batches") from None
        finally:
            self._stream = None
        if not ended:
            raise ProtocolError(
                f"{conn.label}'s DoGet stream ended without the end-of-stream marker after {batches} batches "
                '(a zero-row batch with app metadata {"dativo": "end"}); the stream was cut short',
                hint="a Flight reader must end its stream with that marker (see docs/process-protocol.md)",
            )

    # -- dativo.ChangeReader, for a server whose reader reads changes (a change session) -------------

    @property
    def reads_changes(self) -> bool:
        """True when the server's reader reads changes; opens the change session the run then uses.

        An older server (no ``open_changes`` action) reads none; other failures raise as dativo errors.
        """
        if self._changes is None:
            conn = self._require()
            try:
                opened = self._action(conn, "open_changes", conn.request(self.config), "opened", "opening changes")
            except SourceError as exc:
                if "unknown action" not in str(exc):
                    raise
                self._changes = False
            else:
                session = opened.get("session")
                if not isinstance(session, str) or not session:
                    raise ProtocolError(f"{conn.label} answered 'open_changes' without a 'session'")
                self._session, self._changes = session, True
        return self._changes

    def _require(self) -> _Connection:
        if self._conn is None:
            raise PluginError(f"reader '{self._plan.ref.name}' is closed")
        return self._conn

    def _action(self, conn: _Connection, verb: str, body: bytes, answer: str, doing: str) -> dict[str, Any]:
        try:
            results = list(conn.client.do_action(flight.Action(verb, body), conn.options))
        except (pa.ArrowException, OSError) as exc:
            raise conn.error(exc, doing) from None
        reply = decode_line(results[0].body.to_pybytes(), f"{conn.label}'s answer to {verb}") if results else {}
        if reply.get("dativo") != answer:
            raise ProtocolError(
                f'{conn.label} answered \'{verb}\' with {str(reply)[:200]}; expected {{"dativo": "{answer}", ...}}'
            )
        return reply

    def _ask(self, verb: str, answer: str, doing: str, **args: Any) -> dict[str, Any]:
        conn = self._require()
        if not self.reads_changes:
            raise ConfigError(f"source.cdc: {conn.label} cannot read changes (its server has no change sessions)")
        return self._action(conn, verb, encode_line({"session": self._session, **args}), answer, doing)

    def change_keys(self) -> list[str]:
        """The source's key columns, as the server's reader says; raises its failure."""
        keys = self._ask("change_keys", "change_keys", "naming its key").get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ProtocolError(f"{self._require().label} answered 'change_keys' without a list of column names")
        return keys

    def check_changes(self, keys: Sequence[str]) -> list[str]:
        """What stops change capture; raises the server's failure."""
        problems = self._ask("check_changes", "change_problems", "checking changes", keys=list(keys)).get("problems")
        if not isinstance(problems, list):
            raise ProtocolError(f"{self._require().label} answered 'check_changes' without a 'problems' list")
        return [str(p) for p in problems]

    def begin_changes(self, committed: Mapping[str, Any] | None, keys: Sequence[str]) -> Mapping[str, Any]:
        """What this run reads after ``committed``; the next ``read_batch`` streams it. Raises the server's failure."""
        start = self._ask(
            "begin_changes",
            "started",
            "beginning changes",
            committed=dict(committed) if committed else None,
            keys=list(keys),
        ).get("start")
        if not isinstance(start, dict) or not isinstance(start.get("position"), dict):
            raise ProtocolError(
                f"{self._require().label} answered 'begin_changes' without a 'start' holding a 'position'"
            )
        return start

    def confirm(self, position: Mapping[str, Any]) -> Mapping[str, Any]:
        """Tell the server ``position`` is committed (it then closes the session); raises its failure."""
        try:
            facts = self._ask("confirm", "confirmed", "confirming", position=dict(position)).get("facts")
        finally:
            self._session = None  # the server closes the session on confirm, answered or not
        if not isinstance(facts, dict):
            raise ProtocolError(f"{self._require().label} answered 'confirm' without a 'facts' object")
        return facts

    def close(self) -> None:
        """Cancel a running ``DoGet`` (the server then closes its reader), end the change session, close the client.

        Idempotent; never raises.
        """
        session, self._session = self._session, None
        if session is not None and self._conn is not None:
            try:
                self._conn.client.do_action(
                    flight.Action("close_changes", encode_line({"session": session})), self._conn.options
                )
            except Exception:
                log.debug("closing the change session of %s failed", self._plan.ref.name, exc_info=True)
        with self._closing:
            conn, self._conn = self._conn, None
            stream = self._stream
        if stream is not None:
            try:
                stream.cancel()
            except Exception:
                log.debug("cancelling the DoGet of %s failed", self._plan.ref.name, exc_info=True)
        if conn is not None:
            conn.close()


class FlightWriter(DataWriter):
    """A writer behind a Flight endpoint: one ``DoPut`` from ``prepare`` to ``finalize``/``abort``."""

    def __init__(self, plan: PluginPlan) -> None:
        self._plan = plan
        self._conn: _Connection | None = None
        self._put: Any = None
        self._answers: Any = None

    def initialize(self, config: PluginConfig) -> None:
        """Create the client (the server initializes the writer at ``prepare``)."""
        self.config = config
        self._conn = _Connection(self._plan, "writer")

    def _require(self) -> _Connection:
        if self._conn is None:
            raise PluginError(f"writer '{self._plan.ref.name}' is closed")
        return self._conn

    def check(self) -> None:
        """``DoAction('check')``: the server initializes the writer and runs its check; raises its failure."""
        conn = self._require()
        try:
            results = list(conn.client.do_action(flight.Action("check", conn.request(self.config)), conn.options))
        except (pa.ArrowException, OSError) as exc:
            raise conn.error(exc, "checking") from None
        if not results or decode_line(results[0].body.to_pybytes(), "the check answer").get("dativo") != "checked":
            raise ProtocolError(f"{conn.label} answered 'check' without {{'dativo': 'checked'}}")

    def prepare(self, schema: pa.Schema) -> None:
        """Open the ``DoPut`` stream with ``schema``; raises the server's failure."""
        conn = self._require()
        descriptor = flight.FlightDescriptor.for_command(conn.request(self.config))
        try:
            self._put, self._answers = conn.client.do_put(descriptor, schema, conn.options)
        except (pa.ArrowException, OSError) as exc:
            raise conn.error(exc, "preparing") from None

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Send one batch; raises the server's failure."""
        conn = self._require()
        if self._put is None:
            raise PluginError(f"{conn.label}: write_batch() before prepare()")
        try:
            self._put.write_batch(batch)
        except (pa.ArrowException, OSError) as exc:
            raise self._failure(conn, exc, "writing batches") from None

    def _failure(self, conn: _Connection, exc: BaseException, doing: str) -> DativoError:
        # A write fails as soon as the server gave up; its own error arrives when the call is closed.
        put, self._put = self._put, None
        if put is not None:
            try:
                put.close()
            except (pa.ArrowException, OSError) as closing:
                return conn.error(closing, doing)
        return conn.error(exc, doing)

    def finalize(self) -> dict[str, Any]:
        """Send ``finalize``, return the server's metadata; raises its failure."""
        conn = self._require()
        if self._put is None:
            raise PluginError(f"{conn.label}: finalize() before prepare()")
        try:
            self._put.write_metadata(pa.py_buffer(encode_line({"command": "finalize"})))
            self._put.done_writing()
            answer = self._answers.read()
            put, self._put = self._put, None
            put.close()
        except (pa.ArrowException, OSError) as exc:
            raise self._failure(conn, exc, "finalizing") from None
        if answer is None:
            raise ProtocolError(f"{conn.label} ended the call without answering 'finalize'")
        result = decode_line(answer.to_pybytes(), f"{conn.label}'s answer to finalize")
        if result.get("dativo") != "result" or not isinstance(result.get("metadata"), dict):
            raise ProtocolError(f"{conn.label} answered 'finalize' with {str(result)[:200]}")
        return dict(result["metadata"])

    def abort(self) -> None:
        """Tell the server to discard what it staged (it also does when the call breaks); never raises."""
        put, self._put = self._put, None
        if put is None:
            return
        try:
            put.write_metadata(pa.py_buffer(encode_line({"command": "abort"})))
            put.done_writing()
            put.close()
        except Exception:
            log.debug("abort of the Flight writer ended with an error", exc_info=True)

    def close(self) -> None:
        """Close the call and the client; idempotent."""
        self.abort()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


#: The ``flight`` runtime (reached through :data:`dativo.runtimes.flight_runtime`, which imports this module
#: at first use): a reader's ``initialize`` reads the endpoint's schema, a writer's only creates the client;
#: failures raise as dativo errors (ConfigError/PluginError when the endpoint cannot be reached).
runtime = ClassRuntime(FlightReader, FlightWriter)
