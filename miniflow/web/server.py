"""Serving the web app with uvicorn: alone (`miniflow webserver`) or beside the scheduler
(`miniflow standalone`), in the caller's event loop and on the caller's engine.

The socket is bound here, before uvicorn starts, so a port in use is one clear
error (not uvicorn's exit from inside the loop), and port 0 picks a free port.
The URL is printed once the server listens: a user, or a test, waits for that
line rather than for a delay. Embedded, the server leaves signals to its host.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from miniflow.cli import wiring
from miniflow.config import Config
from miniflow.errors import ConfigError
from miniflow.web import app as web_app
from miniflow.web import auth

URL_PREFIX = "miniflow web UI: "
"""What the line announcing the URL starts with."""
GRACEFUL_SHUTDOWN = 3
"""Seconds open requests get to finish when the server stops."""


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, embedded: bool) -> None:
        super().__init__(config)
        self.embedded = embedded
        self.ready = asyncio.Event()
        self.url = ""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if self.embedded:  # standalone handles SIGINT/SIGTERM itself and stops us
            yield
            return
        with super().capture_signals():
            yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
            print(f"{URL_PREFIX}{self.url}", flush=True)
            self.ready.set()


def listen(config: Config) -> socket.socket:
    """A socket bound to MINIFLOW_WEB_HOST:MINIFLOW_WEB_PORT; ConfigError if it cannot be."""
    host, port = config.web_host, config.web_port
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"MINIFLOW_WEB_HOST {host!r} cannot be used: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"the web server cannot listen on {host}:{port} "
            f"(MINIFLOW_WEB_HOST / MINIFLOW_WEB_PORT): {exc.strerror or exc}"
        ) from None
    return sock


def _server(config: Config, engine: AsyncEngine, *, embedded: bool) -> _Server:
    app = web_app.create_app(config, engine)
    uv_config = uvicorn.Config(
        app,
        log_level="warning",
        log_config=None,  # uvicorn's records go to the root handler: MINIFLOW_LOG_FORMAT's
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )
    return _Server(uv_config, embedded=embedded)


async def serve(config: Config) -> int:
    """`miniflow webserver`: run until SIGINT/SIGTERM."""
    auth.token_required(config)  # refuse an unauthenticated server beyond localhost first
    async with wiring.open_engine(config) as engine:
        sock = listen(config)
        try:
            server = _server(config, engine, embedded=False)
            await server.serve(sockets=[sock])
        finally:
            sock.close()
    return 0 if server.started else 1


@contextlib.asynccontextmanager
async def beside(config: Config, engine: AsyncEngine) -> AsyncIterator[str]:
    """The web server in this loop while the block runs; yields its URL."""
    auth.token_required(config)
    sock = listen(config)
    server = _server(config, engine, embedded=True)
    task: asyncio.Future[Any] = asyncio.ensure_future(server.serve(sockets=[sock]))
    ready = asyncio.ensure_future(server.ready.wait())
    try:
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not server.ready.is_set():
            raise ConfigError("the web server did not start")
        yield server.url
    finally:
        ready.cancel()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
        sock.close()
