"""The ASGI application: one engine for the server's life, the API and the pages, errors.

The web server is a face beside the CLI: it reads the database the scheduler
writes (never a DAG file) and acts through the store. Every error a user can
cause is a JSON `{"error": {"code", "message"}}` under `/api/v1` and a small
HTML page elsewhere; an unexpected exception shows no detail (it could hold a
connection string) and is logged instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException

from miniflow.config import Config
from miniflow.errors import (
    ConfValidationError,
    MiniflowError,
    NotFound,
    PermanentError,
    ServiceUnavailable,
)
from miniflow.store import engine as store_engine
from miniflow.store.runs import RunExists
from miniflow.web import api, auth, pages

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
API_PREFIX = "/api/v1"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def _status(exc: MiniflowError) -> tuple[int, str]:
    if isinstance(exc, NotFound):
        return 404, "not_found"
    if isinstance(exc, ConfValidationError):
        return 422, "invalid_conf"
    if isinstance(exc, RunExists):
        return 409, "conflict"
    if isinstance(exc, ServiceUnavailable):
        return 503, "unavailable"
    if isinstance(exc, PermanentError):
        return 400, "bad_request"
    return 500, "error"


def error_response(request: Request, status: int, code: str, message: str) -> Response:
    if request.url.path.startswith(API_PREFIX):
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
    return pages.error_page(request, status, message)


def create_app(config: Config, engine: AsyncEngine) -> FastAPI:
    """The whole web server for `config` on `engine` (opened and checked by the caller)."""
    token = auth.token_required(config)
    app = FastAPI(
        title="miniflow",
        version="1",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN
        redoc_url=None,
    )
    app.state.config = config
    app.state.sessions = store_engine.sessionmaker(engine)
    app.state.token = token

    @app.exception_handler(MiniflowError)
    async def miniflow_error(request: Request, exc: MiniflowError) -> Response:
        status, code = _status(exc)
        if status == 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
            return error_response(request, 500, code, "internal error (see the server log)")
        return error_response(request, status, code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_response(request, 422, "invalid_request", "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(request, 500, "internal", "internal error (see the server log)")

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        is_api = path.startswith(API_PREFIX)
        if not auth.is_public(path) and not auth.authenticated(request, token):
            if is_api or request.method != "GET":
                return error_response(
                    request, 401, "unauthorized", "a valid bearer token is required"
                )
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        if request.method == "POST" and path != "/login":
            if config.web_read_only:
                return error_response(
                    request, 403, "read_only", "this server is read-only (MINIFLOW_WEB_READ_ONLY)"
                )
            if is_api and not auth.json_body(request):
                return error_response(
                    request, 415, "json_required", "POST requests to the API need a JSON body"
                )
        response = await call_next(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        # only this server's own script and stylesheet run: an injected tag does nothing
        response.headers.setdefault("Content-Security-Policy", CSP)
        return response

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api.router, prefix=API_PREFIX)
    app.include_router(pages.router)
    return app
