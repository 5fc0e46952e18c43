"""`ti.xcom_push` / `ti.xcom_pull` inside a running `@task`: the worker's database.

The user's function is synchronous code in its own thread (or a coroutine on the worker's
loop); the store is async on the worker's loop. A call from another thread runs its
query on the worker's loop and waits; a call on the loop itself (from an `async def`
task) cannot wait there, so it runs the query in a helper thread with its own engine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from miniflow_worker.clock import now
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from miniflow.authoring.xcom import RETURN_VALUE, XComError, check_value
from miniflow.store import xcom as store_xcom
from miniflow.store.engine import create_engine, sessionmaker, transaction

T = TypeVar("T")

PULL_TIMEOUT = 60.0


class WorkerXCom:
    def __init__(
        self,
        factory: async_sessionmaker[AsyncSession],
        database_url: str,
        *,
        ti_id: int,
        dag_id: str,
        run_id: str,
        task_id: str,
        max_bytes: int,
    ) -> None:
        self.factory = factory
        self.database_url = database_url
        self.loop = asyncio.get_running_loop()
        self.ti_id, self.dag_id, self.run_id, self.task_id = ti_id, dag_id, run_id, task_id
        self.max_bytes = max_bytes

    def push(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key or key == RETURN_VALUE:
            raise XComError(
                f"xcom_push key must be a non-empty string other than {RETURN_VALUE!r} "
                f"(a task's result is its return value), got {key!r}"
            )
        stored = check_value(value, self.max_bytes, f"task {self.task_id!r}: xcom {key!r}")

        async def write(factory: async_sessionmaker[AsyncSession]) -> None:
            async with transaction(factory) as session:
                await store_xcom.push(session, self.ti_id, key, stored, now())

        self._call(write)

    def pull(self, task_ids: Any, key: str, map_indexes: Any, default: Any) -> Any:
        ids = [task_ids] if isinstance(task_ids, str) else task_ids
        if ids is None:
            raise XComError("xcom_pull needs task_ids: the task (or list of tasks) to pull from")

        async def read(factory: async_sessionmaker[AsyncSession]) -> Any:
            async with transaction(factory) as session:
                data = await store_xcom.load(session, self.dag_id, self.run_id, list(ids))
            return data.pull(task_ids, key, map_indexes, default)

        return self._call(read)

    def _call(self, fn: Callable[[async_sessionmaker[AsyncSession]], Coroutine[Any, Any, T]]) -> T:
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if not on_loop:
            return asyncio.run_coroutine_threadsafe(fn(self.factory), self.loop).result(
                PULL_TIMEOUT
            )
        box: dict[str, Any] = {}

        async def own_engine() -> T:
            engine = create_engine(self.database_url, pool_size=1)
            try:
                return await fn(sessionmaker(engine))
            finally:
                await engine.dispose()

        def helper() -> None:
            try:
                box["value"] = asyncio.run(own_engine())
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=helper, name="miniflow xcom", daemon=True)
        thread.start()
        thread.join(PULL_TIMEOUT)
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]
