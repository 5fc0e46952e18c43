"""Setup / teardown, callbacks, LatestOnly, clears of a branch and user macros through the
real scheduler and the LocalLauncher (one process per try), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import update

from miniflow.cli import operations
from miniflow.config import Config, load_config
from miniflow.store import engine as store_engine
from miniflow.store.models import DagRun
from miniflow.web import actions
from tests.e2e.helpers import write_dag
from tests.e2e.test_local_scheduler import local_scheduler


def _config(db_url: str, tmp_path: Path) -> Config:
    return load_config(
        environ={}, database_url=db_url, dags_folder=tmp_path / "dags", state_dir=tmp_path / "s"
    )


async def test_a_teardown_runs_after_failed_work_and_only_work_decides_the_run(
    db_url: str, tmp_path: Path
) -> None:
    write_dag(
        tmp_path / "dags",
        "st.py",
        """
        from datetime import datetime
        from miniflow import DAG, Bash, task

        with DAG("st_fail", start_date=datetime(2026, 1, 1)):
            @task.setup
            def make() -> str:
                return "res"

            @task.teardown
            def drop(name: str) -> None:
                print(f"dropping {name}")

            made = make()
            work = Bash("work", "exit 3")
            made >> work >> drop(made)
            work >> Bash("after", "true")

        with DAG("st_teardown_fails", start_date=datetime(2026, 1, 1)):
            lock = Bash("lock", "true").as_setup()
            lock >> Bash("work", "true") >> Bash("unlock", "exit 1").as_teardown(setups=lock)

        with DAG("st_setup_fails", start_date=datetime(2026, 1, 1)):
            lock = Bash("lock", "exit 1").as_setup()
            lock >> Bash("work", "true") >> Bash("unlock", "true").as_teardown(setups=lock)
    """,
    )
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("st_fail")
        tis = await local.tis("st_fail", run_id)
        _, ok_state = await local.run("st_teardown_fails")
        setup_run, setup_state = await local.run("st_setup_fails")
        setup_tis = await local.tis("st_setup_fails", setup_run)
    assert {t: ti.state for t, ti in tis.items()} == {
        "make": "success",
        "work": "failed",
        "drop": "success",  # ran although work failed
        "after": "upstream_failed",
    }
    assert state == "failed"
    assert ok_state == "success"  # only the teardown failed
    assert {t: ti.state for t, ti in setup_tis.items()} == {
        "lock": "failed",
        "work": "upstream_failed",
        "unlock": "skipped",  # nothing was set up
    }
    assert setup_state == "failed"


async def test_clearing_work_runs_its_setup_and_teardown_again(db_url: str, tmp_path: Path) -> None:
    write_dag(
        tmp_path / "dags",
        "st2.py",
        """
        from datetime import datetime
        from miniflow import DAG, Bash

        with DAG("st_clear", start_date=datetime(2026, 1, 1)):
            lock = Bash("lock", "true").as_setup()
            lock >> Bash("work", "true") >> Bash("unlock", "true").as_teardown(setups=lock)
            Bash("other", "true")
    """,
    )
    config = _config(db_url, tmp_path)
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, _ = await local.run("st_clear")
        _, cleared = await operations.clear(config, "st_clear", run_id, "work", downstream=False)
        state = await local.scheduler.run_until_done("st_clear", run_id, timeout=60)
        tis = await local.tis("st_clear", run_id)
        async with store_engine.transaction(local.scheduler.sessions) as session:
            # The web's clear (button and API) follows the same rule.
            from_web = await actions.clear(session, "st_clear", run_id, "work", downstream=False)
        after_web = {t: ti.state for t, ti in (await local.tis("st_clear", run_id)).items()}
    assert from_web == ["lock", "work", "unlock"]
    assert after_web == {"lock": "none", "work": "none", "unlock": "none", "other": "success"}
    assert cleared == ["lock", "work", "unlock"]
    assert state == "success"
    assert {t: (ti.state, ti.try_number) for t, ti in tis.items()} == {
        "lock": ("success", 2),
        "work": ("success", 2),
        "unlock": ("success", 2),
        "other": ("success", 1),
    }


async def test_clearing_a_branch_lets_its_new_result_decide(db_url: str, tmp_path: Path) -> None:
    choice = tmp_path / "choice"
    choice.write_text("a")
    write_dag(
        tmp_path / "dags",
        "br.py",
        f"""
        from datetime import datetime
        from miniflow import DAG, Bash, Empty, task

        with DAG("br_clear", start_date=datetime(2026, 1, 1)):
            @task.branch
            def pick() -> str:
                return open({str(choice)!r}).read()

            join = Empty("join", trigger_rule="none_failed_min_one_success")
            pick() >> [Bash("a", "true"), Bash("b", "true")] >> join
            join >> Bash("end", "true")
    """,
    )
    config = _config(db_url, tmp_path)
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, _ = await local.run("br_clear")
        first = {t: ti.state for t, ti in (await local.tis("br_clear", run_id)).items()}
        choice.write_text("b")
        _, cleared = await operations.clear(config, "br_clear", run_id, "pick", downstream=False)
        state = await local.scheduler.run_until_done("br_clear", run_id, timeout=60)
        tis = await local.tis("br_clear", run_id)
    assert first["b"] == "skipped" and first["a"] == "success"
    assert cleared == ["pick", "b"]
    assert state == "success"
    assert {t: (ti.state, ti.try_number) for t, ti in tis.items()} == {
        "pick": ("success", 2),
        "a": ("success", 1),  # what the first result followed stays done
        "b": ("success", 1),  # un-skipped by the clear, followed by the new result
        "join": ("success", 0),
        "end": ("success", 1),
    }


async def test_task_and_dag_callbacks_run_and_never_change_a_state(
    db_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_dag(
        tmp_path / "dags",
        "cb.py",
        f"""
        import json
        from datetime import datetime
        from pathlib import Path
        from miniflow import DAG, Bash, get_current_context, task

        OUT = Path({str(out)!r})

        def record(context):
            name = f"{{context['task_id'] if 'task_id' in context else 'dag'}}.{{context['state']}}"
            ti = get_current_context()["ti"].task_id if "task_id" in context else None
            (OUT / name).write_text(json.dumps([context["run_id"], context.get("exception"), ti]))

        def broken(context):
            raise RuntimeError("the callback itself fails")

        with DAG("cbs", start_date=datetime(2026, 1, 1),
                 default_args={{"on_failure_callback": [broken, record]}},
                 on_failure_callback=[broken, record], on_success_callback=record):
            @task(on_success_callback=[broken, record])
            def ok() -> int:
                return 1

            @task(retries=1, retry_delay=0, on_retry_callback=record)
            def bad() -> None:
                raise ValueError("task fails")

            ok()
            bad()
            Bash("bash", "exit 1")  # its callbacks (from default_args) run in a child
    """,
    )
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("cbs")
        tis = await local.tis("cbs", run_id)
        assert local.scheduler.dag_callbacks is not None
        await local.scheduler.dag_callbacks.drain(60)
    assert state == "failed"
    assert {t: ti.state for t, ti in tis.items()} == {
        "ok": "success",  # its failing callback did not fail it
        "bad": "failed",
        "bash": "failed",
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "bad.failed",
        "bad.up_for_retry",
        "bash.failed",
        "dag.failed",
        "ok.success",
    ]
    run, error, ti = json.loads((out / "bad.failed").read_text())
    assert run == run_id and "ValueError: task fails" in error and ti == "bad"
    assert json.loads((out / "dag.failed").read_text())[0] == run_id


async def test_bash_and_pod_callbacks_run_in_a_child_after_the_outcome_is_committed(
    db_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    write_dag(
        tmp_path / "dags",
        "cbbash.py",
        f"""
        import json, time
        from datetime import datetime
        from pathlib import Path
        from miniflow import DAG, Bash, Pod, get_current_context

        OUT = Path({str(out)!r})

        def committed(ti):
            # What the database says now: the callback must never run before the commit.
            import asyncio
            from sqlalchemy import text
            from miniflow.store import engine

            async def read():
                eng = engine.create_engine({db_url!r})
                try:
                    async with eng.connect() as conn:
                        return (await conn.execute(text(
                            "SELECT state, try_number FROM task_instance WHERE dag_id = 'cbb'"
                            f" AND run_id = '{{ti.run_id}}' AND task_id = '{{ti.task_id}}'"
                        ))).one()
                finally:
                    await eng.dispose()
            state, try_number = asyncio.run(read())
            return state if try_number == ti.try_number else "a newer try"

        def record(context):
            ti = get_current_context()["ti"]
            name = f"{{ti.task_id}}.{{ti.try_number}}.{{context['state']}}"
            (OUT / name).write_text(json.dumps([context["run_id"], context["exception"],
                                                context["ds"], context["params"],
                                                committed(ti)]))

        def broken(context):
            raise RuntimeError("the callback itself fails")

        def hangs(context):
            time.sleep(60)

        with DAG("cbb", start_date=datetime(2026, 1, 1), params={{"n": 4}},
                 default_args={{"on_failure_callback": [broken, record]}}):
            Bash("ok", "true", on_success_callback=[broken, record])
            Bash("bad", "exit 3", retries=1, retry_delay=0, on_retry_callback=record)
            Bash("slow", "true", on_success_callback=hangs)
            Pod("pod", image="busybox:1.36", command=["sh", "-c", "exit 0"],
                on_success_callback=record)
            Bash("tmpl", "echo {{{{ nope }}}}")  # fails before it starts: a template error
    """,
    )
    async with local_scheduler(db_url, tmp_path) as local:
        callbacks = local.scheduler.dag_callbacks
        assert callbacks is not None
        callbacks.timeout = 8.0  # the hanging one is killed after this
        run_id, state = await local.run("cbb")
        tis = await local.tis("cbb", run_id)
        await callbacks.drain(60)
    assert state == "failed"
    assert {t: ti.state for t, ti in tis.items()} == {
        "ok": "success",  # its failing callback did not fail it
        "bad": "failed",
        "slow": "success",  # nor did a hanging one
        "pod": "success",
        "tmpl": "failed",
    }
    assert sorted(p.name for p in out.iterdir()) == [
        "bad.1.up_for_retry",
        "bad.2.failed",
        "ok.1.success",
        "pod.1.success",
        "tmpl.1.failed",
    ]
    _, error, _, _, seen = json.loads((out / "tmpl.1.failed").read_text())
    assert "undefined variable 'nope'" in error and seen == "failed"
    run, error, ds, params, seen = json.loads((out / "bad.2.failed").read_text())
    assert run == run_id and "exit code 3" in error and params == {"n": 4}
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", ds)
    assert seen == "failed"  # the state was committed before the callback ran
    retried = json.loads((out / "bad.1.up_for_retry").read_text())[4]
    assert retried in ("up_for_retry", "scheduled", "a newer try")  # never still "running"
    assert json.loads((out / "ok.1.success").read_text())[1::3] == [None, "success"]


async def test_latest_only_skips_in_an_old_scheduled_interval(db_url: str, tmp_path: Path) -> None:
    write_dag(
        tmp_path / "dags",
        "lo.py",
        """
        from datetime import datetime
        from miniflow import DAG, Bash, LatestOnly

        with DAG("lo", schedule="@daily", start_date=datetime(2026, 1, 1)):
            report = LatestOnly("latest_only") >> Bash("report", "true")
            report >> Bash("after_report", "true")
            report >> Bash("always", "true", trigger_rule="all_done")
    """,
    )
    async with local_scheduler(db_url, tmp_path) as local:
        manual, _ = await local.run("lo")
        old = await local.trigger("lo")
        async with store_engine.transaction(local.scheduler.sessions) as session:
            # A scheduled run of an interval long gone (a catch-up run, say).
            await session.execute(
                update(DagRun)
                .where(DagRun.dag_id == "lo", DagRun.run_id == old)
                .values(
                    run_type="scheduled",
                    data_interval_start=datetime(2026, 1, 1, tzinfo=UTC),
                    data_interval_end=datetime(2026, 1, 2, tzinfo=UTC),
                )
            )
        old_state = await local.scheduler.run_until_done("lo", old, timeout=60)
        manual_tis = await local.tis("lo", manual)
        old_tis = await local.tis("lo", old)
    assert {t: ti.state for t, ti in manual_tis.items()} == dict.fromkeys(
        ["latest_only", "report", "after_report", "always"], "success"
    )
    assert old_state == "success"
    assert {t: ti.state for t, ti in old_tis.items()} == {
        "latest_only": "success",
        "report": "skipped",  # directly downstream
        "after_report": "skipped",  # trigger rules decide beyond it
        "always": "success",
    }


async def test_user_defined_macros_in_scheduler_and_worker_templates(
    db_url: str, tmp_path: Path
) -> None:
    write_dag(
        tmp_path / "dags",
        "mac.py",
        """
        import os
        from datetime import datetime
        from miniflow import DAG, Bash, task

        with DAG("mac", start_date=datetime(2026, 1, 1),
                 user_defined_macros={"bucket": "s3://data", "limits": {"rows": 7}}):
            Bash("copy", "echo copy {{ bucket }}/{{ run_type }} {{ limits.rows }}")

            @task(env={"TARGET": "{{ bucket }}/out"})
            def target() -> str:
                return os.environ["TARGET"]

            target()
    """,
    )
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("mac")
        tis = await local.tis("mac", run_id)
        attempts = {a.task_id: a for a in await local.attempts("mac", run_id)}
    assert state == "success"
    assert "copy s3://data/manual 7" in (attempts["copy"].log_tail or "")  # the scheduler's
    assert tis["target"].result == "s3://data/out"  # the worker's rendering


async def test_function_macros_and_filters_render_in_a_child_and_the_worker(
    db_url: str, tmp_path: Path
) -> None:
    write_dag(
        tmp_path / "dags",
        "fnmac.py",
        """
        import os
        from datetime import datetime
        from miniflow import DAG, Bash, Pod, task

        def shout(text):
            return text.upper() + "!"

        with DAG("fnmac", start_date=datetime(2026, 1, 1),
                 user_defined_macros={"shout": shout, "bucket": "s3://data"},
                 user_defined_filters={"twice": lambda v: f"{v}{v}"}):
            Bash("copy", "echo copy {{ shout(bucket) }} {{ 'ab' | twice }}")
            Pod("pod", image="busybox:1.36", command=["sh", "-c", "echo pod {{ 'x' | twice }}"])
            Bash("bad", "echo {{ bucket | nope }}")

            @task(env={"TARGET": "{{ shout(bucket) | twice }}"})
            def target() -> str:
                return os.environ["TARGET"]

            target()
    """,
    )
    async with local_scheduler(db_url, tmp_path) as local:
        run_id, state = await local.run("fnmac")
        tis = await local.tis("fnmac", run_id)
        attempts = {a.task_id: a for a in await local.attempts("fnmac", run_id)}
    assert state == "failed"
    assert {t: ti.state for t, ti in tis.items()} == {
        "copy": "success",
        "pod": "success",
        "bad": "failed",
        "target": "success",
    }
    assert "copy S3://DATA! abab" in (attempts["copy"].log_tail or "")  # the child's rendering
    assert "pod xx" in (attempts["pod"].log_tail or "")
    assert "No filter named 'nope'" in (tis["bad"].error or "")  # fails the try
    assert tis["target"].result == "S3://DATA!S3://DATA!"  # the worker's, with the DAG's functions
