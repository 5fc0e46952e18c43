"""Setup and teardown tasks, latest-only and callbacks.

`create_table` is a setup and `drop_table` its teardown: the teardown runs once the
work between them is done, even when the work failed (try `--conf '{"fail": true}'`:
`load` fails, `drop_table` still runs, and the run fails because of `load`, not
because of the teardown). `report` only runs in the run of the latest interval (and in
manual runs). Every task reports failures through `on_failure_callback`, and the DAG
logs its end through its own callbacks (run in a child process of the scheduler).
"""

from datetime import datetime
from typing import Any

from miniflow import DAG, Bash, LatestOnly, Param, get_current_context, task


def note_failure(context: dict[str, Any]) -> None:
    print(f"task {context['task_id']} of {context['run_id']} failed: {context['exception']}")


def note_run_end(context: dict[str, Any]) -> None:
    print(f"run {context['run_id']} of {context['dag_id']} ended: {context['state']}")


with DAG(
    "example_setup_teardown",
    start_date=datetime(2026, 1, 1),
    schedule="@daily",
    params={"fail": Param(False, type="boolean", description="make the load fail")},
    default_args={"on_failure_callback": note_failure},
    on_success_callback=note_run_end,
    on_failure_callback=note_run_end,
    tags=["example"],
):

    @task.setup
    def create_table() -> str:
        return f"staging_{get_current_context()['ds_nodash']}"

    @task
    def load(table: str) -> int:
        if get_current_context()["params"]["fail"]:
            raise RuntimeError(f"could not load {table}")
        return 42

    @task.teardown
    def drop_table(table: str) -> None:
        print(f"dropped {table}")

    table = create_table()
    rows = load(table)
    rows >> drop_table(table)  # drop_table's setups: create_table (it is upstream)

    # A Bash pair marked explicitly: `as_teardown(setups=...)` also adds the edge.
    lock = Bash("take_lock", "echo locked").as_setup()
    unlock = Bash("release_lock", "echo released").as_teardown(setups=lock)
    lock >> Bash("publish", "echo publishing") >> unlock

    LatestOnly("latest_only") >> Bash("report", "echo report for {{ ds }}")
