"""Checks that a namespace can take miniflow's pods, made once per namespace.

Without them a namespace that does not exist, a Role that may not create pods
there, or a missing database Secret shows up only task by task: every create
refused, or every worker pod pending on CreateContainerConfigError until the
pending timeout. The launcher checks its default namespace when it starts (a
failure stops the start-up with one `NamespaceUnusable` line) and any other
namespace on its first launch there (a failure fails that launch). Two
requests per namespace, none per task:

- A **dry-run create** (``dryRun=All``) of a worker pod built by
  `pods.build_manifest`: the API server authorizes, validates and admits it
  (Pod Security included) and stores nothing, so no watch ever sees it. A 404
  (``namespaces "x" not found``) or an RBAC 403 makes the namespace unusable; a
  409 (a pod of that name exists) proves as much as a success. An admission
  refusal such as an exceeded quota is the state of the moment, not a setting:
  a warning, and each create reports its own.
- A **GET of the database Secret** worker pods read their database URL from:
  404 makes the namespace unusable. Reading it is a permission the Role may
  lack (the Role in deploy/base/scheduler-rbac.yaml grants it for that one
  Secret, by `resourceNames`): a 403 is a warning
  and the check is skipped.

Retryable failures (no answer, 5xx) are retried, then raised as they are.
"""

from __future__ import annotations

import logging
from typing import Any

from miniflow.errors import ConfigError
from miniflow.launchers import pods
from miniflow.launchers.base import AttemptKey, TaskSpec
from miniflow.launchers.kube_client import (
    AlreadyExists,
    Forbidden,
    KubeClient,
    KubeNotFound,
    KubePermanentError,
    RetryPolicy,
    with_retries,
)

log = logging.getLogger(__name__)

# The key of the pod that is never created: a dry run, never stored.
CHECK_KEY = AttemptKey("miniflow", "namespace-check", "namespace-check", 1)


class NamespaceUnusable(ConfigError):
    """A namespace miniflow would run pods in does not exist, refuses them, or lacks
    the database Secret; the message names the namespace and the reason."""

    def __init__(self, namespace: str, reason: str) -> None:
        super().__init__(f"Kubernetes namespace {namespace!r} cannot be used: {reason}")
        self.namespace = namespace


def check_manifest(namespace: str, defaults: pods.PodDefaults, grace_period: int) -> dict[str, Any]:
    """The worker pod the dry run creates: built exactly as a task's would be."""
    spec = TaskSpec(key=CHECK_KEY, kind="python", fileloc="", pod={"namespace": namespace})
    return pods.build_manifest(spec, defaults, grace_period=grace_period)


async def check_namespace(
    client: KubeClient,
    namespace: str,
    defaults: pods.PodDefaults,
    *,
    retry: RetryPolicy,
    grace_period: int,
) -> None:
    """Raise `NamespaceUnusable` unless pods can be created in `namespace` and its
    database Secret exists (see the module docstring)."""
    manifest = check_manifest(namespace, defaults, grace_period)
    try:
        await with_retries(
            lambda: client.create_pod(namespace, manifest, dry_run=True),
            what=f"dry-run create of a pod in {namespace}",
            policy=retry,
        )
    except AlreadyExists:
        pass  # authorized and admitted up to the name: the namespace takes pods
    except KubeNotFound as exc:
        raise NamespaceUnusable(namespace, f"it does not exist ({exc.message})") from exc
    except Forbidden as exc:
        if exc.denied_by_rbac:
            raise NamespaceUnusable(
                namespace, f"the scheduler may not create pods there ({exc.message})"
            ) from exc
        log.warning("a test pod was refused in namespace %s: %s", namespace, exc.message)
    except KubePermanentError as exc:
        log.warning("a test pod was refused in namespace %s: %s", namespace, exc)
    await _check_secret(client, namespace, defaults, retry)


async def _check_secret(
    client: KubeClient, namespace: str, defaults: pods.PodDefaults, retry: RetryPolicy
) -> None:
    name = defaults.database_secret_name
    try:
        exists = await with_retries(
            lambda: client.secret_exists(name, namespace),
            what=f"get secret {namespace}/{name}",
            policy=retry,
        )
    except Forbidden as exc:
        log.warning(
            "cannot check that the Secret %s (MINIFLOW_DATABASE_SECRET) exists in namespace %s: %s",
            name,
            namespace,
            exc.message,
        )
        return
    if not exists:
        raise NamespaceUnusable(
            namespace,
            f"the Secret {name!r} (MINIFLOW_DATABASE_SECRET) that worker pods read the "
            f"database URL from (key {defaults.database_secret_key!r}) does not exist there",
        )
