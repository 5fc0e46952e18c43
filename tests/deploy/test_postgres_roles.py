"""deploy/postgres/ on the real PostgreSQL: three roles, each with what it needs only.

roles.sql runs as the admin (with unique role and database names per run: the names in
the file are replaced), the migrations as the owner, grants.sql as the owner; then a DAG
runs end to end with the scheduler connected as the scheduler role and its worker pods
(on the fake cluster) as the worker role, and each role is refused what it must not do.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from miniflow.store import engine as store_engine
from miniflow.store import schema, states
from tests.dbs import PG_ADMIN_DSN, PG_BASE_URL
from tests.deploy.render import DEPLOY
from tests.e2e.helpers import write_dag
from tests.e2e.kube_helpers import NAMESPACE, SECRET, FakeKube, kube_scheduler, kubelet_env

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

SQL = DEPLOY / "postgres"


@dataclass(frozen=True)
class Roles:
    tag: str

    def name(self, role: str) -> str:
        return f"mftest_{self.tag}_{role}"

    @property
    def database(self) -> str:
        return f"mftest_{self.tag}_db"

    def url(self, role: str) -> str:
        base = make_url(PG_BASE_URL)
        return base.set(username=self.name(role), database=self.database).render_as_string(
            hide_password=False
        )

    def dsn(self, role: str | None = None) -> str:
        """asyncpg DSN: the admin on the admin database, or `role` on miniflow's."""
        if role is None:
            return PG_ADMIN_DSN
        return self.url(role).replace("postgresql+asyncpg://", "postgresql://")

    def adapt(self, sql: str) -> str:
        """The file's statements with this run's names (comments dropped)."""
        sql = re.sub(r"--[^\n]*", "", sql)
        sql = re.sub(r"\bminiflow_(owner|scheduler|worker)\b", lambda m: self.name(m[1]), sql)
        return re.sub(r"\bminiflow\b", self.database, sql)


async def run_file(path: Path, roles: Roles, role: str | None) -> None:
    """Each statement on its own (CREATE DATABASE refuses a transaction block), following
    psql's `\\connect db` to the database it names."""
    sql = roles.adapt(path.read_text())  # noqa: ASYNC240  (a small file of the repo)
    conn = await asyncpg.connect(roles.dsn(role))
    try:
        for line in sql.split(";\n"):
            statement = line.strip()
            if not statement:
                continue
            if statement.startswith("\\connect"):
                connect, statement = statement.split("\n", 1)
                assert connect.split()[1] == roles.database
                await conn.close()
                admin = make_url(PG_ADMIN_DSN).set(database=roles.database)
                conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def roles() -> AsyncIterator[Roles]:
    r = Roles(uuid.uuid4().hex[:8])
    try:
        await run_file(SQL / "roles.sql", r, None)
        yield r
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{r.database}" WITH (FORCE)')
            for role in ("owner", "scheduler", "worker"):
                await admin.execute(f'DROP ROLE IF EXISTS "{r.name(role)}"')
        finally:
            await admin.close()


@pytest.fixture
async def migrated(roles: Roles) -> Roles:
    engine = store_engine.create_engine(roles.url("owner"))
    try:
        before, after = await schema.upgrade(engine)
    finally:
        await engine.dispose()
    assert (before, after) == (None, schema.head_revision())
    await run_file(SQL / "grants.sql", roles, "owner")
    return roles


async def refused(roles: Roles, role: str, statement: str, *args: Any) -> str:
    conn = await asyncpg.connect(roles.dsn(role))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as caught:
            await conn.execute(statement, *args)
        return str(caught.value)
    finally:
        await conn.close()


async def allowed(roles: Roles, role: str, statement: str, *args: Any) -> str:
    conn = await asyncpg.connect(roles.dsn(role))
    try:
        return str(await conn.execute(statement, *args))
    finally:
        await conn.close()


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    return {"base_env": kubelet_env()}


