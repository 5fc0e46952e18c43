"""The server-rendered UI: DAGs, a DAG's grid, a run, a task's try, pools, health.

Pages are Jinja2 templates over the `browse` views; the only script is
`static/miniflow.js` (refresh while something runs, the list filter). Every
state-changing form is a POST carrying the CSRF token (see `auth`) and answers
with a redirect, so a reload never repeats an action.
"""

from __future__ import annotations

import hmac
import json
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from miniflow.config import Config
from miniflow.errors import MiniflowError, NotFound
from miniflow.store import browse, states
from miniflow.store import engine as store_engine
from miniflow.store.times import rfc3339
from miniflow.web import actions, api, auth, logview, schedule_text, source
from miniflow.web import graph as graph_view
from miniflow.web import grid as grid_view

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)

LIVE_TASK_STATES = frozenset(
    {states.SCHEDULED, states.QUEUED, states.RUNNING, states.UP_FOR_RETRY, states.UP_FOR_RESCHEDULE}
)
GRID_RUNS = 25


def _dt(value: datetime | None) -> str:
    return rfc3339(value, "seconds") if value else "-"


def _q(value: str) -> str:
    return quote(value, safe="")


templates.env.filters["dt"] = _dt
templates.env.filters["dur"] = grid_view.dur
templates.env.filters["q"] = _q
templates.env.filters["in_words"] = schedule_text.describe
templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True)


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    config: Config = request.app.state.config
    csrf = request.cookies.get(auth.CSRF_COOKIE) or auth.new_csrf_token()
    context = {
        **context,
        "csrf": csrf,
        "read_only": config.web_read_only,
        "login_needed": request.app.state.token is not None,
        "path": request.url.path,
    }
    response = templates.TemplateResponse(request, name, context, status_code=status)
    if auth.CSRF_COOKIE not in request.cookies:
        response.set_cookie(auth.CSRF_COOKIE, csrf, httponly=True, samesite="strict")
    return response


def error_page(request: Request, status: int, message: str) -> Response:
    return render(request, "error.html", {"status": status, "message": message}, status)


def _back(target: str) -> RedirectResponse:
    return RedirectResponse(target, status_code=303)


async def _form(request: Request) -> FormData | Response:
    """The POSTed form, or the refusal of a form without the page's CSRF token."""
    form = await request.form()
    submitted = form.get(auth.CSRF_FIELD)
    if not auth.csrf_ok(request, submitted if isinstance(submitted, str) else None):
        return error_page(
            request, 403, "the form's CSRF token is missing or stale: reload the page"
        )
    return form


def _text(form: FormData, key: str) -> str:
    value = form.get(key)
    return value if isinstance(value, str) else ""


def _sessions(request: Request) -> AbstractAsyncContextManager[AsyncSession]:
    return store_engine.transaction(request.app.state.sessions)


# --- DAGs ----------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def dags_page(request: Request, q: str = "", tag: str = "") -> Response:
    async with _sessions(request) as session:
        dags = await browse.list_dags(session)
        errors = await browse.import_errors(session)
    shown = [d for d in dags if api.matches(d, q or None, tag or None)]
    live = any(r.state not in states.RUN_FINISHED for d in dags for r in d.recent_runs)
    return render(
        request,
        "dags.html",
        {"dags": shown, "total": len(dags), "q": q, "tag": tag, "errors": errors, "live": live},
    )


def _param_fields(
    params: dict[str, Any], required: list[str], submitted: FormData | None
) -> list[dict[str, Any]]:
    fields = []
    for key in required:  # typed params without a default: JSON, empty until given
        shown = _text(submitted, f"param.{key}") if submitted is not None else ""
        fields.append({"key": key, "value": shown, "is_text": False})
    for key, default in params.items():
        shown = default if isinstance(default, str) else json.dumps(default)
        if submitted is not None:
            shown = _text(submitted, f"param.{key}")
        fields.append({"key": key, "value": shown, "is_text": isinstance(default, str)})
    return fields


def _graph(dag: browse.DagDetail, grid: browse.Grid) -> Markup:
    """The DAG's graph, coloured by the newest run (linking to its tries)."""
    if not grid.runs:
        return graph_view.svg(dag.task_specs, {}, None)
    newest = grid.runs[-1].run_id
    found = {t: row[newest].state for t, row in grid.cells.items() if newest in row}
    prefix = f"/dags/{_q(dag.summary.dag_id)}/runs/{_q(newest)}/tasks/"
    return graph_view.svg(dag.task_specs, found, prefix)


