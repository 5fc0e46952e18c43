"""pytest fixtures for the fake Kubernetes API server.

``fake_kube`` starts a ``FakeKube`` (server on 127.0.0.1, random port, kubelet
on) and stops it at teardown; override ``fake_kube_options`` (a dict of
``FakeKube`` keyword arguments) in a module or class to change its settings,
or use ``make_fake_kube`` to start several / differently configured ones.
Import with ``from tests.fakekube.fixtures import *`` in a conftest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from .harness import FakeKube

__all__ = ["fake_kube", "fake_kube_options", "make_fake_kube"]


@pytest.fixture
def fake_kube_options() -> dict[str, Any]:
    """Keyword arguments for the ``fake_kube`` fixture's ``FakeKube``."""
    return {}


@pytest_asyncio.fixture
async def make_fake_kube(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[FakeKube]]]:
    """Factory: ``await make_fake_kube(kubelet=False, history_size=5)``."""
    started: list[FakeKube] = []

    async def make(**options: Any) -> FakeKube:
        path = tmp_path / f"fakekube-{len(started)}"
        path.mkdir()
        fk = FakeKube(path, **options)
        started.append(fk)
        return await fk.start()

    try:
        yield make
    finally:
        for fk in reversed(started):
            await fk.stop()


@pytest_asyncio.fixture
async def fake_kube(
    make_fake_kube: Callable[..., Awaitable[FakeKube]], fake_kube_options: dict[str, Any]
) -> FakeKube:
    """A running fake cluster: ``.url``, ``.kubeconfig_path``, ``.state``, ``.faults``,
    ``.requests``, ``.api_client()``, ``.secrets``, ``.entrypoints``."""
    return await make_fake_kube(**fake_kube_options)
