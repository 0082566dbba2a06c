"""A real multi-node Ray cluster on this machine, and per-node memory/CPU sampling (for ``ray_scale.py``).

:class:`LocalRayCluster` starts a head node (``ray start --head --block``, no CPUs for tasks, so
every partition runs on a worker node; the driver connects to it) and N worker nodes
(``ray start --address ... --block``), each its own process tree in its own session, with its
own resources: ``--num-cpus`` (task slots), ``--memory`` (Ray's logical memory),
``--object-store-memory`` and optionally one pinned core (``taskset``). Nodes advertise
loopback addresses (head 127.0.0.1, workers 127.0.0.2, 127.0.0.3, ...) and the dashboard is
off. Caveat, stated in the report: Ray's gcs_server and raylets listen on every interface
(``*:port``) whatever ``--node-ip-address`` says, and Ray canonicalises ``127.0.0.1`` in
bootstrap addresses to the machine's own address; traffic to either never leaves the machine.

:class:`NodeSampler` samples, from ``/proc``, the summed RSS and PSS of each node's process tree
(``ray start``, gcs_server, raylet, agents, workers ...) and its CPU time.

``python _raycluster.py probe ADDRESS NODES OUT.json`` is the readiness check and the bare
Ray task-latency probe (a separate driver process, so the benchmark never joins the cluster).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_range_free(base: int, count: int) -> bool:
    for port in range(base, base + count, max(1, count // 8)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
            except OSError:
                return False
    return True


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


@dataclass
class _Node:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class LocalRayCluster:
    """A head node plus ``workers`` worker nodes as separate ``ray start --block`` process trees.

    ``env`` is added to every node's environment (the job's secrets reach the workers this way, as on
    a real cluster). :meth:`start` raises ``RuntimeError`` (with the node's log tail) when a node does
    not come up; :meth:`stop` always ends every process it started (SIGTERM, then SIGKILL by pid).
    """

    workdir: Path
    workers: int
    limits: NodeLimits = field(default_factory=NodeLimits)
    env: Mapping[str, str] = field(default_factory=dict)
    nodes: list[_Node] = field(default_factory=list)
    port: int = 0
    temp_dir: Path | None = None
    probe: dict[str, Any] = field(default_factory=dict)
    start_s: float = 0.0

    @property
    def address(self) -> str:
        """The GCS address drivers use (``engine.ray.address``)."""
        return f"127.0.0.1:{self.port}"

    def roots(self) -> dict[str, int]:
        """Node name -> pid of its ``ray start`` process (the root of its process tree)."""
        return {n.name: n.proc.pid for n in self.nodes}

    def _ray(self) -> str:
        script = Path(sys.executable).parent / "ray"
        return str(script) if script.is_file() else (shutil.which("ray") or "ray")

    def _launch(self, name: str, argv: list[str], cpu: int | None) -> None:
        log = self.workdir / f"{name}.log"
        if cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        # A loaded machine: give a raylet time to register (Ray's default is 10 s).
        env = {**os.environ, **self.env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_raylet_start_wait_time_s": "120"}
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        node = _Node(name, proc, log)
        self.nodes.append(node)
        # One node at a time: a worker node started before the head (or beside another starting node)
        # times out registering on a loaded machine. `ray start --block` logs "--block" once it is up.
        deadline = time.monotonic() + 180
        while b"--block" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {name} did not start; {self._tails()}")
            time.sleep(0.2)

    def _common_ports(self) -> list[str]:
        # Below Linux's ephemeral range (32768+), where free_port()'s single ports come from.
        base = random.randrange(20000, 32400, 200)
        for _ in range(20):
            if _port_range_free(base, 200):
                break
            base = random.randrange(20000, 32400, 200)
        return [
            f"--min-worker-port={base}",
            f"--max-worker-port={base + 199}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
        ]

    def start(self, timeout_s: float = 180.0) -> LocalRayCluster:
        """Start the nodes and wait until all of them are alive (checked by the probe, which also measures)."""
        started = time.perf_counter()
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Ray's unix sockets must fit in 107 bytes: a short temp dir of our own, not the workdir.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
        self.port = free_port()
        ray = self._ray()
        common = ["--disable-usage-stats", "--block", f"--temp-dir={self.temp_dir}"]
        self._launch(
            "head",
            [
                ray,
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                f"--ray-client-server-port={free_port()}",
                "--include-dashboard=false",
                "--num-cpus=0",  # the head runs the driver only; partitions go to worker nodes
                *self._common_ports(),
                *common,
            ],
            cpu=None,
        )
        lim = self.limits
        ncpu = os.cpu_count() or 1
        for i in range(1, self.workers + 1):
            self._launch(
                f"worker-{i}",
                [
                    ray,
                    "start",
                    # 127.0.0.2, ...: a loopback address that Ray does not rewrite to the host's address.
                    f"--address=127.0.0.{i + 1}:{self.port}",
                    f"--node-ip-address=127.0.0.{i + 1}",
                    f"--num-cpus={lim.num_cpus}",
                    f"--memory={lim.memory_mb * 1024 * 1024}",
                    f"--object-store-memory={lim.object_store_mb * 1024 * 1024}",
                    *self._common_ports(),
                    *common,
                ],
                cpu=(i - 1) % ncpu if lim.pin_cpus else None,
            )
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
            raise RuntimeError(f"Ray cluster not ready after {timeout_s:g}s; {self._tails()}") from None
        if probe.returncode != 0:
            raise RuntimeError(f"Ray cluster probe failed: {probe.stderr.strip()[-1500:]}; {self._tails()}")
        self.probe = json.loads(out.read_text())
        self.start_s = round(time.perf_counter() - started, 2)
        return self

    def _tails(self) -> str:
        parts = []
        for n in self.nodes:
            with contextlib.suppress(OSError):
                parts.append(f"{n.name} (exit {n.proc.poll()}): {n.log.read_text(errors='replace')[-600:]}")
        return " | ".join(parts)

    def stop(self) -> None:
        """SIGTERM each node's ``ray start`` (it stops its own processes), then SIGKILL what is left, by pid."""
        pids = set()
        for n in self.nodes:
            pids |= tree_pids(n.proc.pid)
        for n in reversed(self.nodes):  # workers first, the head last
            with contextlib.suppress(ProcessLookupError):
                n.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                n.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for n in self.nodes:
            if n.proc.poll() is None:
                n.proc.kill()
            n.proc.wait()
        self.nodes.clear()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

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


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b")")[-1].split()[0] != b"Z"
    except OSError:
        return False


