"""Sensors that hold no slot while they wait: a file sensor and a soft-failing one.

`deliver` writes a file two seconds after the run starts; `wait_for_delivery`
pokes for it every half second in mode "reschedule": between pokes it is
`up_for_reschedule` (see `miniflow tasks list`), with no process or pod and no
parallelism or pool slot. Its result is the file's content, which `load`
receives like any `@task` result. `optional_extra` never finds anything: after
its one-second timeout it is skipped (`soft_fail=True`) rather than failed, and
`done` (none_failed) still runs.
"""

import json
import tempfile
from datetime import datetime
from pathlib import Path

from miniflow import DAG, Bash, Empty, SensorResult, get_current_context, task

INBOX = Path(tempfile.gettempdir()) / "miniflow-example-inbox"

with DAG("example_sensors", start_date=datetime(2026, 1, 1), tags=["example"]):
    deliver = Bash(
        "deliver",
        'sleep 2 && mkdir -p "$INBOX" && echo \'{"rows": 3}\' > "$INBOX/{{ run_id }}.tmp" '
        '&& mv "$INBOX/{{ run_id }}.tmp" "$INBOX/{{ run_id }}.json"',
        env={"INBOX": str(INBOX)},
    )

    @task.sensor(poke_interval=0.5, timeout=120, mode="reschedule")
    def wait_for_delivery() -> SensorResult:
        path = INBOX / f"{get_current_context()['run_id']}.json"
        if not path.exists():
            return SensorResult(False)
        delivery = json.loads(path.read_text())
        path.unlink()
        return SensorResult(True, delivery)

    @task
    def load(delivery: dict) -> int:
        print(f"loading {delivery['rows']} rows")
        return int(delivery["rows"])

    @task.sensor(poke_interval=0.3, timeout=1, mode="reschedule", soft_fail=True)
    def optional_extra() -> bool:
        return False

    done = Empty("done", trigger_rule="none_failed")
    [load(wait_for_delivery()), optional_extra()] >> done
