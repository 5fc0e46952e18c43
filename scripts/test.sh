#!/usr/bin/env bash
# The whole test suite from a clean clone: installs dev dependencies, makes sure the local
# PostgreSQL is up (tests create and drop their own databases in it), lints, type-checks, tests.
source "$(dirname "$0")/bootstrap.sh" dev

pg_up() { .venv/bin/python - <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(1)
try:
    s.connect(("127.0.0.1", 5432))
except OSError:
    sys.exit(1)
PY
}
if ! pg_up; then
    echo "PostgreSQL is down: starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi

# tests/deploy render deploy/ with `kubectl kustomize` (components need kustomize v4+).
if ! command -v kubectl >/dev/null 2>&1; then
    echo "kubectl is missing: installing it"
    apt-get install -y -q kubectl || apt-get install -y -q kubernetes-client
fi

# tests/web/test_browser.py drives a headless Chromium through chromium-driver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "chromium / chromium-driver missing: installing them"
    apt-get install -y -q chromium chromium-driver \
        || echo "could not install chromium: the browser test will be skipped" >&2
fi

.venv/bin/ruff check miniflow worker tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports
set +e
.venv/bin/python -m pytest -p no:cacheprovider -q --durations=25 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
