"""Wiring from a `Config` to live objects: the engine (checked) and the launcher.

The CLI commands call these so every command fails the same clear way on an
unreachable database or an unmigrated schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.config import Config
from miniflow.errors import SchemaError, StateDirError
from miniflow.launchers.base import Launcher
from miniflow.store import engine as store_engine
from miniflow.store import schema


@asynccontextmanager
async def open_engine(
    config: Config,
    *,
    check_schema: bool = True,
    idle_transaction_timeout: float | None = None,
    application_name: str = "miniflow",
) -> AsyncIterator[AsyncEngine]:
    """A connected engine; raises DatabaseUnavailable / SchemaError / StateDirError (the
    SQLite default lives in the state dir) with one clear line."""
    if config.database_url.startswith("sqlite"):
        try:
            config.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirError(
                f"state directory {config.state_dir} cannot be created: {exc.strerror or exc}"
            ) from exc
    engine = store_engine.create_engine(
        config.database_url,
        idle_transaction_timeout=idle_transaction_timeout,
        application_name=application_name,
    )
    try:
        await store_engine.check_connection(engine)
        if check_schema:
            try:
                await schema.check(engine)
            except SchemaError:
                if not config.database_url.startswith("sqlite"):
                    raise
                # SQLite is the embedded default: migrated on use, like the daemon does.
                await schema.upgrade(engine)
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def using_engine(config: Config, engine: AsyncEngine | None) -> AsyncIterator[AsyncEngine]:
    """`engine` if a caller opened one for several steps (`dags trigger --wait`: the trigger
    and the follower), else one opened (and disposed of) for the block."""
    if engine is not None:
        yield engine
        return
    async with open_engine(config) as opened:
        yield opened


def make_launcher(config: Config) -> Launcher:
    """The launcher named by `MINIFLOW_LAUNCHER`."""
    if config.launcher == "kubernetes":
        from miniflow.launchers.kubernetes import KubernetesLauncher
        from miniflow.launchers.pods import PodDefaults

        defaults = PodDefaults(
            namespace=config.namespace,
            worker_image=config.worker_image,
            database_secret_name=config.database_secret,
            dags_folder=config.pod_dags_folder,
            service_account=config.worker_service_account,
            # A worker that cannot heartbeat for the zombie threshold stops its task itself.
            extra_env={
                "MINIFLOW_HEARTBEAT_INTERVAL": str(config.heartbeat_interval),
                "MINIFLOW_ZOMBIE_THRESHOLD": str(config.zombie_threshold),
                "MINIFLOW_CALLBACK_TIMEOUT": str(config.callback_timeout),
            },
        )
        return KubernetesLauncher(
            defaults=defaults,
            kubeconfig=config.kubeconfig,
            context=config.kube_context,
            cleanup=config.pod_cleanup,  # type: ignore[arg-type]  # validated in config
            pending_timeout=config.pod_pending_timeout,
            keep_failed_for=config.keep_failed_for(),
            kill_grace_period=config.kill_grace_period,
        )
    from miniflow.launchers.local import LocalLauncher

    worker_env = {
        "MINIFLOW_DATABASE_URL": config.database_url,
        "MINIFLOW_DAGS_FOLDER": str(config.dags_folder.resolve()),
        "MINIFLOW_HEARTBEAT_INTERVAL": str(config.heartbeat_interval),
        "MINIFLOW_ZOMBIE_THRESHOLD": str(config.zombie_threshold),
        "MINIFLOW_MAX_RESULT_BYTES": str(config.max_result_bytes),
        "MINIFLOW_CALLBACK_TIMEOUT": str(config.callback_timeout),
    }
    return LocalLauncher(
        state_dir=config.state_dir,
        dags_folder=config.dags_folder.resolve(),
        worker_env=worker_env,
        grace_period=config.kill_grace_period,
        pause_limit=config.scheduler_timeout / 4,
        preimport=not config.dag_import_per_try,
    )
