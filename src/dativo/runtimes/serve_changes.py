"""The plugin side of change readers over the process and Flight protocols (``docs/process-protocol.md``).

A Python :class:`dativo.ChangeReader` served by ``dativo serve process`` says so in its hello
(``"capabilities": ["changes"]``) and then answers the change commands one JSON line each:
``change_keys``, ``check_changes``, ``begin_changes``, ``read`` (the batches, as for any reader;
the plugin stays alive afterwards), and ``confirm`` (after dativo committed), after which it exits.
Over Flight the same calls are actions on a *session* that holds one reader from
``open_changes`` to ``confirm`` or ``close`` (see :class:`ChangeSessions`).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import pyarrow as pa

from dativo._faults import crash_point
from dativo.errors import ConfigError, PluginError
from dativo.runtimes import protocol
from dativo.runtimes.protocol import CHANGES, CHANGES_TOGETHER, ProtocolError, decode_line, encode_line
from dativo.sdk import ChangeReader, DataReader

__all__ = [
    "CHANGES",
    "CHANGE_ACTIONS",
    "ChangeSessions",
    "answer_change_command",
    "change_action",
    "change_capabilities",
    "reads_changes",
    "serve_changes",
]

#: The Flight actions of a change session (``open_changes`` starts one, ``close_changes`` ends one).
CHANGE_ACTIONS = frozenset(
    {"open_changes", "change_keys", "check_changes", "begin_changes", "confirm", "close_changes"}
)

#: Streams a reader's batches to ``out`` (``dativo.runtimes.serve.stream_batches``).
StreamBatches = Callable[[DataReader, pa.Schema, str, int, Any], None]


def reads_changes(reader: object) -> bool:
    """True when ``reader`` implements :class:`dativo.ChangeReader`."""
    return isinstance(reader, ChangeReader) and hasattr(reader, "check_changes")


def answer_change_command(reader: Any, command: Mapping[str, Any]) -> dict[str, Any]:
    """Run one change command (not ``read``) on ``reader``; the answer line. Raises the reader's error.

    Raises ProtocolError for an unknown command or arguments of the wrong shape.
    """
    verb = command.get("command")
    keys = command.get("keys")
    names = isinstance(keys, list) and all(isinstance(k, str) for k in keys)
    if verb in ("check_changes", "begin_changes") and not names:
        raise ProtocolError(f"'{verb}' needs 'keys', a list of column names; got {keys!r}")
    if verb == "change_keys":
        return {"dativo": "change_keys", "keys": [str(k) for k in reader.change_keys()]}
    if verb == "check_changes":
        return {"dativo": "change_problems", "problems": [str(p) for p in reader.check_changes(keys)]}
    if verb == "begin_changes":
        committed = command.get("committed")
        if committed is not None and not isinstance(committed, dict):
            raise ProtocolError(f"'begin_changes' needs 'committed', an object or null; got {committed!r}")
        start = dict(reader.begin_changes(committed, keys))
        if not isinstance(start.get("position"), Mapping):
            raise PluginError(f"begin_changes() returned no 'position' object: {str(start)[:200]}")
        return {"dativo": "started", "start": start}
    if verb == "confirm":
        position = command.get("position")
        if not isinstance(position, dict):
            raise ProtocolError(f"'confirm' needs 'position', an object; got {position!r}")
        crash_point("serve_confirm")  # the crash tests' point: committed by dativo, not yet confirmed
        return {"dativo": "confirmed", "facts": dict(reader.confirm(position) or {})}
    raise ProtocolError(f"unknown change command {dict(command)}")


def change_capabilities(reader: object) -> list[str]:
    """A change reader's hello capabilities: ``changes``, and ``changes_together`` if it starts several tables."""
    together = hasattr(reader, "begin_changes_together") and hasattr(reader, "least_position")
    return [CHANGES, CHANGES_TOGETHER] if together else [CHANGES]


def serve_changes(
    reader: DataReader, schema: pa.Schema, name: str, stdin: BinaryIO, out: Any, stream: StreamBatches
) -> None:
    """Answer change commands on ``stdin`` until ``confirm`` (answered), ``close`` or the end of stdin.

    After ``begin_changes_together`` the other tables' readers live in this process (initialized
    with the configs dativo sent) and ``read`` with ``member`` streams theirs; they are closed on return.
    Raises the reader's failure or ProtocolError (the caller writes the error record and exits 1).
    """
    members: list[DataReader] = []
    started = False
    try:
        while True:
            line = stdin.readline(protocol.MAX_LINE_BYTES)
            if not line:
                return
            command = decode_line(line, "the command")
            verb = command.get("command")
            if verb == "close":
                return
            if verb == "read":
                member = command.get("member")
                if member is None:
                    target = reader
                elif isinstance(member, int) and 0 < member <= len(members):
                    target = members[member - 1]
                else:
                    raise ProtocolError(f"'read' names member {member!r}; {len(members)} tables were started with this")
                stream(target, target.get_schema(), name, int(command.get("batch_size") or 65536), out)
                if not started:  # an ordinary read (no change run): exit after the stream, as any reader
                    return
                continue
            if verb == "begin_changes_together":
                answer = _begin_together(reader, command, members)
            elif verb == "least_position":
                positions = command.get("positions")
                if not isinstance(positions, list) or not positions:
                    raise ProtocolError(f"'least_position' needs 'positions', a non-empty list; got {positions!r}")
                least = dict(reader.least_position(positions))  # type: ignore[attr-defined]
                answer = {"dativo": "least_position", "position": least}
            else:
                answer = answer_change_command(reader, command)
            started |= verb in ("begin_changes", "begin_changes_together")
            out.write(encode_line(answer))
            out.flush()
            if verb == "confirm":
                return
    finally:
        for member_reader in members:
            member_reader.close()


