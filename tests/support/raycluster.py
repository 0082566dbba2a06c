"""A real multi-node Ray cluster on this machine, for the tests (one per session) and the benchmarks.

The head node (``ray start --head --num-cpus=0``: it schedules, runs no partition) and two
worker nodes (``--num-cpus=1`` each) are separate ``ray start --block`` process trees, each
in its own session, on loopback addresses (head 127.0.0.1, workers 127.0.0.2, 127.0.0.3,
...: Ray does not rewrite those to the host's address), dashboard off, 100 MB object
stores. ``kill_worker`` SIGKILLs a worker node's whole process tree (a node lost);
``add_worker`` starts a new one. The nodes get ``env`` (the secrets of the tests' jobs
reach the workers that way, as on a real cluster). Ray is imported only by the fixture.
benchmarks/_raycluster.py starts its clusters with this class too (its own per-node limits).

The tests' fixture ``ray_cluster`` (tests/support/ray_fixtures.py) is a started :class:`RayCluster`
whose ``env`` holds :data:`PASSWORD_ENV` (the session PostgreSQL server's password). This module
imports neither pytest nor Ray.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from support.procs import alive, tree_pids

PASSWORD_ENV = "DATIVO_RAY_PGPASSWORD"
#: What each node of the tests' cluster has: a 100 MB object store; workers one CPU; the head fast failure detection.
_OBJECT_STORE = "--object-store-memory=100000000"
_HEALTH_CHECKS = '--system-config={"health_check_period_ms": 1000, "health_check_failure_threshold": 3}'


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


@dataclass
class _Node:
    name: str
    ip: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class RayCluster:
    """A head and worker nodes as ``ray start`` subprocesses (see the module docstring).

    ``head_args`` and ``worker_args`` are the nodes' own ``ray start`` arguments (their resources;
    the benchmarks give each worker node its limits); ``pin_cpus`` pins worker node ``i`` to core
    ``i`` (``taskset``). :meth:`start` raises RuntimeError with the nodes' logs when one does not
    come up; :meth:`stop` always ends every process it started.
    """

    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    nodes: list[_Node] = field(default_factory=list)
    port: int = 0
    temp_dir: Path | None = None
    _next_ip: int = 2
    head_args: Sequence[str] = (_OBJECT_STORE, _HEALTH_CHECKS)
    worker_args: Sequence[str] = ("--num-cpus=1", _OBJECT_STORE)
    pin_cpus: bool = False

    @property
    def address(self) -> str:
        """The GCS address a driver gives as ``engine.ray.address``."""
        return f"127.0.0.1:{self.port}"

    def _ports(self) -> list[str]:
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

    def _launch(self, name: str, ip: str, argv: list[str], cpu: int | None = None) -> _Node:
        log = self.workdir / f"{name}.log"
        script = Path(sys.executable).parent / "ray"
        ray = str(script) if script.is_file() else (shutil.which("ray") or "ray")
        pin = ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []
        # A loaded machine: give a raylet time to register (Ray's default is 10 s).
        env = {**os.environ, **self.env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_raylet_start_wait_time_s": "120"}
        common = ["--disable-usage-stats", "--block", f"--temp-dir={self.temp_dir}"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*pin, ray, "start", *argv, *self._ports(), *common],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        node = _Node(name, ip, proc, log)
        self.nodes.append(node)
        # One node at a time: a worker node started before the head (or beside another starting node)
        # times out registering on a loaded machine. `ray start --block` logs "--block" once it is up.
        deadline = time.monotonic() + 180
        while b"--block" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {name} did not start; {self.tails()}")
            time.sleep(0.2)
        return node

    def tails(self) -> str:
        """The end of every node's log, with its exit status (for error messages)."""
        parts = []
        for n in self.nodes:
            with contextlib.suppress(OSError):
                parts.append(f"{n.name} (exit {n.proc.poll()}): {n.log.read_text(errors='replace')[-1000:]}")
        return " | ".join(parts)

    def start(self, workers: int = 2) -> RayCluster:
        """Start the head and ``workers`` worker nodes; raises RuntimeError with a node's log when one fails."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Ray's unix sockets must fit in 107 bytes: a short temp dir of our own, not the workdir.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="dr-", dir="/tmp"))
        self.port = free_port()
        self._launch(
            "head",
            "127.0.0.1",
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                f"--ray-client-server-port={free_port()}",
                "--include-dashboard=false",
                "--num-cpus=0",  # the head schedules; partitions go to worker nodes
                *self.head_args,
            ],
        )
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self) -> str:
        """Start one more worker node (``worker_args``); returns its IP address, which names it."""
        index = self._next_ip - 2
        # 127.0.0.2, ...: a loopback address that Ray does not rewrite to the host's address.
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        argv = [f"--address={ip}:{self.port}", f"--node-ip-address={ip}", *self.worker_args]
        self._launch(f"worker-{ip}", ip, argv, index % (os.cpu_count() or 1) if self.pin_cpus else None)
        return ip

    def alive_workers(self) -> list[str]:
        """The IPs of the worker nodes this object started that are still running."""
        return [n.ip for n in self.nodes if n.name != "head" and n.proc.poll() is None]

    def kill_worker(self, ip: str) -> None:
        """SIGKILL every process of the worker node at ``ip`` (raylet, agents, workers): the node is lost."""
        node = next(n for n in self.nodes if n.ip == ip and n.name != "head")
        for pid in tree_pids(node.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        node.proc.wait(timeout=30)

    def stop(self) -> None:
        """End every process this object started (SIGTERM to each ``ray start``, then SIGKILL by pid)."""
        pids: set[int] = set()
        for node in self.nodes:
            pids |= tree_pids(node.proc.pid)
        for node in reversed(self.nodes):  # workers first, the head last
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.2)
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.kill()
            node.proc.wait()
        self.nodes.clear()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
