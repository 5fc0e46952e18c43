"""Fencing a scheduler its peers took for dead out of the database (PostgreSQL).

A scheduler frozen in the middle of a transaction (SIGSTOP, a paused VM, a partitioned
host) keeps that transaction's row and advisory locks, and its peers' claims and
adoptions wait on them until it thaws. The server's idle-in-transaction timeout does
not cover every case: a session waiting for the rest of an extended-protocol exchange
(after Parse and Describe, before Bind and Sync) counts as active. So every session of
a scheduler carries its instance id in `application_name`, and the peer that declares
the instance dead ends those sessions: their transactions roll back, their locks go.
When the frozen scheduler thaws, its next statement fails, and its next heartbeat tells
it that it was taken for dead.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

PREFIX = "miniflow:"
_NAME_MAX = 63  # PostgreSQL truncates application_name (NAMEDATALEN - 1)

# Without a timeout: the caller's own transaction is open meanwhile (and subject to the
# idle-in-transaction timeout); its next statement waits the few milliseconds a
# terminated backend takes to release its locks.
_CUT_OFF = text(
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND application_name IN :names"
).bindparams(bindparam("names", expanding=True))


def session_name(instance_id: str) -> str:
    """The `application_name` of an instance's sessions. Cut from the front if too long:
    the id ends with the pid and a random suffix, which tell two instances apart."""
    name = PREFIX + instance_id
    return name if len(name) <= _NAME_MAX else PREFIX + instance_id[-(_NAME_MAX - len(PREFIX)) :]


async def cut_off(engine: AsyncEngine, instance_ids: Collection[str]) -> int:
    """End the database sessions of these instances; how many there were. Never raises:
    a peer that cannot fence (no PostgreSQL, no right to signal that role's sessions)
    still adopts, only later when the locks are released."""
    if engine.dialect.name != "postgresql" or not instance_ids:
        return 0
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            names = sorted({session_name(i) for i in instance_ids})
            ended = int((await conn.execute(_CUT_OFF, {"names": names})).scalar() or 0)
    except Exception as exc:
        log.warning("could not end the database sessions of %s: %s", ", ".join(instance_ids), exc)
        return 0
    if ended:
        log.warning(
            "ended %d database session(s) of %s, taken for dead", ended, ", ".join(instance_ids)
        )
    return ended
