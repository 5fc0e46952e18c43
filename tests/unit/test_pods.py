"""Tests of the pure pod manifest builder; every manifest is schema-validated."""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate
import pytest

from miniflow.authoring.serialized import PodSettings
from miniflow.launchers import pods
from miniflow.launchers.base import AttemptKey, TaskSpec

K8S_VERSIONS = ("1.30", "1.37")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
SECRET_URL = "postgresql://miniflow:s3cret@db/miniflow"

DEFAULTS = pods.PodDefaults(
    namespace="jobs",
    worker_image="ghcr.io/example/miniflow:1.0",
    database_secret_name="miniflow-db",
    database_secret_key="url",
    dags_folder="/opt/dags",
)
KEY = AttemptKey("etl", "scheduled__2024-01-01T00:00:00+00:00", "extract", 1)


def validate(manifest: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:  # keep the failure readable
            pytest.fail(f"invalid for {version}: {exc.message} at {list(exc.path)}")


def build(spec: TaskSpec, defaults: pods.PodDefaults = DEFAULTS) -> dict[str, Any]:
    manifest = pods.build_manifest(spec, defaults)
    validate(manifest)
    return manifest


def main(manifest: dict[str, Any]) -> dict[str, Any]:
    (base,) = [c for c in manifest["spec"]["containers"] if c["name"] == "base"]
    assert isinstance(base, dict)
    return base


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def worker_spec(**kw: Any) -> TaskSpec:
    kw.setdefault("key", KEY)
    return TaskSpec(kind="bash", fileloc="etl.py", bash_command="echo hi", **kw)


def pod_spec(**kw: Any) -> TaskSpec:
    kw.setdefault("image", "alpine:3.20")
    kw.setdefault("key", KEY)
    return TaskSpec(kind="pod", fileloc="etl.py", **kw)


# --- worker pods -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["bash", "python"])
def test_worker_pod_runs_the_worker_with_db_url_from_secret(kind: str) -> None:
    spec = TaskSpec(key=KEY, kind=kind, fileloc="etl.py", env={"A": "1"})  # type: ignore[arg-type]
    manifest = build(spec)
    c = main(manifest)
    assert c["image"] == DEFAULTS.worker_image
    assert c["command"] == [
        "miniflow-worker",
        "run",
        "--dag-id",
        "etl",
        "--run-id",
        KEY.run_id,
        "--task-id",
        "extract",
        "--try",
        "1",
    ]
    env = env_of(c)
    assert env["MINIFLOW_DATABASE_URL"] == {"secretKeyRef": {"name": "miniflow-db", "key": "url"}}
    assert env["MINIFLOW_DAGS_FOLDER"] == "/opt/dags"
    assert env["A"] == "1"
    assert manifest["spec"]["restartPolicy"] == "Never"
    assert manifest["metadata"]["namespace"] == "jobs"
    assert manifest["metadata"]["name"] == pods.pod_name(KEY)


def test_worker_image_override_and_extra_env() -> None:
    defaults = pods.PodDefaults(
        namespace="jobs",
        worker_image="w:1",
        database_secret_name="s",
        extra_env={"TZ": "UTC", "A": "default"},
    )
    manifest = build(worker_spec(pod=PodSettings(image="custom:2"), env={"A": "task"}), defaults)
    c = main(manifest)
    assert c["image"] == "custom:2"
    assert env_of(c)["TZ"] == "UTC"
    assert env_of(c)["A"] == "task"


def test_database_url_is_never_inlined_even_if_user_env_sets_it() -> None:
    spec = worker_spec(env={"MINIFLOW_DATABASE_URL": SECRET_URL, "MINIFLOW_DAGS_FOLDER": "/x"})
    manifest = build(spec)
    assert SECRET_URL not in json.dumps(manifest)
    names = [e["name"] for e in main(manifest)["env"]]
    assert names.count("MINIFLOW_DATABASE_URL") == 1
    assert env_of(main(manifest))["MINIFLOW_DAGS_FOLDER"] == "/opt/dags"


# --- pod tasks ---------------------------------------------------------------


def test_pod_task_runs_the_user_image_without_miniflow() -> None:
    manifest = build(pod_spec(cmds=["sh", "-c"], args=["echo $X"], env={"X": "1"}))
    assert len(manifest["spec"]["containers"]) == 1
    c = main(manifest)
    assert c["image"] == "alpine:3.20"
    assert c["command"] == ["sh", "-c"]
    assert c["args"] == ["echo $X"]
    assert env_of(c) == {"X": "1"}
    assert "miniflow" not in json.dumps(c)


def test_pod_task_without_cmds_uses_the_image_entrypoint() -> None:
    c = main(build(pod_spec()))
    assert "command" not in c and "args" not in c and "env" not in c


def test_pod_task_without_image_is_rejected() -> None:
    with pytest.raises(ValueError, match="no image"):
        pods.build_manifest(pod_spec(image=None), DEFAULTS)


# --- common settings -----------------------------------------------------------


@pytest.mark.parametrize(("timeout", "expected"), [(10, 10), (0.2, 1), (90.5, 91), (3600.0, 3600)])
def test_active_deadline_from_timeout(timeout: float, expected: int) -> None:
    manifest = build(pod_spec(timeout=timeout))
    assert manifest["spec"]["activeDeadlineSeconds"] == expected
    assert isinstance(manifest["spec"]["activeDeadlineSeconds"], int)


def test_no_timeout_no_deadline() -> None:
    assert "activeDeadlineSeconds" not in build(pod_spec())["spec"]


ALL_SETTINGS = PodSettings(
    namespace="team-a",
    resources={"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
    node_selector={"pool": "batch"},
    tolerations=[{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
    affinity={
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    },
    service_account="runner",
    labels={"team": "data"},
    annotations={"owner": "alice@example.com"},
    volumes=[{"name": "scratch", "emptyDir": {}}],
    volume_mounts=[{"name": "scratch", "mountPath": "/scratch"}],
    image_pull_policy="Always",
    image_pull_secrets=["regcred", "other"],
)


@pytest.mark.parametrize("make", [worker_spec, pod_spec])
def test_every_pod_setting_is_applied(make: Any) -> None:
    manifest = build(make(pod=ALL_SETTINGS, annotations={"miniflow/run-type": "manual"}))
    meta, spec, c = manifest["metadata"], manifest["spec"], main(manifest)
    assert meta["namespace"] == "team-a"
    assert meta["labels"]["team"] == "data"
    assert meta["annotations"]["owner"] == "alice@example.com"
    assert meta["annotations"]["miniflow/run-type"] == "manual"
    assert c["resources"] == ALL_SETTINGS["resources"]
    assert c["volumeMounts"] == ALL_SETTINGS["volume_mounts"]
    assert c["imagePullPolicy"] == "Always"
    assert spec["nodeSelector"] == {"pool": "batch"}
    assert spec["tolerations"] == ALL_SETTINGS["tolerations"]
    assert spec["affinity"] == ALL_SETTINGS["affinity"]
    assert spec["serviceAccountName"] == "runner"
    assert spec["volumes"] == ALL_SETTINGS["volumes"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]


def test_defaults_service_account_and_pull_policy() -> None:
    defaults = pods.PodDefaults(
        namespace="n",
        worker_image="w",
        database_secret_name="s",
        service_account="miniflow-worker",
        image_pull_policy="Never",
    )
    manifest = build(worker_spec(), defaults)
    assert manifest["spec"]["serviceAccountName"] == "miniflow-worker"
    assert main(manifest)["imagePullPolicy"] == "Never"
    assert "serviceAccountName" not in build(worker_spec())["spec"]


def test_user_labels_and_annotations_cannot_override_ours() -> None:
    settings = PodSettings(
        labels={pods.MANAGED_BY_LABEL: "someone-else"},
        annotations={"miniflow/task-id": "forged"},
    )
    manifest = build(pod_spec(pod=settings, annotations={"miniflow/run-id": "forged"}))
    assert manifest["metadata"]["labels"][pods.MANAGED_BY_LABEL] == "miniflow"
    assert pods.key_from_annotations(manifest["metadata"]["annotations"]) == KEY


# --- security ----------------------------------------------------------------------


def assert_restricted(manifest: dict[str, Any]) -> None:
    """The "restricted" Pod Security Standard's checks miniflow's pods meet."""
    pod_ctx = manifest["spec"]["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True
    assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in manifest["spec"]["containers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert ctx.get("runAsUser", pod_ctx.get("runAsUser")) != 0
        assert ctx.get("runAsNonRoot") is not False


def test_restricted_security_by_default() -> None:
    for manifest in (build(worker_spec()), build(pod_spec())):
        assert_restricted(manifest)
        assert main(manifest)["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }


def test_every_pod_runs_as_a_numeric_non_root_user() -> None:
    # runAsNonRoot without a numeric user makes the kubelet refuse any image whose USER
    # is root or a name (busybox, alpine, python...): CreateContainerConfigError.
    worker_ctx = build(worker_spec())["spec"]["securityContext"]
    pod_ctx = build(pod_spec())["spec"]["securityContext"]
    assert (worker_ctx["runAsUser"], worker_ctx["runAsGroup"]) == (1000, 1000)
    assert (pod_ctx["runAsUser"], pod_ctx["runAsGroup"]) == (65532, 65532)


def test_security_context_opt_out() -> None:
    manifest = build(pod_spec(pod=PodSettings(security_context=None)))
    assert "securityContext" not in manifest["spec"]
    assert "securityContext" not in main(manifest)


def test_custom_security_context_is_the_container_context() -> None:
    custom = {"runAsUser": 2000, "readOnlyRootFilesystem": True}
    manifest = build(pod_spec(pod=PodSettings(security_context=custom)))
    assert main(manifest)["securityContext"] == custom
    assert "securityContext" not in manifest["spec"]


# --- pod_override --------------------------------------------------------------------


def test_pod_override_merges_last_by_container_name_and_deeply() -> None:
    override: dict[str, Any] = {
        "metadata": {"labels": {"extra": "yes"}},
        "spec": {
            "priorityClassName": "batch-low",
            "securityContext": {"fsGroup": 3000},
            "tolerations": [{"key": "only", "operator": "Exists"}],
            "containers": [
                {"name": "base", "resources": {"limits": {"cpu": "2"}}, "workingDir": "/w"},
                {"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "1"]},
            ],
        },
    }
    settings = PodSettings(
        resources={"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}},
        tolerations=[{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}],
        pod_override=override,
    )
    manifest = build(pod_spec(pod=settings, cmds=["true"]))
    spec = manifest["spec"]
    assert manifest["metadata"]["labels"]["extra"] == "yes"
    assert manifest["metadata"]["labels"][pods.MANAGED_BY_LABEL] == "miniflow"
    assert spec["priorityClassName"] == "batch-low"
    assert spec["securityContext"]["fsGroup"] == 3000
    assert spec["securityContext"]["runAsNonRoot"] is True  # nested dicts merge
    assert spec["tolerations"] == [{"key": "only", "operator": "Exists"}]  # lists replaced
    assert [c["name"] for c in spec["containers"]] == ["base", "sidecar"]
    base = main(manifest)
    assert base["resources"] == {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi", "cpu": "2"}}
    assert base["workingDir"] == "/w"
    assert base["command"] == ["true"] and base["image"] == "alpine:3.20"
    assert override["spec"]["containers"][0] == {  # the input is not mutated
        "name": "base",
        "resources": {"limits": {"cpu": "2"}},
        "workingDir": "/w",
    }


def test_pod_override_can_replace_values_we_set() -> None:
    override = {"spec": {"containers": [{"name": "base", "imagePullPolicy": "Always"}]}}
    manifest = build(pod_spec(pod=PodSettings(pod_override=override)))
    assert main(manifest)["imagePullPolicy"] == "Always"
    assert len(manifest["spec"]["containers"]) == 1


# --- names and labels ----------------------------------------------------------------

ODD_KEYS = [
    KEY,
    AttemptKey("A_b", "r", "t", 1),
    AttemptKey("a-b", "r", "t", 1),
    AttemptKey("a.b", "r", "t", 1),
    AttemptKey("ÄÖÜ_daten", "run 1", "tâche", 1),
    AttemptKey("日本語", "r", "タスク", 2),
    AttemptKey("d" * 200, "r" * 200, "t" * 200, 1),
    AttemptKey("d" * 200, "r" * 200, "t" * 200, 2),
    AttemptKey("d" * 200, "r" * 200, "t" * 199 + "u", 1),
    AttemptKey("UPPER.Case", "manual__2024-01-01T00:00:00.123+00:00", "Group.Task_1", 10**6),
    AttemptKey("-x-", "-", "_", 0),
    AttemptKey("etl", "other-run", "extract", 1),
]


def test_pod_names_are_valid_deterministic_and_distinct() -> None:
    names = [pods.pod_name(k) for k in ODD_KEYS]
    for name in names:
        assert DNS_LABEL.match(name), name
        assert len(name) <= 63
    assert len(set(names)) == len(ODD_KEYS)
    assert names == [pods.pod_name(k) for k in ODD_KEYS]
    assert pods.pod_name(KEY).startswith("etl-extract-")
    assert pods.pod_name(KEY).endswith("-1")


@pytest.mark.parametrize("key", ODD_KEYS, ids=lambda k: str(k)[:30])
def test_labels_are_valid_and_annotations_recover_the_key(key: AttemptKey) -> None:
    manifest = build(pod_spec(key=key))
    for value in manifest["metadata"]["labels"].values():
        assert LABEL_VALUE.match(value) and len(value) <= 63, value
    assert pods.key_from_annotations(manifest["metadata"]["annotations"]) == key
    assert manifest["metadata"]["labels"][pods.LABEL_RUN_HASH] == pods.run_hash(key.run_id)


def test_label_values_keep_valid_ids_and_hash_sanitized_ones() -> None:
    assert pods.label_value("etl") == "etl"
    assert pods.label_value("A_b") == "A_b"
    assert pods.label_value("a b") != pods.label_value("a-b")
    assert pods.label_value("_") != pods.label_value("-")


def test_selector_and_labels_for() -> None:
    assert pods.selector() == "app.kubernetes.io/managed-by=miniflow"
    assert pods.labels_for(KEY)["miniflow/try-number"] == "1"
    assert pods.labels_for(KEY)["miniflow/dag-id"] == "etl"


def test_key_from_annotations_garbled() -> None:
    assert pods.key_from_annotations(None) is None
    assert pods.key_from_annotations({"miniflow/dag-id": "x"}) is None
    broken = {**pods.annotations_for(KEY), "miniflow/try-number": "one"}
    assert pods.key_from_annotations(broken) is None
