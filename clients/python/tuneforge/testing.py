"""Run tuneforge services in-process, for tests: `with local_services(store) as client: ...`.

Each service runs on its own event loop in a background thread, on a free port of 127.0.0.1,
against the object store you pass; the yielded `tuneforge.Client` points at them.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.common.server import ServiceServer
from services.common.settings import SERVICE_NAMES, ServiceSettings, StoreSettings
from tuneforge.client import Client


class ServiceThread:
    """One service on its own event loop thread."""

    def __init__(self, name: str, settings: ServiceSettings, store: StoreSettings) -> None:
        self.name = name
        self.settings = settings
        self.store = store
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"tf-{name}", daemon=True)
        self.server: ServiceServer | None = None

    def start(self) -> str:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=60)

    async def _start(self) -> str:
        module = importlib.import_module(f"services.{self.name}.main")
        service = module.build_service(self.settings, self.store)
        self.server = ServiceServer(service, self.settings, port=0)
        await self.server.start()
        return self.server.address

    def stop(self, grace_s: float = 5.0) -> None:
        if self.loop.is_closed():
            return
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self.loop).result(
                timeout=grace_s + 30
            )
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@contextmanager
def local_services(
    store: StoreSettings,
    home: Path,
    services: Sequence[str] = SERVICE_NAMES,
    project: str = "default",
    **overrides: Any,
) -> Iterator[Client]:
    """Starts `services` in-process and yields a Client connected to them. `overrides` set
    ServiceSettings fields (e.g. max_concurrent_jobs=0 keeps jobs queued)."""
    settings = ServiceSettings(home=home, project=project, **overrides)
    running: list[ServiceThread] = []
    targets: dict[str, str] = {}
    try:
        for name in services:
            thread = ServiceThread(name, settings, store)
            targets[name] = thread.start()
            running.append(thread)
            # Services that call each other find the ones started before them.
            settings = settings.model_copy(update={f"{name}_target": targets[name]})
        with Client(targets=targets, project=project) as client:
            yield client
    finally:
        for thread in reversed(running):
            thread.stop()
