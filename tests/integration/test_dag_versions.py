"""DAG versions on real databases: a run keeps the version it was created with.

Each parsed DAG is stored once by content hash (`dag_version`); a run records
its hash, and everything about its tasks (which exist, commands, retries,
dependencies) comes from that version, whoever parsed the file and whenever
it changed. The scheduler here is driven tick by tick with the in-process
instant launcher; DAG files are real files parsed by the real parser where
the parse itself matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow import DAG, Bash, Pod
from miniflow.authoring.loader import import_dag_file
from miniflow.authoring.serialized import FORMAT_VERSION
from miniflow.cli.operations import clear
from miniflow.config import load_config
from miniflow.errors import SerializedFormatError
from miniflow.launchers.base import TaskSpec
from miniflow.scheduler.clock import ManualClock
from miniflow.scheduler.core import Scheduler, SchedulerSettings
from miniflow.scheduler.dagcache import DagCache
from miniflow.scheduler.parse_loop import DagParser
from miniflow.store import dags as store_dags
from miniflow.store import engine as store_engine
from miniflow.store import runs as store_runs
from miniflow.store.models import Dag, DagFile, DagRun, DagVersion, TaskInstance
from tests.e2e.helpers import SchedulerHandle
from tests.instant_launcher import InstantLauncher
from tests.integration.test_scheduler_rules import Harness
from tests.integration.test_worker import PY_DAG, Env, bash_dag

START = datetime(2026, 1, 1, tzinfo=UTC)
QUICK = timedelta(seconds=0.01)


async def _ticks(h: Harness, n: int = 6) -> None:
    for _ in range(n):
        await h.scheduler.tick()


async def _drain(h: Harness, *runs: tuple[str, str], rounds: int = 60) -> None:
    """Release held attempts and tick until every run has finished."""
    for _ in range(rounds):
        h.launcher.release()
        await _ticks(h, 2)
        if all([await h.run_state(d, r) in ("success", "failed") for d, r in runs]):
            return
    raise AssertionError(f"runs did not finish: {runs}")


def _launched(launcher: InstantLauncher, run_id: str, task_id: str) -> list[TaskSpec]:
    return [s for s in launcher.launched if (s.key.run_id, s.key.task_id) == (run_id, task_id)]


async def _versions(engine: AsyncEngine, dag_id: str) -> int:
    async with store_engine.transaction(store_engine.sessionmaker(engine)) as session:
        query = select(func.count()).select_from(DagVersion).where(DagVersion.dag_id == dag_id)
        return int((await session.execute(query)).scalar_one())


async def _current(engine: AsyncEngine, dag_id: str) -> dict[str, Any]:
    async with store_engine.transaction(store_engine.sessionmaker(engine)) as session:
        return dict((await store_dags.get_dag(session, dag_id)).serialized)


# --- the store -------------------------------------------------------------------------------


async def test_a_version_in_a_newer_format_is_refused_naming_the_format(
    engine: AsyncEngine,
) -> None:
    """A newer miniflow parsed the file into the shared database: this one refuses what
    it cannot read, naming the format, instead of guessing what the fields mean."""
    with DAG("future", start_date=START) as dag:
        Bash("t", "echo hi")
    newer = {**dag.serialize("future.py"), "format_version": FORMAT_VERSION + 1}
    parsed = store_dags.ParsedFile("future.py", 1, 1, "0" * 64, [newer], None)  # type: ignore[list-item]
    expected = f"serialized format {FORMAT_VERSION + 1}, newer than this miniflow reads"
    async with Harness(engine) as h:
        async with store_engine.transaction(h.sessions) as session:
            await store_dags.apply_parse(session, [parsed], [], datetime.now(UTC))
        with pytest.raises(SerializedFormatError, match=expected):
            await h.trigger("future")
        async with store_engine.transaction(h.sessions) as session:
            with pytest.raises(SerializedFormatError, match=expected):
                await store_dags.get_versions(session, [store_dags.dag_hash(newer)])  # type: ignore[arg-type]


async def test_each_version_is_stored_once_and_runs_record_theirs(engine: AsyncEngine) -> None:
    with DAG("v", start_date=START) as v1:
        Bash("t", "echo one")
    with DAG("v", start_date=START) as v2:
        Bash("t", "echo two")
    async with Harness(engine) as h:
        await h.register(v1)
        first = await h.trigger("v", run_id="first")
        await h.register(v1)  # parsed again, same content: nothing new
        assert await _versions(engine, "v") == 1
        await h.register(v2)
        second = await h.trigger("v", run_id="second")
        await h.register(v2)
        assert await _versions(engine, "v") == 2
        async with store_engine.transaction(h.sessions) as session:
            runs = {
                r.run_id: r.dag_hash for r in await store_runs.list_runs(session, "v", limit=10)
            }
            current = (await store_dags.get_dag(session, "v")).dag_hash
            stored = await store_dags.get_versions(session, list(runs.values()))
    h1, h2 = store_dags.dag_hash(v1.serialize("v.py")), store_dags.dag_hash(v2.serialize("v.py"))
    assert runs == {first: h1, second: h2} and current == h2
    assert stored[h1]["tasks"]["t"]["command"] == "echo one"
    assert stored[h2]["tasks"]["t"]["command"] == "echo two"


async def test_a_claims_run_read_with_known_versions_reads_each_version_once(
    engine: AsyncEngine,
) -> None:
    """The relay process keeps the DAG versions it has read (by hash: a version never
    changes): the claim of a second try of a run reads the run alone, a run of another
    version reads that version once, and what comes back is what the one query reads."""
    with DAG("kv", start_date=START) as v1:
        Bash("t", "echo one")
    with DAG("kv", start_date=START) as v2:
        Bash("t", "echo two")
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    async with Harness(engine) as h:
        await h.register(v1)
        first = await h.trigger("kv", run_id="first")
        await h.register(v2)
        second = await h.trigger("kv", run_id="second")
        versions: dict[str, Any] = {}
        reads: list[tuple[store_runs.RunWithDag, int]] = []
        sa_event.listen(engine.sync_engine, "before_cursor_execute", count)
        try:
            async with store_engine.transaction(h.sessions) as session:
                expected = [
                    await store_runs.get_run_with_dag(session, "kv", r) for r in (first, second)
                ]
                for run_id in (first, first, second, second):
                    statements.clear()
                    found = await store_runs.get_run_with_dag(session, "kv", run_id, versions)
                    reads.append((found, len(statements)))
        finally:
            sa_event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert [n for _, n in reads] == [2, 1, 2, 1]
    assert [found for found, _ in reads] == [expected[0], expected[0], expected[1], expected[1]]
    assert reads[3][0].dag is not None and reads[3][0].dag["tasks"]["t"]["command"] == "echo two"
    h1, h2 = store_dags.dag_hash(v1.serialize("kv.py")), store_dags.dag_hash(v2.serialize("kv.py"))
    assert set(versions) == {h1, h2}


async def test_same_hash_reports_no_change_and_keeps_the_row(engine: AsyncEngine) -> None:
    with DAG("same", start_date=START) as dag:
        Bash("t", "true")
    parsed = store_dags.ParsedFile("same.py", 1, 1, "0" * 64, [dag.serialize("same.py")], None)
    sessions = store_engine.sessionmaker(engine)
    async with store_engine.transaction(sessions) as session:
        assert await store_dags.apply_parse(session, [parsed], [], START) == ["same"]
        await store_dags.set_paused(session, "same", True)
    later = START + timedelta(hours=1)
    async with store_engine.transaction(sessions) as session:
        assert await store_dags.apply_parse(session, [parsed], [], later) == []
    async with store_engine.transaction(sessions) as session:
        row = await store_dags.get_dag(session, "same")
        assert (row.is_paused, row.last_parsed_at) == (True, START)  # the row is untouched
        (version,) = (await session.execute(select(DagVersion))).scalars()
        assert version.created_at == START  # not rewritten
        (known,) = (await session.execute(select(DagFile))).scalars()
        assert known.last_parsed_at == later  # the file's parse time: when to parse it again


@pytest.mark.parametrize("order", ["old_first", "new_first"])
async def test_a_dag_moving_between_files_in_one_parse(engine: AsyncEngine, order: str) -> None:
    def file(fileloc: str, *dag_ids: str) -> store_dags.ParsedFile:
        dags = []
        for dag_id in dag_ids:
            with DAG(dag_id, start_date=START) as dag:
                Bash("t", "true")
            dags.append(dag.serialize(fileloc))
        return store_dags.ParsedFile(fileloc, 1, 1, "0" * 64, dags, None)

    sessions = store_engine.sessionmaker(engine)
    async with store_engine.transaction(sessions) as session:
        await store_dags.apply_parse(session, [file("a.py", "x", "y")], [], START)
    batch = [file("a.py", "y"), file("b.py", "x")]
    async with store_engine.transaction(sessions) as session:
        changed = await store_dags.apply_parse(
            session, batch if order == "old_first" else batch[::-1], [], START
        )
        rows = {r.dag_id: (r.fileloc, r.is_active) for r in await store_dags.list_dags(session)}
    assert changed == ["x"]
    assert rows == {"x": ("b.py", True), "y": ("a.py", True)}
    async with store_engine.transaction(sessions) as session:
        assert await store_dags.apply_parse(session, [file("a.py")], [], START) == []
        assert [d.dag_id for d in await store_dags.list_dags(session)] == ["x"]


# --- a run keeps its version -----------------------------------------------------------------


async def test_renamed_task_runs_in_the_run_created_before_the_rename(
    engine: AsyncEngine,
) -> None:
    """a >> q becomes a >> r while run 1 is running: run 1 still runs q, run 2 runs r."""
    with DAG("ren", start_date=START) as v1:
        Bash("a", "exit 0") >> Bash("q", "exit 0")
    with DAG("ren", start_date=START) as v2:
        Bash("a", "exit 0") >> Bash("r", "exit 0")
    async with Harness(engine, hold=True) as h:
        await h.register(v1)
        first = await h.trigger("ren", run_id="first")
        await _ticks(h)
        assert [s.key.task_id for s in h.launcher.launched] == ["a"]
        await h.register(v2)
        second = await h.trigger("ren", run_id="second")
        await _drain(h, ("ren", first), ("ren", second))
        tis1, tis2 = await h.tis("ren", first), await h.tis("ren", second)
    assert {t: ti.state for t, ti in tis1.items()} == {"a": "success", "q": "success"}
    assert {t: ti.state for t, ti in tis2.items()} == {"a": "success", "r": "success"}
    assert len(_launched(h.launcher, first, "q")) == 1
    assert len(_launched(h.launcher, second, "r")) == 1


async def test_running_run_renders_its_commands_a_new_run_the_new_ones(
    engine: AsyncEngine,
) -> None:
    def dag(word: str) -> DAG:
        with DAG("cmd", start_date=START) as d:
            first = Bash("first", "exit 0")
            first >> Bash("b", f"echo {word} {{{{ run_id }}}}")
            first >> Pod("p", image=f"img:{word}", command=["echo", word], args=[word])
        return d

    async with Harness(engine, hold=True) as h:
        await h.register(dag("old"))
        first = await h.trigger("cmd", run_id="first")
        await _ticks(h)
        await h.register(dag("new"))
        second = await h.trigger("cmd", run_id="second")
        await _drain(h, ("cmd", first), ("cmd", second))
    for run_id, word in ((first, "old"), (second, "new")):
        (bash,) = _launched(h.launcher, run_id, "b")
        (pod,) = _launched(h.launcher, run_id, "p")
        assert bash.bash_command == f"echo {word} {run_id}"
        assert (pod.image, pod.cmds, pod.args) == (f"img:{word}", ["echo", word], [word])


async def test_retry_settings_come_from_the_runs_version(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    """Retries edited mid-run: the running run keeps its back-off and, when cleared, its
    retry count; a new run uses the new ones."""
    with DAG("rt", start_date=START) as v1:
        Bash("t", "exit 1", retries=1, retry_delay=QUICK)
    with DAG("rt", start_date=START) as v2:
        Bash("t", "exit 1", retries=3, retry_delay=timedelta(hours=1))
    clock = ManualClock(datetime.now(UTC))
    async with Harness(engine, hold=True, clock=clock) as h:
        await h.register(v1)
        first = await h.trigger("rt", run_id="first")
        await _ticks(h)
        await h.register(v2)
        h.launcher.release()
        await _ticks(h, 2)
        ti = (await h.tis("rt", first))["t"]
        assert ti.state == "up_for_retry" and ti.next_retry_at is not None
        assert ti.next_retry_at - clock.now() < timedelta(minutes=1)  # v1's delay, not v2's
        clock.advance(1)
        await _drain(h, ("rt", first))
        assert (await h.tis("rt", first))["t"].try_number == 2

        config = load_config(
            environ={"MINIFLOW_DATABASE_URL": db_url, "MINIFLOW_DAGS_FOLDER": str(tmp_path)}
        )
        assert await clear(config, "rt", first, "t", downstream=False) == (first, ["t"])
        assert (await h.tis("rt", first))["t"].max_tries == 2 + 1  # v1's retries=1

        second = await h.trigger("rt", run_id="second")
        assert (await h.tis("rt", second))["t"].max_tries == 3


async def test_retries_are_honoured_when_the_cache_is_empty_at_exit(engine: AsyncEngine) -> None:
    with DAG("cold", start_date=START) as dag:
        Bash("t", "exit 1", retries=1, retry_delay=QUICK)
    async with Harness(engine, hold=True, clock=ManualClock(datetime.now(UTC))) as h:
        await h.register(dag)
        run_id = await h.trigger("cold")
        await _ticks(h)
        assert h.launcher.held
        h.scheduler.dags = DagCache()  # what a restarted scheduler starts with
        h.launcher.release()
        await h.scheduler.tick()  # the exit is recorded before anything loads the DAG
        ti = (await h.tis("cold", run_id))["t"]
        assert (ti.state, ti.try_number) == ("up_for_retry", 1)


# --- real files, real parses -----------------------------------------------------------------


def _write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(source).lstrip())
    return path


@contextlib.asynccontextmanager
async def _scheduler(
    engine: AsyncEngine, folder: Path, *, hold: bool = False, **kw: Any
) -> AsyncIterator[tuple[SchedulerHandle, InstantLauncher]]:
    launcher = InstantLauncher(hold=hold)
    settings: dict[str, Any] = {
        "schedule_runs": False,
        "idle_wait": 0.05,
        "full_sweep_interval": 0.2,
        **{k: v for k, v in kw.items() if k != "clock"},
    }
    scheduler = Scheduler(
        engine=engine,
        launcher=launcher,
        dags_folder=folder,
        settings=SchedulerSettings(**settings),
        clock=kw.get("clock"),
    )
    await scheduler.start()
    try:
        yield SchedulerHandle(scheduler), launcher
    finally:
        await scheduler.close()


RENAME_V1 = """
    from datetime import datetime
    from miniflow import DAG, Pod

    with DAG("pods", start_date=datetime(2026, 1, 1)):
        Pod("q", image="busybox:1.36", command=["true"])
