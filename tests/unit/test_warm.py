"""`miniflow_worker.warm`: what a forkserver builds before its first fork.

Run in a subprocess each: importing `warm` freezes the importer's garbage collector.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    url, home, create = sys.argv[1:]
    if create == "yes":
        from miniflow.store import engine as store_engine, schema
        async def upgrade():
            engine = store_engine.create_engine(url)
            await schema.upgrade(engine)
            await engine.dispose()
        asyncio.run(upgrade())
    from miniflow_worker import runner, warm
    warm.prefork({"MINIFLOW_DATABASE_URL": url, "MINIFLOW_HOME": home})
    print(json.dumps({"prepared": list(runner.PREPARED_ENGINES), "rehearsed": warm._rehearsed}))
    """
)


def _probe(tmp_path: Path, url: str, create: bool) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, url, str(tmp_path / "home"), "yes" if create else "no"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_database_prepared_for_needs_no_rehearsal(tmp_path: Path) -> None:
    # Preparing the workers' own database builds what the rehearsal would (0.05 to 0.09 s
    # of CPU saved at every forkserver start).
    url = f"sqlite+aiosqlite:///{tmp_path / 'miniflow.db'}"
    assert _probe(tmp_path, url, create=True) == {"prepared": [url], "rehearsed": False}


def test_without_a_database_to_prepare_for_the_forkserver_rehearses(tmp_path: Path) -> None:
    # The file does not exist yet (connecting would create it): nothing is prepared, and
    # the children still inherit SQLAlchemy's lazily built machinery.
    url = f"sqlite+aiosqlite:///{tmp_path / 'not-yet.db'}"
    assert _probe(tmp_path, url, create=False) == {"prepared": [], "rehearsed": True}
    assert not (tmp_path / "not-yet.db").exists()


CONFIG_PROBE = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from miniflow.errors import ConfigError
    from miniflow_worker import runner, warm
    home = Path(sys.argv[1])
    home.mkdir()
    url = "sqlite+aiosqlite:///" + str(home / "none.db")
    env = {"MINIFLOW_HOME": str(home), "MINIFLOW_DATABASE_URL": url}
    seen = {}

    def child(env, **more):
        # What a forked child finds: the environment it was forked with, and its relay.
        os.environ.clear()
        os.environ.update({**env, "MINIFLOW_WORKER_RELAY_FD": "9", **more})
        return runner.try_config()

    warm.prefork({**env, "MINIFLOW_PARALLELISM": "7"})
    prepared = runner.PREPARED_CONFIG[1]
    loaded = runner.load_config
    runner.load_config = None  # a child that reads its configuration itself fails here
    config = child(env, MINIFLOW_PARALLELISM="7")
    seen["prepared"] = [config is prepared, config.parallelism]
    runner.load_config = loaded
    seen["other environment"] = child(env, MINIFLOW_PARALLELISM="9").parallelism
    (home / "miniflow.toml").write_text("parallelism = 3\\n")
    warm.prefork(env)
    seen["file"] = child(env).parallelism
    (home / "miniflow.toml").write_text("parallelism = 11\\n")
    warm.prefork(env)
    seen["file changed"] = child(env).parallelism
    warm.prefork({**env, "MINIFLOW_PARALLELISM": "many"})
    seen["bad value prepared"] = runner.PREPARED_CONFIG is not None
    try:
        child(env, MINIFLOW_PARALLELISM="many")
    except ConfigError as exc:
        seen["bad value"] = str(exc)
    print(json.dumps(seen))
    """
)


def test_the_forkserver_reads_the_configuration_of_the_child_it_forks_next(
    tmp_path: Path,
) -> None:
    """A child whose environment is the one the forkserver read it from uses that
    configuration (it does not read its own); another environment, a config file changed
    since, or a bad value is read (and reported) as without a forkserver."""
    done = subprocess.run(
        [sys.executable, "-c", CONFIG_PROBE, str(tmp_path / "home")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["prepared"] == [True, 7]
    assert seen["other environment"] == 9
    assert (seen["file"], seen["file changed"]) == (3, 11)
    assert seen["bad value prepared"] is False
    assert "MINIFLOW_PARALLELISM" in seen["bad value"]
