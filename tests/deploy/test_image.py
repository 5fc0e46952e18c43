"""The Dockerfile, checked without Docker: its install step run in a clean virtual
environment (the files it COPYs only), the commands the image and deploy/ name exist in
it, the final stage carries no build tools, and its user is the uid deploy/ and worker
pods run as."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from miniflow.launchers import pods
from miniflow.launchers.base import AttemptKey
from tests.deploy.render import DEPLOY, OVERLAYS, pod_templates, render

DOCKERFILE = DEPLOY.parent / "Dockerfile"
VENV = "/opt/miniflow/venv"
Instruction = tuple[str, str]


def stages() -> list[list[Instruction]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[list[Instruction]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, args = line.partition(" ")
        if word.upper() == "FROM":
            out.append([])
        if out:
            out[-1].append((word.upper(), args.strip()))
    return out


def args_of(stage: list[Instruction], word: str) -> list[str]:
    return [args for w, args in stage if w == word]


def test_final_stage_is_slim_labelled_and_runs_as_the_worker_uid() -> None:
    build, final = stages()
    assert build[0][1].endswith(" AS build") and final[0][1].startswith("python:3.11-slim")
    assert "PIP_NO_CACHE_DIR=1" in " ".join(args_of(build, "ENV"))
    # Only the virtual environment leaves the build stage: no compiler, wheel or cache.
    assert args_of(final, "COPY")[0] == f"--from=build {VENV} {VENV}"
    assert not [r for r in args_of(final, "RUN") if re.search(r"pip|apt|gcc|make", r)]
    assert not [w for stage in stages() for w, _ in stage if w == "HEALTHCHECK"]
    labels = " ".join(args_of(final, "LABEL"))
    for key in ("title", "description", "licenses", "version", "source"):
        assert f"org.opencontainers.image.{key}=" in labels
    (user,) = args_of(final, "USER")
    assert user == f"{pods.WORKER_UID}:{pods.WORKER_UID}"
    assert f"--uid {pods.WORKER_UID}" in " ".join(args_of(final, "RUN"))


def test_deploy_runs_the_image_as_its_uid() -> None:
    uids = set()
    for overlay in OVERLAYS:
        for what, spec in pod_templates(render(DEPLOY / "overlays" / overlay)):
            if "postgres" in what:
                continue
            assert "miniflow" in spec["containers"][0]["image"]
            uids.add((spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]))
    assert uids == {(pods.WORKER_UID, pods.WORKER_UID)}


@pytest.mark.timeout(600)
def test_install_step_works_in_a_clean_venv_and_names_real_commands(tmp_path: Path) -> None:
    build, final = stages()
    src = tmp_path / "src"
    src.mkdir()
    for args in args_of(build, "COPY"):  # only what the build context gives the stage
        *sources, _dest = args.split()
        for source in sources:
            origin = DEPLOY.parent / source
            if origin.is_dir():
                shutil.copytree(origin, src / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(origin, src / source)
    venv = tmp_path / "venv"
    (run,) = args_of(build, "RUN")
    command = run.replace(VENV, str(venv)).replace("/src", str(src))
    command = re.sub(r"^python ", f"{sys.executable} ", command)
    # The dev venv's pip cache is welcome here (the image's build disables it).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_NO_CACHE", "VIRTUAL"))}
    done = subprocess.run(
        ["bash", "-c", command], env=env, cwd=src, capture_output=True, text=True, timeout=540
    )
    assert done.returncode == 0, done.stderr[-3000:]

    bin_dir = venv / "bin"
    cmd = re.findall(r'"([^"]+)"', args_of(final, "CMD")[0])
    named = [cmd]
    for overlay in OVERLAYS:
        for _, spec in pod_templates(render(DEPLOY / "overlays" / overlay)):
            named += [c["command"] for c in spec["containers"] if "miniflow" in c["image"]]
    named.append(pods.worker_command(AttemptKey("d", "r", "t", 1))[:2])  # worker pods
    clean = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    for argv in {tuple(a) for a in named}:
        assert (bin_dir / argv[0]).is_file(), argv
        shown = subprocess.run(
            [str(bin_dir / argv[0]), *argv[1:], "--help"],
            env=clean, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 0, (argv, shown.stderr)
    # Nothing was installed from the work tree: the venv has its own copy of miniflow.
    probe = "import miniflow, miniflow_worker; print(miniflow.__file__)"
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", probe],
        env=clean, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert where.stdout.startswith(str(venv)), where
