"""Run one command and record its wall time, peak RSS and CPU time (a helper of ``run.py``).

    python -I -S benchmarks/_launch.py RESULT_FILE COMMAND [ARG ...]

Writes ``key=value`` lines to RESULT_FILE and exits with the command's status.

Why a separate, small process: Linux charges a new process's ``ru_maxrss``
with the resident size of the process it was forked (or vforked) from, because
the pre-``exec`` memory counts towards the high-water mark. Forked from
``run.py`` (which has pyarrow, pyiceberg and psycopg loaded) every child would
report at least ``run.py``'s size. Forked from this bare interpreter
(``-I -S``: no site packages, only built-in modules) the error is bounded by
this process's few MB, which ``run.py`` measures with ``true`` and reports as
the measurement floor. ``os.wait4`` then gives the exact rusage of that one
child (and of any descendants it reaped).
"""

import os
import sys
import time


def main() -> int:
    """Fork, exec the command, reap it with wait4 and write the figures."""
    result_file, argv = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"cannot run {argv[0]!r}: {exc}\n".encode())
        os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    with open(result_file, "w") as fh:
        fh.write(
            f"exit_code={code}\nwall_s={wall!r}\nmaxrss_kb={usage.ru_maxrss}\n"
            f"user_s={usage.ru_utime!r}\nsys_s={usage.ru_stime!r}\n"
        )
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
