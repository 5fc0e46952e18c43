"""Contract tests for the fake Kubernetes API server, run through kubernetes_asyncio."""

from tests.fakekube.fixtures import *  # noqa: F403
