"""A Pod task's result, without a sidecar: its termination message.

`measure` runs any image; with `push_result=True` it writes small JSON to
`/dev/termination-log` and that becomes its result, read by the scheduler from
the pod status it already watches (no sidecar container, no exec, no extra API
request). `report` receives it through `measure.output` like any `@task` result.
"""

from datetime import datetime

from miniflow import DAG, Pod, task

with DAG("example_pod_results", start_date=datetime(2026, 1, 1), tags=["example"]):
    measure = Pod(
        "measure",
        image="busybox:1.36",
        command=[
            "sh",
            "-c",
            'echo measuring; echo \'{"rows": 42, "ok": true}\' > /dev/termination-log',
        ],
        push_result=True,
    )

    @task
    def report(measured: dict) -> str:
        print(f"measure found {measured['rows']} rows")
        return f"{measured['rows']} rows"

    report(measure.output)
