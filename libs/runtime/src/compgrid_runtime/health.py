"""Health, readiness and Prometheus metrics over HTTP for every service process.

``/healthz`` answers while the event loop runs; ``/readyz`` answers 200 only when every
readiness check passes (database, NATS, not shutting down); ``/metrics`` is Prometheus text.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Mapping

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ReadinessCheck = Callable[[], Awaitable[None]]


def build_app(service: str, checks: Mapping[str, ReadinessCheck]) -> Starlette:
    """Return the health app; each check raises when its dependency is not ready."""

    async def healthz(_: Request) -> Response:
        return JSONResponse({"service": service, "status": "alive"})

    async def readyz(_: Request) -> Response:
        failures: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check(), 2.0)
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
        body = {"service": service, "ready": not failures, "failures": failures}
        return JSONResponse(body, status_code=503 if failures else 200)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    routes = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    return Starlette(routes=routes)


class HealthServer:
    """Runs the health app inside the service's event loop."""

    def __init__(self, service: str, checks: Mapping[str, ReadinessCheck], host: str, port: int):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(build_app(service, checks), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start serving in the background."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))

    async def stop(self) -> None:
        """Stop serving."""
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