"""


async def test_a_parse_by_another_process_does_not_leave_the_scheduler_stale(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """The reported bug: a CLI command parses the renamed file first, so the scheduler's own
    parse finds nothing changed; the new run must still run r (not end success without it)."""
    folder = tmp_path / "dags"
    path = _write(folder, "pods.py", RENAME_V1)
    async with _scheduler(engine, folder, parse_interval=0.0) as (handle, launcher):
        await handle.scheduler.tick()
        _, state = await handle.run("pods")
        assert state == "success"
        path.write_text(path.read_text().replace('"q"', '"r"').replace("true", "echo renamed"))
        cli = DagParser(folder)  # what `miniflow dags trigger` does before it triggers
        assert await cli.parse_once(handle.scheduler.sessions, datetime.now(UTC)) == ["pods"]
        run2 = await handle.trigger("pods")
        await handle.scheduler.tick()  # its own parse: same hash, "0 DAG(s) changed"
        state = await handle.scheduler.run_until_done("pods", run2, timeout=30)
        tis = await handle.tis("pods", run2)
        attempts = await handle.attempts("pods", run2)
    assert state == "success"
    assert {t: ti.state for t, ti in tis.items()} == {"r": "success"}
    assert [a.task_id for a in attempts] == ["r"]
    (spec,) = _launched(launcher, run2, "r")
    assert spec.cmds == ["echo renamed"]


HELPER_DAG = """
    from datetime import datetime
    from miniflow import DAG, Bash
    from {module} import COMMAND

    with DAG("{dag_id}", start_date=datetime(2026, 1, 1)):
        Bash("t", COMMAND)
