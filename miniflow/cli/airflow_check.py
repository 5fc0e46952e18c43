"""`miniflow airflow check DIR`: which Airflow DAG files load unmodified, and why not.

Each file is imported with the layer active in a child process of its own (`python -m
miniflow.cli.airflow_check`, with a timeout: DAG files are arbitrary code), which
prints one JSON object: the DAGs it defines, the warnings recorded while it was
imported, or the error that stopped it (for a refused construct: the construct, file,
line and suggested replacement).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from miniflow.airflow_compat import mentions_airflow

Status = Literal["loads", "loads with warnings", "does not load"]
TIMEOUT = 60.0


@dataclass
class Problem:
    construct: str
    message: str
    filename: str | None
    lineno: int | None
    suggestion: str | None = None

    def where(self) -> str:
        if self.filename and self.lineno:
            return f"{self.filename}:{self.lineno}"
        return self.filename or "?"


@dataclass
class FileReport:
    path: str
    status: Status
    dags: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    error: Problem | None = None


@dataclass
class Report:
    files: list[FileReport]

    @property
    def loading(self) -> int:
        return sum(1 for f in self.files if f.status != "does not load")

    def summary(self) -> str:
        return f"{self.loading} of {len(self.files)} DAG files load unmodified"

    def as_json(self) -> dict[str, Any]:
        return {
            "files": [asdict(f) for f in self.files],
            "summary": {
                "files": len(self.files),
                "loading": self.loading,
                "with_warnings": sum(1 for f in self.files if f.status == "loads with warnings"),
                "text": self.summary(),
            },
        }


def airflow_files(folder: Path) -> list[Path]:
    """The Python files under `folder` that Airflow would parse (mention airflow and dag)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.endswith(".py") and mentions_airflow(path):
                found.append(path)
    return sorted(found)


def check_folder(folder: Path, *, timeout: float = TIMEOUT) -> Report:
    return Report([check_file(path, timeout=timeout) for path in airflow_files(folder)])


def check_file(path: Path, *, timeout: float = TIMEOUT) -> FileReport:
    """Import `path` in a child process with the layer active; its report."""
    env = dict(os.environ)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "miniflow.cli.airflow_check", str(path.resolve())],
            capture_output=True,
            timeout=timeout,
            env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
            cwd=str(path.parent),
            check=False,
        )
    except subprocess.TimeoutExpired:
        error = Problem("timeout", f"importing took longer than {timeout:g}s", str(path), None)
        return FileReport(str(path), "does not load", error=error)
    try:
        data = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        text = done.stderr.decode(errors="replace").strip().splitlines()
        message = text[-1] if text else f"the check exited with code {done.returncode}"
        return FileReport(
            str(path), "does not load", error=Problem("crash", message, str(path), None)
        )
    return _from_json(str(path), data)


def _from_json(path: str, data: dict[str, Any]) -> FileReport:
    warnings = [Problem(**w) for w in data.get("warnings", [])]
    if data.get("error"):
        return FileReport(path, "does not load", warnings=warnings, error=Problem(**data["error"]))
    status: Status = "loads with warnings" if warnings else "loads"
    return FileReport(path, status, dags=data.get("dags", []), warnings=warnings)


# --- the child ---------------------------------------------------------------------------------


def _error(exc: BaseException, path: str) -> dict[str, Any]:
    from miniflow.airflow_compat.problems import UnsupportedConstruct
    from miniflow.errors import DagDefinitionError

    if isinstance(exc, UnsupportedConstruct):
        return asdict(
            Problem(exc.construct, exc.bare_message, exc.filename, exc.lineno, exc.suggestion)
        )
    if isinstance(exc, DagDefinitionError):
        return asdict(Problem("definition", exc.bare_message, exc.filename, exc.lineno))
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if os.path.abspath(f.filename) == os.path.abspath(path)]
    last = own[-1] if own else (frames[-1] if frames else None)
    message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return asdict(
        Problem(
            type(exc).__name__,
            message,
            last.filename if last else path,
            last.lineno if last else None,
        )
    )


def _register_lookups() -> None:
    """A file reading `Variable.get` at import time reads miniflow's database, as when
    the scheduler parses it (looked up at the first read only: the check needs no
    database otherwise)."""
    from miniflow.authoring import lookups
    from miniflow.config import load_config
    from miniflow.store.config_values import DatabaseBackend

    lookups.register_backend(DatabaseBackend(lambda: load_config().database_url))


def run_child(path: str) -> dict[str, Any]:
    """Import `path` with the layer; the JSON-able result (never raises)."""
    from miniflow import airflow_compat
    from miniflow.airflow_compat import problems
    from miniflow.authoring.loader import import_dag_file

    airflow_compat.activate()
    _register_lookups()
    with problems.collect_warnings() as found:
        try:
            dags = import_dag_file(Path(path))
            result: dict[str, Any] = {
                "dags": [{"dag_id": d.dag_id, "tasks": len(d.tasks)} for d in dags]
            }
        except BaseException as exc:
            result = {"error": _error(exc, path)}
    result["warnings"] = [asdict(w) for w in found]
    return result


def main(argv: list[str]) -> int:
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # what the DAG file prints must not mix with the result
    try:
        result = run_child(argv[0])
    finally:
        sys.stdout = real_stdout
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
