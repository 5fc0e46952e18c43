"""Pod manifests for attempts: a pure function from a `TaskSpec` to a plain dict.

Nothing here talks to Kubernetes; the manifest is a plain JSON-shaped dict so
it can be unit-tested, validated against the Kubernetes schema and diffed.

Design decisions:

- **Names.** `pod_name` is deterministic in the full `AttemptKey`, so a create
  that returns 409 means "this attempt was already launched" (adopt it, never
  launch twice). The readable part (sanitized dag and task ids) may collide
  after sanitizing ("A_b" and "a-b" both become "a-b"), so a hash of the exact
  key is always part of the name, followed by the try number.
- **Labels vs annotations.** Label values are limited (63 chars, a small
  alphabet), so labels hold sanitized ids (plus a hash when sanitizing changed
  them) for selection only; the exact ids live in annotations and are the only
  source `key_from_annotations` trusts.
- **Two kinds of pod.** Worker tasks (bash, python) run `miniflow-worker` in
  the miniflow image (or a per-task image with miniflow installed); pod tasks
  run the user's image and entrypoint with nothing of miniflow inside. Never a
  pod that starts another pod.
- **Secrets.** The database URL reaches worker pods through a `secretKeyRef`,
  never inlined: manifests show up in `kubectl get -o yaml`, events and logs.
  User env cannot override the reserved `MINIFLOW_*` variables of worker pods.
- **Restricted security by default** (the "restricted" Pod Security Standard).
  Pod: `runAsNonRoot`, a numeric `runAsUser`/`runAsGroup` and seccomp
  `RuntimeDefault`; container: no privilege escalation, all capabilities
  dropped. The numeric user is what makes `runAsNonRoot` usable: without it
  the kubelet refuses every image whose USER is root or a name
  (CreateContainerConfigError), i.e. most public images (busybox, alpine,
  python). Worker pods run as 1000 (the miniflow image's uid); pod tasks as
  65532 (the conventional "nonroot" uid of distroless images), which runs
  common images unchanged unless they write to paths only root may write
  (mount a volume there, or change the user). ``pod["security_context"] =
  None`` opts out (no security context at all); a dict replaces the container
  security context and the task takes control (no pod-level context is added;
  `pod_override` can add one, or change the user: ``{"spec":
  {"securityContext": {"runAsUser": 1001}}}``).
- **pod_override** is merged last and can change anything: dicts merge
  deeply, containers (and init containers) merge by name (the main container
  is "base", as in Airflow), other lists are replaced. Anything but the owner
  label: it is set after the merge, since the launcher's watch selects on it.
- **Owners.** With several schedulers on one namespace each pod carries its
  scheduler's id in the ``miniflow/owner`` label (`label_value` of it), and a
  scheduler selects only its own pods (`selector`). Ownership moves by
  re-labelling a pod (`owner_patch`): a JSON patch, so it can be made
  conditional on the pod (its uid) and on the owner it had when listed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from miniflow.launchers.base import AttemptKey, TaskSpec

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "miniflow"
MAIN_CONTAINER = "base"

LABEL_DAG_ID = "miniflow/dag-id"
LABEL_TASK_ID = "miniflow/task-id"
LABEL_TRY = "miniflow/try-number"
LABEL_MAP_INDEX = "miniflow/map-index"  # only on the pods of mapped instances
LABEL_RUN_HASH = "miniflow/run-hash"
LABEL_OWNER = "miniflow/owner"

ANNOTATION_DAG_ID = "miniflow/dag-id"
ANNOTATION_RUN_ID = "miniflow/run-id"
ANNOTATION_TASK_ID = "miniflow/task-id"
ANNOTATION_TRY = "miniflow/try-number"
ANNOTATION_MAP_INDEX = "miniflow/map-index"

DATABASE_URL_ENV = "MINIFLOW_DATABASE_URL"
DAGS_FOLDER_ENV = "MINIFLOW_DAGS_FOLDER"
WORKER_UID = 1000
POD_TASK_UID = 65532

_MAX_NAME = 63
_NAME_HASH_LEN = 10
_LABEL_HASH_LEN = 8
_INVALID_NAME_CHARS = re.compile(r"[^a-z0-9]+")
_INVALID_LABEL_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")


@dataclass(frozen=True, slots=True)
class PodDefaults:
    """Cluster-wide pod settings; per-task `PodSettings` override them."""

    namespace: str
    """Namespace of every pod whose task does not name one."""

    worker_image: str
    """Image with miniflow installed, running `miniflow-worker` (bash/python tasks)."""

    database_secret_name: str
    """Secret holding the database URL for worker pods (never inlined in manifests)."""

    database_secret_key: str = "url"
    """Key of the database URL inside `database_secret_name`."""

    dags_folder: str = "/opt/miniflow/dags"
    """Path of the DAGs folder inside the worker image."""

    service_account: str | None = None
    """Service account of the pods; None = the namespace's default."""

    image_pull_policy: str = "IfNotPresent"
    """Default image pull policy: Always, IfNotPresent or Never."""

    extra_env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment of worker pods (pod tasks get exactly their own env)."""


def _short_hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _key_hash(key: AttemptKey, length: int) -> str:
    parts: list[object] = [key.dag_id, key.run_id, key.task_id, key.try_number]
    if key.map_index >= 0:  # unmapped keys hash as before: their pods keep their names
        parts.append(key.map_index)
    return _short_hash(json.dumps(parts), length)


def _dns_part(value: str) -> str:
    return _INVALID_NAME_CHARS.sub("-", value.lower()).strip("-")


def pod_name(key: AttemptKey) -> str:
    """Deterministic DNS-1123 label for an attempt: `<dag>-<task>-<hash>-<try>`, and
    `<dag>-<task>-<hash>-<map_index>-<try>` for a mapped instance.

    The hash covers the exact key (run id included), so distinct keys never
    share a name even when their sanitized ids do.
    """
    suffix = f"{_key_hash(key, _NAME_HASH_LEN)}-{key.try_number}"
    if key.map_index >= 0:
        suffix = f"{_key_hash(key, _NAME_HASH_LEN)}-{key.map_index}-{key.try_number}"
    budget = _MAX_NAME - len(suffix) - 1
    readable = "-".join(p for p in (_dns_part(key.dag_id), _dns_part(key.task_id)) if p)
    readable = readable[:budget].strip("-")
    if not readable or not readable[0].isalpha():
        # Names starting with a letter read better and are valid everywhere.
        readable = ("mf-" + readable)[:budget].strip("-")
    return f"{readable}-{suffix}"


def label_value(value: str) -> str:
    """`value` if it is a valid label value, else a sanitized prefix plus a hash."""
    if _LABEL_VALUE.match(value):
        return value
    budget = _MAX_NAME - _LABEL_HASH_LEN - 1
    cleaned = _INVALID_LABEL_CHARS.sub("-", value)[:budget].strip("-_.")
    digest = _short_hash(value, _LABEL_HASH_LEN)
    return f"{cleaned}-{digest}" if cleaned else digest


def run_hash(run_id: str) -> str:
    """Short stable hash of a run id, used as a label (run ids are long and free-form)."""
    return _short_hash(run_id, _NAME_HASH_LEN)


def selector(owner: str | None = None) -> str:
    """Label selector matching every pod miniflow manages; with `owner` (a scheduler
    id), only the pods that scheduler owns."""
    managed = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
    return managed if owner is None else f"{managed},{LABEL_OWNER}={label_value(owner)}"


def owners_selector(owners: Collection[str]) -> str:
    """Label selector matching the managed pods of any of `owners` (scheduler ids)."""
    values = ",".join(sorted({label_value(o) for o in owners}))
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{LABEL_OWNER} in ({values})"


def unowned_selector() -> str:
    """Label selector matching the managed pods with no owner label at all."""
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},!{LABEL_OWNER}"


def owner_of(pod: Mapping[str, Any]) -> str | None:
    """The owner label value of a pod as the API serves it (None: no owner label)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    value = labels.get(LABEL_OWNER)
    return str(value) if value is not None else None


