#!/usr/bin/env bash
# The Airflow integration's tests, in a venv of their own (apache-airflow is ~550 MB with its dependencies
# and took ~11 minutes to install on a loaded 2-core machine, too much for the main test command).
#
#   scripts/test-airflow.sh                 # venv in .venv-airflow (kept for the next run)
#   AIRFLOW_VENV=/tmp/af scripts/test-airflow.sh -k window
#
# It runs tests_airflow/ (DativoOperator in a real dag.test(), SQLite metadata database, no scheduler).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AIRFLOW_VENV:-.venv-airflow}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -e '.[airflow]' pytest pytest-timeout
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests_airflow "$@"
