"""Serving the web app with uvicorn, inside the caller's event loop.

`serve` prints the URL once the socket listens (a test or a user waits for
that line, not for a delay), and returns when the server stops (SIGINT or
SIGTERM, which uvicorn handles).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import uvicorn

from miniflow.config import Config
from miniflow.web import app as web_app
from miniflow.web import auth


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            print(f"miniflow web UI: http://{shown}:{port}/", flush=True)


def build(config: Config) -> Any:
    """A uvicorn server for `config`; raises ConfigError for an unsafe bind (see `auth`)."""
    auth.token_required(config)
    app = web_app.create_app(config)
    uv_config = uvicorn.Config(
        app,
        host=config.web_host,
        port=config.web_port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    return _Server(uv_config)


async def serve(config: Config) -> int:
    """Run until stopped; 1 if the server could not start (the port is taken, say)."""
    server = build(config)
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits when it cannot bind or start the app
        return int(exc.code or 1)
    if not server.started:
        print("error: the web server did not start (see above)", file=sys.stderr)
        return 1
    return 0