def owner_patch(
    owner: str, *, uid: str | None = None, previous: str | None = None
) -> list[dict[str, Any]]:
    """JSON patch giving a pod to `owner`; with `uid` and `previous` (an owner label
    value), it applies only to that pod while it still carries that label (else the
    API server refuses it: 422)."""
    path = "/metadata/labels/" + LABEL_OWNER.replace("~", "~0").replace("/", "~1")
    ops: list[dict[str, Any]] = []
    if uid is not None:
        ops.append({"op": "test", "path": "/metadata/uid", "value": uid})
    if previous is not None:
        ops.append({"op": "test", "path": path, "value": previous})
    ops.append({"op": "add", "path": path, "value": label_value(owner)})
    return ops


def labels_for(key: AttemptKey) -> dict[str, str]:
    """Labels miniflow puts on the pod of `key` (selection only; ids may be hashed)."""
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY,
        LABEL_DAG_ID: label_value(key.dag_id),
        LABEL_TASK_ID: label_value(key.task_id),
        LABEL_TRY: str(key.try_number),
        LABEL_RUN_HASH: run_hash(key.run_id),
    }
    if key.map_index >= 0:
        labels[LABEL_MAP_INDEX] = str(key.map_index)
    return labels


def annotations_for(key: AttemptKey) -> dict[str, str]:
    """Annotations carrying the exact attempt key (what the launcher trusts)."""
    annotations = {
        ANNOTATION_DAG_ID: key.dag_id,
        ANNOTATION_RUN_ID: key.run_id,
        ANNOTATION_TASK_ID: key.task_id,
        ANNOTATION_TRY: str(key.try_number),
    }
    if key.map_index >= 0:
        annotations[ANNOTATION_MAP_INDEX] = str(key.map_index)
    return annotations


