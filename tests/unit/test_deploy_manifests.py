"""The manifests under deploy/ are valid Kubernetes objects (strict schema validation)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCS = [
    pytest.param(doc, id=f"{path.name}:{doc['kind']}")
    for path in sorted(DEPLOY.glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc
]


def test_deploy_folder_has_manifests() -> None:
    kinds = {p.values[0]["kind"] for p in DOCS}
    assert {"Deployment", "Role", "RoleBinding", "ServiceAccount", "Secret", "ConfigMap"} <= kinds


@pytest.mark.parametrize("doc", DOCS)
def test_manifest_validates(doc: dict[str, object]) -> None:
    kubernetes_validate.validate(doc, "1.30", strict=True)


def test_scheduler_role_allows_what_the_launcher_uses() -> None:
    role = next(p.values[0] for p in DOCS if p.values[0]["kind"] == "Role")
    verbs = {(r["resources"][0], v) for r in role["rules"] for v in r["verbs"]}
    # get: a pod that left the watch; patch: ownership moving between schedulers.
    for needed in ("create", "list", "watch", "delete", "get", "patch"):
        assert ("pods", needed) in verbs
    assert ("pods/log", "get") in verbs


def test_scheduler_role_may_read_only_the_database_secret() -> None:
    role = next(p.values[0] for p in DOCS if p.values[0]["kind"] == "Role")
    (rule,) = [r for r in role["rules"] if "secrets" in r["resources"]]
    config = next(p.values[0] for p in DOCS if p.values[0]["kind"] == "ConfigMap")
    secret = next(p.values[0] for p in DOCS if p.values[0]["kind"] == "Secret")
    assert rule["verbs"] == ["get"] and rule["resources"] == ["secrets"]
    assert rule["resourceNames"] == [secret["metadata"]["name"]]
    assert config["data"].get("MINIFLOW_DATABASE_SECRET", "miniflow-database") == (
        secret["metadata"]["name"]
    )
