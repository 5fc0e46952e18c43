"""A LocalLauncher in a process of its own, for the fault tests (`test_launch_crash`).

usage: python launcher_driver.py STATE_DIR KIND PROOF

Launches (or adopts) one attempt of KIND ("bash" or "python") whose command
appends one line to PROOF per execution, waits for its exit, prints
"exited <code> <reason>" and acknowledges it. Run with `stall_hook` on
PYTHONPATH and FAULT_STALL_AT_MARKER set to freeze it between the spawn and the
marker (see stall_hook/sitecustomize.py).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "unit"))  # local_launcher_entry, for forked Python

from miniflow.launchers.base import AttemptExited, AttemptKey, TaskSpec  # noqa: E402
from miniflow.launchers.local import LocalLauncher  # noqa: E402

KEY = AttemptKey("dag", "run", "task", 1)


async def main(state_dir: Path, kind: str, proof: Path) -> None:
    if kind == "bash":
        spec = TaskSpec(key=KEY, kind="bash", fileloc="d.py", bash_command=f"echo ran >> {proof}")
    else:
        spec = TaskSpec(key=KEY, kind="python", fileloc="d.py", env={"ENTRY_PROOF": str(proof)})
    launcher = LocalLauncher(
        state_dir=state_dir,
        dags_folder=state_dir,
        worker_env={},
        grace_period=1.0,
        python_mode="fork" if kind == "python" else "exec",
        python_entry="local_launcher_entry:main",
    )
    await launcher.start()
    try:
        await launcher.launch([spec])
        while True:
            event = await asyncio.wait_for(launcher.events.get(), 60)
            if isinstance(event, AttemptExited):
                print("exited", event.exit_code, event.reason, flush=True)
                await launcher.acknowledge([event.key])
                return
    finally:
        await launcher.shutdown_all()
        await launcher.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])))
