"""A faithful fake Kubernetes API server (pods only) for miniflow's tests.

See ``harness.FakeKube`` and the fixtures in ``fixtures.py``.
"""

from .faults import Faults, RequestLog, RequestRecord
from .harness import FakeKube
from .store import Store

__all__ = ["FakeKube", "Faults", "RequestLog", "RequestRecord", "Store"]
