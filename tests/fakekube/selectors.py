"""Label and field selectors, parsed and matched like the Kubernetes API server.

Fakes: label selectors (``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``,
``a notin (x)``, ``a``, ``!a``, ``a>1``, ``a<1``; ``!=`` and ``notin`` match
objects lacking the label) and pod field selectors (``=``, ``==``, ``!=``)
over the fields the real server indexes for pods.  Deliberately lax about
label key/value syntax beyond what is needed to reject obvious garbage.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import bad_request

Matcher = Callable[[dict[str, Any]], bool]

POD_FIELDS = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "spec.nodeName": ("spec", "nodeName"),
    "spec.restartPolicy": ("spec", "restartPolicy"),
    "spec.schedulerName": ("spec", "schedulerName"),
    "spec.serviceAccountName": ("spec", "serviceAccountName"),
    "spec.hostNetwork": ("spec", "hostNetwork"),
    "status.phase": ("status", "phase"),
    "status.podIP": ("status", "podIP"),
    "status.nominatedNodeName": ("status", "nominatedNodeName"),
}

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")
_OP_RE = re.compile(rf"^\s*({_KEY})\s*(==|!=|=|>|<)\s*(\S*)\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms, depth, cur = [], 0, []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return [t for t in terms if t.strip()]


def _check_value(value: str, selector: str) -> str:
    if not re.fullmatch(_VALUE, value) or len(value) > 63:
        raise bad_request(f"unable to parse requirement: invalid label value: {value!r}")
    return value


def _label_term(term: str, selector: str) -> Callable[[dict[str, str]], bool]:
    m = _SET_RE.match(term)
    if m:
        key, op = m.group(1), m.group(3)
        values = {_check_value(v.strip(), selector) for v in m.group(4).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    m = _OP_RE.match(term)
    if m:
        key, op, value = m.group(1), m.group(3), m.group(4)
        if op in ("=", "=="):
            value = _check_value(value, selector)
            return lambda labels: labels.get(key) == value
        if op == "!=":
            value = _check_value(value, selector)
            return lambda labels: labels.get(key) != value
        try:
            bound = int(value)
        except ValueError:
            raise bad_request(
                f"unable to parse requirement: for 'gt', 'lt' operators, the value must be "
                f"an integer: {value!r}"
            ) from None

        def cmp(labels: dict[str, str]) -> bool:
            try:
                have = int(labels[key])
            except (KeyError, ValueError):
                return False
            return have > bound if op == ">" else have < bound

        return cmp
    m = _EXISTS_RE.match(term)
    if m:
        negate, key = m.group(1) == "!", m.group(2)
        if negate:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise bad_request(f"unable to parse requirement: {term.strip()!r} in selector {selector!r}")


def parse_label_selector(selector: str | None) -> Matcher:
    """Return a predicate over a whole object matching its ``metadata.labels``."""
    if not selector or not selector.strip():
        return lambda obj: True
    terms = [_label_term(t, selector) for t in _split_terms(selector)]

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(t(labels) for t in terms)

    return match


def _field_value(obj: dict[str, Any], path: tuple[str, str]) -> str:
    value = (obj.get(path[0]) or {}).get(path[1])
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_field_selector(selector: str | None) -> Matcher:
    """Return a predicate implementing a pod field selector."""
    if not selector or not selector.strip():
        return lambda obj: True
    checks: list[Callable[[dict[str, Any]], bool]] = []
    for term in _split_terms(selector):
        m = re.match(r"^\s*([A-Za-z.]+)\s*(==|!=|=)\s*(.*?)\s*$", term)
        if not m:
            raise bad_request(f"invalid selector: {selector!r}; can't understand {term!r}")
        field, op, value = m.groups()
        if field not in POD_FIELDS:
            raise bad_request(
                f'"{field}" is not a known field selector: only "{", ".join(POD_FIELDS)}"'
            )
        path = POD_FIELDS[field]
        if op == "!=":
            checks.append(lambda o, p=path, v=value: _field_value(o, p) != v)
        else:
            checks.append(lambda o, p=path, v=value: _field_value(o, p) == v)
    return lambda obj: all(c(obj) for c in checks)


def selector_matcher(label_selector: str | None, field_selector: str | None) -> Matcher:
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector)
    return lambda obj: labels(obj) and fields(obj)
