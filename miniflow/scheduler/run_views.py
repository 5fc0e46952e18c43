"""What the scheduler knows of each running run's task states, to decide readiness incrementally.

Reading every task instance of a run each round costs O(run size) per round,
O(n²) over a run whose tasks finish a few per round (a 10,000-task fan-out at
parallelism 32 read ~3 million rows). A `RunView` keeps the run's states in
memory, built once from all its rows; afterwards a round reads only the rows of
the tasks whose tries ended (the launcher's exit events name them) and looks at
their downstream tasks only (`RunView.advance`, see `readiness.can_decide`).

What a view must never do is decide from a guess:

- A run ends only by a decision on all its rows, read in the same transaction as
  the final update (`needs_full_look`: when the view holds no task that is
  scheduled, in flight or waiting for a retry, the scheduler reads the whole run
  and decides with `readiness.evaluate_run`, as before), and that update is still
  guarded by the unfinished tasks it saw (`store.runs.set_state`).
- A view's decisions are applied only if the run's per-state counts, read in the
  same transaction, are the view's (`agrees`): a change the view did not see (a
  `tasks clear` from the CLI, the sanity loop, another scheduler, a worker that
  recorded its result before its exit arrived) shows there, and the run is then
  read and decided in full, as before. Decisions that rest only on rows the same
  transaction read or wrote (`rests_on`: a chain's next task, right after its
  upstream's exit was recorded) need no count: no state they depend on is the view's
  memory. Readiness updates apply only while the run is running either way.
- Every decision is a conditional update (`none` → ...): if the database
  disagrees (fewer rows changed than decided), the runs are read in full next round.
- The periodic sweep compares every running run's counts with its view (one
  grouped count) and rebuilds views that differ in a way that may matter
  (`RunView.worth_reading`: anything but open tasks having succeeded, or enough
  successes to release a waiting task, or nothing left open) or are older than
  `MAX_VIEW_AGE`, so an unseen change cannot hold a run up for longer than that.

This module never touches the database: the scheduler feeds it rows.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta

from miniflow.scheduler import readiness
from miniflow.store import states

MAX_VIEW_AGE = timedelta(seconds=30)
"""A view older than this is rebuilt from all its rows by the next sweep, whatever its
counts say (two unseen changes could cancel out in the counts)."""

_DONE = states.FINISHED
_DECIDED_BY_ONE_SUCCESS = frozenset({"one_success", "one_done", "all_failed", "all_skipped"})
"""Trigger rules that one upstream success decides before the others finish."""


class RunView:
    """One run's task states as last read or decided, with per-task counters."""

    def __init__(
        self,
        graph: readiness.Graph,
        dag_hash: str,
        ids: Mapping[str, int],
        current: Mapping[str, str],
        built_at: datetime,
    ) -> None:
        self.graph = graph
        self.dag_hash = dag_hash
        self.built_at = built_at
        self.ids = dict(ids)  # task_id → task instance id
        self.states = dict(current)
        # Upstream tasks (that the run has rows for) not finished yet, per task.
        self.remaining = dict.fromkeys(self.states, 0)
        for task_id, state in self.states.items():
            if state not in _DONE:
                for down in graph.downstream.get(task_id, ()):
                    if down in self.remaining:
                        self.remaining[down] += 1
        self._counts = Counter(bucket(s) for s in self.states.values())

    def counts(self) -> Counter[str]:
        """Tasks per state, every unfinished state but `none` counted as "open" (the view
        does not follow scheduled → queued → running); a copy."""
        return +self._counts

    def needs_full_look(self) -> bool:
        """Nothing scheduled, in flight or retrying: the run may be over (or stuck), which
        only a decision on all its rows may say."""
        return self._counts["open"] == 0

    def agrees(self, found: Mapping[str, int], counts: Counter[str] | None = None) -> bool:
        """True if the database's per-state counts (`found`) are the view's (`counts`: as
        the view was at some point, by default now)."""
        return +_buckets(found) == (+self._counts if counts is None else +counts)

    def rests_on(self, decisions: Mapping[str, str], fresh: Collection[str]) -> bool:
        """True if every task the view holds upstream of (or as a setup of) a decided task
        is in `fresh` (rows read or written in the deciding transaction): then nothing the
        view could have missed went into them.

        Not when a decision rests on another one: a decided task may have changed behind
        the view's back (a branch's worker skips the tasks it did not choose, in the
        transaction that records its success), its own update then does not apply, and
        what was decided downstream of it must not either."""
        graph = self.graph
        return all(
            up in fresh or up not in self.states
            for task_id in decisions
            for up in (*graph.upstream.get(task_id, ()), *graph.setups.get(task_id, ()))
        )

    def worth_reading(self, found: Mapping[str, int]) -> bool:
        """Whether the run's rows (whose per-state counts are `found`) may tell this view
        something it needs: any change but tasks it holds open having finished; or such
        finishes, when they are enough to release a task waiting on that many unfinished
        upstream tasks, or nothing is left open (the run may be over). Fewer finishes
        than that (a peer's tries, mid-run) are left for its next exits or the view's
        age: among peers, a fan-out's view would otherwise be rebuilt at every sweep."""
        theirs = _buckets(found)
        mine = self._counts
        if +theirs == +mine:
            return False
        unseen = mine["open"] - theirs["open"]
        others = (set(theirs) | set(mine)) - {"open"}
        if (
            unseen <= 0
            or theirs.total() != mine.total()
            or theirs[states.NONE] != mine[states.NONE]
            or any(theirs[s] < mine[s] for s in others)
            or any(theirs[s] > mine[s] for s in others - {states.SUCCESS})
            or theirs["open"] == 0
        ):
            return True  # not only successes (a failure decides some tasks early)
        fewest = self.fewest_open_upstream()
        return fewest is not None and unseen >= fewest

    def fewest_open_upstream(self) -> int | None:
        """Of the tasks waiting (`none`) on upstream tasks that are all open (scheduled, in
        flight: a peer's finishes may be among them), the fewest upstream successes that
        may decide one (all of them, or one for a rule one success decides). None when no
        task waits on open tasks alone."""
        fewest = None
        for task_id, n in self.remaining.items():
            if not n or self.states[task_id] != states.NONE or (fewest is not None and n >= fewest):
                continue
            if any(
                self.states.get(up) == states.NONE for up in self.graph.upstream.get(task_id, ())
            ):
                continue  # waits on a task not even started: no finish can release it yet
            fewest = 1 if self.graph.rules.get(task_id) in _DECIDED_BY_ONE_SUCCESS else n
        return fewest

    def set(self, task_id: str, state: str) -> bool:
        """Record a task's state (read or decided); True if it changed."""
        old = self.states.get(task_id)
        if old is None or old == state:
            return False
        self.states[task_id] = state
        self._counts[bucket(old)] -= 1
        self._counts[bucket(state)] += 1
        step = (old in _DONE) - (state in _DONE)  # +1: one more unfinished upstream
        if step:
            for down in self.graph.downstream.get(task_id, ()):
                if down in self.remaining:
                    self.remaining[down] += step
        return True

    def advance(self, changed: Iterable[str]) -> dict[str, str]:
        """Decide the waiting tasks downstream of `changed`; returns the decisions, already
        recorded in the view. Finished decisions (skipped, upstream_failed) propagate
        further down in the same pass, in topological order, as `evaluate_run` does."""
        graph = self.graph
        queue: list[tuple[int, str]] = []
        queued: set[str] = set()

        def consider(task_id: str, upstream_state: str) -> None:
            # A setup also decides its teardowns further down (they wait for it too).
            for down in (*graph.downstream.get(task_id, ()), *graph.teardowns.get(task_id, ())):
                if down in queued or self.states.get(down) != states.NONE:
                    continue
                if self.remaining.get(down) == 0 or readiness.can_decide(
                    graph.rules[down], upstream_state
                ):
                    queued.add(down)
                    heapq.heappush(queue, (graph.order[down], down))

        for task_id in changed:
            state = self.states.get(task_id)
            if state in _DONE:
                consider(task_id, state)
        decisions: dict[str, str] = {}
        while queue:
            _, task_id = heapq.heappop(queue)
            queued.discard(task_id)
            if self.states.get(task_id) != states.NONE:
                continue
            upstream = [self.states[u] for u in graph.upstream[task_id] if u in self.states]
            setups = [self.states[u] for u in graph.setups.get(task_id, ()) if u in self.states]
            decision = readiness.settle(
                readiness.decide(graph.rules[task_id], upstream, setups),
                task_id in graph.instant,
                task_id in graph.mapped,
            )
            if decision is None:
                continue
            decisions[task_id] = decision
            self.set(task_id, decision)
            if decision in _DONE:
                consider(task_id, decision)
        return decisions


