"""Typed configuration, read from `MINIFLOW_*` variables and an optional TOML file.

Environment variables are read in exactly one place (`load_config`, called by
the CLI and the worker entrypoint); everything else receives a `Config` object.
Values are validated here so a wrong setting fails at start-up with a message
that names the variable, instead of deep inside a loop.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from miniflow.errors import ConfigError

LAUNCHERS = ("local", "kubernetes")
CLEANUP_POLICIES = ("on_success", "always", "never")
WEB_AUTH_MODES = ("token", "none")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""Addresses only this machine can reach: the web server needs no authentication there."""
LOG_FORMATS = ("auto", "text", "json")


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of miniflow; field names map to `MINIFLOW_<NAME>` variables."""

    database_url: str = ""
    """SQLAlchemy URL: `postgresql+asyncpg://...` or `sqlite+aiosqlite:///path`."""
    home: Path = Path("~/miniflow")
    """miniflow's home, like AIRFLOW_HOME: holds `miniflow.toml` (read when MINIFLOW_CONFIG
    is unset), and is the default state dir and parent of the default DAGs folder."""
    dags_folder: Path = Path("~/miniflow/dags")
    """Folder scanned for DAG files (default `<home>/dags`)."""
    state_dir: Path = Path("~/miniflow")
    """Local state: the SQLite file of the embedded default and per-attempt logs (default
    `<home>`)."""
    launcher: str = "local"
    """`local` (subprocesses) or `kubernetes` (one pod per task)."""
    parallelism: int = 32
    """Task instances queued or running at once, over all DAGs."""
    parse_interval: float = 30.0
    """Seconds between rescans of the DAGs folder (changed files only are parsed)."""
    parse_timeout: float = 30.0
    """Seconds a single DAG file may take to import before it is an import error."""
    heartbeat_interval: float = 5.0
    """Seconds between worker heartbeats."""
    kill_grace_period: float = 5.0
    """Seconds between SIGTERM and SIGKILL when an attempt is stopped."""
    namespace: str = "default"
    """Kubernetes namespace for task pods (a DAG or task may override it)."""
    worker_image: str = "miniflow:latest"
    """Image of worker pods (Bash and @task tasks) unless a DAG or task overrides it."""
    kubeconfig: str | None = None
    """Path of a kubeconfig; unset means in-cluster config, then `~/.kube/config`."""
    kube_context: str | None = None
    """kubeconfig context to use; unset means its current context."""
    database_secret: str = "miniflow-database"
    """Secret holding the database URL that worker pods read (key `url`)."""
    pod_dags_folder: str = "/opt/miniflow/dags"
    """Where the DAGs folder is inside worker pods."""
    pod_cleanup: str = "on_success"
    """Delete finished pods: `on_success`, `always` or `never`."""
    pod_keep_failed_for: float | None = None
    """Seconds a failed pod is kept (for debugging) before it is deleted, once its log tail
    is saved; unset means 3600 with `pod_cleanup=on_success` and 0 with `always`."""
    pod_pending_timeout: float = 300.0
    """Seconds a pod may stay Pending (image pull, unschedulable) before it fails."""
    max_result_bytes: int = 65536
    """Largest JSON result a @task may return (also a Bash task's pushed result and each
    value pushed with `xcom_push`)."""
    callback_timeout: float = 60.0
    """Seconds a task or DAG callback may run before it is abandoned (logged, never changing
    a state)."""
    max_map_length: int = 1024
    """Most mapped instances one mapped task may expand into in a run (DAG files are also
    checked against it when parsed, from the environment)."""
    zombie_threshold: float = 30.0
    """Seconds a running try may go without proof of life (its worker's heartbeat, or the
    launcher seeing its process) before the sanity loop kills it as a zombie; a worker that
    cannot write its heartbeat for this long stops its task itself."""
    sanity_interval: float = 5.0
    """Seconds between rounds of the sanity loop (zombies, lost, stuck, timeouts, orphans)."""
    scheduler_heartbeat: float = 5.0
    """Seconds between heartbeats of a scheduler's `scheduler_instance` row."""
    scheduler_timeout: float = 30.0
    """A scheduler whose row has not heartbeat for this long is taken for dead: a peer
    adopts its tries (one that stopped cleanly said goodbye and is adopted at once)."""
    queued_timeout: float = 600.0
    """Seconds a try may stay queued (launched, not yet running) before it is relaunched or
    failed."""
    max_launch_attempts: int = 8
    """Launches of one try that never reached a container (refused, lost before it started)
    before the try fails; these do not use up the task's retries."""
    dag_import_per_try: bool = False
    """Local launcher: each `@task` try imports its DAG file itself, as a worker pod does,
    instead of using the forkserver's import of that version of the file (module-level
    code then runs at every try, not once per version of the file)."""
    reparse_interval: float = 120.0
    """Seconds after which every DAG file is parsed again even if unchanged (the modules it
    imports may have changed)."""
    web_host: str = "127.0.0.1"
    """Address `miniflow webserver` listens on; anything but localhost requires
    authentication (MINIFLOW_WEB_TOKEN, or an explicit MINIFLOW_WEB_AUTH=none)."""
    web_port: int = 8080
    """TCP port of `miniflow webserver`; 0 picks a free one (the URL printed says which)."""
    web_token: str | None = None
    """Bearer token the web UI and API require (provide it from a Secret); a secret: never
    shown in a page, a response or a log."""
    web_auth: str = "token"
    """`token` (MINIFLOW_WEB_TOKEN is required when bound beyond localhost) or `none`
    (no authentication anywhere: logs a warning when bound beyond localhost)."""
    web_read_only: bool = False
    """Refuse every state-changing request (pause, trigger, clear, mark failed, pools)."""
    worker_service_account: str | None = None
    """Service account of worker and pod-task pods unless a task names its own; unset
    means the namespace's default account."""
    http_port: int = 0
    """Port of the scheduler's ops HTTP server (`/healthz`, `/readyz`, `/metrics`); 0: off."""
    http_host: str = "0.0.0.0"
    """Address the ops HTTP server listens on: every interface by default, so that
    Kubernetes probes and Prometheus reach it on the pod's IP."""
    log_format: str = "auto"
    """Log lines of the scheduler, standalone and webserver processes: `text`, `json` (one
    JSON object per line, for log collectors), or `auto`: text at a terminal, JSON when
    stderr is not one (a container's log, a file, a pipe)."""
    loop_stall_timeout: float = 120.0
    """Seconds a scheduler loop (round, event recording, parse, sanity, instance heartbeat,
    Kubernetes watch) may go without progress past its period before `/healthz` fails."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Unrecognised keys from the TOML file (kept for forward compatibility)."""

    def keep_failed_for(self) -> float:
        """`pod_keep_failed_for`, or its default for the cleanup policy."""
        if self.pod_keep_failed_for is not None:
            return self.pod_keep_failed_for
        return 3600.0 if self.pod_cleanup == "on_success" else 0.0

    def safe_database_url(self) -> str:
        return redact_url(self.database_url)


