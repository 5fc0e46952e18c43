"""The import hook: `airflow.*` modules served from the layer, in miniflow's processes only.

`activate()` puts `AirflowFinder` first on `sys.meta_path` (and a `pendulum` stand-in
last, used only when the real pendulum is not installed). It is called by the parse
child and the worker before they import an Airflow DAG file, and by `miniflow airflow
check`'s child: nothing is installed into the user's environment, and a process that
never calls it imports the real Airflow, if there is one.

Every module the layer knows is a package whose namespace is `surface.EXPORTS`; a
module it does not know is an `UnsupportedConstruct` naming the module, the importing
file and line, and what to use instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from miniflow.airflow_compat import problems

# Modules users import from, both generations (2.x paths, 3.x `airflow.sdk` and the
# standard provider). Parents of these are served too.
SUPPORTED = frozenset({
    "airflow", "airflow.models", "airflow.models.dag", "airflow.models.baseoperator",
    "airflow.models.param", "airflow.models.xcom_arg", "airflow.models.variable",
    "airflow.models.connection", "airflow.models.taskinstance", "airflow.models.dagrun",
    "airflow.operators.bash", "airflow.operators.python", "airflow.operators.empty",
    "airflow.operators.dummy", "airflow.operators.bash_operator",
    "airflow.operators.python_operator", "airflow.operators.dummy_operator",
    "airflow.operators.latest_only", "airflow.decorators", "airflow.utils.trigger_rule",
    "airflow.utils.task_group", "airflow.utils.edgemodifier", "airflow.utils.dates",
    "airflow.utils.helpers", "airflow.utils.context", "airflow.utils.timezone",
    "airflow.exceptions", "airflow.hooks.base", "airflow.hooks.base_hook",
    "airflow.providers.cncf.kubernetes.operators.pod",
    "airflow.providers.cncf.kubernetes.operators.kubernetes_pod",
    "airflow.contrib.operators.kubernetes_pod_operator", "airflow.sdk",
    "airflow.sdk.definitions", "airflow.sdk.definitions.dag",
    "airflow.sdk.definitions.taskgroup", "airflow.sdk.definitions.edges",
    "airflow.sdk.definitions.param", "airflow.sdk.bases.operator",
    "airflow.sdk.bases.hook", "airflow.sdk.exceptions", "airflow.sdk.api.datamodels._generated",
    "airflow.providers.standard.operators.bash", "airflow.providers.standard.operators.python",
    "airflow.providers.standard.operators.empty",
    "airflow.providers.standard.operators.latest_only",
    "airflow.providers.standard.utils", "airflow.providers.standard.decorators",
    "airflow.sensors.base", "airflow.sensors.base_sensor_operator", "airflow.sensors.python",
    "airflow.sensors.bash", "airflow.sensors.filesystem", "airflow.sensors.time_delta",
    "airflow.sensors.time_sensor", "airflow.sensors.date_time", "airflow.sdk.bases.sensor",
    "airflow.providers.standard.sensors.python", "airflow.providers.standard.sensors.bash",
    "airflow.providers.standard.sensors.filesystem",
    "airflow.providers.standard.sensors.time_delta", "airflow.providers.standard.sensors.time",
    "airflow.providers.standard.sensors.date_time", "airflow.providers.common.compat.sdk",
    "airflow.operators.branch", "airflow.operators.datetime", "airflow.operators.weekday",
    "airflow.sensors.weekday", "airflow.utils.weekday",
    "airflow.providers.standard.operators.branch",
    "airflow.providers.standard.operators.datetime",
    "airflow.providers.standard.operators.weekday",
    "airflow.providers.standard.sensors.weekday", "airflow.providers.standard.utils.weekday",
})  # fmt: skip
_PACKAGES = frozenset(
    name.rsplit(".", n)[0] for name in SUPPORTED for n in range(1, name.count(".") + 1)
)

# Module prefixes whose constructs are refused, with the construct to name.
REFUSED_MODULES: dict[str, str] = {
    "airflow.datasets": "Dataset",
    "airflow.sdk.definitions.asset": "Asset",
    "airflow.assets": "Asset",
    "airflow.timetables": "Timetable",
    "airflow.triggers": "deferrable",
    "airflow.providers.standard.triggers": "deferrable",
    "airflow.operators.subdag": "SubDagOperator",
    "airflow.operators.trigger_dagrun": "TriggerDagRunOperator",
    "airflow.providers.standard.operators.trigger_dagrun": "TriggerDagRunOperator",
    "airflow.sensors.external_task": "ExternalTaskSensor",
    "airflow.providers.standard.sensors.external_task": "ExternalTaskSensor",
    "airflow.operators.python_virtualenv": "PythonVirtualenvOperator",
    "airflow.providers.docker": "DockerOperator",
    "airflow.kubernetes.secret": "Secret",
    "airflow.providers.cncf.kubernetes.secret": "Secret",
}


def _refused(fullname: str) -> str | None:
    for prefix in sorted(REFUSED_MODULES, key=len, reverse=True):
        if fullname == prefix or fullname.startswith(prefix + "."):
            return REFUSED_MODULES[prefix]
    return None


def _module_getattr(module_name: str) -> Any:
    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in problems.UNSUPPORTED or name in problems.PENDING:
            raise problems.unsupported(name)
        raise problems.unsupported(
            f"{module_name}.{name}",
            "not provided by miniflow's Airflow layer (see docs/migrating-from-airflow.md "
            "for what is)",
        )

    return __getattr__


class AirflowFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `airflow` and its submodules from `surface.EXPORTS`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "airflow" and not fullname.startswith("airflow."):
            return None
        if fullname not in SUPPORTED and fullname not in _PACKAGES:
            construct = _refused(fullname)
            if construct is not None:
                raise problems.unsupported(construct)
            raise problems.unsupported(
                f"module {fullname}",
                "not provided by miniflow's Airflow layer, which covers Airflow's core "
                "(Bash, Python, TaskFlow, branching, groups, params, KubernetesPodOperator); "
                "see docs/migrating-from-airflow.md",
            )
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        from miniflow.airflow_compat.surface import EXPORTS

        module.__dict__.update(EXPORTS)
        module.__dict__["__getattr__"] = _module_getattr(module.__name__)
        module.__dict__["__miniflow_airflow_layer__"] = True


class PendulumFinder(importlib.abc.MetaPathFinder):
    """`pendulum` -> the stand-in, when no finder before this one found the real one."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "pendulum":
            return None
        return importlib.util.spec_from_file_location("pendulum", _SHIM)


_SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pendulum_shim.py")
_finder = AirflowFinder()
_pendulum = PendulumFinder()


def activate() -> None:
    """Serve `airflow.*` from the layer in this process (idempotent)."""
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    if _pendulum not in sys.meta_path:
        sys.meta_path.append(_pendulum)


def deactivate() -> None:
    """Undo `activate()`, forgetting the modules it served (tests)."""
    for hook in (_finder, _pendulum):
        while hook in sys.meta_path:
            sys.meta_path.remove(hook)
    for name in list(sys.modules):
        if name == "airflow" or name.startswith("airflow.") or name == "pendulum":
            module = sys.modules[name]
            if name != "pendulum" or getattr(module, "__file__", None) == _SHIM:
                del sys.modules[name]
