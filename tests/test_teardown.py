"""The ``dativo`` command's exit (issue 15, dativo._entry.finish): a command that succeeded joins its threads,
runs every atexit handler and flushes stdout/stderr, then exits without the interpreter's teardown; any other
exit is the interpreter's own, as before. Each test runs the real command in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_startup import sqlite_source, write_job

# Runs `python -m dativo ARGS` with what an embedding process may have set up: an atexit handler, a
# non-daemon thread still working, and an object only the interpreter's teardown frees. Each leaves a file.
_WRAPPER = """
import atexit, os, runpy, sys, threading, time
out = os.environ["DATIVO_TEST_OUT"]
def mark(name):
    with open(os.path.join(out, name), "w") as file:
        file.write(name)
atexit.register(mark, "atexit")
def late():
    time.sleep(0.5)
    mark("thread")
threading.Thread(target=late).start()  # non-daemon: the process must wait for it
class Freed:
    def __init__(self, path):
        self.path, self.open = path, open  # module globals may be gone when the teardown frees this
    def __del__(self):
        with self.open(self.path, "w") as file:
            file.write("teardown")
_kept = Freed(os.path.join(out, "teardown"))  # referenced from __main__ until the interpreter's teardown
if os.environ.get("DATIVO_TEST_BUFFERED_STDOUT"):  # stdout that writes nothing before it is flushed
    import io
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False), 1 << 20))
    sys.stdout.write("x" * 100_000)
sys.argv = ["dativo", *sys.argv[1:]]
runpy.run_module("dativo", run_name="__main__", alter_sys=True)
"""


def dativo_in_wrapper(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = tmp_path / "marks"
    out.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", _WRAPPER, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "DATIVO_TEST_OUT": str(out), **(env or {})},
    )


def marks(tmp_path: Path) -> set[str]:
    return {path.name for path in (tmp_path / "marks").iterdir()}


def test_a_successful_run_joins_threads_runs_atexit_and_flushes_then_skips_the_teardown(tmp_path):
    job = write_job(tmp_path, sqlite_source(tmp_path))
    summary = tmp_path / "summary.json"
    result = dativo_in_wrapper(
        tmp_path, "--log-level", "info", "--log-format", "json", "run", "--quiet", job, "--summary-json", str(summary)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(summary.read_text())["rows"] == 1
    # the last log record (written by the run's end) reached stderr: logging was flushed and closed
    assert json.loads(result.stderr.strip().splitlines()[-1])["msg"] == "run finished"
    assert {"atexit", "thread"} <= marks(tmp_path)


def test_successful_output_through_a_pipe_is_complete_and_the_teardown_is_skipped(tmp_path):
    result = dativo_in_wrapper(tmp_path, "plugins", "list", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    assert {("reader", "sqlite"), ("writer", "iceberg")} <= {(row["kind"], row["name"]) for row in rows}
    assert marks(tmp_path) == {"atexit", "thread"}  # no "teardown": the objects were left to the OS


def test_a_failing_command_exits_through_the_interpreter_as_before(tmp_path):
    result = dativo_in_wrapper(tmp_path, "run", "--quiet", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert marks(tmp_path) == {"atexit", "thread", "teardown"}


def test_dativo_full_exit_keeps_the_interpreters_teardown(tmp_path):
    result = dativo_in_wrapper(tmp_path, "plugins", "list", "--json", env={"DATIVO_FULL_EXIT": "1"})
    assert result.returncode == 0 and json.loads(result.stdout)
    assert marks(tmp_path) == {"atexit", "thread", "teardown"}


def test_stdout_that_cannot_be_flushed_exits_120_as_the_interpreter_does(tmp_path):
    """A reader closed the pipe: the failed flush is reported and the exit code is 120, as without the fast exit."""
    job = write_job(tmp_path, sqlite_source(tmp_path))
    (tmp_path / "marks").mkdir()
    seen = []
    for full in ("0", "1"):
        process = subprocess.Popen(
            [sys.executable, "-c", _WRAPPER, "run", "--quiet", job, "--run-id", f"full-{full}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env={
                **os.environ,
                "DATIVO_TEST_OUT": str(tmp_path / "marks"),
                "DATIVO_TEST_BUFFERED_STDOUT": "1",
                "DATIVO_FULL_EXIT": full,
            },
        )
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # before the command writes a byte (its stdout is buffered until the flush)
        stderr = process.stderr.read()
        seen.append((process.wait(timeout=300), stderr))
    assert seen[0] == seen[1]
    code, stderr = seen[0]
    assert code == 120 and "BrokenPipeError" in stderr
    assert stderr.startswith("Exception ignored in: <_io.TextIOWrapper name=1")


def test_a_caller_of_main_goes_on_after_the_command(tmp_path):
    """``dativo._entry.main()`` (not the script's ``command()``) returns control with SystemExit, as before."""
    code = (
        "import sys\nsys.argv = ['dativo', 'plugins', 'list', '--json']\nfrom dativo._entry import main\n"
        "try:\n    main()\nexcept SystemExit as stop:\n    print('went on after', stop.code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "went on after 0", result.stderr
