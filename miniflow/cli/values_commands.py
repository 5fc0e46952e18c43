"""`miniflow variables …` and `miniflow connections …`: what `Variable.get`,
`BaseHook.get_connection` and `{{ var.value.x }}` / `{{ conn.x }}` read.

Secrets are never shown: connection passwords appear as `***` (in `get` too, and in the
URI), and `variables list` masks values whose key names a secret, as Airflow does.
`AIRFLOW_VAR_*` / `AIRFLOW_CONN_*` environment variables win over these (they are read
where the task runs).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from miniflow.cli.common import _config, command_runner, output_option
from miniflow.errors import NotFound

if TYPE_CHECKING:
    from rich.table import Table

MASK = "***"
SENSITIVE = (
    "access_token", "api_key", "apikey", "authorization", "passphrase", "passwd",
    "password", "private_key", "secret", "token",
)  # fmt: skip


def sensitive(key: str) -> bool:
    """Airflow's rule: a variable whose key names a secret is masked when listed."""
    lowered = key.lower()
    return any(word in lowered for word in SENSITIVE)


def _print(table: Table) -> None:
    from miniflow.cli import views

    views._print_table(table, None)


@click.group()
def variables() -> None:
    """Variables DAG code reads (`Variable.get`, `{{ var.value.KEY }}`)."""


@variables.command("list")
@output_option
@click.pass_context
def variables_list(ctx: click.Context, output: str) -> None:
    """Every variable; values of keys that name a secret are masked."""

    @command_runner
    async def run() -> None:
        from miniflow.cli.operations import _session
        from miniflow.store import config_values

        async with _session(_config(ctx)) as session:
            rows = await config_values.list_variables(session)
        items = [
            {
                "key": r.key,
                "value": MASK if sensitive(r.key) else r.value,
                "description": r.description,
            }
            for r in rows
        ]
        if output == "json":
            sys.stdout.write(json.dumps(items, indent=2) + "\n")
            return
        from rich.table import Table

        table = Table("key", "value", "description")
        for item in items:
            table.add_row(item["key"], item["value"], item["description"] or "")
        _print(table)

    run()


@variables.command("get")
@click.argument("key")
@click.pass_context
def variables_get(ctx: click.Context, key: str) -> None:
    """Print the value of KEY (as stored)."""

    @command_runner
    async def run() -> None:
        from miniflow.cli.operations import _session
        from miniflow.store import config_values

        async with _session(_config(ctx)) as session:
            row = await config_values.get_variable(session, key)
        if row is None:
            raise NotFound(f"no variable {key!r}")
        click.echo(row.value)

    run()


@variables.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--description", help="What the variable is for.")
@click.pass_context
def variables_set(ctx: click.Context, key: str, value: str, description: str | None) -> None:
    """Create or replace the variable KEY."""

    @command_runner
    async def run() -> None:
        from miniflow.cli.operations import _session
        from miniflow.store import config_values

        async with _session(_config(ctx)) as session:
            await config_values.set_variable(session, key, value, description)
        click.echo(f"variable {key!r} set")

    run()


@variables.command("delete")
@click.argument("key")
@click.pass_context
def variables_delete(ctx: click.Context, key: str) -> None:
    """Delete the variable KEY."""

    @command_runner
    async def run() -> None:
        from miniflow.cli.operations import _session
        from miniflow.store import config_values

        async with _session(_config(ctx)) as session:
            deleted = await config_values.delete_variable(session, key)
        if not deleted:
            raise NotFound(f"no variable {key!r}")
        click.echo(f"variable {key!r} deleted")

    run()


@click.group()
def connections() -> None:
    """Connections DAG code reads (`BaseHook.get_connection`, `{{ conn.ID.host }}`)."""