"""


async def test_edited_helper_module_is_picked_up_after_reparse_interval(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    folder = tmp_path / "dags"
    _write(folder, "uses_helper.py", HELPER_DAG.format(module="helper_one", dag_id="helped"))
    helper = _write(folder, "helper_one.py", 'COMMAND = "echo one"\n')
    clock = ManualClock(datetime.now(UTC))
    async with _scheduler(
        engine, folder, clock=clock, parse_interval=1.0, reparse_interval=60.0
    ) as (handle, launcher):
        await handle.scheduler.tick()
        assert (await _current(engine, "helped"))["tasks"]["t"]["command"] == "echo one"
        helper.write_text('COMMAND = "echo two, longer"\n')  # the DAG file is unchanged
        clock.advance(10)
        await handle.scheduler.tick()  # a rescan: the DAG file did not change
        assert (await _current(engine, "helped"))["tasks"]["t"]["command"] == "echo one"
        clock.advance(60)
        await handle.scheduler.tick()  # its last parse is reparse_interval old
        assert (await _current(engine, "helped"))["tasks"]["t"]["command"] == "echo two, longer"
        run_id, state = await handle.run("helped")
        assert state == "success"
        clock.advance(61)
        await handle.scheduler.tick()  # re-parsed again, nothing changed: no new version
    (spec,) = _launched(launcher, run_id, "t")
    assert spec.bash_command == "echo two, longer"
    assert await _versions(engine, "helped") == 2


async def test_module_installed_later_is_picked_up_across_a_restart(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    folder = tmp_path / "dags"
    _write(folder, "late.py", HELPER_DAG.format(module="installed_later", dag_id="late"))
    clock = ManualClock(datetime.now(UTC))
    async with _scheduler(engine, folder, clock=clock) as (handle, _):
        await handle.scheduler.tick()
        async with store_engine.transaction(handle.scheduler.sessions) as session:
            (error,) = await store_dags.import_errors(session)
        assert "No module named 'installed_later'" in error.error
    _write(folder, "installed_later.py", 'COMMAND = "echo installed"\n')
    clock.advance(121)  # the default reparse_interval, after a restart
    async with _scheduler(engine, folder, clock=clock) as (handle, _):
        await handle.scheduler.tick()
        async with store_engine.transaction(handle.scheduler.sessions) as session:
            assert await store_dags.import_errors(session) == []
    assert (await _current(engine, "late"))["tasks"]["t"]["command"] == "echo installed"


async def test_forced_reparse_of_one_file(engine: AsyncEngine, tmp_path: Path) -> None:
    """What `miniflow dags reparse FILE` does, without waiting for the interval."""
    folder = tmp_path / "dags"
    _write(folder, "forced.py", HELPER_DAG.format(module="helper_forced", dag_id="forced"))
    helper = _write(folder, "helper_forced.py", 'COMMAND = "echo before"\n')
    sessions = store_engine.sessionmaker(engine)
    parser = DagParser(folder)
    await parser.parse(sessions, datetime.now(UTC))
    helper.write_text('COMMAND = "echo after!"\n')
    assert (await parser.parse(sessions, datetime.now(UTC))).files == []  # unchanged
    report = await parser.parse(sessions, datetime.now(UTC), force=[parser.fileloc("forced.py")])
    assert [(f.fileloc, [d["dag_id"] for d in f.dags]) for f in report.files] == [
        ("forced.py", ["forced"])
    ]
    assert report.changed == ["forced"]
    assert (await _current(engine, "forced"))["tasks"]["t"]["command"] == "echo after!"


async def test_deleted_dag_file_the_running_run_still_finishes(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    folder = tmp_path / "dags"
    path = _write(
        folder,
        "doomed.py",
        """
        from datetime import datetime
        from miniflow import DAG, Bash

        with DAG("doomed", start_date=datetime(2026, 1, 1)):
            Bash("a", "echo a") >> Bash("b", "echo b")
        """,
    )
    async with _scheduler(engine, folder, hold=True, parse_interval=0.0) as (handle, launcher):
        await handle.scheduler.tick()
        run_id = await handle.trigger("doomed")
        for _ in range(5):
            await handle.scheduler.tick()
        assert [s.key.task_id for s in launcher.launched] == ["a"]
        path.unlink()
        await handle.scheduler.tick()  # the parse deactivates the DAG
        async with store_engine.transaction(handle.scheduler.sessions) as session:
            assert await store_dags.list_dags(session) == []
        for _ in range(40):
            launcher.release()
            await handle.scheduler.tick()
            async with store_engine.transaction(handle.scheduler.sessions) as session:
                run = await store_runs.get_run(session, "doomed", run_id)
            if run.state != "running":
                break
        tis = await handle.tis("doomed", run_id)
    assert run.state == "success"
    assert {t: ti.state for t, ti in tis.items()} == {"a": "success", "b": "success"}
    (spec,) = _launched(launcher, run_id, "b")
    assert spec.bash_command == "echo b"


async def test_run_without_a_recorded_version_uses_the_current_one(engine: AsyncEngine) -> None:
    """Runs older than versions (dag_hash NULL: none after the migration) still run."""
    with DAG("legacy", start_date=START) as dag:
        Bash("t", "exit 0")
    async with Harness(engine) as h:
        await h.register(dag)
        run_id = await h.trigger("legacy")
        async with store_engine.transaction(h.sessions) as session:
            await session.execute(
                update(DagRun).where(DagRun.run_id == run_id).values(dag_hash=None)
            )
        assert await h.scheduler.run_until_done("legacy", run_id, timeout=30) == "success"
        assert (await h.tis("legacy", run_id))["t"].state == "success"


# --- concurrent parses -----------------------------------------------------------------------


def _parsed_files(n: int) -> list[store_dags.ParsedFile]:
    files = []
    for i in range(n):
        with DAG(f"con{i}", start_date=START) as dag:
            Bash("t", f"echo {i}")
        files.append(
            store_dags.ParsedFile(
                f"con{i}.py",
                1,
                1,
                "0" * 64,
                [dag.serialize(f"con{i}.py")],
                "warning" if i else None,
            )
        )
    return files


@pytest.mark.postgres
async def test_two_parses_of_the_same_files_at_once_both_succeed(
    postgres_dbs: Any,
) -> None:
    """The second transaction waits on the first one's rows, then finds them committed:
    it must not fail on a duplicate key, and the result is the same one set of rows."""
    url = await postgres_dbs.clone()
    engine = store_engine.create_engine(url)
    watcher = store_engine.create_engine(url)
    try:
        sessions = store_engine.sessionmaker(engine)
        parsed = _parsed_files(3)
        async with sessions() as first:
            async with first.begin():
                assert len(await store_dags.apply_parse(first, parsed, [], START)) == 3

                async def second() -> list[str]:
                    async with store_engine.transaction(sessions) as session:
                        return await store_dags.apply_parse(session, parsed, [], START)

                racing = asyncio.ensure_future(second())
                await _until_blocked(watcher)  # the second parse waits on the first one's rows
            await racing  # no duplicate key: it found the first one's rows committed
        async with store_engine.transaction(sessions) as session:
            assert len(await store_dags.list_dags(session)) == 3
            assert len(await store_dags.import_errors(session)) == 2
            count = select(func.count()).select_from(DagVersion)
            assert (await session.execute(count)).scalar_one() == 3
    finally:
        await engine.dispose()
        await watcher.dispose()


async def _until_blocked(watcher: AsyncEngine, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with watcher.connect() as conn:
            waiting = (
                await conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
            ).scalar_one()
        if waiting:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the second parse never waited for the first")
        await asyncio.sleep(0.02)


async def test_concurrent_parsers_of_one_folder_never_fail(db_url: str, tmp_path: Path) -> None:
    """Four processes' worth of parsers (each its own engine and memory) on the same files."""
    folder = tmp_path / "dags"
    for i in range(6):
        _write(
            folder,
            f"par{i}.py",
            f"""
            from datetime import datetime
            from miniflow import DAG, Bash

            with DAG("par{i}", start_date=datetime(2026, 1, 1)):
                Bash("t", "echo {i}")
            """,
        )
    _write(folder, "broken.py", "import miniflow, no_such_module  # dag\n")
    engines = [store_engine.create_engine(db_url) for _ in range(4)]
    try:
        for _ in range(2):  # new files, then forced re-parses of the same content
            results = await asyncio.gather(
                *[
                    DagParser(folder).parse(
                        store_engine.sessionmaker(e), datetime.now(UTC), force=True
                    )
                    for e in engines
                ]
            )
            assert all(len(r.files) == 7 for r in results)
        async with store_engine.transaction(store_engine.sessionmaker(engines[0])) as session:
            assert [d.dag_id for d in await store_dags.list_dags(session)] == [
                f"par{i}" for i in range(6)
            ]
            assert [e.fileloc for e in await store_dags.import_errors(session)] == ["broken.py"]
            count = select(func.count()).select_from(DagVersion)
            assert (await session.execute(count)).scalar_one() == 6
            hashes = select(Dag.dag_hash)
            assert len(set((await session.execute(hashes)).scalars())) == 6
    finally:
        for e in engines:
            await e.dispose()


