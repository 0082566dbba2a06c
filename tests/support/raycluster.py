"""pytest plugin: a real multi-node Ray cluster on this machine, one per test session (started on first use).

The head node (``ray start --head --num-cpus=0``: it schedules, runs no partition) and two
worker nodes (``--num-cpus=1`` each) are separate ``ray start --block`` process trees, each
in its own session, on loopback addresses (head 127.0.0.1, workers 127.0.0.2, 127.0.0.3,
...: Ray does not rewrite those to the host's address), dashboard off, 100 MB object
stores. ``kill_worker`` SIGKILLs a worker node's whole process tree (a node lost);
``add_worker`` starts a new one. The nodes get ``env`` (the secrets of the tests' jobs
reach the workers that way, as on a real cluster). Ray is imported only by the fixture.

Fixture ``ray_cluster`` (session): a started :class:`RayCluster` whose ``env`` holds
``DATIVO_RAY_PGPASSWORD`` (the session PostgreSQL server's password).
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PASSWORD_ENV = "DATIVO_RAY_PGPASSWORD"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry.name}/stat").read_bytes()
                children.setdefault(int(stat[stat.rfind(b")") + 2 :].split()[1]), []).append(int(entry.name))
    found, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


@dataclass
class _Node:
    name: str
    ip: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class RayCluster:
    """A head and worker nodes as ``ray start`` subprocesses (see the module docstring)."""

    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    nodes: list[_Node] = field(default_factory=list)
    port: int = 0
    temp_dir: Path | None = None
    _next_ip: int = 2

    @property
    def address(self) -> str:
        """The GCS address a driver gives as ``engine.ray.address``."""
        return f"127.0.0.1:{self.port}"

    def _ports(self) -> list[str]:
        base = random.randrange(20000, 60000, 100)
        return [
            f"--min-worker-port={base}",
            f"--max-worker-port={base + 99}",
            f"--node-manager-port={_free_port()}",
            f"--object-manager-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
        ]

    def _launch(self, name: str, ip: str, argv: list[str]) -> _Node:
        log = self.workdir / f"{name}.log"
        ray = str(Path(sys.executable).parent / "ray")
        env = {**os.environ, **self.env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_raylet_start_wait_time_s": "120"}
        common = ["--disable-usage-stats", "--block", f"--temp-dir={self.temp_dir}", "--object-store-memory=100000000"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [ray, "start", *argv, *self._ports(), *common],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        node = _Node(name, ip, proc, log)
        self.nodes.append(node)
        deadline = time.monotonic() + 180
        while b"--block" not in log.read_bytes():  # `ray start --block` says so once the node is up
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {name} did not start: {log.read_text(errors='replace')[-1500:]}")
            time.sleep(0.2)
        return node

    def start(self, workers: int = 2) -> RayCluster:
        """Start the head and ``workers`` worker nodes; raises RuntimeError with a node's log when one fails."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="dr-", dir="/tmp"))  # unix socket paths must stay short
        self.port = _free_port()
        self._launch(
            "head",
            "127.0.0.1",
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                f"--ray-client-server-port={_free_port()}",
                "--include-dashboard=false",
                "--num-cpus=0",
                '--system-config={"health_check_period_ms": 1000, "health_check_failure_threshold": 3}',
            ],
        )
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self) -> str:
        """Start one more worker node (one CPU); returns its IP address, which names it."""
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        self._launch(f"worker-{ip}", ip, [f"--address={ip}:{self.port}", f"--node-ip-address={ip}", "--num-cpus=1"])
        return ip

    def alive_workers(self) -> list[str]:
        """The IPs of the worker nodes this object started that are still running."""
        return [n.ip for n in self.nodes if n.name != "head" and n.proc.poll() is None]

    def kill_worker(self, ip: str) -> None:
        """SIGKILL every process of the worker node at ``ip`` (raylet, agents, workers): the node is lost."""
        node = next(n for n in self.nodes if n.ip == ip and n.name != "head")
        for pid in _tree(node.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        node.proc.wait(timeout=30)

    def stop(self) -> None:
        """End every process this object started (SIGTERM to each ``ray start``, then SIGKILL by pid)."""
        pids: set[int] = set()
        for node in self.nodes:
            pids |= _tree(node.proc.pid)
        for node in reversed(self.nodes):
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=20)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.kill()
            node.proc.wait()
        self.nodes.clear()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(pg_server, tmp_path_factory) -> Iterator[RayCluster]:  # type: ignore[no-untyped-def]
    """One head and two worker nodes for the session; this process is disconnected and the nodes stopped at the end."""
    cluster = RayCluster(tmp_path_factory.mktemp("ray"), env={PASSWORD_ENV: pg_server.password})
    try:
        cluster.start()
        yield cluster
    finally:
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        cluster.stop()
