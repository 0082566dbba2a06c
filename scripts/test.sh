#!/usr/bin/env bash
# Install everything the test suite needs, then run the whole suite.
#   ./scripts/test.sh            # all tests
#   ./scripts/test.sh -k iceberg # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

# The native PostgreSQL reader plugin (Rust + PyO3, built by maturin; needs cargo/rustc >= 1.74).
# Rebuilt and reinstalled only when its sources change.
rs=plugins/postgres-rs
rs_hash=$(cat "$rs/Cargo.toml" "$rs/Cargo.lock" "$rs/pyproject.toml" $(find "$rs/src" "$rs/python" -type f \( -name '*.rs' -o -name '*.py' \) | sort) | sha256sum | cut -c1-16)
if [ ! -f "$rs/target/.installed-$rs_hash" ] || ! python3 -c 'import dativo_postgres_rs' >/dev/null 2>&1; then
  echo "building the postgres-rs reader plugin (cargo, release)" >&2
  CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" python3 -m pip install --quiet --disable-pip-version-check "./$rs"
  mkdir -p "$rs/target" && touch "$rs/target/.installed-$rs_hash"
fi

# The suite starts its own PostgreSQL server (initdb + pg_ctl as an unprivileged user);
# install the server from Debian's packages when no initdb is on this machine.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "installing the PostgreSQL server (Debian package 'postgresql')" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql postgresql-client >/dev/null
fi

# The Go reader plugin (process protocol; go >= 1.25, modules from the Go module proxy).
# `go build` is incremental: a no-op when nothing changed.
echo "building plugins/go-postgres-reader (go build)" >&2
(cd plugins/go-postgres-reader && go build -o bin/go-postgres-reader .)

# The process-plugin sandbox tests need bubblewrap (Debian package 'bubblewrap').
if ! command -v bwrap >/dev/null 2>&1; then
  echo "installing bubblewrap (Debian package 'bubblewrap')" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq bubblewrap >/dev/null
fi

exec python3 -m pytest "$@"
