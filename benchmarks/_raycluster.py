"""Ray clusters with per-node limits, and per-node memory/CPU sampling (for ``ray_scale.py``).

:class:`LocalRayCluster` is the tests' cluster (``tests/support/raycluster.py``: a head node that
runs no tasks, so every partition runs on a worker node, and N worker nodes, each its own
``ray start --block`` process tree in its own session, on loopback addresses, dashboard off),
with each worker node's own resources: ``--num-cpus`` (task slots), ``--memory`` (Ray's logical
memory), ``--object-store-memory`` and optionally one pinned core (``taskset``); once up, a probe
checks every node is alive and measures Ray's bare task latency. Caveat, stated in the report:
Ray's gcs_server and raylets listen on every interface (``*:port``) whatever
``--node-ip-address`` says, and Ray canonicalises ``127.0.0.1`` in bootstrap addresses to the
machine's own address; traffic to either never leaves the machine.

:class:`NodeSampler` samples, from ``/proc`` (``tests/support/procs.py``), the summed RSS and PSS
of each node's process tree (``ray start``, gcs_server, raylet, agents, workers ...) and its CPU time.

``python _raycluster.py probe ADDRESS NODES OUT.json`` is the readiness check and the bare
Ray task-latency probe (a separate driver process, so the benchmark never joins the cluster).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (tests/ on sys.path)

from support.procs import PAGE, TICK, descendants, pss_kb, scan
from support.raycluster import RayCluster


@dataclass(frozen=True)
class NodeLimits:
    """What each worker node may use."""

    num_cpus: int = 1
    memory_mb: int = 2048
    object_store_mb: int = 256
    pin_cpus: bool = False

    def describe(self) -> str:
        pin = ", pinned to one core each (taskset)" if self.pin_cpus else ", not pinned"
        return (
            f"--num-cpus {self.num_cpus}, --memory {self.memory_mb} MB (logical), "
            f"--object-store-memory {self.object_store_mb} MB{pin}"
        )

    def ray_start_args(self) -> tuple[str, ...]:
        """A worker node's ``ray start`` arguments for these limits (pinning is the cluster's)."""
        return (
            f"--num-cpus={self.num_cpus}",
            f"--memory={self.memory_mb * 1024 * 1024}",
            f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
        )


@dataclass
class LocalRayCluster:
    """A head node plus ``workers`` worker nodes with ``limits`` (a :class:`support.raycluster.RayCluster`).

    ``env`` is added to every node's environment (the job's secrets reach the workers this way, as on
    a real cluster). :meth:`start` raises ``RuntimeError`` (with the nodes' log tails) when a node or the
    probe fails; :meth:`stop` always ends every process it started (SIGTERM, then SIGKILL by pid).
    """

    workdir: Path
    workers: int
    limits: NodeLimits = field(default_factory=NodeLimits)
    env: Mapping[str, str] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    start_s: float = 0.0

    def __post_init__(self) -> None:
        # The head keeps Ray's own defaults (object store, health checks); the workers get the limits.
        self.cluster = RayCluster(
            self.workdir,
            env=self.env,
            head_args=(),
            worker_args=self.limits.ray_start_args(),
            pin_cpus=self.limits.pin_cpus,
        )

    @property
    def address(self) -> str:
        """The GCS address drivers use (``engine.ray.address``)."""
        return self.cluster.address

    def roots(self) -> dict[str, int]:
        """Node name (``head``, ``worker-1`` ...) -> pid of its ``ray start`` process (the root of its tree)."""
        nodes = self.cluster.nodes
        return {("head" if i == 0 else f"worker-{i}"): n.proc.pid for i, n in enumerate(nodes)}

    def start(self, timeout_s: float = 180.0) -> LocalRayCluster:
        """Start the nodes and wait until all of them are alive (checked by the probe, which also measures)."""
        started = time.perf_counter()
        self.cluster.start(self.workers)
        out = self.workdir / "probe.json"
        try:
            probe = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "probe", self.address, str(1 + self.workers), str(out)],
                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"Ray cluster not ready after {timeout_s:g}s; {self.cluster.tails()}") from None
        if probe.returncode != 0:
            raise RuntimeError(f"Ray cluster probe failed: {probe.stderr.strip()[-1500:]}; {self.cluster.tails()}")
        self.probe = json.loads(out.read_text())
        self.start_s = round(time.perf_counter() - started, 2)
        return self

    def stop(self) -> None:
        """SIGTERM each node's ``ray start`` (it stops its own processes), then SIGKILL what is left, by pid."""
        self.cluster.stop()

    def close(self) -> None:
        """The same as :meth:`stop` (for ``contextlib.closing``)."""
        self.stop()

    def __enter__(self) -> LocalRayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# /proc sampling
# --------------------------------------------------------------------------------------------------


def _role(pid: int) -> str:
    """What a process of a Ray node is, from its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    exe = cmd.split(" ")[0]
    for key, role in (("/raylet", "raylet"), ("gcs_server", "gcs_server"), ("postgres", "postgres")):
        if key in exe:
            return role
    if cmd.startswith("ray::DashboardAgent") or cmd.startswith("ray::RuntimeEnvAgent"):
        return "agents"
    if cmd.startswith("ray::") or "default_worker.py" in cmd:
        return "workers"
    return "other"  # ray start, log_monitor, monitor, dashboard (minimal), client server


class NodeSampler(threading.Thread):
    """Samples each root's process tree: peak summed RSS and PSS (with a breakdown by role) and CPU time.

    RSS sums count shared pages (libraries, the object store's shared memory) once per process, PSS
    shares them out, so the truth is between. Sampling can miss a spike shorter than the interval.
    CPU: each process's own user + system time as last seen, minus what it had used at the first
    sample (a process that lived shorter than one interval is missed, and up to one interval of a
    process's last work before it exits; Ray's raylet does not collect its workers' times as a
    parent's ``cutime``, so that field cannot stand in).
    """

    def __init__(self, roots: Mapping[str, int], interval_s: float = 0.2, pss: bool = True) -> None:
        super().__init__(daemon=True)
        self.roots = dict(roots)
        self.interval_s = interval_s
        self.pss = pss
        self._stop_event = threading.Event()
        self.peaks: dict[str, dict[str, Any]] = {name: {"rss_mb": 0.0, "pss_mb": 0.0} for name in self.roots}
        self._ticks: dict[str, dict[int, int]] = {}  # node -> pid -> last seen utime + stime
        self._base: dict[str, dict[int, int]] = {}  # node -> pid -> ticks at the first sample (0 if born later)
        self._first = True
        self._roles: dict[int, str] = {}

    def _sample(self) -> None:
        procs = scan()
        for name, root in self.roots.items():
            tree = descendants(root, procs)
            seen = self._ticks.setdefault(name, {})
            for p in tree:
                # The first sample's figures are the baseline: what a process used before the run is not counted.
                self._base.setdefault(name, {}).setdefault(p, procs[p].cpu_ticks if self._first else 0)
                seen[p] = procs[p].cpu_ticks
            rss = sum(procs[p].rss_pages for p in tree) * PAGE / 1e6
            peak = self.peaks[name]
            if rss <= peak["rss_mb"]:
                continue
            by_role: dict[str, float] = {}
            pss_total = 0.0
            for p in tree:
                role = self._roles.setdefault(p, _role(p))
                by_role[role] = by_role.get(role, 0.0) + procs[p].rss_pages * PAGE / 1e6
                if self.pss:
                    pss_total += pss_kb(p) * 1024 / 1e6
            peak.update(
                rss_mb=round(rss, 1),
                pss_mb=round(pss_total, 1) if self.pss else None,
                processes=len(tree),
                rss_by_role_mb={k: round(v, 1) for k, v in sorted(by_role.items())},
            )

    def run(self) -> None:
        while not self._stop_event.is_set():
            self._sample()
            self._first = False
            self._stop_event.wait(self.interval_s)

    def stop(self) -> dict[str, dict[str, Any]]:
        """Stop sampling (one last sample first); per root: peak RSS/PSS at the RSS peak, its breakdown, CPU s."""
        self._stop_event.set()
        self.join()
        self._sample()
        out = {}
        for name in self.roots:
            base = self._base.get(name, {})
            cpu = sum(t - base.get(p, 0) for p, t in self._ticks.get(name, {}).items()) / TICK
            out[name] = {**self.peaks[name], "cpu_s": round(cpu, 2)}
        return out


# --------------------------------------------------------------------------------------------------
# The probe: readiness and Ray's bare per-task cost, from a driver of its own
# --------------------------------------------------------------------------------------------------


def _alive_nodes(ray: Any) -> int:
    return len([n for n in ray.nodes() if n["Alive"]])


def _probe(address: str, nodes: int, out: Path, timeout_s: float = 150.0) -> None:
    import ray

    ray.init(address=address, log_to_driver=False, configure_logging=False)
    deadline = time.monotonic() + timeout_s
    while _alive_nodes(ray) < nodes:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {_alive_nodes(ray)} of {nodes} Ray nodes alive")
        time.sleep(0.5)

    @ray.remote(num_cpus=1)
    def noop() -> float:
        return time.time()

    @ray.remote(num_cpus=1)
    def imports() -> dict[str, float]:
        timings = {}
        for module in ("pyarrow.parquet", "psycopg", "pyiceberg.table", "dativo.engine.pipeline"):
            t0 = time.perf_counter()
            __import__(module)
            timings[module] = round(time.perf_counter() - t0, 3)
        return timings

    t0 = time.perf_counter()
    ray.get(noop.remote())
    first = time.perf_counter() - t0
    rtts = []
    for _ in range(50):
        t0 = time.perf_counter()
        ray.get(noop.remote())
        rtts.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ray.get([noop.remote() for _ in range(200)])
    batch = time.perf_counter() - t0
    import_times = ray.get(imports.remote())
    result = {
        "nodes_alive": _alive_nodes(ray),
        "first_task_s": round(first, 4),
        "noop_task_round_trip_ms": {
            "median": round(statistics.median(rtts) * 1000, 2),
            "min": round(min(rtts) * 1000, 2),
            "max": round(max(rtts) * 1000, 2),
        },
        "noop_tasks_200_at_once_ms_per_task": round(batch / 200 * 1000, 2),
        "worker_import_s": import_times,
    }
    ray.shutdown()
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "probe":
        _probe(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
    else:
        raise SystemExit("usage: python _raycluster.py probe ADDRESS NODES OUT.json")