def _begin_together(reader: Any, command: Mapping[str, Any], members: list[DataReader]) -> dict[str, Any]:
    """``begin_changes_together``: initialize a reader per other table, start them all with ``reader``."""
    if not hasattr(reader, "begin_changes_together"):
        raise ProtocolError("this reader cannot start several tables of one slot ('changes_together')")
    given = command.get("members")
    held = command.get("held") or []
    if not isinstance(given, list) or not all(isinstance(m, dict) and isinstance(m.get("config"), dict) for m in given):
        raise ProtocolError("'begin_changes_together' needs 'members', a list of {config, committed, keys}")
    group: list[tuple[Any, Any, list[str]]] = [(reader, command.get("committed"), list(command.get("keys") or []))]
    for member in given:
        other = type(reader)()
        members.append(other)
        other.initialize(member["config"])
        group.append((other, member.get("committed"), list(member.get("keys") or [])))
    starts = [dict(start) for start in reader.begin_changes_together(group, held)]
    return {"dativo": "started_together", "starts": starts}


class ChangeSessions:
    """Change readers a Flight server keeps between calls, by session id; idle ones are closed.

    ``open`` initializes a fresh reader (raising ConfigError when it reads no changes) and
    returns its id; ``get`` finds one (PluginError for an unknown or expired id); ``close``
    ends one. A session idle for more than ``idle_s`` is closed at the next ``open``.
    """

    def __init__(self, factory: Callable[[Mapping[str, Any]], DataReader], idle_s: float = 3600.0) -> None:
        self._factory = factory
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[DataReader, float]] = {}

    def open(self, config: Mapping[str, Any]) -> tuple[str, DataReader]:
        """A new session holding an initialized change reader; raises its failure."""
        self._expire()
        reader = self._factory(config)
        if not reads_changes(reader):
            reader.close()
            raise ConfigError("this Flight server's reader cannot read changes (it does not implement ChangeReader)")
        session = secrets.token_hex(16)
        with self._lock:
            self._sessions[session] = (reader, time.monotonic())
        return session, reader

    def get(self, session: object) -> DataReader:
        """The session's reader; raises PluginError for an unknown, closed or expired session."""
        with self._lock:
            found = self._sessions.get(str(session))
            if found is None:
                raise PluginError(f"no change session {str(session)[:40]!r} (closed, expired or never opened)")
            self._sessions[str(session)] = (found[0], time.monotonic())
            return found[0]

    def close(self, session: object) -> None:
        """Close the session's reader; an unknown session is ignored."""
        with self._lock:
            found = self._sessions.pop(str(session), None)
        if found is not None:
            found[0].close()

    def close_all(self) -> None:
        """Close every session (the server is shutting down)."""
        with self._lock:
            readers = [reader for reader, _ in self._sessions.values()]
            self._sessions.clear()
        for reader in readers:
            reader.close()

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [s for s, (_, used) in self._sessions.items() if now - used > self._idle_s]
            readers = [self._sessions.pop(s)[0] for s in stale]
        for reader in readers:
            reader.close()


def change_action(sessions: ChangeSessions, verb: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """Answer one Flight change action (``body`` is the request, or ``{"session": ..., ...}``).

    ``open_changes`` opens a session with the request's ``config``; ``confirm`` and ``close_changes``
    close it (``confirm`` after answering). Raises the reader's failure, PluginError for an unknown
    session, ProtocolError for a malformed body.
    """
    if verb == "open_changes":
        config = body.get("config")
        if not isinstance(config, dict):
            raise ProtocolError("'open_changes' needs the request's 'config' object")
        opened, _ = sessions.open(config)
        return {"dativo": "opened", "session": opened, "capabilities": [CHANGES]}
    session = body.get("session")
    if verb == "close_changes":
        sessions.close(session)
        return {"dativo": "closed"}
    reader = sessions.get(session)
    try:
        return answer_change_command(reader, {**body, "command": verb})
    finally:
        if verb == "confirm":
            sessions.close(session)
