"""libpq connection strings without psycopg: parse (``key=value`` and ``postgresql://`` URIs) and build.

``postgres-rs`` passes these to :func:`dativo.postgres_sdk.build_connection` so that a run reading
with it never imports psycopg (about 10 MB and 4% of a 1-row job's CPU with asyncio). They follow
libpq's rules for what rust-postgres understands; anything they cannot parse raises ValueError,
which ``build_connection`` reports as a one-line ConfigError.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["make_conninfo", "parse_conninfo"]

_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")
_URI = re.compile(r"^postgres(?:ql)?://", re.IGNORECASE)


def parse_conninfo(text: str) -> dict[str, str]:
    """The settings in a libpq ``key=value`` string or ``postgresql://`` URI; ValueError when malformed."""
    if _URI.match(text):
        return _parse_uri(text)
    params: dict[str, str] = {}
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos].isspace():
            pos += 1
        if pos >= end:
            return params
        m = _KEY.match(text, pos)
        if m is None:
            raise ValueError(f'missing "=" after "{text[pos:].split()[0]}" in connection info string')
        key, pos = m.group(1), m.end()
        value: list[str] = []
        if pos < end and text[pos] == "'":
            pos += 1
            while True:
                if pos >= end:
                    raise ValueError("unterminated quoted string in connection info string")
                char = text[pos]
                if char == "\\" and pos + 1 < end:
                    value.append(text[pos + 1])
                    pos += 2
                elif char == "'":
                    pos += 1
                    break
                else:
                    value.append(char)
                    pos += 1
        else:
            while pos < end and not text[pos].isspace():
                if text[pos] == "\\" and pos + 1 < end:
                    pos += 1
                value.append(text[pos])
                pos += 1
        params[key] = "".join(value)


def _parse_uri(text: str) -> dict[str, str]:
    rest = _URI.sub("", text, count=1)
    params: dict[str, str] = {}
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        userinfo, _, authority = authority.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if user:
            params["user"] = unquote(user)
        if colon and password:  # libpq ignores an empty one, as an empty user
            params["password"] = unquote(password)
    hosts: list[str] = []
    ports: list[str] = []
    for part in authority.split(",") if authority else []:
        if part.startswith("["):
            host, bracket, after = part[1:].partition("]")
            if not bracket or (after and not after.startswith(":")):
                raise ValueError(f"invalid IPv6 host address in URI: {part!r}")
            port = after[1:]
        else:
            host, _, port = part.partition(":")
        hosts.append(unquote(host))
        ports.append(port)
    if any(hosts):
        params["host"] = ",".join(hosts)
    if any(ports):
        if not all(p.isdigit() for p in ports if p):
            raise ValueError(f"invalid port number in URI: {','.join(ports)!r}")
        params["port"] = ",".join(ports)
    if slash and path:
        params["dbname"] = unquote(path)
    for pair in query.split("&") if query else []:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f'missing "=" in URI query parameter {pair!r}')
        key, value = unquote(key), unquote(value)
        if key == "ssl" and value == "true":  # libpq's JDBC compatibility spelling
            key, value = "sslmode", "require"
        params[key] = value
    return params


def _quote(value: str) -> str:
    if value and not any(c.isspace() or c in "'\\" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def make_conninfo(params: dict[str, str]) -> str:
    """A ``key=value`` string holding ``params`` (quoted where needed; :func:`parse_conninfo` reads it back)."""
    return " ".join(f"{key}={_quote(str(value))}" for key, value in params.items())