# --- never a silent skip ---------------------------------------------------------------------


async def test_run_with_a_row_its_version_lacks_never_ends_success(engine: AsyncEngine) -> None:
    """Should not happen any more (rows and version come from one place), but if it does the
    run must not end success with a task that never ran."""
    with DAG("ghostly", start_date=START) as dag:
        Bash("t", "exit 0")
    async with Harness(engine) as h:
        await h.register(dag)
        run_id = await h.trigger("ghostly")
        async with store_engine.transaction(h.sessions) as session:
            run = await store_runs.get_run(session, "ghostly", run_id)
            session.add(
                TaskInstance(
                    run_pk=run.id,
                    dag_id="ghostly",
                    run_id=run_id,
                    task_id="ghost",
                    kind="bash",
                    state="none",
                )
            )
        assert await h.scheduler.run_until_done("ghostly", run_id, timeout=30) == "failed"
        tis = await h.tis("ghostly", run_id)
    assert {t: ti.state for t, ti in tis.items()} == {"t": "success", "ghost": "none"}


# --- the worker reads the run's version --------------------------------------------------------


@pytest.fixture
async def env(db_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    world = Env(db_url, tmp_path / "dags")
    try:
        yield world
    finally:
        await world.cleanup()


async def _reparse(env: Env, source: str | None) -> None:
    """The DAG file edited (or deleted, with None) and parsed again: a new current version."""
    path = env.folder / "dag_file.py"
    if source is None:
        path.unlink()
        parsed, removed = [], ["dag_file.py"]
    else:
        path.write_text(textwrap.dedent(source))
        found = [d.serialize("dag_file.py") for d in import_dag_file(path)]
        parsed, removed = [store_dags.ParsedFile("dag_file.py", 2, 2, "1" * 64, found, None)], []
    async with env.session() as session:
        await store_dags.apply_parse(session, parsed, removed, datetime.now(UTC))


async def test_worker_runs_the_command_of_the_runs_version(env: Env) -> None:
    await env.setup(bash_dag("echo old > $TEST_DIR/out"), queue=["t"])
    await _reparse(env, bash_dag("echo new > $TEST_DIR/out"))
    code, _out, err = await env.run("t")
    assert code == 0, err
    assert (env.folder.parent / "out").read_text() == "old\n"
    assert (await env.ti("t")).state == "success"


async def test_worker_runs_a_task_whose_dag_file_was_deleted(env: Env) -> None:
    await env.setup(bash_dag("echo still here > $TEST_DIR/out"), queue=["t"])
    await _reparse(env, None)
    code, _out, err = await env.run("t")
    assert code == 0, err
    assert (env.folder.parent / "out").read_text() == "still here\n"


async def test_python_task_whose_function_is_gone_fails_with_the_reason(env: Env) -> None:
    await env.setup(PY_DAG, queue=["produce"])
    await _reparse(env, PY_DAG.replace("produce", "make"))
    code, _out, _err = await env.run("produce")
    assert code == 1
    ti = await env.ti("produce")
    assert ti.state == "failed" and ti.error is not None
    assert "no longer has a task 'produce'" in ti.error
    assert "created from an earlier version of the DAG" in ti.error