def redact_url(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL: hide whatever follows ':' in its userinfo
        return re.sub(r"^([^:/]*://[^:@/]*):.*@", r"\1:***@", url)


def _number(name: str, raw: str, kind: type[float], *, allow_zero: bool) -> Any:
    noun = "an integer" if kind is int else "a number"
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"MINIFLOW_{name.upper()} must be {noun}, got {raw!r}") from None
    if not math.isfinite(value):  # nan and inf compare false/true in ways no loop expects
        raise ConfigError(f"MINIFLOW_{name.upper()} must be a finite number, got {raw!r}")
    if value < 0 or (value == 0 and not allow_zero):
        rule = "must not be negative" if allow_zero else "must be positive"
        raise ConfigError(f"MINIFLOW_{name.upper()} {rule}, got {value}")
    return value


def _as_int(name: str, raw: str) -> int:
    return int(_number(name, raw, int, allow_zero=False))


def _as_bool(name: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"MINIFLOW_{name.upper()} must be true or false, got {raw!r}")


def _as_float(name: str, raw: str) -> float:
    return float(_number(name, raw, float, allow_zero=False))


def _as_port(name: str, raw: str) -> int:
    port = int(_number(name, raw, int, allow_zero=True))
    if port > 65535:
        raise ConfigError(f"MINIFLOW_{name.upper()} must be a port (0 to 65535), got {port}")
    return port


