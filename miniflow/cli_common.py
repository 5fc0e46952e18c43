"""Helpers shared by the CLI modules: run an async command, build the Config."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from miniflow.config import Config, load_config
from miniflow.errors import ConfigError, MiniflowError, SchemaError, ServiceUnavailable

P = ParamSpec("P")
T = TypeVar("T")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "dags"


def _exit_code(exc: MiniflowError) -> int:
    return 2 if isinstance(exc, ConfigError | ServiceUnavailable | SchemaError) else 1


def command_runner(func: Callable[P, Awaitable[T]]) -> Callable[P, T]:
    """Run an async command; print MiniflowErrors as one line."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return asyncio.run(func(*args, **kwargs))  # type: ignore[arg-type]
        except MiniflowError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(_exit_code(exc))
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper


def _config(ctx: click.Context, **overrides: Any) -> Config:
    base: dict[str, Any] = ctx.obj or {}
    try:
        return load_config(**{**base, **overrides})
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _now() -> datetime:
    return datetime.now(UTC)
