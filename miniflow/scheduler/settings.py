"""A scheduler's settings (one frozen record, from `miniflow.config.Config` in
`cli/daemon.py`), apart from the `Scheduler` so the modules of a round can name them
without importing the scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field

from miniflow.scheduler.sanity import SanitySettings


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """Knobs of the scheduler loops (the daemon takes them from `Config`)."""

    parallelism: int = 32
    """Task instances queued or running at once."""
    parse_interval: float = 30.0
    """Seconds between rescans of the DAGs folder."""
    reparse_interval: float | None = 120.0
    """Seconds after which an unchanged DAG file is parsed again (what it imports may have
    changed); None: only changed files are parsed."""
    run_check_interval: float = 1.0
    """Seconds between checks for due scheduled runs."""
    full_sweep_interval: float = 2.0
    """Seconds between readiness checks of every running run (not only changed ones)."""
    idle_wait: float = 1.0
    """Longest sleep between rounds when nothing happens."""
    schedule_runs: bool = True
    """Create runs from cron schedules (off for `dags test`)."""
    only_run: tuple[str, str] | None = None
    """(dag_id, run_id): touch nothing but this run (`dags test`)."""
    max_launch_attempts: int = 8
    """Launches of one try that never reached a container before the try fails."""
    max_result_bytes: int = 65536
    """Largest result a `Pod(..., push_result=True)` task may report (as `@task`s)."""
    max_map_length: int = 1024
    """Most mapped instances of one mapped task in a run; more fails the task."""
    sanity: SanitySettings = field(default_factory=SanitySettings)
    """The sanity loop's interval and thresholds."""
    register: bool = True
    """Register in `scheduler_instance` and heartbeat there (off in some tests)."""
    peer: bool = True
    """A full peer of the other schedulers: refuses to share a SQLite database, adopts what
    dead instances left and may hold the sanity lock. `dags test` is not one: it registers
    (so schedulers leave its tries alone) and looks after its own run only."""
    instance_heartbeat: float = 5.0
    """Seconds between heartbeats of this scheduler's `scheduler_instance` row."""
    instance_timeout: float = 30.0
    """A scheduler whose row has not heartbeat for this long is taken for dead."""
    claim_turn: float = 1.0
    """Seconds a scheduler among live peers claims every free slot before it hands the
    turn on (`scheduler.turns`): each hand-on costs about one round in which no one claims
    (the old holder records its last exits, then the new one claims the slots they freed),
    so short turns spread work finer and lose more throughput."""
    stall_timeout: float = 120.0
    """Seconds a loop may go without progress past its period before `/healthz` fails."""
    callback_timeout: float = 60.0
    """Seconds a DAG-level callback's child process may run before it is killed."""
