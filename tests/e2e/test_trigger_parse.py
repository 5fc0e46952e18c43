"""`miniflow dags trigger` of a known DAG parses that DAG's file (only if it changed),
not the whole folder: another file's import side effects do not happen, and an edit of
the DAG's own file is seen before the run is created."""

from __future__ import annotations

from pathlib import Path

from miniflow.store import dags as store_dags
from miniflow.store import runs as store_runs
from tests.e2e.conftest import Cli
from tests.e2e.helpers import query, write_dag

DAG = """
from datetime import datetime
from miniflow import DAG, Bash

with DAG("wanted", start_date=datetime(2026, 1, 1)):
    Bash("t", "echo {word}")
"""

# Importing it leaves a mark: the proof that it was parsed.
OTHER = """
from datetime import datetime
from pathlib import Path
from miniflow import DAG, Bash

Path({mark!r}).write_text("imported {n}")
with DAG("other", start_date=datetime(2026, 1, 1)):
    Bash("t", "true")
"""


async def test_trigger_parses_only_the_dag_s_own_file(cli: Cli, tmp_path: Path) -> None:
    mark = tmp_path / "other-imported"
    write_dag(cli.dags, "wanted.py", DAG.format(word="one"))
    write_dag(cli.dags, "other.py", OTHER.format(mark=str(mark), n=1))
    cli("dags", "list")  # the first parse of the folder: both files
    assert mark.read_text() == "imported 1"
    mark.unlink()

    write_dag(cli.dags, "other.py", OTHER.format(mark=str(mark), n=2))  # changed: not parsed
    write_dag(cli.dags, "wanted.py", DAG.format(word="two"))  # changed: parsed
    out = cli("dags", "trigger", "wanted").stdout
    run_id = out.split("created run ", 1)[1].rsplit(" of ", 1)[0]
    assert not mark.exists(), "dags trigger imported another DAG file"

    run = await query(cli.db_url, store_runs.get_run, "wanted", run_id)
    assert run.dag_hash is not None
    versions = await query(cli.db_url, store_dags.get_versions, [run.dag_hash])
    assert versions[run.dag_hash]["tasks"]["t"]["command"] == "echo two"  # the edit was seen first

    cli("dags", "list")  # a command that scans the folder still finds the other change
    assert mark.read_text() == "imported 2"


async def test_trigger_of_a_dag_never_parsed_scans_the_folder(cli: Cli, tmp_path: Path) -> None:
    write_dag(cli.dags, "wanted.py", DAG.format(word="one"))
    assert "created run" in cli("dags", "trigger", "wanted").stdout
