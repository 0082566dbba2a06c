"""The postgres connector's default reader: postgres-rs where installed and able, else ADBC (issue 15)."""

from __future__ import annotations

import sys

import pytest

from dativo.connectors.postgres import native
from dativo.connectors.postgres.native import choose_default_reader


@pytest.fixture
def fresh(monkeypatch):
    native.native_settings.cache_clear()
    yield monkeypatch
    native.native_settings.cache_clear()


def test_postgres_rs_is_the_default_where_it_is_installed(fresh):
    reader, why = choose_default_reader({"dsn": "postgresql://u@h:5432/db?sslmode=verify-full&sslrootcert=ca.pem"})
    assert (reader, why) == ("postgres-rs", "postgres-rs is installed")
    assert choose_default_reader({"host": "h", "sslmode": "require", "password": "x"})[0] == "postgres-rs"
    assert choose_default_reader(None)[0] == "postgres-rs"


def test_settings_only_libpq_readers_honour_fall_back_to_adbc(fresh):
    reader, why = choose_default_reader({"dsn": "host=h sslmode=verify-full sslcert=c.pem sslkey=k.pem"})
    assert reader == "postgres-adbc" and "sslcert, sslkey" in why
    reader, why = choose_default_reader({"dsn": "postgresql://u@h/db?gssencmode=disable"})
    assert reader == "postgres-adbc" and "gssencmode" in why
    assert choose_default_reader({"host": "h", "sslcrl": "x.crl"})[0] == "postgres-adbc"


def test_without_the_package_the_default_is_adbc_and_psycopg_is_not_needed(fresh):
    fresh.setitem(sys.modules, "dativo_postgres_rs", None)
    reader, why = choose_default_reader({"host": "h"})
    assert reader == "postgres-adbc" and "pip install 'dativo[native]'" in why
    native.native_settings.cache_clear()
    fresh.delitem(sys.modules, "dativo_postgres_rs")
    fresh.setitem(sys.modules, "psycopg", None)  # postgres-rs describes the source on its own connection
    assert choose_default_reader({"host": "h"})[0] == "postgres-rs"
