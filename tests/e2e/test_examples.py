"""The example DAGs (what the README tells users to run) import cleanly and run to success."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from miniflow.authoring.dag import DAG
from miniflow.authoring.loader import import_dag_file
from tests.e2e.helpers import EXAMPLES, MINIFLOW, cli_env, run_cli

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.py"))


def _import(path: Path) -> list[DAG]:
    """Import an example in this process, leaving sys.path and sys.modules as they were."""
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    try:
        return import_dag_file(path)
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            if name.startswith("miniflow_dag_"):
                del sys.modules[name]


def _example_dag_ids() -> list[str]:
    return [dag.dag_id for path in EXAMPLE_FILES for dag in _import(path)]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_file_imports_and_serializes(path: Path) -> None:
    dags = _import(path)
    assert dags, f"{path.name} defines no DAG"
    for dag in dags:
        serialized = dag.serialize(path.name)
        assert serialized["tasks"], f"{dag.dag_id} has no task"
        assert "example" in serialized["tags"]


async def _dags_test(dag_id: str, tmp_path: Path) -> tuple[str, int, str]:
    state = tmp_path / dag_id
    env = cli_env(f"sqlite+aiosqlite:///{state / 'miniflow.db'}", EXAMPLES, state)
    proc = await asyncio.create_subprocess_exec(
        MINIFLOW,
        "dags",
        "test",
        dag_id,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 100)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return dag_id, proc.returncode or 0, out.decode()


async def test_every_example_dag_runs_to_success(tmp_path: Path) -> None:
    """`miniflow dags test <dag_id>` for each example, each on a fresh SQLite state dir."""
    dag_ids = _example_dag_ids()
    assert len(dag_ids) >= 4
    results = await asyncio.gather(*(_dags_test(d, tmp_path) for d in dag_ids))
    failures = {d: out for d, code, out in results if code != 0 or "Traceback" in out}
    assert not failures, "\n\n".join(f"== {d}\n{out}" for d, out in failures.items())
    for dag_id, _, out in results:
        assert ": success" in out, (dag_id, out)


def test_standalone_trigger_all_exit_when_done(tmp_path: Path) -> None:
    """The README's embedded default: SQLite + local processes + the example DAGs."""
    env = cli_env("", EXAMPLES, tmp_path / "state")
    del env["MINIFLOW_DATABASE_URL"], env["MINIFLOW_DAGS_FOLDER"]  # the defaults
    result = run_cli(
        ["standalone", "--trigger-all", "--exit-when-done"], env, timeout=110, cwd=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "succeeded" in output
    assert "Traceback" not in output
    assert (tmp_path / "state" / "miniflow.db").exists()
    assert not (tmp_path / ".miniflow").exists()
    assert os.listdir(tmp_path / "state" / "logs")


def test_readme_dag_example_runs_to_success(tmp_path: Path) -> None:
    """The DAG in the README's "Writing DAGs" section parses and runs as shown."""
    readme = (EXAMPLES.parent.parent / "README.md").read_text()
    block = readme.split("## Writing DAGs", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "readme_example.py").write_text(block)
    state = tmp_path / "state"
    env = cli_env(f"sqlite+aiosqlite:///{state / 'miniflow.db'}", dags, state)
    proc = subprocess.run(
        [MINIFLOW, "dags", "test", "example_etl"],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "extract" in proc.stdout and "load" in proc.stdout and ": success" in proc.stdout
