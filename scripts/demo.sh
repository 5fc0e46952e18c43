#!/usr/bin/env bash
# The embedded default from a clean clone: SQLite + local processes + the example DAGs.
# Triggers every example DAG once, shows a live view, exits when those runs have finished.
# Its home (database, logs) is ./.miniflow of the clone unless MINIFLOW_HOME is set: look at
# the runs afterwards with `MINIFLOW_HOME=.miniflow .venv/bin/miniflow runs list`.
source "$(dirname "$0")/bootstrap.sh"
export MINIFLOW_HOME="${MINIFLOW_HOME:-$ROOT/.miniflow}"
export MINIFLOW_DAGS_FOLDER="${MINIFLOW_DAGS_FOLDER:-$ROOT/examples/dags}"
exec .venv/bin/miniflow standalone --trigger-all --exit-when-done "$@"
