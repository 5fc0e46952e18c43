"""The DAG file changes, or disappears, while a run of it is in progress.

A run keeps the DAG version it was created with: a task renamed in the file
still runs under its old name in this run (and the new name is not added), a
task's retries are the ones it started with, a changed Bash command runs in its
old form. A helper module the DAG imports is not a DAG file, yet editing it
must produce a new DAG version too (files are re-parsed periodically for this).
A run whose file was deleted still finishes.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest

from miniflow.store import dags as store_dags
from tests.faults.dags.layered import Extra, LayeredDag
from tests.faults.harness import Harness
from tests.faults.invariants import check

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(100)]

HELPER_V1 = 'NAMES = []\nVALUE = "one"\n'
HELPER_V2 = 'NAMES = ["from_helper"]\nVALUE = "two, edited"\n'  # another size: no stale .pyc


def _versions(h: Harness) -> tuple[LayeredDag, LayeredDag]:
    gate, flaky_mark, out = h.marks / "gate", h.marks / "flaky-once", h.marks / "cmd.out"

    def after_gate(task_id: str, **kw: object) -> Extra:
        return Extra(task_id, "bash", seconds=0.1, upstream=("gate",), **kw)  # type: ignore[arg-type]

    flaky = f"if [ ! -e {flaky_mark} ]; then touch {flaky_mark}; exit 1; fi;"
    v1 = h.layered(
        "changing",
        imports=("import faults_helper",),
        body="for name in faults_helper.NAMES:\n    tasks[name] = Bash(name, bash(0))\n",
    ).with_extras(
        Extra("gate", "bash", before=f"while [ ! -e {gate} ]; do sleep 0.05; done;"),
        after_gate("old_name"),
        after_gate("flaky", before=flaky, settings="retries=1"),
        after_gate("cmd", before=f"echo v1 > {out};"),
        Extra("helped", "python", result="faults_helper.VALUE", upstream=("gate",)),
    )
    renamed = {"old_name": after_gate("new_name")}
    edited = {
        "flaky": after_gate("flaky", before=flaky, settings="retries=0"),
        "cmd": after_gate("cmd", before=f"echo v2 > {out};"),
    }
    extras = tuple(renamed.get(e.task_id) or edited.get(e.task_id) or e for e in v1.extras)
    return v1, dataclasses.replace(v1, extras=extras)


async def test_dag_file_and_helper_edited_during_a_run(harness: Harness) -> None:
    h = harness
    h.settings["MINIFLOW_REPARSE_INTERVAL"] = "1"
    v1, v2 = _versions(h)
    h.write_file("faults_helper.py", HELPER_V1)
    h.write(v1)
    await h.trigger()
    h.start_scheduler()
    await h.wait_began("gate")
    await h.wait_successes(10)

    problems = []
    first = await h.dag_hash()
    h.write(v2)

    async def changed_from(old: str) -> str | None:
        new = await h.dag_hash()
        return new if new != old else None

    second = await h.until(lambda: changed_from(first), 10, "the edited DAG file to be parsed")
    await h.fault("DAG file edited")
    h.write_file("faults_helper.py", HELPER_V2)
    try:
        await h.until(lambda: changed_from(second), 10, "the helper edit to be parsed")
        dag = await h.read(store_dags.get_dag, "changing")
        assert "from_helper" in dag.serialized["tasks"], "the new version lacks the helper's task"
    except AssertionError as exc:
        problems.append(f"helper module edit never reached the DAG: {exc}")
    await h.fault("helper module edited")
    (h.marks / "gate").touch()

    # The run is judged against v1: old_name ran, new_name/from_helper are not in it,
    # flaky kept retries=1 (it fails once), cmd ran its old command.
    with contextlib.suppress(AssertionError):  # check() reports a run that never ends
        await h.wait_finished()
    out = h.marks / "cmd.out"
    ran = out.read_text().strip() if out.exists() else "nothing"
    if ran != "v1":
        problems.append(f"cmd ran the edited command ({ran}), not its run's version (v1)")
    result = await check(h, retried={"flaky"}, task_ids=v1.task_ids, problems=problems)
    assert result.ok, result.explain(h.log_tail())
    assert (await h.ti("flaky")).try_number == 2  # it did fail once, and was retried


async def test_dag_file_deleted_during_its_run(harness: Harness) -> None:
    h = harness
    # Bash only: a @task function is imported from the file at run time, so a deleted
    # file cannot run one; Bash tasks need nothing but the stored version.
    path = h.write(h.layered("doomed", bash_only=True))
    await h.trigger()
    h.start_scheduler()
    await h.wait_successes(10)
    path.unlink()
    await h.fault("DAG file deleted")

    async def deactivated() -> bool:
        rows = await h.read(store_dags.list_dags)
        return "doomed" not in {row.dag_id for row in rows}

    await h.until(deactivated, 10, "the scheduler to notice the deleted file")
    result = await check(h)
    assert result.ok, result.explain(h.log_tail())
