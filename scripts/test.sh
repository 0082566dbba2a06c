#!/usr/bin/env bash
# Install everything the test suite needs, then run the whole suite.
#   ./scripts/test.sh            # all tests
#   ./scripts/test.sh -k iceberg # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

# The suite starts its own PostgreSQL server (initdb + pg_ctl as an unprivileged user);
# install the server from Debian's packages when no initdb is on this machine.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "installing the PostgreSQL server (Debian package 'postgresql')" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql postgresql-client >/dev/null
fi

exec python3 -m pytest "$@"