def key_from_annotations(annotations: Mapping[str, str] | None) -> AttemptKey | None:
    """The `AttemptKey` written by `annotations_for`, or None if absent/garbled."""
    if not annotations:
        return None
    try:
        return AttemptKey(
            dag_id=annotations[ANNOTATION_DAG_ID],
            run_id=annotations[ANNOTATION_RUN_ID],
            task_id=annotations[ANNOTATION_TASK_ID],
            try_number=int(annotations[ANNOTATION_TRY]),
            map_index=int(annotations.get(ANNOTATION_MAP_INDEX, "-1")),
        )
    except (KeyError, ValueError):
        return None


def namespace_for(spec: TaskSpec, defaults: PodDefaults) -> str:
    """Namespace the pod of `spec` lives in."""
    return spec.pod.get("namespace") or defaults.namespace


def worker_command(key: AttemptKey) -> list[str]:
    """Command of a worker pod: the worker finds the task through the database."""
    return [
        "miniflow-worker",
        "run",
        "--dag-id",
        key.dag_id,
        "--run-id",
        key.run_id,
        "--task-id",
        key.task_id,
        "--try",
        str(key.try_number),
        *(["--map-index", str(key.map_index)] if key.map_index >= 0 else []),
    ]


def _env_list(env: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in env.items()]


def _worker_env(spec: TaskSpec, defaults: PodDefaults) -> list[dict[str, Any]]:
    reserved = {DATABASE_URL_ENV, DAGS_FOLDER_ENV}
    user = {**defaults.extra_env, **spec.env}
    env: list[dict[str, Any]] = [
        {
            "name": DATABASE_URL_ENV,
            "valueFrom": {
                "secretKeyRef": {
                    "name": defaults.database_secret_name,
                    "key": defaults.database_secret_key,
                }
            },
        },
        {"name": DAGS_FOLDER_ENV, "value": defaults.dags_folder},
    ]
    env.extend(_env_list({k: v for k, v in user.items() if k not in reserved}))
    return env


