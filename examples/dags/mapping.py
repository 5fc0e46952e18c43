"""Dynamic task mapping: one task per item, the items known only when the run runs.

`list_files` returns a list; `measure.expand(name=...)` runs one mapped instance of
`measure` per item (map_index 0, 1, 2, ...), at most two at once (`max_active_mapped`);
`total` receives the list of their results. `greet` maps a Bash task over a literal list,
`scaled` combines a fixed argument (`partial`) with a mapped one, and `pairs` maps over
dicts of arguments (`expand_kwargs`).
"""

from datetime import datetime

from miniflow import DAG, Bash, task

with DAG(
    "example_mapping",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    tags=["example"],
    description="Dynamic task mapping over literal lists and upstream results",
):

    @task
    def list_files() -> list[str]:
        return ["a.csv", "bb.csv", "ccc.csv"]

    @task(max_active_mapped=2)
    def measure(name: str) -> int:
        return len(name)

    @task
    def total(sizes: list[int]) -> int:
        assert sizes == [5, 6, 7], sizes
        return sum(sizes)

    @task
    def scale(x: int, factor: int) -> int:
        return x * factor

    @task
    def add(a: int, b: int) -> int:
        return a + b

    total(measure.expand(name=list_files()))
    scale.partial(factor=10).expand(x=[1, 2, 3])
    add.expand_kwargs([{"a": 1, "b": 2}, {"a": 3, "b": 4}])
    Bash.partial("greet", env={"GREETING": "hello"}).expand(
        command=['echo "$GREETING one ($MINIFLOW_MAP_INDEX)"', 'echo "$GREETING two"']
    )