async def _dag_context(request: Request, dag_id: str, runs: int) -> dict[str, Any]:
    async with _sessions(request) as session:
        dag = await browse.get_dag(session, dag_id)
        grid = await browse.grid(session, dag_id, runs=runs)
        errors = [
            e for e in await browse.import_errors(session) if e.fileloc == dag.summary.fileloc
        ]
    live = any(r.state not in states.RUN_FINISHED for r in grid.runs)
    return {
        "dag": dag,
        "grid": grid,
        "grid_html": grid_view.html(grid, dag_id),
        "graph_svg": _graph(dag, grid),
        "file_errors": errors,
        "live": live,
        "runs": runs,
    }


@router.get("/dags/{dag_id}", response_class=HTMLResponse)
async def dag_page(request: Request, dag_id: str, runs: int = GRID_RUNS) -> Response:
    runs = max(1, min(runs, 100))
    context = await _dag_context(request, dag_id, runs)
    context["fields"] = _param_fields(context["dag"].params, context["dag"].required_params, None)
    return render(request, "dag.html", context)


@router.get("/dags/{dag_id}/code", response_class=HTMLResponse)
async def code_page(request: Request, dag_id: str) -> Response:
    async with _sessions(request) as session:
        dag = await browse.get_dag(session, dag_id)
    config: Config = request.app.state.config
    try:
        text, note = source.read(config.dags_folder, dag.summary.fileloc), None
    except NotFound as exc:
        text, note = "", str(exc)
    return render(request, "code.html", {"dag": dag, "source": text, "note": note})


@router.post("/dags/{dag_id}/pause")
async def pause(request: Request, dag_id: str) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    async with _sessions(request) as session:
        await actions.set_paused(session, dag_id, _text(form, "paused") == "true")
    target = _text(form, "next")
    return _back(target if target.startswith("/") and not target.startswith("//") else "/")


@router.post("/dags/{dag_id}/trigger")
async def trigger(request: Request, dag_id: str) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    async with _sessions(request) as session:
        dag = await browse.get_dag(session, dag_id)
    conf: dict[str, Any] = {}
    problems: list[str] = []
    for key in dag.required_params:  # left empty: not given (validation names it)
        raw = _text(form, f"param.{key}").strip()
        if raw:
            try:
                conf[key] = json.loads(raw)
            except ValueError:
                problems.append(f"{key}: not a JSON value ({raw!r}); a string needs quotes")
    for key, default in dag.params.items():
        raw = _text(form, f"param.{key}")
        if isinstance(default, str):
            conf[key] = raw
            continue
        try:
            conf[key] = json.loads(raw)
        except ValueError:
            problems.append(f"{key}: not a JSON value ({raw!r}); a string needs quotes")
    if not problems:
        try:
            async with _sessions(request) as session:
                run_id = await actions.trigger(session, dag_id, conf)
        except NotFound:
            raise
        except MiniflowError as exc:
            problems.append(str(exc))
        else:
            return _back(f"/dags/{_q(dag_id)}/runs/{_q(run_id)}")
    context = await _dag_context(request, dag_id, GRID_RUNS)
    context["fields"] = _param_fields(dag.params, dag.required_params, form)
    context["trigger_errors"] = problems
    return render(request, "dag.html", context, status=422)


# --- runs, tasks -----------------------------------------------------------------------------


async def run_page(request: Request, dag_id: str, run_id: str) -> Response:
    async with _sessions(request) as session:
        run = await browse.get_run(session, dag_id, run_id)
        tis = await browse.list_task_instances(session, dag_id, run_id)
    live = run.state not in states.RUN_FINISHED
    return render(request, "run.html", {"run": run, "tis": tis, "live": live})


@router.post("/dags/{dag_id}/runs/{run_id:path}/mark-failed")
async def mark_failed(request: Request, dag_id: str, run_id: str) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    async with _sessions(request) as session:
        await actions.mark_failed(session, dag_id, run_id)
    return _back(f"/dags/{_q(dag_id)}/runs/{_q(run_id)}")


@router.post("/dags/{dag_id}/runs/{run_id:path}/tasks/{task_id}/clear")
async def clear(request: Request, dag_id: str, run_id: str, task_id: str) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    async with _sessions(request) as session:
        await actions.clear(
            session, dag_id, run_id, task_id, downstream=_text(form, "downstream") == "true"
        )
    return _back(f"/dags/{_q(dag_id)}/runs/{_q(run_id)}")


@router.get("/dags/{dag_id}/runs/{run_id:path}/tasks/{task_id}", response_class=HTMLResponse)
async def task_page(
    request: Request, dag_id: str, run_id: str, task_id: str, try_number: int | None = None
) -> Response:
    async with _sessions(request) as session:
        ti = await browse.get_task_instance(session, dag_id, run_id, task_id)
        tries = await browse.list_attempts(session, dag_id, run_id, task_id)
    shown = try_number or (tries[-1].try_number if tries else None)
    lines: list[str] = []
    log_note = None
    # a running try's log streams into the page (server-sent events) instead of a refresh
    follow = ti.state == states.RUNNING and shown == ti.try_number
    if shown is None:
        log_note = f"not tried yet (state: {ti.state})"
    elif not follow:
        try:
            lines = await logview.read(request.app.state.config, dag_id, run_id, task_id, shown)
        except NotFound as exc:
            log_note = str(exc)
    live = ti.state in LIVE_TASK_STATES and not follow
    return render(
        request,
        "task.html",
        {
            "follow": follow,
            "ti": ti,
            "tries": tries,
            "shown": shown,
            "lines": lines,
            "log_note": log_note,
            "live": live,
        },
    )


