"""Small Airflow names: exceptions, `TriggerRule`, params, variables and connections."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from miniflow.airflow_compat import problems
from miniflow.authoring import lookups
from miniflow.authoring.params import NOTSET
from miniflow.authoring.params import Param as _Param
from miniflow.errors import FailTask, SkipTask


class AirflowException(Exception):
    """Airflow's base exception: raising it fails the task (retries apply)."""


class AirflowSkipException(SkipTask, AirflowException):
    """Ends the task as skipped (miniflow's `SkipTask`)."""


class AirflowFailException(FailTask, AirflowException):
    """Fails the task without retries (miniflow's `FailTask`)."""


class AirflowSensorTimeout(AirflowException):
    pass


class AirflowTaskTimeout(AirflowException):
    pass


class AirflowNotFoundException(AirflowException, KeyError):
    pass


class TriggerRule(StrEnum):
    """Airflow's trigger rules; each is miniflow's rule of the same name."""

    ALL_SUCCESS = "all_success"
    ALL_FAILED = "all_failed"
    ALL_DONE = "all_done"
    ALL_SKIPPED = "all_skipped"
    ALL_DONE_MIN_ONE_SUCCESS = "all_done_min_one_success"
    ONE_SUCCESS = "one_success"
    ONE_FAILED = "one_failed"
    ONE_DONE = "one_done"
    NONE_FAILED = "none_failed"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"
    NONE_FAILED_OR_SKIPPED = "none_failed_min_one_success"  # its deprecated name
    NONE_SKIPPED = "none_skipped"
    ALWAYS = "always"
    DUMMY = "always"  # Airflow 1's name


# Param keywords for Airflow's trigger form only: no meaning for the value.
_PARAM_UI = ("section", "values_display", "description_md", "custom_html_form")


class Param(_Param):
    """Airflow's `Param(default, description, **schema)`: miniflow's Param; the keywords
    of Airflow's trigger form (`section`, `values_display`, ...) are dropped."""

    def __init__(
        self, default: Any = NOTSET, description: str | None = None, **schema: Any
    ) -> None:
        for name in _PARAM_UI:
            schema.pop(name, None)
        super().__init__(default, description=description, **schema)


class ParamsDict(dict[str, Any]):
    """Airflow's ParamsDict: here a plain dict of params."""


class Variable:
    """`Variable.get/set`: the environment (`AIRFLOW_VAR_<KEY>`) first, then miniflow's
    database (`miniflow variables ...`)."""

    _NOTHING: Any = object()

    @classmethod
    def get(
        cls, key: str, default_var: Any = _NOTHING, deserialize_json: bool = False,
        default: Any = _NOTHING,
    ) -> Any:  # fmt: skip
        fallback = default if default is not cls._NOTHING else default_var
        try:
            value = lookups.get_variable(key)
        except lookups.NotDefined:
            if fallback is not cls._NOTHING:
                return fallback
            raise KeyError(f"Variable {key} does not exist") from None
        return json.loads(value) if deserialize_json else value

    @classmethod
    def set(
        cls, key: str, value: Any, description: str | None = None, serialize_json: bool = False
    ) -> None:
        text = json.dumps(value) if serialize_json else str(value)
        lookups.set_variable(key, text, description)

    @classmethod
    def delete(cls, key: str) -> bool:
        return lookups.delete_variable(key)

    @classmethod
    def setdefault(cls, key: str, default: Any, deserialize_json: bool = False) -> Any:
        try:
            return cls.get(key, deserialize_json=deserialize_json)
        except KeyError:
            cls.set(key, default, serialize_json=deserialize_json)
            return default


Connection = lookups.Connection


class BaseHook:
    """`BaseHook.get_connection(conn_id)`: the environment (`AIRFLOW_CONN_<ID>`) first,
    then miniflow's database (`miniflow connections ...`)."""

    @classmethod
    def get_connection(cls, conn_id: str) -> lookups.Connection:
        try:
            return lookups.get_connection(conn_id)
        except lookups.NotDefined as exc:
            raise AirflowNotFoundException(str(exc)) from None

    def get_conn(self) -> Any:
        raise problems.unsupported(
            "hooks", "provider hooks are not part of the layer: use the client library"
        )