def _as_seconds(name: str, raw: str) -> float:
    return float(_number(name, raw, float, allow_zero=True))


_CONVERTERS: dict[str, Callable[[str, str], Any]] = {
    "pod_keep_failed_for": _as_seconds,
    "parallelism": _as_int,
    "http_port": _as_port,
    "max_result_bytes": _as_int,
    "callback_timeout": _as_float,
    "max_map_length": _as_int,
    "max_launch_attempts": _as_int,
    "zombie_threshold": _as_float,
    "sanity_interval": _as_float,
    "loop_stall_timeout": _as_float,
    "scheduler_heartbeat": _as_float,
    "scheduler_timeout": _as_float,
    "queued_timeout": _as_float,
    "reparse_interval": _as_float,
    "parse_interval": _as_float,
    "parse_timeout": _as_float,
    "heartbeat_interval": _as_float,
    "kill_grace_period": _as_float,
    "pod_pending_timeout": _as_float,
    "web_port": _as_port,
    "web_read_only": _as_bool,
    "dag_import_per_try": _as_bool,
    "dags_folder": lambda n, raw: _as_path(n, raw),
    "state_dir": lambda n, raw: _as_path(n, raw),
    "home": lambda n, raw: _as_path(n, raw),
}

CONFIG_FILE_NAME = "miniflow.toml"
"""The config file read from the home folder when MINIFLOW_CONFIG is not set."""


def _as_path(name: str, raw: str) -> Path:
    try:
        return Path(raw).expanduser()
    except RuntimeError as exc:  # `~user` of a user this machine does not know
        raise ConfigError(f"MINIFLOW_{name.upper()}={raw!r}: {exc}") from None


def default_home(env: Mapping[str, str]) -> Path:
    """`MINIFLOW_HOME`, else `~/miniflow` (like AIRFLOW_HOME's `~/airflow`)."""
    if env.get("MINIFLOW_HOME"):
        return _as_path("home", env["MINIFLOW_HOME"])
    user_home = Path(env["HOME"]) if env.get("HOME") else Path("~").expanduser()
    return user_home / "miniflow"


def config_inputs(env: Mapping[str, str]) -> dict[str, str]:
    """The entries of `env` that `load_config` reads (with its config file, the whole input
    of the configuration)."""
    return {name: env[name] for name in _INPUT_NAMES if name in env}


_INPUT_NAMES = (
    "HOME",
    "MINIFLOW_HOME",
    "MINIFLOW_CONFIG",
    *(f"MINIFLOW_{f.name.upper()}" for f in fields(Config) if f.name != "extra"),
)


def config_file(env: Mapping[str, str], home: Path | None = None) -> Path | None:
    """The config file `load_config` reads for `env`: `MINIFLOW_CONFIG`, else
    `<home>/miniflow.toml` if it exists."""
    if env.get("MINIFLOW_CONFIG"):
        return Path(env["MINIFLOW_CONFIG"])
    path = (home or default_home(env)) / CONFIG_FILE_NAME
    return path if path.is_file() else None


def _convert(name: str, raw: object) -> Any:
    text = str(raw)
    conv = _CONVERTERS.get(name)
    return conv(name, text) if conv else text


