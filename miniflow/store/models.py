"""SQLAlchemy models of miniflow's state, identical on PostgreSQL and SQLite.

Only `miniflow.store` modules import these; the scheduler and the worker ask
the store domain questions instead of building queries. Every timestamp is
stored as UTC and comes back timezone-aware on both databases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, whatever the backend keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Dag(Base):
    __tablename__ = "dag"

    dag_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    fileloc: Mapped[str] = mapped_column(String(1000))
    serialized: Mapped[dict[str, Any]]
    dag_hash: Mapped[str] = mapped_column(String(64))
    schedule: Mapped[str | None] = mapped_column(String(100))
    is_paused: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    has_import_error: Mapped[bool] = mapped_column(Boolean, default=False)
    next_interval_start: Mapped[datetime | None]
    next_interval_end: Mapped[datetime | None]
    last_parsed_at: Mapped[datetime | None]


class DagVersion(Base):
    """Every serialized DAG ever parsed, once per content hash; runs point at theirs."""

    __tablename__ = "dag_version"
    __table_args__ = (Index("ix_dag_version_dag_id", "dag_id"),)

    dag_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    dag_id: Mapped[str] = mapped_column(String(250))
    serialized: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class DagFile(Base):
    """What the parser last saw of each file, so unchanged files are not parsed again."""

    __tablename__ = "dag_file"

    fileloc: Mapped[str] = mapped_column(String(1000), primary_key=True)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    dag_ids: Mapped[dict[str, Any]]  # {"ids": [...]} of the last successful parse
    last_parsed_at: Mapped[datetime]


class ImportErrorRow(Base):
    __tablename__ = "import_error"

    fileloc: Mapped[str] = mapped_column(String(1000), primary_key=True)
    error: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]


class DagRun(Base):
    __tablename__ = "dag_run"
    __table_args__ = (
        UniqueConstraint("dag_id", "run_id", name="uq_dag_run_dag_id_run_id"),
        Index("ix_dag_run_state_dag_id", "state", "dag_id"),
        Index("ix_dag_run_dag_id_logical_date", "dag_id", "logical_date"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dag_id: Mapped[str] = mapped_column(String(250))
    run_id: Mapped[str] = mapped_column(String(250))
    logical_date: Mapped[datetime]
    data_interval_start: Mapped[datetime]
    data_interval_end: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(20))
    run_type: Mapped[str] = mapped_column(String(20))
    conf: Mapped[dict[str, Any]]
    dag_hash: Mapped[str | None] = mapped_column(String(64))  # the version it runs
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]


class TaskInstance(Base):
    __tablename__ = "task_instance"
    __table_args__ = (
        # map_index -1: an unmapped task, or the summary row of a mapped one; 0..n-1: its
        # mapped instances (the unique key makes expanding twice create each once)
        UniqueConstraint("dag_id", "run_id", "task_id", "map_index", name="uq_task_instance_key"),
        Index("ix_task_instance_state_priority", "state", "priority"),
        # A run's rows by state in claim order: a claim reads the first scheduled tasks of
        # each running run from here instead of sorting them all (and lookups by run).
        Index(
            "ix_task_instance_run_state_priority", "run_pk", "state", text("priority DESC"), "id"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("dag_run.id", ondelete="CASCADE"))
    dag_id: Mapped[str] = mapped_column(String(250))
    run_id: Mapped[str] = mapped_column(String(250))
    task_id: Mapped[str] = mapped_column(String(250))
    map_index: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")
    map_args: Mapped[Any | None] = mapped_column(JSON)  # a mapped instance's own arguments
    kind: Mapped[str] = mapped_column(String(10))
    state: Mapped[str] = mapped_column(String(20))
    try_number: Mapped[int] = mapped_column(Integer, default=0)
    max_tries: Mapped[int] = mapped_column(Integer, default=0)
    # Launches of the current try that never reached a container (capped apart from retries).
    launch_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    priority: Mapped[int] = mapped_column(Integer, default=1)
    pool: Mapped[str | None] = mapped_column(String(250))
    # up_for_retry: when the next try is due; up_for_reschedule: when the next poke is
    next_retry_at: Mapped[datetime | None]
    # A sensor's first poke of its current try chain: its `timeout` counts from here
    first_poke_at: Mapped[datetime | None]
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    handle: Mapped[str | None] = mapped_column(String(300))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)


class TaskAttempt(Base):
    """One row per try; never updated after `ended_at` is set (audit history)."""

    __tablename__ = "task_attempt"
    __table_args__ = (
        UniqueConstraint("ti_id", "try_number", name="uq_task_attempt_try"),
        Index("ix_task_attempt_open", "ended_at", "scheduler_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ti_id: Mapped[int] = mapped_column(ForeignKey("task_instance.id", ondelete="CASCADE"))
    dag_id: Mapped[str] = mapped_column(String(250))
    run_id: Mapped[str] = mapped_column(String(250))
    task_id: Mapped[str] = mapped_column(String(250))
    map_index: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")
    try_number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    launcher: Mapped[str] = mapped_column(String(20))
    scheduler_id: Mapped[str | None] = mapped_column(String(64))
    handle: Mapped[str | None] = mapped_column(String(300))
    queued_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(100))
    message: Mapped[str | None] = mapped_column(Text)
    log_tail: Mapped[str | None] = mapped_column(Text)


class SchedulerInstance(Base):
    __tablename__ = "scheduler_instance"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(250))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    version: Mapped[str | None] = mapped_column(String(50))
    ended_at: Mapped[datetime | None]  # said goodbye: its tries may be adopted at once
    # its sanity loop's findings: {"counts": {kind: n}, "recent": [{at, kind, what, why}]}
    sanity: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # when it last took its turn at the claim lock (claimed, or found nothing to claim)
    claimed_at: Mapped[datetime | None]


class Pool(Base):
    __tablename__ = "pool"

    name: Mapped[str] = mapped_column(String(250), primary_key=True)
    slots: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(Text)


class XCom(Base):
    """A value a task pushed by key (`ti.xcom_push`); its result stays `task_instance.result`."""

    __tablename__ = "xcom"
    __table_args__ = (
        UniqueConstraint("run_pk", "task_id", "map_index", "key", name="uq_xcom_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("dag_run.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(250))
    map_index: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")
    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[Any | None] = mapped_column(JSON)
    at: Mapped[datetime]


class Variable(Base):
    """A variable DAG code reads (`Variable.get`, `{{ var.value.key }}`)."""

    __tablename__ = "variable"

    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]


class Connection(Base):
    """A connection DAG code reads (`BaseHook.get_connection`, `{{ conn.id.host }}`).

    The password is stored as given: protect the database as the secret store it is
    (it already holds what tasks are allowed to see)."""

    __tablename__ = "connection"

    conn_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    conn_type: Mapped[str | None] = mapped_column(String(500))
    host: Mapped[str | None] = mapped_column(String(500))
    login: Mapped[str | None] = mapped_column(Text)
    password: Mapped[str | None] = mapped_column(Text)
    schema: Mapped[str | None] = mapped_column(String(500))
    port: Mapped[int | None] = mapped_column(Integer)
    extra: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]
