"""miniflow: one Kubernetes pod per task, DAGs in plain Python files.

The names users' DAG files import live here: `DAG`, `Bash`, `Pod`, `Empty`, `task`, ...
Importing miniflow must stay light (no sqlalchemy, kubernetes_asyncio or
jinja2): the worker imports it on every task start.
"""

from miniflow.authoring.context import get_current_context
from miniflow.authoring.dag import DAG
from miniflow.authoring.latest_only import LatestOnly
from miniflow.authoring.params import Param
from miniflow.authoring.sensor import SensorResult
from miniflow.authoring.taskflow import task
from miniflow.authoring.taskgroup import TaskGroup, task_group
from miniflow.authoring.tasks import Bash, Empty, Pod
from miniflow.errors import FailTask, SkipTask

__version__ = "0.1.0"

__all__ = [
    "DAG",
    "Bash",
    "Empty",
    "FailTask",
    "LatestOnly",
    "Param",
    "Pod",
    "SensorResult",
    "SkipTask",
    "TaskGroup",
    "__version__",
    "get_current_context",
    "task",
    "task_group",
]
