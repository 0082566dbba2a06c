#!/usr/bin/env bash
# Build the Rust PostgreSQL reader (plugins/postgres-rs, PyO3 + maturin) and install dativo with it:
#   ./scripts/install-native.sh              # pip install '.[native]' with the freshly built wheel
#   ./scripts/install-native.sh --wheel-only # only build (or reuse) the wheel; prints its folder
# The wheel is cached by the hash of the plugin's sources under ~/.cache/dativo-build: built once
# (cargo --release, 3-6 minutes; needs cargo/rustc >= 1.74), reused in seconds afterwards.
# Extra arguments go to pip (e.g. -e for an editable dativo).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
cache="${XDG_CACHE_HOME:-$HOME/.cache}/dativo-build"
mkdir -p "$cache"
rs=plugins/postgres-rs
rs_hash=$(cat "$rs/Cargo.toml" "$rs/Cargo.lock" "$rs/pyproject.toml" \
  $(find "$rs/src" "$rs/python" -type f \( -name '*.rs' -o -name '*.py' -o -name '*.pyi' \) | sort) | sha256sum | cut -c1-16)
wheels="$cache/postgres-rs-$rs_hash"
if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
  echo "building the postgres-rs reader plugin (cargo --release via maturin; 3-6 minutes the first time)" >&2
  rm -rf "$wheels.tmp"
  CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}" $python -m pip wheel --quiet --disable-pip-version-check --no-deps \
    -w "$wheels.tmp" "./$rs"
  rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
fi
if [ "${1:-}" = "--wheel-only" ]; then
  echo "$wheels"
  exit 0
fi
# The wheel's version does not change with its sources, so pip would keep an older build already installed
# ("Requirement already satisfied"): put this one in place first. dativo[native] then finds it installed.
$python -m pip install --disable-pip-version-check --no-deps --force-reinstall "$wheels"/*.whl
$python -m pip install --disable-pip-version-check --find-links "$wheels" "$@" '.[native]'
