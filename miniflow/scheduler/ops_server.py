"""The scheduler's ops HTTP server: `/healthz`, `/readyz` and `/metrics`.

Kubernetes probes and Prometheus talk to it (deploy/base/scheduler.yaml). It runs on
the scheduler's own event loop, on purpose: `/healthz` answering proves the loop is
not blocked, and it also judges each loop of the scheduler (`liveness`): one that
made no progress for too long is named in a 503, which is what a liveness probe
must detect (a stuck loop schedules nothing). `/readyz` asks whether the scheduler
has started (its launcher's first view taken: the Kubernetes watch listed) and,
through the store, whether this instance is registered with a fresh heartbeat: a
scheduler cut off from its database, or not yet registered, is not ready.
`/metrics` renders `miniflow.scheduler.metrics`, after refreshing the state gauges
from the database at most every `STATE_COUNTS_TTL` seconds.

The server only reads: it never writes to the database nor touches the launcher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from miniflow.scheduler import metrics
from miniflow.scheduler.core import Scheduler
from miniflow.store import counts as store_counts
from miniflow.store import engine as store_engine
from miniflow.store import instances as store_instances

log = logging.getLogger("miniflow.scheduler.ops_server")

READY_CHECK_TIMEOUT = 3.0
"""Seconds `/readyz` waits for the database: under the probes' 5 s timeout, so a hung
database is a clear 503, not a probe timeout."""
STATE_COUNTS_TTL = 5.0
"""Seconds the task-instance and run counts of `/metrics` are reused: a storm of scrapes
costs one pair of grouped counts per period, not one per scrape."""

_SCHEDULER = web.AppKey("scheduler", Scheduler)


class StateCounts:
    """Refreshes the state gauges; one query at a time, at most once per `ttl`."""

    def __init__(self, scheduler: Scheduler, ttl: float = STATE_COUNTS_TTL) -> None:
        self._scheduler = scheduler
        self._ttl = ttl
        self._at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self, clock: Callable[[], float] = time.monotonic) -> None:
        async with self._lock:  # concurrent scrapes wait for the one query in flight
            if self._at is not None and clock() - self._at < self._ttl:
                return
            try:
                async with asyncio.timeout(READY_CHECK_TIMEOUT):
                    async with store_engine.transaction(self._scheduler.sessions) as session:
                        found = await store_counts.by_state(session)
            except Exception as exc:  # the rest of /metrics is worth serving regardless
                log.warning("state counts for /metrics unavailable: %s", type(exc).__name__)
                return
            metrics.set_state_counts(found.task_instances, found.runs)
            self._at = clock()


_COUNTS = web.AppKey("state_counts", StateCounts)


def _launcher_loops(scheduler: Scheduler) -> dict[str, tuple[float, float]]:
    progress = getattr(scheduler.launcher, "loop_progress", None)
    return progress() if progress is not None else {}


async def _healthz(request: web.Request) -> web.Response:
    scheduler = request.app[_SCHEDULER]
    stale = scheduler.liveness.stale(_launcher_loops(scheduler))
    if stale:
        return web.Response(
            status=503, text="stale: " + "; ".join(s.describe() for s in stale) + "\n"
        )
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    scheduler = request.app[_SCHEDULER]
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT):
            async with store_engine.transaction(scheduler.sessions) as session:
                instance = await store_instances.get(session, scheduler.scheduler_id)
    except Exception as exc:  # any failure to get an answer is "not ready", with why
        return web.Response(status=503, text=f"database unreachable: {type(exc).__name__}\n")
    if instance is None:
        return web.Response(status=503, text="not registered yet\n")
    if not scheduler.started:
        return web.Response(status=503, text="starting: launcher not synced yet\n")
    synced = getattr(scheduler.launcher, "synced", None)
    if synced is not None and not synced():
        return web.Response(status=503, text="launcher not synced: a watch has not listed yet\n")
    now = scheduler.clock.now()
    if not instance.alive(now, scheduler.settings.instance_timeout):
        return web.Response(status=503, text="heartbeat stale or instance ended\n")
    return web.Response(text="ready\n")


async def _metrics(request: web.Request) -> web.Response:
    await request.app[_COUNTS].refresh()
    return web.Response(
        body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def make_app(scheduler: Scheduler) -> web.Application:
    app = web.Application()
    app[_SCHEDULER] = scheduler
    app[_COUNTS] = StateCounts(scheduler)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


class OpsServer:
    """The server's life cycle: `start()` binds (a busy port fails at once), `close()`."""

    def __init__(self, scheduler: Scheduler, *, host: str, port: int) -> None:
        # No access log: the probes would write a line every few seconds.
        self._runner = web.AppRunner(make_app(scheduler), access_log=None)
        self.host = host
        self.port = port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        log.info("ops server on http://%s:%d (/healthz /readyz /metrics)", self.host, self.port)

    async def close(self) -> None:
        await self._runner.cleanup()
