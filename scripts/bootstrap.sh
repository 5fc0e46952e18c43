# Sourced by the other scripts: make .venv with miniflow installed (editable).
# Usage: source scripts/bootstrap.sh [extras]   e.g. "dev"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
extras="${1:-}"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
stamp=".venv/.installed-${extras:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e "$spec"
    touch "$stamp"
fi
# An editable install leaves miniflow's own modules uncompiled, and where
# PYTHONDONTWRITEBYTECODE is set every `miniflow` process compiled them again (~0.16 s of
# CPU per start). Compile what is stale now; a file edited later is still read from
# its source (its cached code no longer matches it).
.venv/bin/python -m compileall -q -j 0 miniflow worker > /dev/null