def _buckets(found: Mapping[str, int]) -> Counter[str]:
    """Per-state counts read from the database, as views count them (`bucket`)."""
    out: Counter[str] = Counter()
    for state, n in found.items():
        out[bucket(state)] += n
    return out


def bucket(state: str) -> str:
    """The state as views count it: "open" for scheduled, queued, running, up_for_retry."""
    return state if state == states.NONE or state in _DONE else "open"


class RunViews:
    """The views of the running runs this scheduler looks after, by run pk."""

    def __init__(self) -> None:
        self._views: dict[int, RunView] = {}

    def get(self, run_pk: int) -> RunView | None:
        return self._views.get(run_pk)

    def put(self, run_pk: int, view: RunView) -> None:
        self._views[run_pk] = view

    def drop(self, run_pk: int) -> None:
        self._views.pop(run_pk, None)

    def clear(self) -> None:
        self._views.clear()

    def keep_only(self, run_pks: Iterable[int]) -> None:
        """Forget the views of runs no longer running."""
        keep = set(run_pks)
        for pk in [pk for pk in self._views if pk not in keep]:
            del self._views[pk]

    def stale(self, counts: Mapping[int, Mapping[str, int]], now: datetime) -> set[int]:
        """Runs (among `counts`: per-state counts read from the database) whose view is
        missing, is older than `MAX_VIEW_AGE`, or differs from the database in a way
        worth reading the run for (`RunView.worth_reading`)."""
        out = set()
        for pk, found in counts.items():
            view = self._views.get(pk)
            if view is None or now - view.built_at > MAX_VIEW_AGE or view.worth_reading(found):
                out.add(pk)
        return out

    def __len__(self) -> int:
        return len(self._views)
