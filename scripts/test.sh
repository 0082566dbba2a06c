#!/usr/bin/env bash
# Install everything the test suite needs, then run the whole suite in parallel.
#   ./scripts/test.sh            # all tests (about 15 minutes on 2 cores; the first run also builds ~5 min)
#   ./scripts/test.sh -k iceberg # extra arguments go to pytest
#   DATIVO_TEST_WORKERS=1 ./scripts/test.sh   # one pytest process instead of one per core
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
step() { printf '[test.sh %3ds] %s\n' "$((SECONDS - started))" "$*" >&2; }
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() {
  step "installing $* from Debian's packages (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
python=python3
cache="${XDG_CACHE_HOME:-$HOME/.cache}/dativo-build"
mkdir -p "$cache"

step "installing dativo with its test extras into $($python -c 'import sys; print(sys.prefix)') (pip)"
$python -m pip install --quiet --disable-pip-version-check -e '.[test]'

# The native PostgreSQL reader plugin (Rust + PyO3, built by maturin; needs cargo/rustc >= 1.74).
# Its wheel is cached by the hash of its sources (scripts/install-native.sh): built once, reinstalled in seconds.
rs_wheels=$(PYTHON=$python ./scripts/install-native.sh --wheel-only)
step "installing the postgres-rs reader plugin ($(basename "$rs_wheels"))"
$python -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$rs_wheels"/*.whl

# The suite starts its own PostgreSQL server (initdb + pg_ctl as an unprivileged user).
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql postgresql-client
fi

# The Go reader plugin (process protocol; go >= 1.25, modules from the Go module proxy).
# `go build` is incremental and cached by Go itself: a no-op when nothing changed.
step "building plugins/go-postgres-reader (go build)"
(cd plugins/go-postgres-reader && go build -o bin/go-postgres-reader .)

# The process-plugin sandbox tests need bubblewrap.
command -v bwrap >/dev/null 2>&1 || apt_install bubblewrap

# Apache Iceberg's reference REST catalog server (Java 17 and Maven from Debian when missing; jars from Maven Central, cached per version).
step "fetching Apache Iceberg's REST catalog server (Maven Central; cached after the first time)"
./scripts/install-iceberg-rest.sh >/dev/null

workers="${DATIVO_TEST_WORKERS:-auto}"
step "running the test suite (pytest, $workers workers; each worker starts its own PostgreSQL and S3 servers)"
set +e
# --dist loadgroup: the Ray tests (xdist_group "ray") share one worker and its one 3-node Ray cluster.
$python -m pytest -n "$workers" --dist loadgroup --durations=10 "$@"
status=$?
set -e
step "done (pytest exit code $status)"
exit $status
