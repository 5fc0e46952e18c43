"""Kubernetes-style API errors for the fake API server.

Fakes: the ``Status`` object the real API server returns for failures
(``kind: Status, apiVersion: v1, status: Failure, message, reason, code,
details``) and the HTTP codes that go with each reason, including the RBAC
authorizer's 403 ("User ... cannot create resource ...") and the 404 of a
create into a namespace that does not exist.  Deliberately does
not fake every reason the real server knows; only the ones miniflow meets.
"""

from __future__ import annotations

from typing import Any

RBAC_USER = "system:serviceaccount:miniflow:miniflow-scheduler"


class ApiError(Exception):
    """An error the fake API server turns into a ``Status`` response."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        name: str | None = None,
        causes: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        retry_after: int | None = None,
        kind: str = "pods",
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.reason = reason
        self.message = message
        self.name = name
        self.causes = causes
        self.headers = dict(headers or {})
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)

    def status(self) -> dict[str, Any]:
        return status_body(
            self.code,
            self.reason,
            self.message,
            name=self.name,
            causes=self.causes,
            retry_after=self.retry_after,
            kind=self.kind,
        )


def status_body(
    code: int,
    reason: str,
    message: str,
    *,
    name: str | None = None,
    causes: list[dict[str, str]] | None = None,
    retry_after: int | None = None,
    kind: str | None = "pods",
) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if name is not None:
        details["name"] = name
    if name is not None or (code == 403 and kind):
        details["kind"] = kind
    if causes:
        details["causes"] = causes
    if retry_after is not None:
        details["retryAfterSeconds"] = retry_after
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def not_found(name: str, kind: str = "pods") -> ApiError:
    return ApiError(404, "NotFound", f'{kind} "{name}" not found', name=name, kind=kind)


def namespace_not_found(namespace: str) -> ApiError:
    """A create into a namespace that does not exist (the NamespaceLifecycle admission)."""
    return not_found(namespace, kind="namespaces")


def forbidden_by_rbac(verb: str, resource: str, namespace: str, name: str | None) -> ApiError:
    """The authorizer's refusal, worded as the real API server words it."""
    what = f'{resource} "{name}"' if name else resource
    return ApiError(
        403,
        "Forbidden",
        f'{what} is forbidden: User "{RBAC_USER}" cannot {verb} resource "{resource}" '
        f'in API group "" in the namespace "{namespace}"',
        name=name,
        kind=resource,
    )


def already_exists(name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'pods "{name}" already exists', name=name)


def conflict(name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on pods "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        name=name,
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(name: str, causes: list[dict[str, str]]) -> ApiError:
    parts = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    return ApiError(422, "Invalid", f'Pod "{name}" is invalid: {parts}', name=name, causes=causes)


def expired(message: str) -> dict[str, Any]:
    return status_body(410, "Expired", message)
