"""Find the DAG files in the DAGs folder.

Why this module exists: the parse loop must know which files to hand to the
isolated parser without importing any of them. It walks the folder, honours
`.miniflowignore` files (gitignore syntax; each applies to its own folder and
below) and, like Airflow's safe mode, skips Python files whose bytes do not
mention "dag" and either "miniflow" or "airflow" (case-insensitive; Airflow DAG files
run through `miniflow.airflow_compat`): helper modules are never imported as DAG files.

This module must never import or execute user code; it only stats and reads
bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pathspec

IGNORE_FILE = ".miniflowignore"


def might_contain_dag(path: Path) -> bool:
    """Safe-mode heuristic: the file mentions "dag" and "miniflow" or "airflow"."""
    try:
        content = path.read_bytes().lower()
    except OSError:
        return False
    return (b"miniflow" in content or b"airflow" in content) and b"dag" in content


def _load_ignore(folder: str) -> pathspec.GitIgnoreSpec | None:
    try:
        with open(os.path.join(folder, IGNORE_FILE), encoding="utf-8", errors="replace") as fh:
            return pathspec.GitIgnoreSpec.from_lines(fh.read().splitlines())
    except FileNotFoundError:
        return None


def _ignored(path: str, specs: list[tuple[str, pathspec.GitIgnoreSpec]], is_dir: bool) -> bool:
    for base, spec in specs:
        rel = os.path.relpath(path, base).replace(os.sep, "/")
        if spec.match_file(rel + "/" if is_dir else rel):
            return True
    return False


def find_dag_files(folder: Path) -> list[Path]:
    """Every candidate DAG file under `folder`, recursively, sorted.

    Skips `__pycache__`, hidden files and folders, paths matched by a
    `.miniflowignore` and files failing the safe-mode check.
    """
    root = str(folder)
    if not os.path.isdir(root):
        return []
    specs_by_dir: dict[str, list[tuple[str, pathspec.GitIgnoreSpec]]] = {}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        parent = specs_by_dir.get(os.path.dirname(dirpath), []) if dirpath != root else []
        specs = list(parent)
        own = _load_ignore(dirpath)
        if own is not None:
            specs.append((dirpath, own))
        specs_by_dir[dirpath] = specs
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and d != "__pycache__"
            and not _ignored(os.path.join(dirpath, d), specs, is_dir=True)
        )
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if _ignored(full, specs, is_dir=False):
                continue
            path = Path(full)
            if might_contain_dag(path):
                found.append(path)
    return sorted(found)
