"""`KubernetesPodOperator` as one miniflow `Pod` task: one pod per task.

Under Airflow's KubernetesExecutor this operator costs two pods (a worker pod that
starts and watches the task's pod); here the scheduler launches the task's pod itself.
Kubernetes model objects (`k8s.V1EnvVar`, `k8s.V1ResourceRequirements`, ...) are
accepted as objects or as dicts.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from miniflow.airflow_compat import arguments as mapping
from miniflow.airflow_compat import problems
from miniflow.airflow_compat.operators import OperatorMixin, _defaults
from miniflow.authoring.tasks import Pod

plain = mapping.plain

XCOM_FILE = "/airflow/xcom/return.json"
"""Where a KubernetesPodOperator(do_xcom_push=True) container writes its result."""

# KubernetesPodOperator argument -> miniflow pod setting.
_POD_SETTINGS = {
    "namespace": "namespace",
    "labels": "labels",
    "annotations": "annotations",
    "node_selector": "node_selector",
    "tolerations": "tolerations",
    "affinity": "affinity",
    "volumes": "volumes",
    "volume_mounts": "volume_mounts",
    "service_account_name": "service_account",
    "image_pull_policy": "image_pull_policy",
    "container_resources": "resources",
}
# Accepted and ignored: how Airflow reaches the cluster and handles the pod afterwards.
_IGNORED = frozenset({
    "get_logs", "log_events_on_failure", "in_cluster", "config_file", "cluster_context",
    "kubernetes_conn_id", "startup_timeout_seconds", "startup_check_interval_seconds",
    "reattach_on_restart", "is_delete_operator_pod", "name", "random_name_suffix",
    "poll_interval", "logging_interval", "container_logs", "base_container_name",
    "skip_on_exit_code", "progress_callback", "callbacks", "labels_as_selectors",
})  # fmt: skip


def _env(value: Any) -> dict[str, str]:
    """`env_vars`: a dict, or a list of `V1EnvVar` (or dicts) with plain values."""
    items = plain(value)
    if isinstance(items, dict):
        return {str(k): str(v) for k, v in items.items()}
    env: dict[str, str] = {}
    for item in items or []:
        if not isinstance(item, dict) or "valueFrom" in item:
            raise problems.unsupported(
                "env_vars valueFrom",
                "environment values from secrets or fields are not mapped: use "
                "executor-independent `env_from` through `pod_override`, or plain values",
            )
        env[str(item["name"])] = str(item.get("value", ""))
    return env


def _pull_secrets(value: Any) -> list[str]:
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    return [item["name"] if isinstance(item, dict) else str(item) for item in plain(value)]


class KubernetesPodOperator(OperatorMixin, Pod):
    template_fields: Sequence[str] = ("image", "cmds", "arguments", "env_vars")

    def __init__(
        self,
        *,
        task_id: str,
        image: str | None = None,
        cmds: list[str] | None = None,
        arguments: list[str] | None = None,
        env_vars: Any = None,
        do_xcom_push: bool = False,
        on_finish_action: str = "delete_pod",
        **kwargs: Any,
    ) -> None:
        if do_xcom_push:
            if "push_result" not in inspect.signature(Pod.__init__).parameters:
                raise problems.pending("do_xcom_push")
            # Airflow's container writes its XCom to /airflow/xcom/return.json for a
            # sidecar to read; here that file is the termination message (no sidecar).
            kwargs["push_result"] = True
            kwargs["result_file"] = XCOM_FILE
        for text in [*(cmds or []), *(arguments or []), image]:
            if isinstance(text, str) and "xcom_push(" in text:
                raise problems.unsupported(
                    "xcom_push in a template",
                    "a pod task's templates can pull XComs but not push them (only a Bash "
                    "task's can): push from a Python task, or use the pod's result "
                    "(do_xcom_push=True)",
                )
        if on_finish_action not in ("delete_pod", "delete_succeeded_pod"):
            problems.warn("on_finish_action", "miniflow cleans up task pods itself")
        given = _defaults(kwargs)
        pod: dict[str, Any] = {}
        override: dict[str, Any] = {}
        for name in list(given):
            value = given[name]
            if name in _POD_SETTINGS:
                given.pop(name)
                if value is not None:
                    pod[_POD_SETTINGS[name]] = plain(value)
            elif name in _IGNORED:
                given.pop(name)
            elif name == "image_pull_secrets":
                given.pop(name)
                if value:
                    pod["image_pull_secrets"] = _pull_secrets(value)
            elif name in ("security_context", "container_security_context"):
                given.pop(name)
                if value is not None:
                    where = "spec" if name == "security_context" else "container"
                    if where == "spec":
                        override.setdefault("spec", {})["securityContext"] = plain(value)
                    else:
                        pod["security_context"] = plain(value)
            elif name in ("env_from", "init_containers", "host_aliases", "priority_class_name",
                          "hostnetwork", "dnspolicy", "schedulername", "full_pod_spec",
                          "termination_grace_period", "ports"):  # fmt: skip
                given.pop(name)
                if value:
                    _override(override, name, plain(value))
            elif name in ("secrets", "pod_template_file", "pod_template_dict"):
                given.pop(name)
                if value:
                    raise problems.unsupported(
                        "Secret" if name == "secrets" else name,
                        None
                        if name == "secrets"
                        else "give the pod's settings as arguments "
                        "or executor_config={'pod_override': ...}",
                    )
        push = given.pop("push_result", None)
        result_file = given.pop("result_file", None)
        settings = mapping.task_settings(given)
        if push:
            settings["push_result"] = True
            settings["result_file"] = result_file
        if override:
            settings["pod_override"] = mapping.executor_config({"pod_override": override})[
                "pod_override"
            ]
        self.cmds = cmds
        self.arguments = arguments
        self.env_vars = env_vars
        super().__init__(
            task_id,
            image=image,
            command=cmds,
            args=arguments,
            env=_env(env_vars) if env_vars is not None else None,
            **pod,
            **settings,
        )

    @classmethod
    def mapped_fields(cls) -> dict[str, str] | None:
        return {"image": "image", "cmds": "command", "arguments": "args", "env_vars": "env"}

    @classmethod
    def required_fields(cls, fixed: dict[str, Any]) -> list[str]:
        return [] if fixed.get("image") else ["image"]

    @classmethod
    def placeholders(cls, names: list[str], fixed: dict[str, Any]) -> dict[str, Any]:
        return {"image": "mapped"} if "image" in names else {}

    def clear_placeholders(self, names: list[str]) -> None:
        if "image" in names:
            self.image = ""

    @classmethod
    def mapped_item(cls, name: str, value: Any, fixed: dict[str, Any]) -> Any:
        if name == "env_vars":
            return _env(value)
        return plain(value) if name in ("cmds", "arguments") else value


def _override(override: dict[str, Any], name: str, value: Any) -> None:
    """KubernetesPodOperator arguments with no miniflow setting, as a pod_override."""
    spec = override.setdefault("spec", {})
    if name == "full_pod_spec":
        for key, item in value.items():
            override[key] = item
        return
    base = next((c for c in spec.get("containers", []) if c.get("name") == "base"), None)
    if base is None:
        base = {"name": "base"}
        spec.setdefault("containers", []).append(base)
    match name:
        case "env_from":
            base["envFrom"] = value
        case "ports":
            base["ports"] = value
        case "init_containers":
            spec["initContainers"] = value
        case "host_aliases":
            spec["hostAliases"] = value
        case "priority_class_name":
            spec["priorityClassName"] = value
        case "hostnetwork":
            spec["hostNetwork"] = value
        case "dnspolicy":
            spec["dnsPolicy"] = value
        case "schedulername":
            spec["schedulerName"] = value
        case "termination_grace_period":
            spec["terminationGracePeriodSeconds"] = value
