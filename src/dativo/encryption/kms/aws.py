"""``aws-kms``: AWS Key Management Service through boto3.

Each data key (or key-encryption key, with double wrapping) is wrapped with
``Encrypt`` under the master key (a key id, ARN or ``alias/...``) and an
*encryption context* naming the job, the run and the file it belongs to; KMS
refuses ``Decrypt`` under any other context, and CloudTrail records it. The
string stored in the Parquet key material is::

    base64(JSON {"v": 1, "ciphertext": base64(CiphertextBlob), "context": {...}})

so a reader needs only ``kms:Decrypt`` on the master key to open the file.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from dativo._secrets import register_secret
from dativo.encryption.kms import KmsClient, KmsError, register_key_material, scrub
from dativo.errors import ConfigError

__all__ = ["AwsKms"]

_KEYS = {"type", "region", "endpoint_url", "access_key_id", "secret_access_key", "session_token", "profile"}
_TRANSIENT_CODES = {"KMSInternalException", "DependencyTimeoutException", "ThrottlingException"}


class AwsKms(KmsClient):
    """AWS KMS client. Credentials come from the ``kms:`` block, else boto3's default chain."""

    type_name: ClassVar[str] = "aws-kms"

    def __init__(self, config: Mapping[str, Any], base_dir: Path) -> None:
        super().__init__(config, base_dir)
        unknown = set(config) - _KEYS
        if unknown:
            raise ConfigError(
                f"kms (aws-kms): unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_KEYS))})"
            )
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError("kms (aws-kms) needs boto3: pip install 'dativo[encryption]'") from None
        for secret in ("secret_access_key", "session_token"):
            register_secret(str(config.get(secret) or ""))
        session = boto3.session.Session(profile_name=config.get("profile") or None)
        self._region = str(config.get("region") or session.region_name or "")
        self._endpoint = str(config["endpoint_url"]) if config.get("endpoint_url") else None
        kwargs: dict[str, Any] = {
            "region_name": self._region or None,
            "endpoint_url": self._endpoint,
            "config": Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 3, "mode": "standard"}),
        }
        if config.get("access_key_id"):
            kwargs["aws_access_key_id"] = str(config["access_key_id"])
            kwargs["aws_secret_access_key"] = str(config.get("secret_access_key") or "")
            if config.get("session_token"):
                kwargs["aws_session_token"] = str(config["session_token"])
        self._client: Any = session.client("kms", **kwargs)

    def wrap_key(self, key: bytes, master_key_id: str, context: Mapping[str, str]) -> str:
        """``Encrypt`` ``key`` under ``master_key_id`` with ``context``; raises KmsError naming the key."""
        register_key_material(key)
        response = self._call("Encrypt", master_key_id, KeyId=master_key_id, Plaintext=key, EncryptionContext=context)
        envelope = {"v": 1, "ciphertext": base64.b64encode(response["CiphertextBlob"]).decode(), "context": context}
        return base64.b64encode(json.dumps(envelope, sort_keys=True).encode()).decode()

    def unwrap_key(self, wrapped: str, master_key_id: str, context: Mapping[str, str] | None) -> bytes:
        """``Decrypt`` a wrapped key with the context it was bound to.

        Raises KmsError when the stored context differs from ``context`` for the
        keys both name (a key copied from another file), or when KMS refuses.
        """
        try:
            envelope = json.loads(base64.b64decode(wrapped, validate=True))
            blob = base64.b64decode(envelope["ciphertext"], validate=True)
            stored = {str(k): str(v) for k, v in dict(envelope["context"]).items()}
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise KmsError(
                f"KMS aws-kms: the wrapped key for '{master_key_id}' is not in dativo's format (v1 envelope)"
            ) from None
        if context is not None:
            for name, value in context.items():
                if name in stored and stored[name] != value:
                    raise KmsError(
                        f"KMS aws-kms: key for '{master_key_id}' is bound to {name}={stored[name]!r}, "
                        f"not {value!r} (was the file renamed or its key copied from another file?)"
                    )
        response = self._call(
            "Decrypt", master_key_id, CiphertextBlob=blob, KeyId=master_key_id, EncryptionContext=stored
        )
        key: bytes = response["Plaintext"]
        register_key_material(key)
        return key

    def check(self, master_key_ids: Iterable[str]) -> None:
        """``DescribeKey`` (must be Enabled, when the caller may describe it), then a wrap/unwrap round trip."""
        ids = list(master_key_ids)
        for key_id in ids:
            try:
                meta = self._call("DescribeKey", key_id, KeyId=key_id)["KeyMetadata"]
            except KmsError as exc:
                if "AccessDenied" not in str(exc):
                    raise
                continue  # allowed to use the key but not to describe it: the round trip decides
            state = str(meta.get("KeyState", "Enabled"))
            if state != "Enabled" or meta.get("Enabled") is False:
                raise KmsError(
                    f"KMS aws-kms: master key '{key_id}' is {state}; enable it (aws kms enable-key) or name another key"
                )
        super().check(ids)

    def resolve_key_id(self, master_key_id: str) -> str:
        """The key id an alias points to (``DescribeKey``), so files keep naming the key after the alias moves.

        pyarrow's key lists cannot hold a ``:``, so the key id is stored rather than the ARN.
        Returns ``master_key_id`` unchanged when the caller may not describe the key; raises KmsError otherwise.
        """
        try:
            meta = self._call("DescribeKey", master_key_id, KeyId=master_key_id)["KeyMetadata"]
        except KmsError as exc:
            if "AccessDenied" in str(exc):
                return master_key_id
            raise
        return str(meta.get("KeyId") or master_key_id)

    def describe(self) -> dict[str, Any]:
        """``{"type": "aws-kms", "region": ..., "endpoint_url": ...}`` (no credentials)."""
        return {"type": self.type_name, "region": self._region or None, "endpoint_url": self._endpoint}

    def close(self) -> None:
        """Close boto3's connection pool."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _call(self, operation: str, key_id: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        if self._client is None:
            raise KmsError("KMS aws-kms: the client is closed")
        method = {"Encrypt": "encrypt", "Decrypt": "decrypt", "DescribeKey": "describe_key"}[operation]
        try:
            return getattr(self._client, method)(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Error"))
            detail = scrub(str(error.get("Message") or "")).strip()
            raise KmsError(
                f"KMS aws-kms: {operation} with master key '{key_id}' failed: {code}"
                + (f": {detail}" if detail else "")
                + _advice(code),
                transient=code in _TRANSIENT_CODES,
            ) from None
        except EndpointConnectionError:
            raise KmsError(
                f"KMS aws-kms: cannot reach {self._endpoint or 'the regional KMS endpoint'} for {operation} "
                f"with master key '{key_id}' (check the network, region and endpoint_url)",
                transient=True,
            ) from None
        except BotoCoreError as exc:
            raise KmsError(
                f"KMS aws-kms: {operation} with master key '{key_id}' failed: {type(exc).__name__}: {scrub(str(exc))}",
                transient=True,
            ) from None


def _advice(code: str) -> str:
    return {
        "NotFoundException": " (check the key id, ARN or alias and the region)",
        "DisabledException": " (enable the key or name another one)",
        "KMSInvalidStateException": " (the key is disabled or pending deletion)",
        "AccessDeniedException": " (grant kms:Encrypt/kms:Decrypt on this key to these credentials)",
        "InvalidCiphertextException": " (wrong key or encryption context: the file was not written with this key)",
        "IncorrectKeyException": " (the file's key was wrapped by another master key)",
        "UnrecognizedClientException": " (the KMS credentials are not valid)",
        "InvalidSignatureException": " (the KMS secret access key is wrong)",
    }.get(code, "")
