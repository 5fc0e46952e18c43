"""On the fake Kubernetes cluster: a Bash task's worker (in its pod) records its own
outcome, and the scheduler runs the task's callbacks once it has seen that end; the
worker renders a DAG's function macros and filters by importing the DAG file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.dbs import PostgresDatabases
from tests.e2e.helpers import write_dag
from tests.e2e.kube_helpers import FakeKube, kube_scheduler, kubelet_env, settle

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    return {"base_env": kubelet_env()}


@pytest.fixture
async def pg_url(postgres_dbs: PostgresDatabases) -> str:
    return await postgres_dbs.clone()


async def test_bash_in_pods_callbacks_and_function_macros(
    fake_kube: FakeKube, pg_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dags = tmp_path / "dags"
    write_dag(
        dags,
        "kcb.py",
        f"""
        import json
        from datetime import datetime
        from pathlib import Path
        from miniflow import DAG, Bash

        OUT = Path({str(out)!r})

        def record(context):
            name = f"{{context['task_id']}}.{{context['state']}}"
            (OUT / name).write_text(json.dumps(context["exception"]))

        def shout(text):
            return text.upper() + "!"

        with DAG("kcb", start_date=datetime(2026, 1, 1), user_defined_macros={{"shout": shout}},
                 user_defined_filters={{"twice": lambda v: f"{{v}}{{v}}"}},
                 default_args={{"on_success_callback": record, "on_failure_callback": record}}):
            Bash("hello", "echo {{{{ shout('hi') | twice }}}}")
            Bash("bad", "exit 5")
        """,
    )
    async with kube_scheduler(fake_kube, pg_url, dags) as kube:
        run_id = await kube.trigger("kcb")
        state = await kube.scheduler.run_until_done("kcb", run_id, timeout=60)
        await settle(kube)
        attempts = {a.task_id: a for a in await kube.attempts("kcb", run_id)}
        assert kube.scheduler.dag_callbacks is not None
        await kube.scheduler.dag_callbacks.drain(60)
    assert state == "failed"
    assert "HI!HI!" in (attempts["hello"].log_tail or "")  # rendered by the worker in the pod
    assert sorted(p.name for p in out.iterdir()) == ["bad.failed", "hello.success"]
    assert "5" in json.loads((out / "bad.failed").read_text())  # the worker's error text