def _security_contexts(
    spec: TaskSpec, *, worker: bool
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(pod securityContext, container securityContext) per the module docstring."""
    if "security_context" in spec.pod:
        custom = spec.pod["security_context"]
        if custom is None:
            return None, None
        return None, copy.deepcopy(custom)
    uid = WORKER_UID if worker else POD_TASK_UID
    pod_ctx: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container_ctx: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    return pod_ctx, container_ctx


def build_manifest(
    spec: TaskSpec,
    settings: PodDefaults,
    *,
    grace_period: int | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    """The pod manifest (plain dict) that runs the attempt `spec.key`.

    `grace_period` becomes ``terminationGracePeriodSeconds`` (None: Kubernetes'
    default, 30 s): the time between SIGTERM and SIGKILL when the pod is deleted
    or its ``activeDeadlineSeconds`` passes. `owner` (a scheduler id) becomes the
    owner label.
    """
    pod = spec.pod
    worker = spec.kind != "pod"
    if not worker and not spec.image:
        raise ValueError(f"pod task {spec.key} has no image")

    container: dict[str, Any] = {"name": MAIN_CONTAINER}
    if worker:
        container["image"] = pod.get("image") or settings.worker_image
        container["command"] = worker_command(spec.key)
        container["env"] = _worker_env(spec, settings)
    else:
        container["image"] = spec.image
        if spec.cmds is not None:
            container["command"] = list(spec.cmds)
        if spec.args is not None:
            container["args"] = list(spec.args)
        if spec.env:
            container["env"] = _env_list(spec.env)
        if spec.push_result:
            # Said explicitly (they are the defaults): the result is read from
            # `state.terminated.message`, which must be the file's content, never the
            # log's tail (`FallbackToLogsOnError`).
            container["terminationMessagePath"] = spec.result_file
            container["terminationMessagePolicy"] = "File"
    container["imagePullPolicy"] = pod.get("image_pull_policy") or settings.image_pull_policy
    if "resources" in pod:
        container["resources"] = copy.deepcopy(pod["resources"])
    if pod.get("volume_mounts"):
        container["volumeMounts"] = copy.deepcopy(pod["volume_mounts"])
    pod_ctx, container_ctx = _security_contexts(spec, worker=worker)
    if container_ctx is not None:
        container["securityContext"] = container_ctx

    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if grace_period is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace_period
    if spec.timeout is not None:
        pod_spec["activeDeadlineSeconds"] = max(1, math.ceil(spec.timeout))
    service_account = pod.get("service_account") or settings.service_account
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    if pod.get("node_selector"):
        pod_spec["nodeSelector"] = dict(pod["node_selector"])
    if pod.get("tolerations"):
        pod_spec["tolerations"] = copy.deepcopy(pod["tolerations"])
    if pod.get("affinity"):
        pod_spec["affinity"] = copy.deepcopy(pod["affinity"])
    if pod.get("volumes"):
        pod_spec["volumes"] = copy.deepcopy(pod["volumes"])
    if pod.get("image_pull_secrets"):
        pod_spec["imagePullSecrets"] = [{"name": n} for n in pod["image_pull_secrets"]]
    if pod_ctx is not None:
        pod_spec["securityContext"] = pod_ctx

    # Ours are applied last: user labels cannot break selection or key recovery.
    labels = {**pod.get("labels", {}), **labels_for(spec.key)}
    annotations = {
        **pod.get("annotations", {}),
        **spec.annotations,
        **annotations_for(spec.key),
    }
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(spec.key),
            "namespace": namespace_for(spec, settings),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": pod_spec,
    }
    if pod.get("pod_override"):
        manifest = merge_override(manifest, pod["pod_override"])
    if owner is not None:
        manifest["metadata"].setdefault("labels", {})[LABEL_OWNER] = label_value(owner)
    return manifest


_MERGE_BY_NAME = frozenset({"containers", "initContainers"})


def merge_override(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base` (see the module docstring)."""
    return _merge(base, override, path=())


def _merge(
    base: Mapping[str, Any], override: Mapping[str, Any], *, path: tuple[str, ...]
) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for k, value in override.items():
        current = merged.get(k)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[k] = _merge(current, value, path=(*path, k))
        elif path == ("spec",) and k in _MERGE_BY_NAME and isinstance(current, list):
            merged[k] = _merge_named(current, value)
        else:
            merged[k] = copy.deepcopy(value)
    return merged


def _merge_named(base: list[Any], override: Any) -> Any:
    if not isinstance(override, list):
        return copy.deepcopy(override)
    result = copy.deepcopy(base)
    index = {c.get("name"): i for i, c in enumerate(result) if isinstance(c, dict)}
    for item in override:
        name = item.get("name") if isinstance(item, dict) else None
        if name is not None and name in index:
            result[index[name]] = _merge(result[index[name]], item, path=("container",))
        else:
            result.append(copy.deepcopy(item))
    return result