def _shown(conn_id: str, record: dict[str, Any]) -> dict[str, Any]:
    from miniflow.authoring.lookups import Connection

    conn = Connection(conn_id=conn_id, **record)
    return {
        "conn_id": conn_id,
        "conn_type": conn.conn_type,
        "host": conn.host,
        "port": conn.port,
        "login": conn.login,
        "password": MASK if conn.password else None,
        "schema": conn.schema,
        "extra": conn.extra,
        "description": conn.description,
        "uri": conn.masked_uri(),
    }


@connections.command("list")
@output_option
@click.pass_context
def connections_list(ctx: click.Context, output: str) -> None:
    """Every connection (passwords masked)."""

    @command_runner
    async def run() -> None:
        from miniflow.cli.operations import _session
        from miniflow.store import config_values

        async with _session(_config(ctx)) as session:
            rows = await config_values.list_connections(session)
        items = [_shown(r.conn_id, config_values.connection_record(r)) for r in rows]
        if output == "json":
            sys.stdout.write(json.dumps(items, indent=2) + "\n")
            return
        from rich.table import Table

        table = Table("conn_id", "type", "host", "port", "login", "password", "schema")
        for i in items:
            table.add_row(
                i["conn_id"], i["conn_type"] or "", i["host"] or "", str(i["port"] or ""),
                i["login"] or "", i["password"] or "", i["schema"] or "",
            )  # fmt: skip
        _print(table)

    run()


@connections.command("get")
@click.argument("conn_id")
@click.pass_context
def connections_get(ctx: click.Context, conn_id: str) -> None:
    """The connection CONN_ID as JSON (the password masked)."""

    @command_runner
    async def run() -> None:
        from miniflow.cli.operations import _session
        from miniflow.store import config_values

        async with _session(_config(ctx)) as session:
            row = await config_values.get_connection(session, conn_id)
        if row is None:
            raise NotFound(f"no connection {conn_id!r}")
        click.echo(json.dumps(_shown(conn_id, config_values.connection_record(row)), indent=2))

    run()


@connections.command("add")
@click.argument("conn_id")
@click.option("--uri", help="type://login:password@host:port/schema?extra=... (Airflow's form).")
@click.option("--conn-type")
@click.option("--host")
@click.option("--login")
@click.option(
    "--password",
    help="Prefer --password-stdin: a password on the command line is in the shell history.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--schema")
@click.option("--port", type=int)
@click.option("--extra", help="A JSON object.")
@click.option("--description")
@click.pass_context
def connections_add(
    ctx: click.Context,
    /,
    conn_id: str,
    uri: str | None,
    password_stdin: bool,
    **fields: Any,
) -> None:
    """Create or replace the connection CONN_ID, from --uri or from the field options."""
    from miniflow.authoring.lookups import Connection

    given = {k: v for k, v in fields.items() if v is not None}
    if password_stdin:
        given["password"] = sys.stdin.readline().rstrip("\n")
    if uri is not None:
        record = Connection.from_uri(conn_id, uri).as_record()
        record.update(given)
    else:
        record = given
    if record.get("extra") is not None:
        try:
            json.loads(record["extra"])
        except ValueError:
            raise click.BadParameter("must be a JSON object", param_hint="--extra") from None

    @command_runner
    async def run() -> None:
        from miniflow.cli.operations import _session
        from miniflow.store import config_values

        async with _session(_config(ctx)) as session:
            await config_values.set_connection(session, conn_id, record)
        click.echo(f"connection {conn_id!r} set")

    run()


@connections.command("delete")
@click.argument("conn_id")
@click.pass_context
def connections_delete(ctx: click.Context, conn_id: str) -> None:
    """Delete the connection CONN_ID."""

    @command_runner
    async def run() -> None:
        from miniflow.cli.operations import _session
        from miniflow.store import config_values

        async with _session(_config(ctx)) as session:
            deleted = await config_values.delete_connection(session, conn_id)
        if not deleted:
            raise NotFound(f"no connection {conn_id!r}")
        click.echo(f"connection {conn_id!r} deleted")

    run()
