"""The process protocol's codec (runtimes/protocol.py): JSON lines, error records, aligned IPC."""

from __future__ import annotations

import io

import pyarrow as pa
import pytest

from dativo.errors import PluginError, SourceError, TargetError
from dativo.runtimes.protocol import (
    ProtocolError,
    aligned,
    decode_line,
    encode_line,
    error_from_record,
    error_record,
    open_ipc_stream,
)


def test_lines_round_trip_and_garbage_is_named():
    message = {"dativo": "hello", "text": "line\nbreak", "n": 1}
    line = encode_line(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_line(line, "the hello") == message
    with pytest.raises(ProtocolError, match="the hello is not a JSON line"):
        decode_line(b"\x00garbage", "the hello")
    with pytest.raises(ProtocolError, match="not an object"):
        decode_line(b"[1]", "the hello")


def test_error_records_keep_class_hint_and_transient_flag():
    record = error_record(SourceError("gone", hint="retry later", transient=True))
    rebuilt = error_from_record(record, "reader 'x': ", SourceError)
    assert isinstance(rebuilt, SourceError) and rebuilt.transient and rebuilt.hint == "retry later"
    assert str(rebuilt).startswith("reader 'x': gone")
    foreign = error_record(ValueError("bad"))
    assert foreign["error"] == "PluginError" and not foreign["transient"]
    # A plugin's generic failure is reported as the side's own error type.
    assert isinstance(error_from_record(foreign, "", TargetError), TargetError)
    assert isinstance(error_from_record({"error": "NoSuchError"}, "", PluginError), PluginError)
    assert error_record(ConnectionResetError("reset"))["transient"] is True


def test_ipc_batches_come_back_aligned():
    batch = pa.record_batch({"i": pa.array([1, 2, 3], pa.int64()), "s": pa.array(["a", None, "c"])})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    read = list(open_ipc_stream(pa.BufferReader(sink.getvalue())))
    assert len(read) == 1 and read[0].equals(batch)
    assert aligned(read[0]) is read[0]  # already aligned: no copy
