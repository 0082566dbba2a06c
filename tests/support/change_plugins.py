"""The built-in postgres-cdc reader served as a process plugin that breaks the change protocol on purpose.

``python change_plugins.py MODE``: ``garbage_confirm`` answers ``confirm`` with a wrong JSON line,
``die_at_confirm`` / ``die_at_begin`` exit with code 9 on that command, ``garbage_begin`` answers
``begin_changes`` with a line that is not JSON, ``plain`` hides the ``changes`` capability (an old plugin).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from dativo.connectors.postgres.cdc.reader import PostgresChangeReader
from dativo.runtimes import serve, serve_changes
from dativo.runtimes.protocol import encode_line

MODE = sys.argv[1]
_answer = serve_changes.answer_change_command


def answer(reader: Any, command: Mapping[str, Any]) -> dict[str, Any]:
    verb = command.get("command")
    if f"die_at_{verb.removesuffix('_changes') if verb else ''}" == MODE:
        os._exit(9)
    reply = _answer(reader, command)
    if MODE == "garbage_confirm" and verb == "confirm":
        return {"dativo": "nonsense", "facts": "none"}
    return reply


def encode(message: Mapping[str, Any]) -> bytes:
    if MODE == "garbage_begin" and message.get("dativo") == "started":
        return b"this is not json\n"
    return encode_line(message)


serve_changes.answer_change_command = answer  # type: ignore[assignment]
serve_changes.encode_line = encode  # type: ignore[assignment]
if MODE == "plain":
    serve.reads_changes = lambda reader: False  # type: ignore[assignment]
code = serve.serve_process(PostgresChangeReader, "postgres-cdc")
sys.stderr.flush()
os._exit(code)
