"""The one gRPC server bootstrap used by every service.

`grpc.aio` server with the error/logging interceptor, the health service (SERVING per service
once started), reflection, message size limits, and graceful shutdown: on SIGTERM or SIGINT the
health status turns NOT_SERVING, new calls are refused, and in-flight calls get `grace_s` to finish.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common.interceptors import ErrorAndLoggingInterceptor
from services.common.logging import configure_logging
from services.common.settings import ServiceSettings

log = structlog.get_logger("server")

Hook = Callable[[], Awaitable[None]]


class PortInUse(RuntimeError):
    """The configured port is taken by another process."""


@dataclass
class Servicer:
    """A servicer object, the generated function that registers it, and its full service name."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    implementation: Any
    full_name: str


@dataclass
class Service:
    """What one tuneforge service puts on its server."""

    name: str
    servicers: list[Servicer]
    on_start: list[Hook] = field(default_factory=list)
    on_stop: list[Hook] = field(default_factory=list)


class ServiceServer:
    """A started (or startable) gRPC server for one Service."""

    def __init__(
        self, service: Service, settings: ServiceSettings, port: int | None = None
    ) -> None:
        self.service = service
        self.settings = settings
        self.requested_port = settings.port_for(service.name) if port is None else port
        self.health = HealthServicer()
        self.port = 0
        self._stopped = asyncio.Event()
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Refuse a port another process holds instead of silently sharing it.
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
        self.server = grpc.aio.server(interceptors=[ErrorAndLoggingInterceptor()], options=options)

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> int:
        names = [s.full_name for s in self.service.servicers]
        for s in self.service.servicers:
            s.add_to_server(s.implementation, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        bind = f"{self.settings.host}:{self.requested_port}"
        try:
            self.port = self.server.add_insecure_port(bind)
        except RuntimeError as exc:
            raise PortInUse(
                f"{self.service.name}: cannot listen on {bind}: the port is already in use"
            ) from exc
        if self.port == 0:
            raise PortInUse(
                f"{self.service.name}: cannot listen on {bind}: the port is already in use"
            )
        for hook in self.service.on_start:
            await hook()
        await self.server.start()
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", service=self.service.name, address=self.address)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight calls finish within `grace`."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.grace_s if grace is None else grace
        log.info("draining", service=self.service.name, grace_s=grace)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for hook in self.service.on_stop:
            try:
                await hook()
            except Exception:
                log.exception("stop_hook_failed", service=self.service.name)
        log.info("stopped", service=self.service.name)

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def serve(service: Service, settings: ServiceSettings) -> None:
    """Runs `service` until SIGTERM or SIGINT, then drains it."""
    server = ServiceServer(service, settings)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    await server.start()
    waiter = asyncio.create_task(server.wait_for_termination())
    stopper = asyncio.create_task(stop_requested.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await server.stop()
    for task in (waiter, stopper):
        task.cancel()


def run_service(name: str, build: Callable[[ServiceSettings], Service]) -> None:
    """Console-script entry point shared by the four services."""
    settings = ServiceSettings()
    configure_logging(settings.log_level, settings.log_format, service=name)
    try:
        asyncio.run(serve(build(settings), settings))
    except PortInUse as exc:
        log.error("port_in_use", error=str(exc))
        raise SystemExit(f"error: {exc}") from None
