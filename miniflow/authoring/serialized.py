"""The serialized DAG: the plain-JSON contract between parsing and everything else.

The parser imports a DAG file in a subprocess and emits one `SerializedDag` per
DAG; the scheduler, the store and the launchers only ever see this JSON, never
user code. It must stay plain JSON (no pickles) so it can be stored, hashed and
diffed. Durations are float seconds, datetimes ISO-8601 strings with offset.

Bump `FORMAT_VERSION` when a field changes meaning; readers reject newer
versions with a clear error instead of guessing: everything read back from the
database goes through `readable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict, cast, get_args

from miniflow.errors import SerializedFormatError

FORMAT_VERSION = 5
# 2: the `empty` task kind, `python_mode` (branch / short_circuit) of Python tasks and the
# trigger rules added with them; a reader of format 1 would launch an `empty` task or
# ignore a branch, so it must refuse these DAGs.
# 3: setup / teardown tasks and the `all_done_setup_success` rule of teardowns (a reader of
# format 2 would not know the rule, and would let a teardown's failure fail the run).
# 4: sensors (`python_mode` "sensor" with `sensor` settings) and `push_result` of Pod
# tasks; a reader of format 2 would take a sensor's "not yet" for its result and drop a
# Pod task's result.
# 5: mapped tasks (`expand`, `max_active_mapped`) and Bash `push_result`; a reader of format
# 4 would run a mapped task once, unexpanded, so it must refuse these DAGs.

TaskKind = Literal["bash", "python", "pod", "empty"]
PythonMode = Literal["branch", "short_circuit", "sensor"]
SensorMode = Literal["poke", "reschedule"]
TriggerRule = Literal[
    "all_success",
    "all_failed",
    "all_done",
    "all_skipped",
    "all_done_min_one_success",
    "all_done_setup_success",
    "one_success",
    "one_failed",
    "one_done",
    "none_failed",
    "none_failed_min_one_success",
    "none_skipped",
    "always",
]
TRIGGER_RULES: tuple[str, ...] = get_args(TriggerRule)


class PodSettings(TypedDict, total=False):
    """Kubernetes settings of a task; every key optional, values as in a pod spec."""

    namespace: str
    image: str  # worker image override for bash/python tasks (pod tasks use Task.image)
    resources: dict[str, Any]  # {"requests": {...}, "limits": {...}}
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    affinity: dict[str, Any]
    service_account: str
    labels: dict[str, str]
    annotations: dict[str, str]
    volumes: list[dict[str, Any]]
    volume_mounts: list[dict[str, Any]]
    image_pull_policy: str
    image_pull_secrets: list[str]
    security_context: dict[str, Any] | None  # None = opt out of the restricted default
    pod_override: dict[str, Any]  # merged last into the pod manifest


class SensorSettings(TypedDict):
    """How a sensor (`@task.sensor`) pokes; durations in seconds."""

    poke_interval: float  # between two pokes
    timeout: float  # from the first poke: then the sensor fails (or skips, soft_fail)
    mode: SensorMode  # "poke": one try loops; "reschedule": one try per poke, no slot between
    soft_fail: bool  # a timeout skips the task instead of failing it


class ArgRef(TypedDict):
    """A Python task argument: a literal JSON value, an upstream's result, or a list or
    dict holding upstream results (`summarize([a(), b()])`), one key each."""

    ref: NotRequired[str]  # task_id whose result is passed
    value: NotRequired[Any]  # literal JSON value
    items: NotRequired[list[ArgRef]]  # a list (or tuple) with a task result inside
    fields: NotRequired[dict[str, ArgRef]]  # a dict with a task result inside


def arg_refs(args: list[ArgRef]) -> list[str]:
    """The task ids whose results these arguments pass, at any depth, sorted."""
    found: set[str] = set()
    todo = list(args)
    while todo:
        arg = todo.pop()
        if "ref" in arg:
            found.add(arg["ref"])
        todo += arg.get("items", [])
        todo += arg.get("fields", {}).values()
    return sorted(found)


class Expansion(TypedDict):
    """How a mapped task expands into mapped instances (see `miniflow.authoring.mapping`).

    "product": one instance per combination of the lists in `args` (name → a literal list
    or an upstream result that is a list), like Airflow's `.expand`; "kwargs": one instance
    per dict of the list `source` (`.expand_kwargs`).
    """

    mode: Literal["product", "kwargs"]
    args: NotRequired[dict[str, ArgRef]]
    source: NotRequired[ArgRef]


class SerializedTask(TypedDict):
    task_id: str
    kind: TaskKind
    upstream: list[str]  # direct upstream task ids, sorted
    trigger_rule: TriggerRule
    retries: int
    retry_delay: float
    retry_exponential_backoff: bool
    max_retry_delay: float | None
    timeout: float | None
    pool: str | None
    priority: int
    env: dict[str, str]  # values are Jinja2 templates
    pod: PodSettings
    # kind == "bash"
    command: NotRequired[str]  # Jinja2 template
    skip_on_exit_code: NotRequired[list[int]]  # these exit codes end the try as skipped
    # kind == "pod"
    image: NotRequired[str]
    cmds: NotRequired[list[str] | None]  # container command (templates), None = image entrypoint
    args: NotRequired[list[str] | None]  # container args (templates)
    # kind == "pod" and "bash": the task's result is what the container writes to its
    # termination message file (/dev/termination-log; the scheduler stores it like a
    # `@task` result) / the last line a Bash command prints
    push_result: NotRequired[bool]
    # push_result only: another termination message file than /dev/termination-log (an
    # image that writes elsewhere, e.g. Airflow's /airflow/xcom/return.json)
    result_file: NotRequired[str]
    # kind == "python"
    python_callable: NotRequired[str]  # qualified name of the function in the DAG file
    op_args: NotRequired[list[ArgRef]]
    op_kwargs: NotRequired[dict[str, ArgRef]]
    # "branch": the result names the direct downstream task(s) to follow, the others are
    # skipped; "short_circuit": a falsy result skips downstream; "sensor": a falsy result
    # means "not yet", poke again (see `sensor`). Absent: a plain task.
    python_mode: NotRequired[PythonMode]
    sensor: NotRequired[SensorSettings]  # python_mode == "sensor" only
    # short_circuit only: True skips every task downstream whatever its trigger rule;
    # False skips the direct downstream tasks and lets trigger rules decide the rest.
    ignore_downstream_trigger_rules: NotRequired[bool]
    # True: a try is claimed only once the same task of the previous run (by logical date;
    # `dags test` runs neither hold nor are held) succeeded or was skipped
    depends_on_past: NotRequired[bool]
    # depends_on_past, and the previous run's direct downstream tasks of this one too
    wait_for_downstream: NotRequired[bool]
    # Setup / teardown (absent: neither). A teardown's rule is `all_done_setup_success`:
    # it runs once everything upstream is done if a setup upstream of it succeeded (or it
    # has none). A teardown's own state decides the run only with on_failure_fail_dagrun.
    setup: NotRequired[bool]
    teardown: NotRequired[bool]
    on_failure_fail_dagrun: NotRequired[bool]
    # The callbacks the task has (`on_success_callback`, ...), run by its worker (@task) or
    # by a child process of the scheduler (Bash, Pod); the callables stay in the DAG file.
    # Absent: none.
    callbacks: NotRequired[list[str]]
    # The full id of the innermost task group the task was created in (for display only).
    task_group: NotRequired[str]
    # a mapped task: expanded at run time into one task instance per map_index
    expand: NotRequired[Expansion]
    max_active_mapped: NotRequired[int]  # mapped instances of it queued/running at once


class SerializedDag(TypedDict):
    format_version: int
    dag_id: str
    fileloc: str  # path relative to the DAGs folder
    lineno: int  # line of the DAG(...) call, for messages
    schedule: str | None  # cron string or preset (@once, @daily, ...)
    start_date: str | None  # ISO-8601 with offset
    end_date: str | None
    catchup: bool
    timezone: str  # IANA name
    max_active_runs: int
    max_active_tasks: int
    params: dict[str, Any]  # defaults (a required typed param has none)
    # typed params (`Param`): key -> {"schema", "description", "required"}; absent in
    # DAGs stored before format 2, so read it with `.get("param_specs", {})`
    param_specs: dict[str, Any]
    tags: list[str]
    description: str | None
    tasks: dict[str, SerializedTask]  # in definition order
    # DAG-level callbacks the DAG has (`on_success_callback`, `on_failure_callback`), run
    # in a child process when a run ends; absent: none.
    callbacks: NotRequired[list[str]]
    # JSON values every template of the DAG sees as top-level names; absent: none.
    user_defined_macros: NotRequired[dict[str, Any]]
    # The names of function macros and (prefixed "|") user-defined filters: the callables
    # stay in the DAG file, so the DAG's templates are rendered by a process that imports
    # it (`miniflow.parsing.render_child`, or the worker). Absent: none.
    template_functions: NotRequired[list[str]]


def readable(data: Mapping[str, Any]) -> SerializedDag:
    """`data` as a `SerializedDag`, if its format is one this miniflow reads.

    A newer format (written by a newer miniflow sharing the database) raises
    `SerializedFormatError` naming both versions: its fields may mean something
    this code would get wrong.
    """
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SerializedFormatError(
            f"DAG {data.get('dag_id')!r} is stored without a valid format_version "
            f"({version!r}); parse its file again (`miniflow dags reparse`)"
        )
    if version > FORMAT_VERSION:
        raise SerializedFormatError(
            f"DAG {data.get('dag_id')!r} is stored in serialized format {version}, newer than "
            f"this miniflow reads (up to {FORMAT_VERSION}): a newer miniflow parsed it; "
            "upgrade miniflow here too"
        )
    return cast(SerializedDag, data)