def load_config(
    environ: Mapping[str, str] | None = None, *, toml_path: Path | None = None, **overrides: Any
) -> Config:
    """Build the config: defaults < TOML file < environment < explicit overrides.

    The TOML file is `MINIFLOW_CONFIG` (or `toml_path`), else `<home>/miniflow.toml`
    if it exists; its keys are the field names (`database_url = "..."`), optionally
    under a `[miniflow]` table. `state_dir` defaults to the home folder and
    `dags_folder` to `<home>/dags`, unless set explicitly.
    """
    env = os.environ if environ is None else environ
    known = {f.name for f in fields(Config)} - {"extra"}
    values: dict[str, Any] = {}
    extra: dict[str, str] = {}
    home = Path(overrides["home"]) if overrides.get("home") else default_home(env)
    path = toml_path or config_file(env, home)
    if path is not None:
        table = _read_toml(path)
        for key, raw in table.items():
            if key in known:
                values[key] = _convert(key, raw)
            else:
                extra[key] = str(raw)
    for name in known:
        raw_env = env.get(f"MINIFLOW_{name.upper()}")
        if raw_env is not None and raw_env != "":
            values[name] = _convert(name, raw_env)
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.setdefault("home", home)
    values.setdefault("state_dir", values["home"])
    values.setdefault("dags_folder", values["home"] / "dags")
    config = replace(Config(), **values, extra=extra)
    return validate(config)


def _read_toml(path: Path) -> Mapping[str, Any]:
    """The settings table of a config file (top level, or its `[miniflow]` table)."""
    import tomllib  # here: most processes (every worker pod among them) have no file to read

    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"MINIFLOW_CONFIG: no such file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    table = data.get("miniflow", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [miniflow] must be a table, got {table!r}")
    return table


def validate(config: Config) -> Config:
    """Check cross-field rules; fill the embedded default database URL."""
    if config.launcher not in LAUNCHERS:
        raise ConfigError(
            f"MINIFLOW_LAUNCHER must be one of {', '.join(LAUNCHERS)}, got {config.launcher!r}"
        )
    if config.pod_cleanup not in CLEANUP_POLICIES:
        raise ConfigError(
            f"MINIFLOW_POD_CLEANUP must be one of {', '.join(CLEANUP_POLICIES)}, "
            f"got {config.pod_cleanup!r}"
        )
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(
            f"MINIFLOW_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, "
            f"got {config.log_format!r}"
        )
    if config.scheduler_timeout <= 2 * config.scheduler_heartbeat:
        raise ConfigError(
            "MINIFLOW_SCHEDULER_TIMEOUT must be more than twice MINIFLOW_SCHEDULER_HEARTBEAT "
            f"(got {config.scheduler_timeout:g} and {config.scheduler_heartbeat:g}): a live "
            "scheduler that misses one heartbeat would be taken for dead"
        )
    if config.web_auth not in WEB_AUTH_MODES:
        raise ConfigError(
            f"MINIFLOW_WEB_AUTH must be one of {', '.join(WEB_AUTH_MODES)}, got {config.web_auth!r}"
        )
    if not config.web_host.strip():
        raise ConfigError("MINIFLOW_WEB_HOST must not be empty")
    url = config.database_url
    if not url:
        url = f"sqlite+aiosqlite:///{(config.state_dir / 'miniflow.db').resolve()}"
        config = replace(config, database_url=url)
    if not (url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+asyncpg://")):
        raise ConfigError(
            "MINIFLOW_DATABASE_URL must start with postgresql+asyncpg:// or sqlite+aiosqlite://, "
            f"got {redact_url(url)!r}"
        )
    _check_url(url)
    return config


def _check_url(url: str) -> None:
    """Parse the URL now, so a typo (a port that is not a number) is one clear line."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        detail = "the port must be a number" if "int()" in str(exc) else "cannot be parsed"
        raise ConfigError(
            f"MINIFLOW_DATABASE_URL is not a valid URL ({detail}): {redact_url(url)!r}"
        ) from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ConfigError(f"MINIFLOW_DATABASE_URL: port {parsed.port} is out of range")
