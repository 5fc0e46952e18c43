"""Task groups: `with TaskGroup("extract"):` and `@task_group`.

A group is an authoring device only, as in Airflow: the tasks created inside
get ids prefixed with the group's id (`extract.clean`; nested groups chain
their prefixes), and the group can stand on either side of `>>` — upstream
of `>>` it is its leaves (its tasks with no downstream task inside it),
downstream of `>>` its roots. Roots and leaves are taken when `>>` runs, as
in Airflow, so wire a group after its body. Nothing downstream of authoring
knows groups exist: the serialized DAG carries the prefixed ids only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar, overload

from miniflow.authoring import dag as dag_mod
from miniflow.authoring.dag import check_id, definition_error
from miniflow.authoring.tasks import BaseTask, DependencyMixin, _groups, validate_settings

P = ParamSpec("P")
R = TypeVar("R")


class TaskGroup(DependencyMixin):
    """A named group of tasks in a DAG; use it as a context manager.

    `TaskGroup("g")` inside a `with DAG(...)` block (or another group) prefixes
    the ids of the tasks created in its `with` block with `g.` (unless
    `prefix_group_id=False`); `group_id` follows the task id rules, and the full
    id (with every enclosing group's prefix) must too. Task settings given as
    keywords or in `default_args` become defaults of the group's tasks: over the
    DAG's and an enclosing group's, under a task's own (`env` is merged).
    """

    group_id: str
    prefix: str  # "<full group id>." ("" or the enclosing one's with prefix_group_id=False)
    members: list[BaseTask]  # every task created in the block, nested groups' too
    task_defaults: dict[str, Any]  # validated settings, enclosing groups' merged under

    def __init__(
        self,
        group_id: str,
        *,
        prefix_group_id: bool = True,
        default_args: dict[str, Any] | None = None,
        **task_defaults: Any,
    ) -> None:
        self.filename, self.lineno = dag_mod.user_location()
        dag = dag_mod.current_dag()
        if dag is None:
            raise definition_error(
                f"task group {group_id!r} must be created inside a `with DAG(...):` block"
            )
        self.dag: dag_mod.DAG = dag
        check_id(group_id, "task group id")
        enclosing = [g for g in _groups.get() if g.dag is dag]
        self.group_id = check_id(
            f"{enclosing[-1].prefix if enclosing else ''}{group_id}", "task group id"
        )
        if not isinstance(prefix_group_id, bool):
            raise definition_error(
                f"task group {group_id!r}: prefix_group_id must be True or False, "
                f"got {prefix_group_id!r}"
            )
        outer = enclosing[-1].prefix if enclosing else ""
        self.prefix = f"{self.group_id}." if prefix_group_id else outer
        self.members: list[BaseTask] = []
        if default_args is not None and not isinstance(default_args, dict):
            raise definition_error(
                f"task group {group_id!r}: default_args must be a dict, got {default_args!r}"
            )
        own = validate_settings(
            {**(default_args or {}), **task_defaults}, f"task group {self.group_id!r}"
        )
        inherited = enclosing[-1].task_defaults if enclosing else {}
        self.task_defaults = {**inherited, **own}
        if "env" in inherited or "env" in own:
            self.task_defaults["env"] = {**inherited.get("env", {}), **own.get("env", {})}

    def __repr__(self) -> str:
        return f"<TaskGroup {self.dag.dag_id}.{self.group_id}: {len(self.members)} tasks>"

    def __enter__(self) -> TaskGroup:
        _groups.set((*_groups.get(), self))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack = _groups.get()
        if stack and stack[-1] is self:
            _groups.set(stack[:-1])

    def _members_or_error(self) -> list[BaseTask]:
        if not self.members:
            raise definition_error(
                f"task group {self.group_id!r} has no tasks: add them in its `with` block "
                "before setting dependencies on it"
            )
        return self.members

    def roots(self) -> list[BaseTask]:
        """The group's tasks with no upstream task inside the group."""
        inside = {t.task_id for t in self._members_or_error()}
        return [t for t in self.members if not t.upstream_ids & inside]

    def leaves(self) -> list[BaseTask]:
        """The group's tasks with no downstream task inside the group."""
        inside = {t.task_id for t in self._members_or_error()}
        return [t for t in self.members if not t.downstream_ids & inside]

    def upstream_side(self) -> list[BaseTask]:
        return self.leaves()

    def downstream_side(self) -> list[BaseTask]:
        return self.roots()


class TaskGroupFunction(Generic[P, R]):
    """A function decorated with `@task_group`; calling it inside a DAG builds a group."""

    def __init__(
        self, function: Callable[P, R], group_id: str | None, group_kwargs: dict[str, Any]
    ) -> None:
        self.function = function
        self.group_kwargs = group_kwargs
        self.group_id = check_id(
            group_id if group_id is not None else function.__name__, "task group id"
        )
        functools.update_wrapper(self, function)

    def __repr__(self) -> str:
        return f"<@task_group {self.group_id}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Build the group and return what the function returned if that is a task or
        a task result (so `start >> g() >> end` binds to it), else the group itself."""
        dag = dag_mod.current_dag()
        if dag is None:
            raise definition_error(
                f"@task_group function {self.group_id!r} was called outside a "
                "`with DAG(...):` block"
            )
        group_id, n = self.group_id, 0
        enclosing = [g for g in _groups.get() if g.dag is dag]
        prefix = enclosing[-1].prefix if enclosing else ""
        # Called twice: `g`, then `g__1`, as `@task` functions are.
        while any(t.startswith(f"{prefix}{group_id}.") for t in dag.tasks):
            n += 1
            group_id = f"{self.group_id}__{n}"
        with TaskGroup(group_id, **self.group_kwargs) as group:
            result = self.function(*args, **kwargs)
        if isinstance(result, DependencyMixin):
            return result
        return group


@overload
def task_group(function: Callable[P, R], /) -> TaskGroupFunction[P, R]: ...


@overload
def task_group(
    *, group_id: str | None = None, **group_kwargs: Any
) -> Callable[[Callable[P, R]], TaskGroupFunction[P, R]]: ...


def task_group(
    function: Callable[..., Any] | None = None,
    /,
    *,
    group_id: str | None = None,
    **group_kwargs: Any,
) -> Any:
    """`@task_group` or `@task_group(group_id=..., retries=2, ...)`: a function whose tasks
    form a group. The group id defaults to the function name; other keywords are
    `TaskGroup`'s (`prefix_group_id`, `default_args`, task settings)."""

    def decorate(fn: Callable[..., Any]) -> TaskGroupFunction[..., Any]:
        if not callable(fn):
            raise definition_error(f"@task_group must decorate a function, got {fn!r}")
        return TaskGroupFunction(fn, group_id, group_kwargs)

    if function is not None:
        return decorate(function)
    return decorate
