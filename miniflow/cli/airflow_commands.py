"""`miniflow airflow check DIR`: the migration report for a folder of Airflow DAG files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from miniflow.cli.common import output_option

_MARK = {"loads": "ok  ", "loads with warnings": "warn", "does not load": "FAIL"}


@click.group()
def airflow() -> None:
    """Moving from Airflow: check DAG files against the compatibility layer."""


@airflow.command("check")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--timeout", default=60.0, show_default=True, type=click.FloatRange(1), help="Per file."
)
@output_option
def airflow_check(folder: Path, timeout: float, output: str) -> None:
    """Import every Airflow DAG file under FOLDER with the layer (each in a child process)
    and report, per file and DAG: loads, loads with warnings, or does not load, with each
    unsupported construct's file:line and what to use instead. Exits 1 if a file does
    not load."""
    from miniflow.cli.airflow_check import check_folder

    report = check_folder(folder, timeout=timeout)
    if output == "json":
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        for item in report.files:
            click.echo(f"{_MARK[item.status]} {item.path}: {item.status}")
            for dag in item.dags:
                click.echo(f"       DAG {dag['dag_id']} ({dag['tasks']} tasks)")
            if item.status != "does not load" and not item.dags:
                click.echo("       (defines no DAG)")
            for warning in item.warnings:
                click.echo(f"       warning {warning.where()}: {warning.construct}: "
                           f"{warning.message}")  # fmt: skip
            if item.error is not None:
                click.echo(f"       error {item.error.where()}: {item.error.message}")
        click.echo(report.summary())
    sys.exit(0 if report.loading == len(report.files) else 1)
