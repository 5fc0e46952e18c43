"""Pod status builders used by the fake kubelet.

Fakes: the shape of ``status`` the real kubelet writes at each lifecycle step
(conditions with lastTransitionTime, containerStatuses with the fields the
kubernetes client requires: name, image, imageID, ready, restartCount, state).
Deliberately reports only the first container; init/sidecar containers and
restarts are not modelled.
"""

from __future__ import annotations

from typing import Any

from .store import now_iso

Obj = dict[str, Any]


def set_condition(
    status: Obj, type_: str, value: str, reason: str | None = None, message: str | None = None
) -> None:
    conds: list[Obj] = status.setdefault("conditions", [])
    cur = next((c for c in conds if c.get("type") == type_), None)
    new: Obj = {"type": type_, "status": value, "lastProbeTime": None}
    if reason:
        new["reason"] = reason
    if message:
        new["message"] = message
    if cur is not None and cur.get("status") == value:
        new["lastTransitionTime"] = cur.get("lastTransitionTime")
    else:
        new["lastTransitionTime"] = now_iso()
    if cur is None:
        conds.append(new)
    else:
        conds[conds.index(cur)] = new


def container_status(pod: Obj, state: Obj, *, ready: bool = False, cid: str = "") -> Obj:
    c = pod["spec"]["containers"][0]
    out: Obj = {
        "name": c["name"],
        "image": c.get("image", ""),
        "imageID": "",
        "ready": ready,
        "started": "running" in state,
        "restartCount": 0,
        "state": state,
    }
    if cid:
        out["containerID"] = cid
        out["imageID"] = f"fake://{c.get('image', '')}"
    return out


def scheduled(pod: Obj, node: str, host_ip: str) -> None:
    pod["spec"]["nodeName"] = node
    st = pod["status"]
    set_condition(st, "PodScheduled", "True")
    set_condition(st, "Initialized", "True")
    set_condition(
        st,
        "Ready",
        "False",
        "ContainersNotReady",
        f"containers with unready status: [{pod['spec']['containers'][0]['name']}]",
    )
    set_condition(st, "ContainersReady", "False", "ContainersNotReady")
    st["hostIP"] = host_ip
    st["hostIPs"] = [{"ip": host_ip}]
    st.setdefault("startTime", now_iso())
    waiting(pod, "ContainerCreating", None)


def unschedulable(pod: Obj, message: str) -> None:
    pod["status"]["phase"] = "Pending"
    set_condition(pod["status"], "PodScheduled", "False", "Unschedulable", message)


def waiting(pod: Obj, reason: str, message: str | None) -> None:
    state: Obj = {"waiting": {"reason": reason}}
    if message:
        state["waiting"]["message"] = message
    pod["status"]["phase"] = "Pending"
    pod["status"]["containerStatuses"] = [container_status(pod, state)]


def running(pod: Obj, pod_ip: str, cid: str) -> None:
    st = pod["status"]
    st["phase"] = "Running"
    st["podIP"] = pod_ip
    st["podIPs"] = [{"ip": pod_ip}]
    set_condition(st, "Ready", "True")
    set_condition(st, "ContainersReady", "True")
    state = {"running": {"startedAt": now_iso()}}
    st["containerStatuses"] = [container_status(pod, state, ready=True, cid=cid)]


def terminated(
    pod: Obj,
    exit_code: int,
    reason: str,
    *,
    phase: str,
    cid: str = "",
    message: str | None = None,
    pod_reason: str | None = None,
    pod_message: str | None = None,
) -> None:
    st = pod["status"]
    prev = (st.get("containerStatuses") or [{}])[0].get("state", {})
    started = (prev.get("running") or {}).get("startedAt") or now_iso()
    term: Obj = {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": started,
        "finishedAt": now_iso(),
    }
    if cid:
        term["containerID"] = cid
    if message:
        term["message"] = message
    st["phase"] = phase
    ready_reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
    set_condition(st, "Ready", "False", ready_reason)
    set_condition(st, "ContainersReady", "False", ready_reason)
    st["containerStatuses"] = [container_status(pod, {"terminated": term}, cid=cid)]
    if pod_reason:
        st["reason"] = pod_reason
    if pod_message:
        st["message"] = pod_message