RUNS_PER_PAGE = 50


@router.get("/runs", response_class=HTMLResponse)
async def runs_page(
    request: Request, dag_id: str = "", state: str = "", run_type: str = "", page: int = 1
) -> Response:
    """Every run, newest first, filtered, a page at a time."""
    page = max(page, 1)
    async with _sessions(request) as session:
        found = await browse.list_runs(
            session,
            dag_id=dag_id or None,
            state=state or None,
            run_type=run_type or None,
            limit=RUNS_PER_PAGE,
            offset=(page - 1) * RUNS_PER_PAGE,
        )
    pages = max(1, -(-found.total // RUNS_PER_PAGE))
    filters = {"dag_id": dag_id, "state": state, "run_type": run_type}
    query = "&".join(f"{k}={_q(v)}" for k, v in filters.items() if v)
    live = any(r.state not in states.RUN_FINISHED for r in found.runs)
    return render(
        request,
        "runs.html",
        {"found": found, "page": page, "pages": pages, "query": query, "live": live, **filters},
    )


# --- import errors, pools, health, login -------------------------------------------------------


@router.get("/import-errors", response_class=HTMLResponse)
async def import_errors_page(request: Request) -> Response:
    async with _sessions(request) as session:
        errors = await browse.import_errors(session)
    return render(request, "import_errors.html", {"errors": errors})


@router.get("/pools", response_class=HTMLResponse)
async def pools_page(request: Request) -> Response:
    async with _sessions(request) as session:
        pools = await browse.list_pools(session)
    return render(request, "pools.html", {"pools": pools})


@router.post("/pools")
async def set_pool(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    try:
        slots = int(_text(form, "slots"))
    except ValueError:
        return error_page(
            request, 422, f"slots must be a whole number, got {_text(form, 'slots')!r}"
        )
    async with _sessions(request) as session:
        await actions.set_pool(
            session, _text(form, "name").strip(), slots, _text(form, "description") or None
        )
    return _back("/pools")


SANITY_KINDS = {
    "zombie": "zombies (no heartbeat)",
    "timeout": "timeouts",
    "queued_timeout": "stuck in queued",
    "lost": "lost",
    "orphan": "orphans killed",
    "stopped": "stopped (run marked failed)",
    "adopted": "adopted",
}
"""The sanity loop's kinds of finding, as the health page names them."""


@router.get("/health", response_class=HTMLResponse)
async def health_page(request: Request) -> Response:
    config: Config = request.app.state.config
    async with _sessions(request) as session:
        found = await browse.schedulers(
            session, datetime.now(UTC), timeout=config.scheduler_timeout
        )
    findings = sorted(
        ((f, s.id) for s in found for f in s.recent_findings),
        key=lambda pair: pair[0].at,
        reverse=True,
    )
    context = {"schedulers": found, "findings": findings, "kinds": SANITY_KINDS, "live": True}
    return render(request, "health.html", context)


@router.get("/api/v1/docs", response_class=HTMLResponse)
async def api_docs(request: Request) -> Response:
    """The API's reference, rendered from its OpenAPI schema (Swagger UI needs a CDN)."""
    schema = request.app.openapi()
    operations = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = body.get("schema", {}).get("$ref", "")
            operations.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "description": op.get("description", ""),
                    "params": op.get("parameters", []),
                    "body": ref.rsplit("/", 1)[-1] if ref else None,
                    "responses": sorted(op.get("responses", {})),
                    "tag": (op.get("tags") or [""])[0],
                }
            )
    return render(request, "api_docs.html", {"operations": operations})


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "/") -> Response:
    return render(request, "login.html", {"next": next, "failed": False})


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form
    token: str | None = request.app.state.token
    target = _text(form, "next")
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    given = _text(form, "token")
    if token is None:
        return _back(target)
    if not hmac.compare_digest(given.encode(), token.encode()):
        return render(request, "login.html", {"next": target, "failed": True}, status=401)
    response = _back(target)
    response.set_cookie(
        auth.SESSION_COOKIE, auth.session_value(token), httponly=True, samesite="strict"
    )
    return response


# Last: a run id may contain "/" (`{run_id:path}`), and routes are tried in order, so the
# run page, a prefix of its tasks' pages and actions, must not shadow them.
router.add_api_route(
    "/dags/{dag_id}/runs/{run_id:path}", run_page, methods=["GET"], response_class=HTMLResponse
)
