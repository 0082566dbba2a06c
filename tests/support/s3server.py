"""A real S3 endpoint on loopback: moto's HTTP server, started in a background thread.

Nothing is mocked in process: clients (boto3, pyarrow's ``S3FileSystem``,
PyIceberg) talk HTTP to ``endpoint_url`` exactly as they would to AWS or MinIO.
moto accepts any credentials unless :meth:`S3Server.enforce_auth` is active.

Usage outside pytest::

    with S3Server() as s3:
        s3.create_bucket("landing")
        print(s3.endpoint_url, s3.connection())
"""

from __future__ import annotations

import itertools
import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

__all__ = ["S3Server"]

_bucket_counter = itertools.count(1)


class S3Server:
    """moto's threaded S3 server bound to 127.0.0.1 on a free port.

    ``start()`` blocks until the server accepts connections; ``stop()`` shuts it
    down and is safe to call twice. All state (buckets, objects) lives in this
    process and is shared by every client of the endpoint.
    """

    region = "us-east-1"
    access_key_id = "dativo-test-access-key"
    secret_access_key = "dativo-test-secret-key"

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._server: Any = None
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> S3Server:
        """Start the server (idempotent) and return ``self``."""
        if self._server is not None:
            return self
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address=self._host, port=0, verbose=False)
        server.start()
        self._server = server
        self._port = int(server.get_host_and_port()[1])
        return self

    def stop(self) -> None:
        """Stop the server; a no-op when it is not running."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses and credentials ---------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("S3Server is not started; call start() first")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``: what every S3 client is pointed at."""
        return f"http://{self._host}:{self.port}"

    def connection(self) -> dict[str, str]:
        """The ``connection:`` mapping a dativo job uses to reach this server."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
        }

    def env(self) -> dict[str, str]:
        """Standard AWS environment variables pointing at this server (for the credential chain)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    # -- helpers ----------------------------------------------------------------

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name when ``name`` is None) and return its name."""
        bucket = name or f"dativo-test-{os.getpid()}-{next(_bucket_counter)}-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        """Upload ``body`` as ``s3://bucket/key``."""
        self.client().put_object(Bucket=bucket, Key=key, Body=body)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` in ``bucket``, sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)

    def create_iam_credentials(self, user: str | None = None) -> tuple[str, str]:
        """Create an IAM user allowed ``s3:*`` and return its ``(access_key_id, secret_access_key)``.

        These are the only credentials the server accepts inside :meth:`enforce_auth`;
        call this before entering that block.
        """
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )
        name = user or f"dativo-test-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=name)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName=name, PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    @contextmanager
    def enforce_auth(self) -> Iterator[None]:
        """Make the server check credentials (against its IAM state) until the block exits.

        Uses moto's own ``/moto-api/reset-auth`` endpoint. Inside the block the
        default fake credentials are unknown to the server, so every request is
        refused with 403 (``InvalidAccessKeyId``), like a real bucket with
        wrong keys.
        """
        previous = self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth(previous)

    def _reset_auth(self, count: str) -> str:
        request = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form type would hide the body from moto
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read().decode())
        return str(body["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"])
