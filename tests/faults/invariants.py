"""The one invariant checker every fault scenario ends with.

Whatever the fault, afterwards these must hold, read from the database, the
proof file and the process table:

- every task instance of the run ends in the state its outcome dictates
  (success, unless the scenario injected a permanent failure), and the run with it;
- the proof file has exactly one line per successful task, written by the try
  recorded as the successful one: no task body completed twice, none is missing;
- no (task, try) was launched twice: one `task_attempt` per try, tries 1..N, and
  one process starting each try's body (the `began` file);
- every `task_attempt` is closed (`ended_at` set), the last one in the task's state;
- no task used a retry the scenario did not cause;
- no process of the test is left once the scheduler has stopped.

`check()` waits (bounded) for the run to finish and the attempts to close, stops
the scheduler with SIGTERM, then judges. It never raises on a violation: it
returns a `FaultResult` whose `problems` say what broke, prints its row (pytest -s
shows it) and appends it as one JSON line to the file named by
`MINIFLOW_FAULT_REPORT`, so the lead can tabulate a whole suite run.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime

from miniflow.store import states
from miniflow.store.records import AttemptRecord, TaskInstanceRecord
from tests.faults.dags.layered import read_lines
from tests.faults.harness import RUN_TIMEOUT, Harness, describe

REPORT_ENV = "MINIFLOW_FAULT_REPORT"
CLOSE_TIMEOUT = 5.0
LEAK_TIMEOUT = 5.0


@dataclass
class FaultResult:
    scenario: str
    tasks: int = 0
    succeeded: int = 0
    lost: list[str] = field(default_factory=list)
    executed_twice: list[str] = field(default_factory=list)
    launched_twice: list[str] = field(default_factory=list)
    open_attempts: list[str] = field(default_factory=list)
    unexpected_retries: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)
    faults: int = 0
    recovery_s: float | None = None
    """Seconds from the end of the last fault to the first change the harness saw the
    scheduler make to `task_attempt` (polled every 0.1 s), or to the start of the next try
    of the task the scenario names (the killed victim's retry)."""
    duration_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def row(self) -> dict[str, object]:
        """The table row: counts, not lists."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, list) and key != "problems":
                data[key] = len(value)
        data["ok"] = self.ok
        return data

    def explain(self, log_tail: str = "") -> str:
        lines = [f"{self.scenario}: {len(self.problems)} invariant(s) broken", *self.problems]
        return "\n".join(lines + ([log_tail] if log_tail else []))


def publish(result: FaultResult) -> None:
    line = json.dumps(result.row(), default=str)
    print(f"\nfault-result {line}")
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


async def check(
    h: Harness,
    *,
    expect_states: Mapping[str, str] | None = None,
    retried: Collection[str] = (),
    task_ids: Collection[str] | None = None,
    recovered_by: Collection[str] = (),
    problems: Collection[str] = (),
    run_timeout: float = RUN_TIMEOUT,
) -> FaultResult:
    """Finish the scenario and judge it (see the module docstring).

    `expect_states`: final states other than success (a permanent failure).
    `retried`: tasks the scenario made retry (any other retry is a problem).
    `task_ids`: the tasks the run must have (default: the first DAG written).
    `recovered_by`: the tasks whose next tries starting end the recovery (default: the
    scheduler's first recorded progress after the last fault).
    `problems`: what the scenario itself already found wrong.
    """
    assert h.dag is not None
    result = FaultResult(scenario=h.name, faults=len(h.faults), problems=list(problems))
    expected_ids = set(task_ids if task_ids is not None else h.dag.task_ids)
    want = {t: (expect_states or {}).get(t, states.SUCCESS) for t in expected_ids}
    want_run = states.RUN_SUCCESS if set(want.values()) <= {states.SUCCESS} else states.RUN_FAILED

    await _settle(h, result, run_timeout)
    await h.stop_watching()
    tis = await h.tis()
    attempts = await h.attempts()
    proof = read_lines(h.proof)
    run_state = await h.run_state()
    result.tasks = len(tis)
    result.succeeded = sum(ti.state == states.SUCCESS for ti in tis.values())
    if run_state != want_run:
        result.problems.append(f"run ended {run_state}, expected {want_run}")

    missing, extra = expected_ids - tis.keys(), tis.keys() - expected_ids
    if missing or extra:
        result.problems.append(
            f"the run's tasks differ from its DAG version: missing {sorted(missing)}, "
            f"unexpected {sorted(extra)}"
        )
    for task_id, ti in sorted(tis.items()):
        if ti.state != want.get(task_id, states.SUCCESS):
            result.lost.append(task_id)
            result.problems.append(
                f"{task_id}: ended {ti.state} (try {ti.try_number}), expected "
                f"{want.get(task_id, states.SUCCESS)}; error: {(ti.error or '').strip()[:300]}"
            )
        if ti.try_number > 1 and task_id not in retried:
            result.unexpected_retries.append(task_id)
            history = [_describe(a) for a in attempts if a.task_id == task_id]
            result.problems.append(
                f"{task_id}: {ti.try_number} tries, expected one: {history}; "
                f"last error: {(ti.error or '').strip()[-300:]}"
            )

    _check_proof(result, tis, proof)
    _check_attempts(result, tis, attempts)
    _check_began(result, read_lines(h.began))
    result.recovery_s = _recovery(h, attempts, recovered_by)
    result.duration_s = round(time.monotonic() - h.started, 1)
    publish(result)
    return result


async def _settle(h: Harness, result: FaultResult, run_timeout: float) -> None:
    """Wait for the run and its attempts, stop the scheduler, collect leftovers."""
    try:
        await h.wait_finished(run_timeout)

        async def closed() -> bool:
            return all(a.ended_at is not None for a in await h.attempts())

        await h.until(closed, CLOSE_TIMEOUT, "every attempt to close", interval=0.1)
    except AssertionError as exc:
        result.problems.append(str(exc))
    for proc in [p for p in h.schedulers if p.poll() is None] or h.schedulers[-1:]:
        try:
            took = h.stop_scheduler(signal.SIGTERM, proc=proc)
            if took > 5:
                result.problems.append(f"a scheduler took {took:.1f}s to exit on SIGTERM")
        except AssertionError as exc:
            result.problems.append(str(exc))
    alive = await h.wait_no_processes(LEAK_TIMEOUT)
    if alive:
        result.leaked = describe(alive)
        result.problems.append(f"processes left running: {result.leaked}")


def _check_proof(
    result: FaultResult, tis: Mapping[str, TaskInstanceRecord], proof: list[tuple[str, int, int]]
) -> None:
    lines: dict[str, list[tuple[int, int]]] = {}
    for task_id, try_number, pid in proof:
        lines.setdefault(task_id, []).append((try_number, pid))
    for task_id, ti in sorted(tis.items()):
        mine = lines.pop(task_id, [])
        state, try_number = ti.state, ti.try_number
        if len(mine) > 1:
            result.executed_twice.append(task_id)
            result.problems.append(f"{task_id}: body completed {len(mine)} times {mine}")
        if state == states.SUCCESS:
            if not mine:
                if task_id not in result.lost:
                    result.lost.append(task_id)
                result.problems.append(f"{task_id}: recorded success but its body never ran")
            elif len(mine) == 1 and mine[0][0] != try_number:
                result.problems.append(
                    f"{task_id}: body completed in try {mine[0][0]} but try {try_number} "
                    "was recorded as the successful one"
                )
        elif mine:
            result.problems.append(f"{task_id}: ended {state} but its body completed {mine}")
    for task_id, mine in sorted(lines.items()):
        result.problems.append(f"{task_id}: not a task of this run, yet its body ran {mine}")


def _check_attempts(
    result: FaultResult, tis: Mapping[str, TaskInstanceRecord], attempts: list[AttemptRecord]
) -> None:
    counts = Counter((a.task_id, a.try_number) for a in attempts)
    for (task_id, try_number), n in sorted(counts.items()):
        if n > 1:
            result.launched_twice.append(f"{task_id}#{try_number}")
            result.problems.append(f"{task_id} try {try_number}: {n} attempt rows")
    by_task: dict[str, list[AttemptRecord]] = {}
    for a in attempts:
        by_task.setdefault(a.task_id, []).append(a)
        if a.ended_at is None:
            result.open_attempts.append(f"{a.task_id}#{a.try_number}")
            result.problems.append(f"{a.task_id} try {a.try_number}: attempt never closed")
    for task_id, ti in sorted(tis.items()):
        mine = sorted(by_task.get(task_id, []), key=lambda a: a.try_number)
        state, try_number = ti.state, ti.try_number
        tries = [a.try_number for a in mine]
        if tries != list(range(1, try_number + 1)):
            result.problems.append(f"{task_id}: attempts of tries {tries}, try_number {try_number}")
        if mine and state in states.FINISHED and mine[-1].state != state:
            result.problems.append(
                f"{task_id}: last attempt (try {mine[-1].try_number}) says {mine[-1].state}, "
                f"the task instance {state}"
            )


def _check_began(result: FaultResult, began: list[tuple[str, int, int]]) -> None:
    """Two processes starting the body of one (task, try): that try was launched twice."""
    pids: dict[tuple[str, int], list[int]] = {}
    for task_id, try_number, pid in began:
        pids.setdefault((task_id, try_number), []).append(pid)
    for (task_id, try_number), mine in sorted(pids.items()):
        if len(mine) > 1:
            result.launched_twice.append(f"{task_id}#{try_number}")
            result.problems.append(f"{task_id} try {try_number}: began in processes {mine}")


def _describe(a: AttemptRecord) -> str:
    why = "; ".join(x for x in (a.reason, (a.message or "").strip()[:200]) if x)
    return f"try {a.try_number} {a.state} exit={a.exit_code} ({why})"


def _recovery(
    h: Harness, attempts: list[AttemptRecord], recovered_by: Collection[str]
) -> float | None:
    if not h.faults:
        return None
    fault_at = h.faults[-1].at
    until = h.recovered_at()
    if recovered_by:  # every victim's next try has started
        starts = [
            min(
                (a.started_at for a in attempts if a.task_id == task_id and _after(a, fault_at)),
                default=None,
            )
            for task_id in recovered_by
        ]
        until = None if None in starts else max(t for t in starts if t is not None)
    return round((until - fault_at).total_seconds(), 2) if until else None


def _after(attempt: AttemptRecord, at: datetime) -> bool:
    return attempt.started_at is not None and attempt.started_at > at
