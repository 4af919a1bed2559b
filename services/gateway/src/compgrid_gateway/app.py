"""The gateway's FastAPI application: the REST API under ``/api/v1``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from compgrid_gateway import access, apidocs, live, problems
from compgrid_gateway.backend import Backend
from compgrid_gateway.config import Settings
from compgrid_gateway.edge import Edge
from compgrid_gateway.idempotency import Idempotency
from compgrid_gateway.ratelimit import RateLimits
from compgrid_gateway.routes import auth, catalog, instances, money, people, stats
from compgrid_gateway.routes.common import API
from compgrid_gateway.streams import StreamSlots
from compgrid_runtime.app import nats_options
from compgrid_runtime.settings import Environment
from compgrid_runtime.tokens import KeyWatcher, TokenVerifier

DESCRIPTION = """CompGrid: self-service virtual machines on an institution's own hypervisors,
metered to the second and billed to the grant that paid for them.

Authenticate with `Authorization: Bearer <access token>` (from `POST /api/v1/auth/login`, or
`POST /api/v1/auth/token` with an API token). Errors are RFC 9457 problem documents with a
stable `code`. Commands answer 202 with a `Location`; follow changes on
`GET /api/v1/events/instances`. Lists page with `after` (the previous page's `next_cursor`)
and `limit`. Send `Idempotency-Key` on POSTs you may retry and `If-Match` on updates."""

ROUTERS = (auth, people, catalog, instances, money, stats)


def create_app(settings: Settings) -> FastAPI:
    """Return the gateway application bound to its settings."""
    verifier = TokenVerifier()
    hub = live.Hub()
    redis = Redis.from_url(settings.redis_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await nats.connect(**nats_options(settings))  # type: ignore[arg-type]
        watcher = KeyWatcher(nc.jetstream(), verifier)
        watcher.start()
        await hub.start(nc)
        app.state.backend = Backend(
            nc, verifier, settings.rpc_timeout_s, settings.slow_rpc_timeout_s
        )
        app.state.nc = nc
        try:
            yield
        finally:
            await hub.stop()
            await watcher.stop()
            await nc.drain()
            await redis.aclose()

    app = FastAPI(
        title="CompGrid",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url=f"{API}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.hub = hub
    app.state.streams = StreamSlots(
        redis,
        per_token=settings.streams_per_token,
        per_user=settings.streams_per_user,
        lease_s=max(60.0, 3 * settings.sse_keepalive_s),
        prefix=settings.streams_prefix,
    )
    app.state.public_url = settings.public_url.rstrip("/")
    problems.install(app)
    access.install(app)
    apidocs.install(app, API)
    for module in ROUTERS:
        app.include_router(module.router, prefix=API)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Answer while the process runs."""
        return {"service": "gateway", "status": "alive"}

    @app.get("/readyz", tags=["health"])
    async def readyz(response: Response) -> dict[str, object]:
        """Answer 200 when the bus is connected and token keys are known, 503 otherwise."""
        ready = bool(app.state.nc.is_connected) and bool(verifier.key_ids)
        response.status_code = 200 if ready else 503
        return {"service": "gateway", "ready": ready}

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["Problem"] = problems.Problem.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
            schema["security"] = [{"bearer": []}]
            access.document(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    app.add_middleware(
        Idempotency,
        redis=redis,
        prefix=settings.idempotency_prefix,
        ttl_s=settings.idempotency_ttl_s,
    )
    app.add_middleware(
        Edge,
        max_body_bytes=settings.max_body_bytes,
        limits=RateLimits(
            settings.redis_url,
            rate=settings.rate_limit_per_s,
            burst=settings.rate_limit_burst,
            prefix=settings.rate_limit_prefix,
        ),
        verifier=verifier,
        hsts=settings.environment is Environment.PRODUCTION,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "If-Match"],
            expose_headers=["Location", "ETag", "Retry-After", "X-Request-ID"],
            max_age=600,
        )
    return app
