"""Fixtures for end-to-end tests: a DAGs folder, a state dir, and the `miniflow` command."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.helpers import cli_env, run_cli, write_dag


@dataclass
class Cli:
    """Runs the real `miniflow` command against one database and DAGs folder."""

    db_url: str
    dags: Path
    state: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return cli_env(self.db_url, self.dags, self.state, **self.extra_env)

    def __call__(
        self, *args: str, expect: int | None = 0, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = run_cli(args, self.env, timeout=timeout)
        assert "Traceback" not in result.stderr, result.stderr
        if expect is not None:
            assert result.returncode == expect, (
                f"miniflow {' '.join(args)} exited {result.returncode}, expected {expect}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def many(self, *calls: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        """Independent read-only commands side by side (each expected to exit 0)."""
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            return list(pool.map(lambda args: self(*args), calls))

    def dag(self, name: str, source: str) -> Path:
        return write_dag(self.dags, name, source)


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Cli:
    """`miniflow` on a migrated database of each backend."""
    return Cli(db_url, tmp_path / "dags", tmp_path / "state")


@pytest.fixture
def sqlite_cli(tmp_path: Path) -> Cli:
    """`miniflow` on the embedded default: a fresh SQLite file in the state dir."""
    state = tmp_path / "state"
    return Cli(f"sqlite+aiosqlite:///{state / 'miniflow.db'}", tmp_path / "dags", state)


def lines_with(output: str, needle: str) -> Sequence[str]:
    return [line for line in output.splitlines() if needle in line]
