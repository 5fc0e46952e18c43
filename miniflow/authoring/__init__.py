"""The authoring API: what DAG files use (re-exported by `miniflow`: `DAG`, `Bash`, `Pod`,
`task`), the DAG file loader, templates, timetables, and the JSON form a parsed DAG takes.

It imports neither the store nor the scheduler (checked by `lint-imports`), and this file
imports nothing: the worker imports the package on every task start.
"""
