"""Airflow operator and DAG arguments -> miniflow task settings.

Every argument Airflow's `BaseOperator` takes lands in one of four places: a miniflow
setting (renamed where the name differs), accepted and ignored (it means nothing to a
pod-per-task scheduler and changes no outcome), accepted with a warning (it changes
something: no e-mail is sent, no Celery queue exists), or refused (`problems`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from miniflow.airflow_compat import problems
from miniflow.authoring import tasks as tasks_mod

RENAMED: dict[str, str] = {
    "execution_timeout": "timeout",
    "priority_weight": "priority",
    "retries": "retries",
    "retry_delay": "retry_delay",
    "retry_exponential_backoff": "retry_exponential_backoff",
    "max_retry_delay": "max_retry_delay",
    "trigger_rule": "trigger_rule",
    "pool": "pool",
    "env": "env",
}

# Accepted and ignored: documentation, UI and bookkeeping that change no outcome.
IGNORED = frozenset({
    "owner", "doc", "doc_md", "doc_rst", "doc_json", "doc_yaml", "task_display_name",
    "start_date", "end_date", "weight_rule", "ui_color", "ui_fgcolor", "map_index_template",
    "email_on_retry", "multiple_outputs", "show_return_value_in_logs", "allow_nested_operators",
    "task_group", "default_args", "logger_name", "label", "provide_context",
})  # fmt: skip

# Accepted, with what differs.
WARNED: dict[str, str] = {
    "email": "no e-mail is sent: alert from the run metrics or a failure task",
    "email_on_failure": "no e-mail is sent: alert from the run metrics or a failure task",
    "pool_slots": "a task always takes one pool slot",
    "run_as_user": "ignored: set the pod's securityContext through pod_override",
    "max_active_tis_per_dag": "ignored: use a pool to limit concurrent tries",
    "max_active_tis_per_dagrun": "ignored: use a pool to limit concurrent tries",
    "task_concurrency": "ignored: use a pool to limit concurrent tries",
    "resources": "Airflow operator resources are ignored: use container resources "
    "(executor_config pod_override, or the task's resources)",
    "inlets": "lineage is not recorded",
    "outlets": "lineage is not recorded",
    "params": "task-level params are ignored: declare params on the DAG",
    "queue": "Celery queues do not exist here: every task gets its own pod",
}

CALLBACKS = frozenset({
    "on_success_callback", "on_failure_callback", "on_retry_callback",
    "on_execute_callback", "on_skipped_callback",
})  # fmt: skip


def plain(value: Any) -> Any:
    """Kubernetes model objects (`k8s.V1Pod(...)`, from kubernetes or kubernetes_asyncio)
    as the API's plain JSON (camelCase keys); enums as their values; the rest unchanged."""
    if isinstance(value, Enum):
        return value.value
    attribute_map = getattr(type(value), "attribute_map", None)
    if isinstance(attribute_map, dict) and hasattr(type(value), "openapi_types"):
        out: dict[str, Any] = {}
        for attr, key in attribute_map.items():
            item = getattr(value, attr, None)
            if item is not None:
                out[key] = plain(item)
        return out
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def executor_config(value: Any) -> dict[str, Any]:
    """`executor_config` -> miniflow pod settings: `pod_override` (a V1Pod or its dict:
    the main container is "base" in both), or the old `{"KubernetesExecutor": {...}}`."""
    config = plain(value) or {}
    if not isinstance(config, dict):
        raise problems.unsupported("executor_config", f"must be a dict, got {value!r}")
    settings: dict[str, Any] = {}
    for key, item in config.items():
        if key == "pod_override":
            settings["pod_override"] = item
        elif key == "KubernetesExecutor" and isinstance(item, dict):
            for name, setting in (("image", "image"), ("namespace", "namespace")):
                if name in item:
                    settings[setting] = item[name]
            for name in sorted(set(item) - {"image", "namespace"}):
                problems.warn(f"executor_config KubernetesExecutor.{name}", "ignored")
        else:
            raise problems.unsupported(
                f"executor_config[{key!r}]",
                "only executor_config={'pod_override': k8s.V1Pod(...)} is understood "
                "(it shapes the task's pod)",
            )
    return settings


def task_settings(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The miniflow settings of an operator's (or default_args') Airflow arguments.

    Raises `UnsupportedConstruct` for an argument with no miniflow meaning that would
    change behaviour; unknown arguments are refused by miniflow's own validation, which
    names the valid ones.
    """
    settings: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in RENAMED:
            settings[RENAMED[name]] = plain(value)
        elif name in IGNORED:
            continue
        elif name in WARNED:
            if value not in (None, False, [], {}):
                problems.warn(name, WARNED[name])
        elif name in CALLBACKS:
            if name in tasks_mod.SETTING_NAMES:  # miniflow's own callbacks, where it has them
                settings[name] = value
            elif value is not None:
                raise problems.pending("callbacks")
        elif name == "sla":
            if value:
                raise problems.unsupported(name)
        elif name in ("depends_on_past", "wait_for_downstream"):
            settings[name] = bool(value)  # miniflow's settings of the same name
        elif name == "deferrable":
            if value:
                raise problems.unsupported("deferrable")
        elif name == "executor":
            if value is not None:
                raise problems.unsupported("executor")
        elif name == "executor_config":
            if value:
                settings.update(executor_config(value))
        elif name == "do_xcom_push":
            continue  # operators that have a result read it themselves
        else:
            settings[name] = value  # miniflow's own setting, or its validation's error
    return settings
