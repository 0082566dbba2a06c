"""A PostgreSQL server with TLS for the postgres-rs sslmode tests: a throw-away CA, a server certificate, hostssl only.

``tls_server(tmp)`` generates (with the ``cryptography`` package) a CA and a server
certificate for ``localhost`` only (no IP address in it, so ``verify-full`` to
``127.0.0.1`` must fail), plus a second, unrelated CA, and starts a
:class:`support.pgserver.PostgresServer` with ``ssl = on`` whose ``pg_hba.conf``
accepts TLS connections only. It is its own instance: the suite's shared server is untouched.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.pgserver import SYSTEM_USER, PostgresServer, _ensure_system_user

__all__ = ["TlsFiles", "tls_server"]


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the CA that signed the server's certificate
    other_ca: Path  # a CA that did not
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_certs(folder: Path) -> TlsFiles:
    """A CA, a server certificate for DNS name ``localhost`` signed by it, and an unrelated CA (PEM files)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("dativo test CA")
    _, other_cert = _ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.pem", folder / "other-ca.pem", folder / "server.crt", folder / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.other_ca.write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.key, key)
    files.key.chmod(0o600)
    if os.geteuid() == 0:  # the server runs as an unprivileged user, which must own its key
        account = _ensure_system_user(SYSTEM_USER)
        for path in (folder, files.cert, files.key):
            os.chown(path, account.pw_uid, account.pw_gid)
    return files


def tls_server(folder: Path) -> tuple[PostgresServer, TlsFiles]:
    """Start a PostgreSQL server that only accepts TLS connections (stop it with ``server.stop()``)."""
    files = make_certs(folder)
    folder.chmod(0o755)  # the server's account must reach its certificate and key
    server = PostgresServer(
        settings={"ssl": "on", "ssl_cert_file": f"'{files.cert}'", "ssl_key_file": f"'{files.key}'"}
    ).start()
    hba = server.datadir / "pg_hba.conf"
    owner = hba.stat()
    hba.write_text("local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
    os.chown(hba, owner.st_uid, owner.st_gid)
    server.execute("SELECT pg_reload_conf()")
    return server, files
