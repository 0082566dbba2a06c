"""Classify perf samples into client-CPU categories (docs/performance.md, session 4).

`perf script -F comm,tid,ip,sym,dso > s.txt; python benchmarks/perf_categories.py s.txt [hz]`
"""

import collections
import re
import sys

RULES = [  # (category, predicate over (comm, frames[list of (sym, dso)]))
]


def classify(comm, frames):
    syms = " ".join(s for s, d in frames)
    dsos = " ".join(d for s, d in frames)
    leaf_sym, leaf_dso = frames[0] if frames else ("?", "?")
    if comm.startswith("dativo-postgres"):
        if "[kernel" in leaf_dso:
            return "rust reader: kernel (socket recv, page faults)"
        if re.search(r"tokio|futures|postgres_protocol|tokio_postgres|bytes::|CopyOut", leaf_sym):
            return "rust reader: protocol/tokio (rust-postgres)"
        if "numeric" in leaf_sym:
            return "rust reader: numeric decode"
        if "mi_" in leaf_sym or "mimalloc" in leaf_sym or "_mi_" in leaf_sym:
            return "rust reader: allocator"
        if "memmove" in leaf_sym or "memcpy" in leaf_sym:
            return "rust reader: memcpy"
        return "rust reader: COPY decode (push, tuple scan, utf8)"
    if "libadbc_driver_postgresql" in dsos or "libpq" in dsos:
        return "ADBC driver: COPY decode (+libpq)"
    if re.search(r"ZSTD_|HUF_|HIST_|FSE_|zstd", syms):
        return "Parquet: zstd compression"
    if "libparquet" in dsos:
        return "Parquet: encoding (dict, levels, stats)"
    if "libarrow_python" in dsos and "libarrow.so" in leaf_dso:
        return "Arrow compute via Python (casts, conversions)"
    if "libarrow.so" in leaf_dso or "libarrow_compute" in leaf_dso:
        return "Arrow (compute/casts/concat, not Parquet)"
    if "[kernel" in leaf_dso:
        return "kernel (file writes, page faults, other)"
    if "gc_collect" in syms:
        return "Python: gc"
    if "libpython" in dsos or "python" in dsos:
        return "Python interpreter (imports, engine, writer glue)"
    return "other native: " + leaf_dso.split("/")[-1]


def main(path):
    cats = collections.Counter()
    total = 0
    comm = None
    frames = []

    def flush():
        nonlocal total
        if comm is not None:
            cats[classify(comm, frames)] += 1
            total += 1

    with open(path, errors="replace") as f:
        lines = f.readlines()
    for line in lines:
        if not line.strip():
            flush()
            comm = None
            frames = []
            continue
        if not line.startswith((" ", "\t")):
            comm = line.split()[0] if line.split() else "?"
            # comm may contain spaces; perf prints comm then pid
            m = re.match(r"^(.*?)\s+\d+(/\d+)?\s", line)
            comm = m.group(1).strip() if m else comm
            frames = []
        else:
            m = re.match(r"\s*[0-9a-f]+\s+(.*)\s+\((.*)\)\s*$", line)
            if m:
                frames.append((m.group(1), m.group(2)))
    flush()
    hz = float(sys.argv[2]) if len(sys.argv) > 2 else 499
    print(f"{'category':60s} {'share':>6s} {'CPU s':>6s}")
    for c, n in cats.most_common():
        print(f"{c:60s} {100 * n / total:5.1f}% {n / hz:6.2f}")
    print(f"{'total (cpu-clock samples / rate)':60s} {100:5.1f}% {total / hz:6.2f}")


main(sys.argv[1])
