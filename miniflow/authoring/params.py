"""Typed DAG params: `Param(default, type=..., minimum=..., description=...)`.

A `Param` is a default value plus a JSON Schema (any keyword: `type`, `enum`,
`minimum`, `maximum`, `minLength`, `pattern`, `items`, ...), as Airflow's is.
The schema and the default are checked when the DAG is defined (an invalid
schema, or a default the schema refuses, is a definition error naming the
file and line); a run's conf is validated against it when the run is
triggered (`scheduler.manual_runs`), so a task never starts with a bad value.

jsonschema is imported only when a `Param` is created or validated:
`import miniflow` and DAG files without typed params must not pay for it.
"""

from __future__ import annotations

from typing import Any, TypedDict

from miniflow.authoring.dag import check_json, definition_error


class ParamSpec(TypedDict):
    """A typed param in the serialized DAG (`SerializedDag.param_specs`)."""

    schema: dict[str, Any]  # a JSON Schema for the value
    description: str | None
    required: bool  # no default: a manual run must give it in its conf


class _NotSet:
    def __repr__(self) -> str:
        return "NOTSET"


NOTSET: Any = _NotSet()


class Param:
    """A DAG param with a default and a JSON Schema; without a default it is required
    in the conf of every manual run (so a DAG with such a param must not be scheduled).

    `Param(5, type="integer", minimum=1, description="rows per batch")`
    """

    def __init__(self, default: Any = NOTSET, *, description: str | None = None, **schema: Any):
        if description is not None and not isinstance(description, str):
            raise definition_error(f"Param description must be a string, got {description!r}")
        check_json(schema, "Param schema")
        if default is not NOTSET:
            check_json(default, "Param default")
        self.default = default
        self.description = description
        self.schema = schema
        error = schema_error(schema)
        if error is not None:
            raise definition_error(f"invalid Param schema {schema!r}: {error}")

    def __repr__(self) -> str:
        return f"Param({self.default!r}, {self.schema!r})"

    @property
    def required(self) -> bool:
        return self.default is NOTSET

    def spec(self, key: str) -> ParamSpec:
        """The serialized form; raises a definition error if the default is invalid."""
        if not self.required:
            error = value_error(self.schema, self.default)
            if error is not None:
                raise definition_error(
                    f"param {key!r}: default {self.default!r} is invalid: {error}"
                )
        return {"schema": dict(self.schema), "description": self.description,
                "required": self.required}  # fmt: skip


def schema_error(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a valid JSON Schema, or None."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return str(exc.message)
    return None


def value_error(schema: dict[str, Any], value: Any) -> str | None:
    """Why `value` does not match `schema` (the first error, deepest path first), or None."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "".join(f"[{p!r}]" for p in error.absolute_path)
    return f"{where + ': ' if where else ''}{error.message}"
