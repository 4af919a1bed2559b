"""Composition root of the metering service: builds the process from settings and ports."""

from __future__ import annotations

from redis.asyncio import Redis

from compgrid_metering.adapters.counters import Counters
from compgrid_metering.adapters.tables import metadata
from compgrid_metering.config import Settings
from compgrid_metering.entrypoints.consumers import register_consumers
from compgrid_metering.entrypoints.rpc import register_routes
from compgrid_metering.use_cases.deps import Deps
from compgrid_metering.use_cases.recovery import check_intact
from compgrid_metering.use_cases.rounds import roll_up_forever
from compgrid_runtime.app import ServiceApp


def bootstrap(settings: Settings | None = None) -> ServiceApp:
    """Return the metering service process, ready to ``run()``."""
    return build(settings or Settings())[0]


def build(settings: Settings) -> tuple[ServiceApp, Deps]:
    """Return the process and the ports its use cases use."""
    app = ServiceApp(settings, metadata)
    counters = Counters(
        Redis.from_url(settings.redis_url), settings.redis_prefix, settings.dedup_ttl_s
    )
    deps = Deps(
        uow=app.unit_of_work,
        settings=settings,
        counters=counters,
        ask=app.asker(settings.owner_timeout_s),
    )
    register_consumers(app.consumers, deps)
    register_routes(app.rpc, deps)

    async def roll_up(running: ServiceApp) -> None:
        await roll_up_forever(deps, running.nc)

    async def intact(_: ServiceApp) -> None:
        await check_intact(deps)

    app.on_start.append(intact)
    app.background.append(roll_up)
    return app, deps
