"""The fault suite's DAG: a grid of Bash and @task tasks that prove each execution.

Every scenario runs the same shape, so one invariant checker can judge them
all: `layers` x `width` tasks (even columns Bash, odd columns `@task`), each
depending on two tasks of the layer above, and an `end` join. Scenarios add
`Extra` tasks (a victim to kill, a task that fails its first try, a gate).

Each task appends `<task_id> <try_number> <pid>` to `began` when its body
starts and to `proof` when its body completes. A try killed before it
completes leaves no proof line, so the proof file holds exactly one line per
successful task unless something ran a task twice. The try number comes from
the templated env (`{{ try_number }}`), the same way for both kinds.

The source is generated as text (not a module read at run time) because the
DAG file itself is the thing under test: scenarios rewrite and delete it.
"""

from __future__ import annotations

import shlex
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Extra:
    """One hand-written task next to the grid."""

    task_id: str
    kind: Literal["bash", "python"]
    seconds: float = 0.0
    """How long the body sleeps between its `began` and `proof` lines."""
    before: str = ""
    """Bash: a shell snippet run after `began` (end it with `;`). Python: statements."""
    result: str = "None"
    """Python: the expression the function returns."""
    settings: str = ""
    """Extra task keyword arguments, as source (`retries=1, timeout=timedelta(...)`)."""
    upstream: tuple[str, ...] = ()


@dataclass(frozen=True)
class LayeredDag:
    dag_id: str
    proof: Path
    began: Path
    layers: int = 5
    width: int = 10
    seconds: float = 0.2
    retries: int = 1
    retry_delay: float = 0.2
    bash_only: bool = False
    imports: tuple[str, ...] = ()
    """Extra import lines (a helper module in the DAGs folder)."""
    extras: tuple[Extra, ...] = field(default=())
    body: str = ""
    """Raw statements at the end of the `with DAG` block (`tasks` maps ids to tasks)."""

    @property
    def grid_ids(self) -> list[str]:
        return [f"t{layer}_{col}" for layer in range(self.layers) for col in range(self.width)]

    @property
    def task_ids(self) -> set[str]:
        return {*self.grid_ids, "end", *(e.task_id for e in self.extras)}

    def with_extras(self, *extras: Extra) -> LayeredDag:
        return replace(self, extras=(*self.extras, *extras))

    def source(self) -> str:
        imports = "\n".join(self.imports)
        began, proof = shlex.quote(str(self.began)), shlex.quote(str(self.proof))
        head = f'''\
            """Fault-suite DAG {self.dag_id} (written by tests/faults/dags/layered.py)."""

            import os
            import signal
            import time
            from datetime import datetime, timedelta

            from miniflow import DAG, Bash, task
            {imports}

            PROOF = {str(self.proof)!r}
            BEGAN = {str(self.began)!r}
            LAYERS, WIDTH = {self.layers}, {self.width}
            SECONDS, BASH_ONLY = {self.seconds}, {self.bash_only}


            def _line(path):
                line = f"{{os.environ['MF_TASK']}} {{os.environ['MF_TRY']}} {{os.getpid()}}\\n"
                with open(path, "a") as f:
                    f.write(line)


            def work(seconds):
                _line(BEGAN)
                time.sleep(seconds)
                _line(PROOF)
                return os.environ["MF_TASK"]


            def bash(seconds, before=""):
                stamp = 'echo "$MF_TASK $MF_TRY $$" >> '
                return f"{{stamp}}{began}; {{before}} sleep {{seconds}}; {{stamp}}{proof}"


            with DAG(
                {self.dag_id!r},
                start_date=datetime(2026, 1, 1),
                retries={self.retries},
                retry_delay=timedelta(seconds={self.retry_delay}),
                env={{"MF_TASK": "{{{{ task_id }}}}", "MF_TRY": "{{{{ try_number }}}}"}},
            ):
                tasks = {{}}
                for layer in range(LAYERS):
                    for col in range(WIDTH):
                        tid = f"t{{layer}}_{{col}}"
                        if BASH_ONLY or col % 2 == 0:
                            tasks[tid] = Bash(tid, bash(SECONDS))
                        else:
                            tasks[tid] = task(task_id=tid)(work)(SECONDS)
                        if layer:
                            for above in (col, (col + 1) % WIDTH):
                                tasks[f"t{{layer - 1}}_{{above}}"] >> tasks[tid]
                tasks["end"] = Bash("end", bash(0))
                [tasks[f"t{{LAYERS - 1}}_{{c}}"] for c in range(WIDTH)] >> tasks["end"]
            '''
        extras = "".join(self._extra(e) for e in self.extras)
        return textwrap.dedent(head) + extras + textwrap.indent(textwrap.dedent(self.body), "    ")

    def _extra(self, extra: Extra) -> str:
        settings = f", {extra.settings}" if extra.settings else ""
        if extra.kind == "bash":
            make = (
                f"    tasks[{extra.task_id!r}] = Bash({extra.task_id!r}, "
                f"bash({extra.seconds}, {extra.before!r}){settings})\n"
            )
        else:
            name = f"_body_{extra.task_id}"
            body = textwrap.indent(textwrap.dedent(extra.before).strip() or "pass", "        ")
            make = (
                f"\n    def {name}():\n"
                "        _line(BEGAN)\n"
                f"{body}\n"
                f"        time.sleep({extra.seconds})\n"
                "        _line(PROOF)\n"
                f"        return {extra.result}\n\n"
                f"    tasks[{extra.task_id!r}] = task(task_id={extra.task_id!r}{settings})"
                f"({name})()\n"
            )
        links = "".join(f"    tasks[{u!r}] >> tasks[{extra.task_id!r}]\n" for u in extra.upstream)
        return make + links


def read_lines(path: Path) -> list[tuple[str, int, int]]:
    """The (task_id, try_number, pid) lines of a proof or began file."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        task_id, try_number, pid = line.split()
        out.append((task_id, int(try_number), int(pid)))
    return out
