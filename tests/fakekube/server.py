"""HTTP routes of the fake Kubernetes API server (aiohttp.web), pods (and reading secrets).

Fakes: ``/api/v1/namespaces/{ns}/pods`` (list/watch/create/deletecollection),
``/api/v1/pods`` (list/watch across namespaces), ``.../pods/{name}``
(get/PUT/PATCH/DELETE), ``.../pods/{name}/status`` (get/PUT/PATCH) and
``.../pods/{name}/log``, ``GET .../secrets/{name}``; errors as ``Status``
bodies; a request log and the fault switches.  Main-resource writes cannot
change status; status writes cannot change spec or metadata.  A create with
``dryRun=All`` is validated and admitted (quota, name taken) but neither
stored nor seen by watches.  Namespaces: a create into a removed one answers
404 ``namespaces "x" not found``, lists/watches there answer 200 and empty.
Authorization: every request is allowed unless ``faults.forbid`` refuses its
verb, answered 403 before anything else, as the RBAC authorizer does.
Deliberately does not fake: authentication, server-side apply, other
resources, API discovery beyond ``/version``.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from . import errors, streams
from .errors import ApiError
from .faults import Faults, RequestLog, RequestRecord
from .kubelet import Kubelet
from .patch import apply_patch
from .selectors import selector_matcher
from .store import Obj, Store, apply_defaults
from .validation import check_spec_update, name_causes, validate_pod

PATH_RE = re.compile(
    r"^/api/v1(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>pods|secrets)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?/?$"
)
IMMUTABLE_META = (
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)


def classify(request: web.Request) -> RequestRecord:
    m = PATH_RE.match(request.path)
    query = dict(request.query)
    rec = RequestRecord(request.method, request.path, query, "other")
    rec.user_agent = request.headers.get("User-Agent", "")
    if not m:
        return rec
    rec.namespace, rec.name, rec.subresource = m.group("ns"), m.group("name"), m.group("sub")
    rec.resource = m.group("resource")
    rec.dry_run = "dryRun" in query
    method = request.method
    if rec.name is None:
        verbs = {
            "GET": "watch" if query.get("watch") in streams.TRUE else "list",
            "POST": "create",
            "DELETE": "deletecollection",
        }
    elif rec.subresource == "log":
        verbs = {"GET": "log"}
    else:
        verbs = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    rec.verb = verbs.get(method, "other")
    return rec


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise errors.bad_request(f"the body of the request could not be decoded: {exc}") from None


class ApiServer:
    def __init__(
        self,
        store: Store,
        faults: Faults,
        kubelet: Kubelet | None,
        requests: RequestLog,
        bookmark_interval: float = 1.0,
        secrets: dict[tuple[str, str], dict[str, str]] | None = None,
    ) -> None:
        self.store, self.faults, self.kubelet = store, faults, kubelet
        self.requests, self.bookmark_interval = requests, bookmark_interval
        self.secrets = secrets if secrets is not None else {}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/version", self.version)
        r.add_get("/api/v1/pods", self.list_or_watch)
        base = "/api/v1/namespaces/{namespace}/pods"
        r.add_get(base, self.list_or_watch)
        r.add_post(base, self.create)
        r.add_delete(base, self.delete_collection)
        r.add_get(base + "/{name}", self.get)
        r.add_put(base + "/{name}", self.replace)
        r.add_patch(base + "/{name}", self.patch)
        r.add_delete(base + "/{name}", self.delete)
        r.add_get(base + "/{name}/status", self.get)
        r.add_put(base + "/{name}/status", self.replace_status)
        r.add_patch(base + "/{name}/status", self.patch_status)
        r.add_get(base + "/{name}/log", self.log)
        r.add_get("/api/v1/namespaces/{namespace}/secrets/{name}", self.get_secret)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        rec = classify(request)
        self.requests.append(rec)
        try:
            self.faults.check_rbac(rec)
            self.faults.check_request(rec.verb)
            resp: web.StreamResponse = await handler(request)
            self.faults.check_request(rec.verb, after_write=True)
        except ApiError as exc:
            resp = web.json_response(exc.status(), status=exc.code, headers=exc.headers)
        except web.HTTPException as exc:
            resp = web.json_response(
                errors.status_body(exc.status, exc.reason.replace(" ", ""), exc.text or ""),
                status=exc.status,
            )
        rec.status = resp.status
        return resp

    # ---------------------------------------------------------------- reads
    async def version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake", "platform": "linux/amd64"}
        )

    async def list_or_watch(self, request: web.Request) -> web.StreamResponse:
        ns = request.match_info.get("namespace")
        q = request.query
        match = selector_matcher(q.get("labelSelector"), q.get("fieldSelector"))
        if q.get("watch") in streams.TRUE:
            return await streams.watch(self, request, ns, match)
        meta: dict[str, Any] = {}
        after = None
        if q.get("continue"):
            try:
                after = tuple(json.loads(base64.urlsafe_b64decode(q["continue"])))
            except ValueError:
                raise errors.bad_request("invalid continue token") from None
        limit = int(q.get("limit") or 0)
        rv, items, rest = self.store.list(ns, match, after=after, limit=limit)
        meta["resourceVersion"] = str(rv)
        if rest:
            last = items[-1]["metadata"]
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps([last["namespace"], last["name"]]).encode()
            ).decode()
            meta["remainingItemCount"] = rest
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return web.json_response(
            {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items}
        )

    def _current(self, request: web.Request) -> Obj:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        pod = self.store.get(name, ns)
        if pod is None:
            raise errors.not_found(name)
        return pod

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(self._current(request))

    async def get_secret(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        data = self.secrets.get((ns, name))
        if data is None or not self.faults.namespace_exists(ns):
            raise errors.not_found(name, kind="secrets")
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        meta = {"name": name, "namespace": ns, "resourceVersion": "1"}
        return web.json_response(
            {
                "kind": "Secret",
                "apiVersion": "v1",
                "metadata": meta,
                "type": "Opaque",
                "data": encoded,
            }
        )

    async def log(self, request: web.Request) -> web.StreamResponse:
        m = request.match_info
        return await streams.pod_log(self, request, m["namespace"], m["name"])

    # --------------------------------------------------------------- writes
    async def create(self, request: web.Request) -> web.Response:
        ns = request.match_info["namespace"]
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a Pod object")
        if body.get("kind") not in (None, "Pod"):
            raise errors.bad_request(f"expected kind Pod, got {body.get('kind')!r}")
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") not in (None, ns):
            raise errors.bad_request(
                "the namespace of the provided object does not match "
                "the namespace sent on the request"
            )
        dry_run = request.query.get("dryRun")
        if dry_run not in (None, "All"):
            raise errors.bad_request(
                f'dryRun: Unsupported value: "{dry_run}": supported values: "All"'
            )
        if not self.faults.namespace_exists(ns):
            raise errors.namespace_not_found(ns)
        name = meta.get("name") or meta.get("generateName") or ""
        self.faults.check_create(name)
        if not meta.get("name") and meta.get("generateName"):
            causes = name_causes(meta["generateName"] + "x")
            if causes:
                raise errors.invalid(meta["generateName"], causes)
            validate_pod({**body, "metadata": {**meta, "name": meta["generateName"] + "x"}})
        else:
            validate_pod(body)
        if dry_run:
            return web.json_response(self.store.prepare_create(body, ns), status=201)
        pod = self.store.create(body, ns)
        return web.json_response(pod, status=201)

    def _check_rv(self, cur: Obj, body: Any) -> None:
        rv = ((body or {}).get("metadata") or {}).get("resourceVersion")
        if rv and rv != cur["metadata"]["resourceVersion"]:
            raise errors.conflict(cur["metadata"]["name"])

    def _check_identity(self, cur: Obj, body: Any) -> None:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a Pod object")
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, cur["metadata"]["name"]):
            raise errors.bad_request("the name of the object does not match the name on the URL")
        if meta.get("namespace") not in (None, cur["metadata"]["namespace"]):
            raise errors.bad_request(
                "the namespace of the provided object does not match "
                "the namespace sent on the request"
            )

    def _write_main(self, cur: Obj, new: Obj) -> Obj:
        new = copy.deepcopy(new)
        meta = new.setdefault("metadata", {})
        for k in IMMUTABLE_META:
            meta.pop(k, None)
            if k in cur["metadata"]:
                meta[k] = cur["metadata"][k]
        new["status"] = cur.get("status", {})
        new["kind"], new["apiVersion"] = "Pod", "v1"
        apply_defaults(new)
        check_spec_update(cur["metadata"]["name"], cur, new)
        return self.store.write(new)

    def _write_status(self, cur: Obj, status: Any) -> Obj:
        new = copy.deepcopy(cur)
        new["status"] = status if isinstance(status, dict) else {}
        return self.store.write(new)

    async def replace(self, request: web.Request) -> web.Response:
        cur, body = self._current(request), await _json_body(request)
        self._check_identity(cur, body)
        self._check_rv(cur, body)
        return web.json_response(self._write_main(cur, body))

    async def replace_status(self, request: web.Request) -> web.Response:
        cur, body = self._current(request), await _json_body(request)
        self._check_identity(cur, body)
        self._check_rv(cur, body)
        return web.json_response(self._write_status(cur, body.get("status")))

    async def _patched(self, request: web.Request) -> tuple[Obj, Obj]:
        cur, body = self._current(request), await _json_body(request)
        if body is None:
            raise errors.bad_request("the body of the request is empty")
        if isinstance(body, dict):
            self._check_rv(cur, body)
        patched = apply_patch(request.content_type, cur, body)
        self._check_identity(cur, patched)
        return cur, patched

    async def patch(self, request: web.Request) -> web.Response:
        cur, patched = await self._patched(request)
        return web.json_response(self._write_main(cur, patched))

    async def patch_status(self, request: web.Request) -> web.Response:
        cur, patched = await self._patched(request)
        return web.json_response(self._write_status(cur, patched.get("status")))

    def _delete_one(self, pod: Obj, grace: int | None) -> Obj:
        meta = pod["metadata"]
        name, ns = meta["name"], meta["namespace"]
        if grace is None:
            grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        running = self.kubelet is not None and self.kubelet.is_running(name, ns)
        if grace <= 0 or not running:
            return self.store.remove(name, ns)
        current = meta.get("deletionGracePeriodSeconds")
        if current is not None and current <= grace:
            return pod
        meta["deletionGracePeriodSeconds"] = grace
        meta["deletionTimestamp"] = (datetime.now(UTC) + timedelta(seconds=grace)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        return self.store.write(pod)

    async def _delete_options(self, request: web.Request) -> tuple[int | None, dict[str, Any]]:
        body = await _json_body(request) or {}
        grace: Any = request.query.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
        try:
            return (int(grace) if grace is not None else None), body.get("preconditions") or {}
        except ValueError:
            raise errors.bad_request(f"invalid gracePeriodSeconds {grace!r}") from None

    async def delete(self, request: web.Request) -> web.Response:
        pod = self._current(request)
        grace, pre = await self._delete_options(request)
        if pre.get("uid") and pre["uid"] != pod["metadata"]["uid"]:
            raise errors.conflict(pod["metadata"]["name"])
        if (
            pre.get("resourceVersion")
            and pre["resourceVersion"] != pod["metadata"]["resourceVersion"]
        ):
            raise errors.conflict(pod["metadata"]["name"])
        return web.json_response(self._delete_one(pod, grace))

    async def delete_collection(self, request: web.Request) -> web.Response:
        ns = request.match_info["namespace"]
        q = request.query
        grace, _ = await self._delete_options(request)
        _, items, _ = self.store.list(
            ns, selector_matcher(q.get("labelSelector"), q.get("fieldSelector"))
        )
        deleted = [self._delete_one(pod, grace) for pod in items]
        return web.json_response(
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": deleted,
            }
        )
