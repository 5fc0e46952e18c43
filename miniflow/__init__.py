"""miniflow: one Kubernetes pod per task, DAGs in plain Python files.

The names users' DAG files import live here: `DAG`, `Bash`, `Pod`, `Empty`, `task`, ...
Importing miniflow must stay light (no sqlalchemy, kubernetes_asyncio or
jinja2): the worker imports it on every task start.
"""

from miniflow.context import get_current_context
from miniflow.dag import DAG
from miniflow.errors import SkipTask
from miniflow.params import Param
from miniflow.taskflow import task
from miniflow.taskgroup import TaskGroup, task_group
from miniflow.tasks import Bash, Empty, Pod

__version__ = "0.1.0"

__all__ = [
    "DAG",
    "Bash",
    "Empty",
    "Param",
    "Pod",
    "SkipTask",
    "TaskGroup",
    "__version__",
    "get_current_context",
    "task",
    "task_group",
]
