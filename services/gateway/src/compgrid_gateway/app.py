"""The gateway's FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from fastapi import FastAPI, Response

from compgrid_gateway.config import Settings
from compgrid_runtime.app import nats_options


def create_app(settings: Settings) -> FastAPI:
    """Return the gateway application bound to its settings."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.nc = await nats.connect(**nats_options(settings))  # type: ignore[arg-type]
        yield
        await app.state.nc.drain()

    app = FastAPI(title="CompGrid", version="0.1.0", lifespan=lifespan)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Answer while the process runs."""
        return {"service": "gateway", "status": "alive"}

    @app.get("/readyz", tags=["health"])
    async def readyz(response: Response) -> dict[str, object]:
        """Answer 200 when the bus is connected, 503 otherwise."""
        ready = bool(app.state.nc.is_connected)
        response.status_code = 200 if ready else 503
        return {"service": "gateway", "ready": ready}

    return app
