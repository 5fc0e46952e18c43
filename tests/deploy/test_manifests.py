"""deploy/ rendered by the real kustomize: every object valid against the Kubernetes schema
(strict), every pod template within the restricted Pod Security Standard, and the pieces
the deployment guide relies on where they should be."""

from __future__ import annotations

import copy
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from miniflow.cli import daemon
from miniflow.config import Config, load_config
from tests.deploy.render import (
    DEPLOY,
    OVERLAYS,
    find,
    pod_templates,
    rbac_pairs,
    render,
    render_with_component,
    restricted_violations,
)

K8S_VERSION = "1.30"
Docs = list[dict[str, Any]]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Docs]:
    out = {name: render(DEPLOY / "overlays" / name) for name in OVERLAYS}
    tmp = tmp_path_factory.mktemp("multi-namespace")
    out["production+multi-namespace"] = render_with_component("production", tmp)
    return out


def every(rendered: dict[str, Docs]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, docs in rendered.items() for doc in docs]


def test_every_object_validates_strictly(rendered: dict[str, Docs]) -> None:
    for name, doc in every(rendered):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc}")
    counts = {name: len(docs) for name, docs in rendered.items()}
    assert counts["dev"] > 10 and counts["production"] > 10, counts


def test_every_pod_template_is_restricted(rendered: dict[str, Docs]) -> None:
    seen = set()
    for name, docs in rendered.items():
        for what, spec in pod_templates(docs):
            assert restricted_violations(spec) == [], f"{name}: {what}"
            seen.add(what)
    assert seen == {"Deployment/miniflow-scheduler", "Job/miniflow-migrate", "StatefulSet/postgres"}


def test_the_restricted_checker_sees_each_breach(rendered: dict[str, Docs]) -> None:
    spec = dict(pod_templates(rendered["dev"]))["Deployment/miniflow-scheduler"]
    breaches = {
        "drop": lambda s: s["containers"][0]["securityContext"]["capabilities"].pop("drop"),
        "escalation": lambda s: s["containers"][0]["securityContext"].pop(
            "allowPrivilegeEscalation"
        ),
        "root": lambda s: s["securityContext"].update(runAsUser=0),
        "seccomp": lambda s: s["securityContext"].pop("seccompProfile"),
        "hostPath": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "hostNetwork": lambda s: s.update(hostNetwork=True),
    }
    for what, breach in breaches.items():
        broken = copy.deepcopy(spec)
        breach(broken)
        assert restricted_violations(broken), what


