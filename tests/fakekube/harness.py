"""``FakeKube``: starts/stops the fake API server, kubelet and helpers together.

Fakes: a one-node cluster reachable over real HTTP on 127.0.0.1 (random port)
with a kubeconfig file (context ``fake``, insecure http).  Use it as an async
context manager or via the pytest fixtures in ``fixtures.py``.  ``stop()``
ends watches and log streams, kills every pod process and closes the API
clients handed out by ``api_client()``, so nothing is left running.
``stop_serving()`` / ``resume_serving()`` take the API server off the network
and back on the same port (connections refused meanwhile, open streams cut)
while the kubelet keeps running pods, as in a control-plane outage.
Deliberately does not fake TLS or authentication.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client

from .faults import Faults, RequestLog
from .kubelet import Kubelet
from .server import ApiServer
from .store import Store


class FakeKube:
    """Handle on a running fake cluster (see the attributes set in ``__init__``)."""

    def __init__(
        self,
        tmp_path: Path | str | None = None,
        *,
        kubelet: bool = True,
        history_size: int = 1000,
        bookmark_interval: float = 0.2,
        secrets: dict[tuple[str, str], dict[str, str]] | None = None,
        configmaps: dict[tuple[str, str], dict[str, str]] | None = None,
        entrypoints: dict[str, list[str]] | None = None,
        base_env: dict[str, str] | None = None,
        poll_interval: float = 0.05,
    ) -> None:
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if tmp_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="fakekube-")
            tmp_path = self._tmpdir.name
        self.tmp_path = Path(tmp_path)
        self.state = Store(history_size)
        self.requests = RequestLog()
        self.faults = Faults(self.state)
        self.kubelet: Kubelet | None = None
        # One dict: what the API server serves is what the kubelet resolves.
        self._secrets = secrets if secrets is not None else {}
        if kubelet:
            self.kubelet = Kubelet(
                self.state,
                self.faults,
                secrets=self._secrets,
                configmaps=configmaps,
                entrypoints=entrypoints,
                base_env=base_env,
                poll_interval=poll_interval,
            )
            self.faults.kubelet = self.kubelet
        self.api = ApiServer(
            self.state, self.faults, self.kubelet, self.requests, bookmark_interval, self._secrets
        )
        self.url = ""
        self.kubeconfig_path = self.tmp_path / "kubeconfig"
        self._runner: web.AppRunner | None = None
        self._clients: list[client.ApiClient] = []

    @property
    def secrets(self) -> dict[tuple[str, str], dict[str, str]]:
        """``{(namespace, name): {key: value}}``: the Secrets the API server serves and
        the kubelet resolves secretKeyRef from."""
        return self._secrets

    @property
    def entrypoints(self) -> dict[str, list[str]]:
        """``{image: [entrypoint...]}`` used when a container has no ``command``."""
        return self.kubelet.entrypoints if self.kubelet else {}

    async def start(self) -> FakeKube:
        if self.kubelet is not None:
            self.kubelet.start()
        port = await self._serve(0)
        self.url = f"http://127.0.0.1:{port}"
        self._write_kubeconfig()
        return self

    async def _serve(self, port: int) -> int:
        self._runner = web.AppRunner(self.api.app(), shutdown_timeout=2.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    @property
    def serving(self) -> bool:
        return self._runner is not None

    async def stop_serving(self) -> None:
        """The API server goes away: connections are refused and open streams cut
        until ``resume_serving()``; pods keep running and changing state."""
        self.state.drop_watchers()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def resume_serving(self) -> None:
        """Serve again on the same address (the kubeconfig stays valid)."""
        if self._runner is None:
            await self._serve(int(self.url.rsplit(":", 1)[1]))

    def _write_kubeconfig(self) -> None:
        cfg: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": "default"},
                }
            ],
            "current-context": "fake",
        }
        self.kubeconfig_path.write_text(json.dumps(cfg, indent=2))

    def configuration(self) -> client.Configuration:
        cfg = client.Configuration()
        cfg.host = self.url
        return cfg

    def api_client(self) -> client.ApiClient:
        """A kubernetes_asyncio ApiClient for this server (closed at ``stop()`` too)."""
        api = client.ApiClient(self.configuration())
        self._clients.append(api)
        return api

    async def stop(self) -> None:
        for api in self._clients:
            await api.close()
        self._clients.clear()
        self.state.drop_watchers()
        if self.kubelet is not None:
            await self.kubelet.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    async def __aenter__(self) -> FakeKube:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
