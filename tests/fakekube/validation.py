"""Pod validation the fake API server performs (422 Invalid).

Fakes: the checks miniflow can trip over -- pod name is a DNS-1123 subdomain
(<= 253 chars), labels are valid, at least one container, each container has a
DNS-1123 label name (unique) and an image, and updates may only change the
mutable parts of a pod spec (container images, activeDeadlineSeconds,
tolerations, terminationGracePeriodSeconds).  Deliberately does not run the
full OpenAPI / apiserver validation (resources, volumes, probes ...).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .errors import ApiError, invalid

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def _cause(field: str, message: str, reason: str = "FieldValueInvalid") -> dict[str, str]:
    return {"reason": reason, "message": message, "field": field}


def _required(field: str) -> dict[str, str]:
    return _cause(field, "Required value", "FieldValueRequired")


def name_causes(name: str) -> list[dict[str, str]]:
    if len(name) > 253:
        return [
            _cause(
                "metadata.name",
                f'Invalid value: "{name}": must be no more than 253 characters',
                "FieldValueTooLong",
            )
        ]
    if not DNS1123_SUBDOMAIN.match(name):
        return [
            _cause(
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 '
                "subdomain must consist of lower case alphanumeric characters, '-' or "
                "'.', and must start and end with an alphanumeric character",
            )
        ]
    return []


def _label_causes(labels: Any) -> list[dict[str, str]]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [_cause("metadata.labels", "Invalid value: must be a map")]
    causes = []
    for key, value in labels.items():
        name = key.rsplit("/", 1)[-1]
        if len(name) > 63 or not LABEL_NAME.match(name):
            causes.append(
                _cause(
                    "metadata.labels",
                    f'Invalid value: "{key}": name part must be a valid label name',
                )
            )
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            causes.append(
                _cause(
                    "metadata.labels",
                    f'Invalid value: "{value}": a valid '
                    "label must be an empty string or consist of alphanumeric "
                    "characters, '-', '_' or '.'",
                )
            )
    return causes


def validate_pod(pod: dict[str, Any]) -> None:
    """Raise a 422 ``ApiError`` if *pod* is not acceptable to the API server."""
    meta = pod.get("metadata") or {}
    name = meta.get("name") or ""
    causes = name_causes(name) if name else [_required("metadata.name")]
    causes += _label_causes(meta.get("labels"))
    spec = pod.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not containers or not isinstance(containers, list):
        causes.append(_required("spec.containers"))
    else:
        seen: set[str] = set()
        for i, c in enumerate(containers):
            cname = c.get("name") if isinstance(c, dict) else None
            if not cname:
                causes.append(_required(f"spec.containers[{i}].name"))
            elif not DNS1123_LABEL.match(cname) or len(cname) > 63:
                causes.append(
                    _cause(
                        f"spec.containers[{i}].name",
                        f'Invalid value: "{cname}": must be a DNS-1123 label',
                    )
                )
            elif cname in seen:
                causes.append(
                    _cause(
                        f"spec.containers[{i}].name",
                        f'Duplicate value: "{cname}"',
                        "FieldValueDuplicate",
                    )
                )
            else:
                seen.add(cname)
            if not isinstance(c, dict) or not c.get("image"):
                causes.append(_required(f"spec.containers[{i}].image"))
    if causes:
        raise invalid(name, causes)


def _mask_mutable(spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    for key in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
        spec.pop(key, None)
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                c.pop("image", None)
    return spec


def check_spec_update(name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Pod specs are (mostly) immutable: refuse changes outside the mutable fields."""
    if _mask_mutable(old.get("spec") or {}) != _mask_mutable(new.get("spec") or {}):
        raise ApiError(
            422,
            "Invalid",
            f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change fields '
            "other than `spec.containers[*].image`, `spec.initContainers[*].image`, "
            "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing "
            "tolerations), `spec.terminationGracePeriodSeconds`",
            name=name,
            causes=[
                _cause(
                    "spec",
                    "Forbidden: pod updates may not change fields other than the mutable ones",
                    "FieldValueForbidden",
                )
            ],
        )
    validate_pod(new)
