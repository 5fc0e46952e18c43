"""The one error hierarchy of miniflow.

Every error miniflow raises on purpose derives from `MiniflowError`, so the CLI
can print one clear line for any of them instead of a traceback. Errors that
wrap a driver or API failure chain it (`raise ... from exc`). Errors a caller
may retry (`RetryableError`) are distinct from permanent ones.
"""

from __future__ import annotations


class MiniflowError(Exception):
    """Root of every error miniflow raises on purpose."""


class RetryableError(MiniflowError):
    """A transient failure: the same call may succeed later (network, 429, 5xx)."""


class PermanentError(MiniflowError):
    """A failure that retrying the same call cannot fix (403, 422, bad input)."""


class ConfigError(PermanentError):
    """A configuration value is missing or invalid; the message names the setting."""


class StateDirError(ConfigError):
    """The state directory (MINIFLOW_STATE_DIR) cannot be used: names it and the reason."""


class DagDefinitionError(PermanentError):
    """A DAG file defines something invalid; carries the file and line when known."""

    def __init__(self, message: str, *, filename: str | None = None, lineno: int | None = None):
        self.filename = filename
        self.lineno = lineno
        where = (
            f"{filename}:{lineno}: "
            if filename and lineno
            else (f"{filename}: " if filename else "")
        )
        super().__init__(f"{where}{message}")
        self.bare_message = message


class SkipTask(MiniflowError):
    """Raise inside a `@task` function to end its try as `skipped` (Airflow's
    `AirflowSkipException`); the message is kept as the try's reason. Downstream
    tasks follow their trigger rules (an `all_success` task below is skipped too)."""


class FailTask(MiniflowError):
    """Raise inside a `@task` function to fail its try *without retries*, whatever
    `retries` says (Airflow's `AirflowFailException`): for errors that retrying cannot
    fix (bad input, a missing permission). The message is kept as the try's error."""


class TemplateError(PermanentError):
    """A template could not be rendered; names the task and the variable."""


class ConfValidationError(PermanentError):
    """A run's conf is not valid JSON or names keys the DAG does not declare."""


class ServiceUnavailable(RetryableError):
    """A service miniflow needs (the database, the Kubernetes API) cannot be reached."""


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached; the message shows the URL without password."""


class SchemaError(PermanentError):
    """The database schema is missing, older or newer than this code expects."""


class SerializedFormatError(PermanentError):
    """A stored serialized DAG is in a format this miniflow cannot read (a newer one)."""


class NotFound(PermanentError):
    """A DAG, run, task or attempt named by the user does not exist."""


class SchedulerAlreadyRunning(PermanentError):
    """Another scheduler is running on a database that supports only one (SQLite)."""


class LaunchError(MiniflowError):
    """A launcher could not start an attempt."""
