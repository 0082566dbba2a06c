"""Apache Iceberg's reference REST catalog server on loopback, and a fault-injecting proxy in front of it.

The server is ``org.apache.iceberg.rest.RESTCatalogServer`` from the ``test-fixtures`` jar
of ``org.apache.iceberg:iceberg-open-api``, run with Java 17; its classpath is downloaded
once by ``scripts/install-iceberg-rest.sh`` (called here when it is missing). It is
configured, as the upstream fixture is, by ``CATALOG_*`` environment variables: its port
(``CATALOG_REST_PORT``), a JDBC (SQLite file) backend catalog, and a warehouse on the
moto S3 server through Iceberg's ``S3FileIO``.

* :class:`RestCatalogServer` — start/stop one server; :meth:`catalog` gives the job's
  ``catalog:`` properties for it (``uri`` and the S3 settings the client needs).
* :class:`DropResponseProxy` — a small HTTP proxy that forwards every request and, when
  armed, forwards the next table commit and then closes the connection without answering
  (or, armed with ``forward=False``, drops that commit before the server sees it).
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from support.s3server import S3Server

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "scripts" / "install-iceberg-rest.sh"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rest_server_home() -> Path:
    """The folder with the server's ``lib/*.jar`` (ICEBERG_REST_HOME, or installed into the cache now)."""
    configured = os.environ.get("ICEBERG_REST_HOME")
    if configured:
        return Path(configured)
    out = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/install-iceberg-rest.sh failed: {out.stderr.strip()[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


class RestCatalogServer:
    """One RESTCatalogServer process with an S3 warehouse in ``bucket`` on ``s3``."""

    def __init__(self, s3: S3Server, bucket: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.port = _free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="dativo-iceberg-rest-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> RestCatalogServer:
        home = rest_server_home()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self._dir),
            "CATALOG_REST_PORT": str(self.port),
            "CATALOG_CATALOG_NAME": "dativo_rest",
            "CATALOG_URI": f"jdbc:sqlite:{self._dir / 'catalog.db'}",
            "CATALOG_JDBC_SCHEMA__VERSION": "V1",
            "CATALOG_WAREHOUSE": f"s3://{self.bucket}/warehouse",
            "CATALOG_IO__IMPL": "org.apache.iceberg.aws.s3.S3FileIO",
            "CATALOG_S3_ENDPOINT": self.s3.endpoint_url,
            "CATALOG_S3_PATH__STYLE__ACCESS": "true",
            "CATALOG_CLIENT_REGION": self.s3.region,
            "AWS_ACCESS_KEY_ID": self.s3.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_access_key,
            "AWS_REGION": self.s3.region,
        }
        log = (self._dir / "server.log").open("wb")
        self._process = subprocess.Popen(
            ["java", "-Xmx512m", "-cp", f"{home / 'lib'}/*", "org.apache.iceberg.rest.RESTCatalogServer"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"REST catalog server exited: {self.log_tail()}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/v1/config")
                if connection.getresponse().status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"REST catalog server did not answer within {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self._dir / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None

    def catalog(self, uri: str | None = None) -> dict[str, Any]:
        """The job's ``catalog:`` block for this server (through ``uri`` when given, e.g. a proxy)."""
        return {
            "name": "rest",
            "type": "rest",
            "uri": uri or self.uri,
            "s3.endpoint": self.s3.endpoint_url,
            "s3.access-key-id": self.s3.access_key_id,
            "s3.secret-access-key": self.s3.secret_access_key,
            "s3.region": self.s3.region,
            "s3.force-virtual-addressing": "false",
        }


def _is_commit(method: str, path: str) -> bool:
    """A table commit (``POST /v1/.../namespaces/NS/tables/T``) or a multi-table transaction commit."""
    if method != "POST":
        return False
    parts = path.split("?")[0].strip("/").split("/")
    return (len(parts) >= 5 and parts[-2] == "tables" and parts[-4] == "namespaces") or parts[-1] == "commit"


class DropResponseProxy:
    """HTTP proxy to ``upstream``; ``arm()`` makes the next commit be forwarded and its response dropped."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = False
        self.forward = True
        self.status: int | None = None
        self.forwarded_commits = 0
        self.dropped = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if _is_commit(self.command, self.path) and proxy.armed and not proxy.forward:
                    proxy.armed = False
                    proxy.dropped += 1
                    # Lost on the way: the server never sees the commit, the client never hears back.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                commit = _is_commit(self.command, self.path)
                if commit:
                    proxy.forwarded_commits += 1
                if commit and proxy.armed:
                    proxy.armed = False
                    proxy.dropped += 1
                    if proxy.status is not None:  # the server committed; a gateway answers with an error
                        self._answer(proxy.status, b'{"error": {"message": "bad gateway", "code": 502}}')
                        return
                    # The server committed; the client never hears about it.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _answer(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> DropResponseProxy:
        self._thread.start()
        return self

    def arm(self, forward: bool = True, status: int | None = None) -> None:
        """Lose the next commit's response (``forward``: after the server applied it; else the request itself).

        With ``status`` (e.g. 502), the applied commit is answered with that error instead of silence.
        """
        self.forward = forward
        self.status = status
        self.armed = True

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