def test_namespace_enforces_the_restricted_standard(rendered: dict[str, Docs]) -> None:
    for docs in rendered.values():
        labels = find(docs, "Namespace", "miniflow")["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_scheduler_deployment(rendered: dict[str, Docs]) -> None:
    for name, docs in rendered.items():
        deployment = find(docs, "Deployment", "miniflow-scheduler")
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        config = find(docs, "ConfigMap", "miniflow-config")["data"]
        port = int(config["MINIFLOW_HTTP_PORT"])
        assert port == 8080
        (named,) = container["ports"]
        assert named["containerPort"] == port
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert spec["serviceAccountName"] == "miniflow-scheduler"
        # The daemon's stop: a round may take STOP_GRACE, then the launcher closes and the
        # instance says goodbye; the kubelet's SIGKILL must come well after.
        assert 3 * daemon.STOP_GRACE <= spec["terminationGracePeriodSeconds"] <= 60
        (db,) = [e for e in container["env"] if e["name"] == "MINIFLOW_DATABASE_URL"]
        assert db["valueFrom"]["secretKeyRef"] == {"name": "miniflow-db-scheduler", "key": "url"}
        assert container["envFrom"] == [{"configMapRef": {"name": "miniflow-config"}}], name


def test_replicas(rendered: dict[str, Docs]) -> None:
    replicas = {n: find(d, "Deployment")["spec"]["replicas"] for n, d in rendered.items()}
    assert replicas == {"dev": 1, "production": 2, "production+multi-namespace": 2}
    assert find(rendered["production"], "PodDisruptionBudget")["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "miniflow-scheduler"}},
    }
    assert find(rendered["dev"], "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_metrics_service_scrapes_the_schedulers_http_port(rendered: dict[str, Docs]) -> None:
    for docs in rendered.values():
        service = find(docs, "Service", "miniflow-scheduler-metrics")
        annotations = service["metadata"]["annotations"]
        port = find(docs, "ConfigMap", "miniflow-config")["data"]["MINIFLOW_HTTP_PORT"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": port,
            "prometheus.io/path": "/metrics",
        }
        (service_port,) = service["spec"]["ports"]
        assert (service_port["port"], service_port["targetPort"]) == (int(port), "http")
        pods = find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pods.items()


def test_no_database_url_outside_secrets(rendered: dict[str, Docs]) -> None:
    for name, doc in every(rendered):
        if doc["kind"] == "Secret":
            continue
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        assert "postgresql+asyncpg://" not in str(doc), where


def test_configmap_holds_only_settings_miniflow_reads(rendered: dict[str, Docs]) -> None:
    known = {f.name for f in fields(Config)} - {"extra", "database_url"}
    for docs in rendered.values():
        data = find(docs, "ConfigMap", "miniflow-config")["data"]
        assert all(key.startswith("MINIFLOW_") for key in data)
        names = {key.removeprefix("MINIFLOW_").lower() for key in data} - {"home"}
        assert names <= known, names - known  # unknown MINIFLOW_* variables are ignored
        # Each value is one miniflow accepts (a typo'd port or format fails at start-up).
        env = {key: value for key, value in data.items() if key != "MINIFLOW_HOME"}
        config = load_config(env)
        assert config.http_port == int(data["MINIFLOW_HTTP_PORT"])
        assert config.http_host == "0.0.0.0"  # the probes and Prometheus come by the pod IP
        assert config.log_format == "json"  # for the cluster's log collector


def test_worker_identity_has_no_token_and_no_rights(rendered: dict[str, Docs]) -> None:
    for docs in rendered.values():
        config = find(docs, "ConfigMap", "miniflow-config")["data"]
        name = config["MINIFLOW_WORKER_SERVICE_ACCOUNT"]
        accounts = [
            d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == name
        ]
        assert accounts and all(a["automountServiceAccountToken"] is False for a in accounts)
        subjects = [
            s["name"]
            for d in docs
            if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
            for s in d["subjects"]
        ]
        assert subjects and set(subjects) == {"miniflow-scheduler"}


def test_role_reads_only_the_worker_database_secret(rendered: dict[str, Docs]) -> None:
    for docs in rendered.values():
        role = find(docs, "Role", "miniflow-scheduler")
        (rule,) = [r for r in role["rules"] if "secrets" in r["resources"]]
        config = find(docs, "ConfigMap", "miniflow-config")["data"]
        assert rule["resourceNames"] == [config["MINIFLOW_DATABASE_SECRET"]]
        assert rule["verbs"] == ["get"]


def test_dev_overlay_runs_its_own_postgres_and_the_example_dags(rendered: dict[str, Docs]) -> None:
    docs = rendered["dev"]
    postgres = find(docs, "StatefulSet", "postgres")["spec"]
    assert postgres["replicas"] == 1
    (claim,) = postgres["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert find(docs, "Service", "postgres")["spec"]["ports"][0]["port"] == 5432
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    assert secrets == {"miniflow-db-owner", "miniflow-db-scheduler", "miniflow-db-worker"}
    config = find(docs, "ConfigMap", "miniflow-config")["data"]
    image = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert config["MINIFLOW_WORKER_IMAGE"] == image  # the image with the examples baked in
    assert config["MINIFLOW_DAGS_FOLDER"] == config["MINIFLOW_POD_DAGS_FOLDER"]
    assert "COPY --chown=1000:1000 ${DAGS} " + config["MINIFLOW_DAGS_FOLDER"] in (
        (Path(DEPLOY).parent / "Dockerfile").read_text()
    )


def test_production_overlay(rendered: dict[str, Docs]) -> None:
    docs = rendered["production"]
    assert not [d for d in docs if d["kind"] in ("Secret", "StatefulSet")]  # external db
    config = find(docs, "ConfigMap", "miniflow-config")["data"]
    assert config["MINIFLOW_POD_CLEANUP"] == "on_success"
    assert config["MINIFLOW_POD_KEEP_FAILED_FOR"] == "600"
    image = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert config["MINIFLOW_WORKER_IMAGE"] == image
    (limits,) = find(docs, "LimitRange")["spec"]["limits"]
    assert limits["type"] == "Container" and limits["defaultRequest"]["cpu"]


def test_multi_namespace_component_binds_pod_rights_only(rendered: dict[str, Docs]) -> None:
    docs = rendered["production+multi-namespace"]
    cluster_role = find(docs, "ClusterRole", "miniflow-scheduler-pods")
    role = find(docs, "Role", "miniflow-scheduler")
    pod_rights = {p for p in rbac_pairs(role["rules"]) if p[0].startswith("pods")}
    assert rbac_pairs(cluster_role["rules"]) == pod_rights
    assert not [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    (binding,) = [
        d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["namespace"] != "miniflow"
    ]
    assert binding["roleRef"]["name"] == "miniflow-scheduler-pods"
    workers = [
        d["metadata"]["namespace"]
        for d in docs
        if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "miniflow-worker"
    ]
    assert sorted(workers) == sorted(["miniflow", binding["metadata"]["namespace"]])


DATABASE_ROLES = {"miniflow_owner", "miniflow_scheduler", "miniflow_worker"}
SUFFIXES = {"counter": ["_total"], "gauge": [""], "histogram": ["", "_bucket", "_count", "_sum"]}


def test_the_guide_names_only_metrics_the_scheduler_serves() -> None:
    from miniflow.scheduler import metrics

    served = {
        family.name + suffix
        for family in metrics.REGISTRY.collect()
        for suffix in SUFFIXES[family.type]
    }
    guide = (DEPLOY.parent / "docs" / "deploy.md").read_text()
    named = set(re.findall(r"\bminiflow_[a-z_]+", guide)) - DATABASE_ROLES
    assert named, "the guide names no metric"
    assert named <= served, sorted(named - served)
    # Every metric is in the guide's table.
    assert {f.name for f in metrics.REGISTRY.collect()} <= {n.removesuffix("_total") for n in named}
