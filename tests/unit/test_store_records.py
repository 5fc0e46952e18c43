"""The store hands out frozen records or plain values, never ORM rows.

A live ORM row outside the store can be written through (a changed attribute is
flushed at commit, unfenced, by whoever holds the session) and silently refreshed
by a later query of the same session. These tests read the annotations of every
public function and method of `miniflow.store.*`, so a new function returning a
model fails here rather than in review.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import typing
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import miniflow.store
from miniflow.store import models, records

NOT_AN_API = {"models", "migrations"}  # the models themselves; Alembic's scripts


def _store_modules() -> Iterator[ModuleType]:
    for info in pkgutil.iter_modules(miniflow.store.__path__):
        if info.name not in NOT_AN_API:
            yield importlib.import_module(f"miniflow.store.{info.name}")


def _public_functions(module: ModuleType) -> Iterator[tuple[str, Callable[..., Any]]]:
    for name, value in vars(module).items():
        if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(value):
            yield f"{module.__name__}.{name}", value
        elif inspect.isclass(value):
            for attr, member in vars(value).items():
                function = member.__func__ if isinstance(member, staticmethod) else member
                if inspect.isfunction(function) and not attr.startswith("_"):
                    yield f"{module.__name__}.{name}.{attr}", function


def _models_in(annotation: Any) -> set[str]:
    if inspect.isclass(annotation) and issubclass(annotation, models.Base):
        return {annotation.__name__}
    found: set[str] = set()
    for arg in typing.get_args(annotation):
        found |= _models_in(arg)
    return found


def test_no_public_store_function_returns_an_orm_model() -> None:
    offenders = []
    checked = 0
    for module in _store_modules():
        for name, function in _public_functions(module):
            returned = typing.get_type_hints(function).get("return")
            checked += 1
            if leaked := _models_in(returned):
                offenders.append(f"{name} returns {', '.join(sorted(leaked))}")
    assert checked > 100  # the walk found the store's functions
    assert offenders == []


def test_the_guard_sees_a_model_inside_a_container() -> None:
    assert _models_in(dict[int, list[models.TaskInstance] | None]) == {"TaskInstance"}
    assert _models_in(dict[int, list[records.TaskInstanceRecord] | None]) == set()


@pytest.mark.parametrize("record", list(records.MODELS), ids=lambda r: r.__name__)
def test_a_record_copies_every_column_of_its_model_in_order(record: type[Any]) -> None:
    model = records.MODELS[record]
    names = [f.name for f in dataclasses.fields(record)]
    assert names == [c.key for c in model.__table__.columns]
    params = record.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen
    assert hasattr(record, "__slots__")
