"""Function macros, filters, and callbacks on Bash tasks.

`slug` (a function in `user_defined_macros`) and `quoted` (a `user_defined_filters`
entry) live in this file, which the scheduler never imports: it renders this DAG's
templates in a short-lived child process that does, and only DAGs like this one pay for
it. The Bash tasks' `on_success_callback` runs in such a child too, once the scheduler
has committed the task's success.
"""

import shlex
from datetime import datetime
from typing import Any

from miniflow import DAG, Bash


def slug(text: str) -> str:
    return "-".join(text.lower().split())


def note_success(context: dict[str, Any]) -> None:
    print(f"{context['task_id']} of {context['run_id']} succeeded (try {context['try_number']})")


with DAG(
    "example_template_functions",
    start_date=datetime(2026, 1, 1),
    params={"title": "Monthly Sales Report"},
    user_defined_macros={"slug": slug, "bucket": "reports"},
    user_defined_filters={"quoted": shlex.quote},
    default_args={"on_success_callback": note_success},
    tags=["example"],
):
    name = Bash("name", "echo {{ bucket }}/{{ slug(params.title) }}-{{ ds }}.csv")
    name >> Bash("publish", "echo publishing {{ params.title | quoted }}")
