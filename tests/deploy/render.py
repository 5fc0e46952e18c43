"""Rendering deploy/ with the real kustomize (`kubectl kustomize`), and the restricted
Pod Security Standard as a checker of pod specs (the rules of the Kubernetes docs'
"restricted" profile that a manifest can break)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("dev", "production")
MULTI_NAMESPACE = DEPLOY / "components" / "multi-namespace"
POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet")


def kubectl() -> str:
    """kubectl with a kustomize that knows components (v4+); fail, never skip, without."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: scripts/test.sh installs it (apt-get install kubectl)")
    out = subprocess.run(
        [found, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
    )
    version = json.loads(out.stdout).get("kustomizeVersion", "v0")
    if int(version.lstrip("v").split(".")[0]) < 4:
        pytest.fail(f"kubectl's kustomize {version} is too old for components (needs v4+)")
    return found


def render(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize path`, as a list of objects."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def render_with_component(overlay: str, tmp: Path) -> list[dict[str, Any]]:
    """An overlay plus the multi-namespace component, as a user's kustomization adds it."""
    rel = lambda p: os.path.relpath(p, tmp)  # noqa: E731  (kustomize wants relative paths)
    (tmp / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [rel(DEPLOY / "overlays" / overlay)],
                "components": [rel(MULTI_NAMESPACE)],
            }
        )
    )
    return render(tmp)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    return found


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in POD_TEMPLATE_KINDS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


_RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What in a pod spec breaks the restricted Pod Security Standard (empty: none)."""
    bad: list[str] = []
    pod_ctx = spec.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            bad.append(host)
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            bad.append(f"volume {volume['name']}: {sorted(kinds)}")
    if any(s.get("name") not in _SAFE_SYSCTLS for s in pod_ctx.get("sysctls") or []):
        bad.append("unsafe sysctl")
    containers = [*(spec.get("initContainers") or []), *spec["containers"]]
    for c in containers:
        ctx = c.get("securityContext") or {}
        name = c["name"]
        if ctx.get("privileged"):
            bad.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {caps['add']}")
        if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
            bad.append(f"{name}: runAsNonRoot is not true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            bad.append(f"{name}: runAsUser 0")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile {seccomp}")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            bad.append(f"{name}: hostPort")
        if ctx.get("procMount") not in (None, "Default"):
            bad.append(f"{name}: procMount")
    return bad


_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip


def rbac_pairs(rules: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(resource, verb) pairs of RBAC rules (core API group only)."""
    pairs = set()
    for rule in rules:
        assert rule["apiGroups"] == [""], rule
        pairs |= {(r, v) for r in rule["resources"] for v in rule["verbs"]}
    return pairs
