"""Who may use the web server, and which requests may change state.

- **Authentication**: bound to localhost, no authentication is needed (only
  this machine can connect). Bound anywhere else, the server refuses to start
  unless `MINIFLOW_WEB_TOKEN` is set (or `MINIFLOW_WEB_AUTH=none` says, on
  purpose, that the network in front of it does the job: a warning is logged).
  With a token, every request needs `Authorization: Bearer <token>` or the
  session cookie the login page sets (an HMAC of the token, never the token).
- **CSRF**: a form POST must echo the `miniflow_csrf` cookie in its
  `csrf_token` field (double-submit cookie: another site can make the browser
  send the cookie, but cannot read it). An API POST must have a JSON body,
  which a cross-site form cannot send without a CORS preflight this server
  never grants.
- **Read-only**: `MINIFLOW_WEB_READ_ONLY=true` refuses every POST but the login.

This module must never put the token, or anything derived from the database
URL, into a response.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from starlette.requests import Request

from miniflow.config import LOCAL_HOSTS, Config
from miniflow.errors import ConfigError

log = logging.getLogger(__name__)

CSRF_COOKIE = "miniflow_csrf"
CSRF_FIELD = "csrf_token"
SESSION_COOKIE = "miniflow_session"
PUBLIC_PATHS = ("/static/", "/login")


def token_required(config: Config) -> str | None:
    """The token requests must carry, or None when the server is open.

    Raises ConfigError when the server would be reachable from other machines
    without authentication and nobody asked for that.
    """
    if config.web_auth == "none":
        if config.web_host not in LOCAL_HOSTS:
            log.warning(
                "MINIFLOW_WEB_AUTH=none: the web UI and API on %s accept anyone who can reach "
                "them, including their actions (trigger, clear, pause)",
                config.web_host,
            )
        return None
    if config.web_token:
        return config.web_token
    if config.web_host not in LOCAL_HOSTS:
        raise ConfigError(
            f"MINIFLOW_WEB_HOST={config.web_host} is reachable from other machines: set "
            "MINIFLOW_WEB_TOKEN (from a Secret), or MINIFLOW_WEB_AUTH=none if something in "
            "front of the server authenticates users"
        )
    return None


def session_value(token: str) -> str:
    """The login cookie's value: proves the token was given, without being it."""
    return hmac.new(token.encode(), b"miniflow-web-session", hashlib.sha256).hexdigest()


def authenticated(request: Request, token: str | None) -> bool:
    if token is None:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return hmac.compare_digest(cookie.encode(), session_value(token).encode())


def is_public(path: str) -> bool:
    return any(path.startswith(p) for p in PUBLIC_PATHS)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(request: Request, submitted: str | None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())


def json_body(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind == "application/json"
