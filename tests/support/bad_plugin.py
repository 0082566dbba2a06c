"""A process reader that speaks the protocol by hand (pyarrow + json only, like a plugin in another language).

``python bad_plugin.py MODE [ARG] [--marker TOKEN]`` behaves well (``good``) or misbehaves in one way:

* ``exit-halfway``: two batches, then exit code 3 without an error record;
* ``signal``: one batch, then SIGSEGV;
* ``garbage``: text instead of Arrow IPC;
* ``schema-change``: a batch, then a second schema (int64 -> utf8) and a batch;
* ``silent-start``: never answers the handshake;
* ``silent``: hello, then nothing after the read command (idle timeout);
* ``loop``: a batch every 0.1 s forever (total timeout);
* ``hog``: allocates memory without bound;
* ``spin``: burns CPU forever;
* ``fork``: forks ARG sleeping children, then streams (one child leaves the process group);
* ``env``: one row per environment variable it sees (name, value);
* ``connect``: connects to 127.0.0.1:ARG and streams one row saying it did.

``--marker`` only tags the command line, so tests can find leftover processes.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import sys
import time

import pyarrow as pa

SCHEMA = pa.schema([("id", pa.int64()), ("note", pa.string())])


def batch(start: int, n: int = 10, schema: pa.Schema = SCHEMA) -> pa.RecordBatch:
    ids = list(range(start, start + n))
    if schema.field(0).type == pa.string():
        return pa.record_batch([[str(i) for i in ids], ["x"] * n], schema=schema)
    return pa.record_batch([ids, [f"row {i}" for i in ids]], schema=schema)


def schema_b64(schema: pa.Schema) -> str:
    sink = pa.BufferOutputStream()
    pa.ipc.new_stream(sink, schema).close()
    return base64.b64encode(sink.getvalue().to_pybytes()).decode()


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--marker")]
    if "--marker" in sys.argv:
        args = sys.argv[1 : sys.argv.index("--marker")]
    mode = args[0]
    arg = args[1] if len(args) > 1 else None
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    handshake = json.loads(sys.stdin.buffer.readline())
    assert handshake["protocol"] == 1 and handshake["kind"] == "reader"
    if mode == "silent-start":
        time.sleep(3600)
    schema = SCHEMA
    if mode == "env":
        schema = pa.schema([("name", pa.string()), ("value", pa.string())])
    hello = {"dativo": "hello", "protocol": 1, "plugin": "bad_plugin", "schema": schema_b64(schema)}
    out.write(json.dumps(hello).encode() + b"\n")
    out.flush()
    command = json.loads(sys.stdin.buffer.readline() or b'{"command": "close"}')
    if command["command"] != "read":
        return 0
    if mode == "good":
        print("good plugin: reading 10 rows")  # print() goes to stderr: stdout carries only the protocol
    if mode == "silent":
        time.sleep(3600)
    if mode == "garbage":
        out.write(b"this is certainly not an Arrow IPC stream\n" * 100)
        out.flush()
        time.sleep(1)
        return 0
    writer = pa.ipc.new_stream(out, schema)
    if mode == "env":
        names = sorted(os.environ)
        writer.write_batch(pa.record_batch([names, [os.environ[n] for n in names]], schema=schema))
    elif mode == "connect":
        with socket.create_connection(("127.0.0.1", int(arg or 0)), timeout=5):
            writer.write_batch(pa.record_batch([[1], ["connected"]], schema=SCHEMA))
    elif mode == "fork":
        for index in range(int(arg or 10)):
            if os.fork() == 0:
                if index == 0:
                    os.setsid()  # one child tries to escape the process group
                time.sleep(3600)
                os._exit(0)
        writer.write_batch(batch(0))
    else:
        writer.write_batch(batch(0))
        out.flush()
    if mode == "exit-halfway":
        writer.write_batch(batch(10))
        out.flush()
        os._exit(3)
    if mode == "signal":
        out.flush()
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "schema-change":
        other = pa.schema([("id", pa.string()), ("note", pa.string())])
        second = pa.ipc.new_stream(out, other)
        second.write_batch(batch(10, schema=other))
        second.close()
        out.flush()
        return 0
    if mode == "loop":
        n = 10
        while True:
            writer.write_batch(batch(n))
            out.flush()
            n += 10
            time.sleep(0.1)
    if mode == "spin":
        while True:
            pass
    if mode == "hog":
        hoard = []
        while True:
            hoard.append(bytearray(32 * 1024 * 1024))
    writer.close()
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
