"""Variables and connections as DAG code and templates read them (`var.value.x`, `conn.x`).

A value comes from the environment first (`AIRFLOW_VAR_<KEY>`, `AIRFLOW_CONN_<ID>`, as in
Airflow, so a moved DAG's configuration keeps working), then from miniflow's database
through the `Backend` the process registered (`register_backend`: the scheduler, the
worker and the parse child register the store's). The authoring layer never imports
the store: this module is the narrow interface between them.

Connection passwords are secrets: `Connection`'s repr and `masked_uri()` hide them,
and nothing here logs a value.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from miniflow.errors import MiniflowError

VAR_PREFIX = "AIRFLOW_VAR_"
CONN_PREFIX = "AIRFLOW_CONN_"
MASK = "***"


class NotDefined(MiniflowError, KeyError):
    """No variable / connection of that name, in the environment or the database."""

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class Connection:
    """A connection (Airflow's attribute names): where a task reaches an outside system."""

    conn_id: str
    conn_type: str | None = None
    host: str | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    schema: str | None = None
    port: int | None = None
    extra: str | None = None
    description: str | None = None

    def __repr__(self) -> str:
        shown = MASK if self.password else None
        return (
            f"Connection(conn_id={self.conn_id!r}, conn_type={self.conn_type!r}, "
            f"host={self.host!r}, login={self.login!r}, password={shown!r}, "
            f"schema={self.schema!r}, port={self.port!r})"
        )

    @property
    def extra_dejson(self) -> dict[str, Any]:
        if not self.extra:
            return {}
        try:
            value = json.loads(self.extra)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def get_uri(self, *, mask: bool = False) -> str:
        """The connection as a URI (`type://login:password@host:port/schema?extra`)."""
        auth = ""
        if self.login or self.password:
            auth = quote(self.login or "", safe="")
            if self.password:
                auth += ":" + (MASK if mask else quote(self.password, safe=""))
            auth += "@"
        netloc = f"{auth}{self.host or ''}{f':{self.port}' if self.port else ''}"
        uri = f"{(self.conn_type or '').replace('_', '-')}://{netloc}"
        if self.schema:
            uri += "/" + quote(self.schema, safe="")
        if self.extra_dejson:
            uri += "?" + urlencode({k: str(v) for k, v in self.extra_dejson.items()})
        return uri

    def masked_uri(self) -> str:
        return self.get_uri(mask=True)

    def get_password(self) -> str | None:
        return self.password

    def get_extra(self) -> str | None:
        return self.extra

    def as_record(self) -> dict[str, Any]:
        """The stored fields (what a backend saves and returns)."""
        return {
            "conn_type": self.conn_type, "host": self.host, "login": self.login,
            "password": self.password, "schema": self.schema, "port": self.port,
            "extra": self.extra, "description": self.description,
        }  # fmt: skip

    @classmethod
    def from_uri(cls, conn_id: str, uri: str) -> Connection:
        """Parse Airflow's URI form (`postgres://user:pw@host:5432/db?sslmode=require`)."""
        parts = urlsplit(uri)
        extra = dict(parse_qsl(parts.query))
        return cls(
            conn_id=conn_id,
            conn_type=parts.scheme.replace("-", "_") or None,
            host=unquote(parts.hostname) if parts.hostname else None,
            login=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            schema=unquote(parts.path.lstrip("/")) or None,
            port=parts.port,
            extra=json.dumps(extra) if extra else None,
        )

    @classmethod
    def from_env_value(cls, conn_id: str, value: str) -> Connection:
        """`AIRFLOW_CONN_X`: a URI, or a JSON object of the fields (Airflow 2.3+)."""
        text = value.strip()
        if not text.startswith("{"):
            return cls.from_uri(conn_id, text)
        data = json.loads(text)
        extra = data.get("extra")
        return cls(
            conn_id=conn_id,
            conn_type=data.get("conn_type"),
            host=data.get("host"),
            login=data.get("login"),
            password=data.get("password"),
            schema=data.get("schema"),
            port=data.get("port"),
            extra=json.dumps(extra) if isinstance(extra, dict) else extra,
            description=data.get("description"),
        )


class Backend(Protocol):
    """Where variables and connections are stored (the store provides the real one)."""

    def get_variable(self, key: str) -> str | None: ...

    def set_variable(self, key: str, value: str, description: str | None) -> None: ...

    def delete_variable(self, key: str) -> bool: ...

    def get_connection(self, conn_id: str) -> dict[str, Any] | None: ...


_backend: Backend | None = None


def register_backend(backend: Backend | None) -> None:
    """Make `backend` the database behind variables and connections in this process."""
    global _backend
    _backend = backend


def _no_backend(what: str) -> NotDefined:
    return NotDefined(
        f"{what} is not set in the environment, and this process has no miniflow database "
        "to look it up in"
    )


def get_variable(key: str) -> str:
    """The variable's value: `AIRFLOW_VAR_<KEY>` if set, else the database's."""
    env = os.environ.get(VAR_PREFIX + key.upper())
    if env is not None:
        return env
    if _backend is None:
        raise _no_backend(f"variable {key!r}")
    value = _backend.get_variable(key)
    if value is None:
        raise NotDefined(
            f"variable {key!r} does not exist (set it with `miniflow variables set {key} ...` "
            f"or the environment variable {VAR_PREFIX}{key.upper()})"
        )
    return value


def set_variable(key: str, value: str, description: str | None = None) -> None:
    if _backend is None:
        raise _no_backend(f"variable {key!r}")
    _backend.set_variable(key, value, description)


def delete_variable(key: str) -> bool:
    if _backend is None:
        raise _no_backend(f"variable {key!r}")
    return _backend.delete_variable(key)


def get_connection(conn_id: str) -> Connection:
    """The connection: `AIRFLOW_CONN_<ID>` if set, else the database's."""
    env = os.environ.get(CONN_PREFIX + conn_id.upper())
    if env is not None:
        return Connection.from_env_value(conn_id, env)
    if _backend is None:
        raise _no_backend(f"connection {conn_id!r}")
    record = _backend.get_connection(conn_id)
    if record is None:
        raise NotDefined(
            f"connection {conn_id!r} does not exist (add it with `miniflow connections add "
            f"{conn_id} --uri ...` or the environment variable {CONN_PREFIX}{conn_id.upper()})"
        )
    return Connection(conn_id=conn_id, **record)


class _VariableValues:
    """`var.value.<key>` / `var.json.<key>` in templates (looked up when rendered)."""

    def __init__(self, deserialize: bool) -> None:
        self._json = deserialize

    def _convert(self, value: str) -> Any:
        return json.loads(value) if self._json else value

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return self._convert(get_variable(key))

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self._convert(get_variable(key))
        except NotDefined:
            return default


class VariableAccessor:
    def __init__(self) -> None:
        self.value = _VariableValues(False)
        self.json = _VariableValues(True)


class ConnectionAccessor:
    """`conn.<conn_id>.host` in templates."""

    def __getattr__(self, conn_id: str) -> Connection:
        if conn_id.startswith("__"):
            raise AttributeError(conn_id)
        return get_connection(conn_id)

    def get(self, conn_id: str, default: Any = None) -> Any:
        try:
            return get_connection(conn_id)
        except NotDefined:
            return default