@dataclass
class _Proc:
    ppid: int
    cpu_ticks: int  # utime + stime
    rss_pages: int


def _scan() -> dict[int, _Proc]:
    procs: dict[int, _Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        f = stat[stat.rfind(b")") + 2 :].split()
        # fields after the name: state ppid ... utime(11) stime(12) ... rss(21)
        procs[int(entry.name)] = _Proc(int(f[1]), int(f[11]) + int(f[12]), int(f[21]))
    return procs


def _descendants(root: int, procs: Mapping[int, _Proc]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, p in procs.items():
        children.setdefault(p.ppid, []).append(pid)
    tree, frontier = {root} if root in procs else set(), [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def tree_pids(root: int) -> set[int]:
    """``root`` and all its descendants now."""
    return _descendants(root, _scan())


def _pss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
        for line in fh:
            if line.startswith(b"Pss:"):
                return int(line.split()[1])
    return 0


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
        procs = _scan()
        for name, root in self.roots.items():
            tree = _descendants(root, procs)
            seen = self._ticks.setdefault(name, {})
            for p in tree:
                # The first sample's figures are the baseline: what a process used before the run is not counted.
                self._base.setdefault(name, {}).setdefault(p, procs[p].cpu_ticks if self._first else 0)
                seen[p] = procs[p].cpu_ticks
            rss = sum(procs[p].rss_pages for p in tree) * _PAGE / 1e6
            peak = self.peaks[name]
            if rss <= peak["rss_mb"]:
                continue
            by_role: dict[str, float] = {}
            pss_total = 0.0
            for p in tree:
                role = self._roles.setdefault(p, _role(p))
                by_role[role] = by_role.get(role, 0.0) + procs[p].rss_pages * _PAGE / 1e6
                if self.pss:
                    pss_total += _pss_kb(p) * 1024 / 1e6
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
            cpu = sum(t - base.get(p, 0) for p, t in self._ticks.get(name, {}).items()) / _TICK
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
