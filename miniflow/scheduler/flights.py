"""What claims, event recording and mapping may touch of a scheduler: its in-flight
registry and the fixed collaborators of a round, not the `Scheduler` itself.

`Flights` is the one mutable piece they share: the tries this instance launched or
adopted and has not yet seen end (claims add, event recording removes, the sanity
loop kills and adopts), the reasons it killed some of them, and the runs' template
inputs. `RoundDeps` bundles what never changes over a scheduler's life (its database,
launcher, settings, DAG cache, clock and id) with that registry and the one callback
back into the scheduler (mark a run for a full read, take a launch's start events).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from miniflow.launchers.base import AttemptKey, AttemptStarted, Launcher
from miniflow.scheduler.child_render import ChildRenderer
from miniflow.scheduler.clock import Clock
from miniflow.scheduler.dagcache import DagCache
from miniflow.scheduler.round_records import InFlight, RunInfoCache
from miniflow.scheduler.settings import SchedulerSettings


@dataclass(slots=True)
class Flights:
    tries: dict[AttemptKey, InFlight] = field(default_factory=dict)
    kill_reasons: dict[AttemptKey, str] = field(default_factory=dict)
    """Why the sanity loop killed a try, until its exit is recorded: the attempt row
    keeps that reason over the launcher's ("Killed"), and so does the exit metric."""
    run_infos: RunInfoCache = field(default_factory=RunInfoCache)

    def forget(self, key: AttemptKey) -> InFlight | None:
        """Stop tracking a try (it ended, or a peer owns it now)."""
        self.kill_reasons.pop(key, None)
        return self.tries.pop(key, None)


@dataclass(frozen=True, slots=True)
class RoundDeps:
    sessions: async_sessionmaker[AsyncSession]
    launcher: Launcher
    settings: SchedulerSettings
    dags: DagCache
    clock: Clock
    scheduler_id: str
    flights: Flights
    mark_dirty: Callable[[int], None]
    """Read this run in full in the next round."""
    take_started: Callable[[Collection[AttemptKey]], list[AttemptStarted]] = lambda _: []
    """The start events the launcher has already reported for these tries, taken out of
    the next round's batch (the claim records them with the launch handles)."""
    renderer: ChildRenderer | None = None
    """Renders the templates of DAGs with function macros / filters (None: no DAGs folder)."""
