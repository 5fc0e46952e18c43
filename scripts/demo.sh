#!/usr/bin/env bash
# The embedded default from a clean clone: SQLite + local processes + the example DAGs.
# Triggers every example DAG once, shows a live view, exits when those runs have finished.
source "$(dirname "$0")/bootstrap.sh"
export MINIFLOW_STATE_DIR="${MINIFLOW_STATE_DIR:-$ROOT/.miniflow}"
exec .venv/bin/miniflow standalone --trigger-all --exit-when-done "$@"