async def test_a_dag_runs_with_the_scheduler_and_worker_roles(
    migrated: Roles, fake_kube: FakeKube, tmp_path: Path
) -> None:
    dags, marker = tmp_path / "dags", tmp_path / "failed-once"
    write_dag(
        dags,
        "roles.py",
        f"""
        from datetime import datetime, timedelta
        from miniflow import DAG, Bash, task

        with DAG("roles", start_date=datetime(2026, 1, 1)):
            @task
            def produce():
                return {{"rows": 3}}

            @task
            def consume(data):
                return data["rows"] * 2

            flaky = Bash("flaky", "test -e {marker} || {{ touch {marker}; exit 3; }}",
                         retries=1, retry_delay=timedelta(0))
            consume(produce()) >> flaky

            @task.branch
            def pick():
                return "kept"

            # The worker role also writes a branch's skips (state, ended_at of its run).
            pick() >> [Bash("kept", "true"), Bash("dropped", "true")]

            @task
            def push():
                from miniflow import get_current_context
                get_current_context()["ti"].xcom_push("rows", 7)

            @task
            def pull():
                from miniflow import get_current_context
                return get_current_context()["ti"].xcom_pull(task_ids="push", key="rows")

            # A sensor's "not yet" (first_poke_at, max_tries, next_retry_at) by the worker.
            @task.sensor(poke_interval=0.2, timeout=60, mode="reschedule")
            def wait_once():
                import os
                if os.path.exists("{marker}.poked"):
                    return True
                open("{marker}.poked", "w").close()
                return False

            push() >> pull() >> wait_once()
        """,
    )
    async with kube_scheduler(fake_kube, migrated.url("scheduler"), dags) as kube:
        # Worker pods read the worker role's URL from their Secret, as deployed.
        fake_kube.secrets[(NAMESPACE, SECRET)] = {"url": migrated.url("worker")}
        run_id, state = await kube.run("roles", timeout=90)
        tis = await kube.tis("roles", run_id)
    assert state == states.RUN_SUCCESS, {t: (ti.state, ti.error) for t, ti in tis.items()}
    assert tis["consume"].result == 6  # written by the worker, read from upstream's result
    assert tis["flaky"].try_number == 2  # a failure with a retry, written by the worker
    assert (tis["kept"].state, tis["dropped"].state) == ("success", "skipped")
    assert tis["pull"].result == 7  # pushed and read back under the worker role
    assert (tis["wait_once"].state, tis["wait_once"].try_number) == ("success", 2)


async def test_the_scheduler_role_writes_rows_but_not_the_schema(migrated: Roles) -> None:
    insert = "INSERT INTO pool (name, slots) VALUES ('p', 1)"
    assert await allowed(migrated, "scheduler", insert) == "INSERT 0 1"
    assert await allowed(migrated, "scheduler", "DELETE FROM pool") == "DELETE 1"
    await refused(migrated, "scheduler", "CREATE TABLE extra (id int)")
    await refused(migrated, "scheduler", "ALTER TABLE task_instance ADD COLUMN extra int")
    await refused(migrated, "scheduler", "DROP TABLE pool")
    await refused(migrated, "scheduler", "UPDATE alembic_version SET version_num = 'x'")


async def test_the_worker_role_writes_only_what_a_worker_writes(migrated: Roles) -> None:
    # The columns a worker writes: allowed (no row matches; the privilege is checked).
    written = "state = 'running', heartbeat_at = now(), started_at = now(), exit_code = 0, "
    written += "error = NULL, next_retry_at = NULL, ended_at = now(), result = NULL"
    update = f"UPDATE task_instance SET {written} WHERE id = -1 AND try_number = 1"
    assert await allowed(migrated, "worker", update) == "UPDATE 0"
    assert await allowed(migrated, "worker", "SELECT result FROM task_instance") == "SELECT 0"
    poke = "UPDATE task_instance SET first_poke_at = now(), max_tries = max_tries + 1 "
    assert await allowed(migrated, "worker", poke + "WHERE id = -1") == "UPDATE 0"
    assert await allowed(migrated, "worker", "SELECT value FROM xcom") == "SELECT 0"
    # Anything else: refused.
    for statement in (
        "UPDATE task_instance SET try_number = 9 WHERE id = -1",
        "UPDATE task_instance SET handle = 'x' WHERE id = -1",
        "UPDATE dag_run SET state = 'success' WHERE id = -1",
        "DELETE FROM task_instance WHERE id = -1",
        "DELETE FROM xcom",
        "UPDATE xcom SET task_id = 'x'",
        "INSERT INTO pool (name, slots) VALUES ('p', 1)",
        "SELECT * FROM task_attempt",
        "CREATE TABLE extra (id int)",
        "ALTER TABLE task_instance ADD COLUMN extra int",
        "TRUNCATE task_instance",
    ):
        await refused(migrated, "worker", statement)
