"""Turn a claimed task instance into a launcher `TaskSpec`: templates rendered here.

Rendering happens in the scheduler (not the launcher) so a template error is
recorded as the try's failure with its message, whatever the launcher.

`dag` is always the run's own version (see `miniflow.scheduler.dagcache`): a
run keeps rendering the commands, images and settings it was created with
after its file is edited; only new runs see the edit.
"""

from __future__ import annotations

from typing import Any

from miniflow.authoring import templates
from miniflow.authoring.context import TaskInstanceInfo
from miniflow.authoring.mapping import apply_map_args
from miniflow.authoring.serialized import PodSettings, SerializedDag
from miniflow.authoring.xcom import XComData, template_xcom
from miniflow.launchers.base import RESULT_FILE, AttemptKey, TaskSpec
from miniflow.store.records import RunInfo


def run_params(dag: SerializedDag, conf: dict[str, Any]) -> dict[str, Any]:
    """The DAG's params with the run's conf merged over them."""
    return {**dag["params"], **conf}


def context_inputs(
    dag: SerializedDag, run: RunInfo, task_id: str, try_number: int, map_index: int
) -> dict[str, Any]:
    """The arguments of `templates.build_context` for one try."""
    return {
        "dag_id": dag["dag_id"],
        "run_id": run.run_id,
        "task_id": task_id,
        "try_number": try_number,
        "logical_date": run.logical_date,
        "data_interval_start": run.data_interval_start,
        "data_interval_end": run.data_interval_end,
        "params": run_params(dag, run.conf),
        "run_type": run.run_type,
        "map_index": map_index,
        "conf": run.conf,
        "user_macros": dag.get("user_defined_macros"),
    }


def render_fields(
    dag: SerializedDag,
    run: RunInfo,
    task_id: str,
    try_number: int,
    *,
    map_index: int = -1,
    map_args: dict[str, Any] | None = None,
    xcom: XComData | None = None,
) -> templates.RenderedFields:
    """One try's templated fields rendered in this process (with the pushes a Bash task's
    templates made, for the caller to store). Raises TemplateError."""
    task = apply_map_args(dag["tasks"][task_id], map_args)
    plain = templates.plain_fields(task)
    if plain is not None:
        return plain
    context = templates.build_context(**context_inputs(dag, run, task_id, try_number, map_index))
    # `{{ ti.xcom_pull(...) }}`: from the values the claim read for this run (`xcom`)
    context["ti"] = context["task_instance"] = TaskInstanceInfo(
        dag["dag_id"], run.run_id, task_id, try_number, map_index, xcom=template_xcom(task, xcom)
    )
    return templates.render_task_fields(task, context)


def build_spec(
    dag: SerializedDag,
    run: RunInfo,
    task_id: str,
    try_number: int,
    *,
    map_index: int = -1,
    map_args: dict[str, Any] | None = None,
    xcom: XComData | None = None,
    rendered: templates.RenderedFields | None = None,
) -> TaskSpec:
    """The spec of one try, from the run's version `dag`; of a mapped instance: with its
    own fields (`map_args`) and `map_index` in the templates' context. `rendered`: the
    fields as a process that imported the DAG file rendered them (`child_render`).

    Raises TemplateError if a templated field cannot be rendered.
    """
    task = apply_map_args(dag["tasks"][task_id], map_args)
    if rendered is None:
        rendered = render_fields(
            dag, run, task_id, try_number, map_index=map_index, map_args=map_args, xcom=xcom
        )
    pod: PodSettings = PodSettings(**task["pod"])
    return TaskSpec(
        key=AttemptKey(dag["dag_id"], run.run_id, task_id, try_number, map_index),
        kind=task["kind"],
        fileloc=dag["fileloc"],
        bash_command=rendered.bash_command,
        image=task.get("image"),
        cmds=rendered.cmds,
        args=rendered.args,
        env=rendered.env
        if map_index < 0
        else {**rendered.env, "MINIFLOW_MAP_INDEX": str(map_index)},
        timeout=task["timeout"],
        pod=pod,
        annotations={"miniflow/logical-date": run.logical_date.isoformat()},
        push_result=bool(task.get("push_result", False)),
        result_file=task.get("result_file") or RESULT_FILE,
    )
