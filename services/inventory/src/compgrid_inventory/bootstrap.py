"""Composition root of the inventory service: builds the process from settings and ports."""

from __future__ import annotations

from functools import partial

from compgrid_inventory.adapters.tables import metadata
from compgrid_inventory.config import Settings
from compgrid_inventory.entrypoints.consumers import register_consumers
from compgrid_inventory.entrypoints.rpc import register_routes
from compgrid_inventory.use_cases.deps import Deps
from compgrid_inventory.use_cases.maintenance import every, expire_leases, repair_claims
from compgrid_inventory.use_cases.workers import expire_commands
from compgrid_runtime.app import ServiceApp


def bootstrap(settings: Settings | None = None) -> ServiceApp:
    """Return the inventory service process, ready to ``run()``."""
    return build(settings or Settings())[0]


def build(settings: Settings) -> tuple[ServiceApp, Deps]:
    """Return the process and the ports its use cases use."""
    app = ServiceApp(settings, metadata)
    deps = Deps(uow=app.unit_of_work, settings=settings, ask=app.asker(settings.owner_timeout_s))
    register_routes(app.rpc, deps)
    register_consumers(app.consumers, deps)
    app.background.append(
        every(settings.lease_check_interval_s, partial(expire_leases, deps), "leases")
    )
    app.background.append(every(settings.repair_interval_s, partial(repair_claims, deps), "claims"))
    app.background.append(
        every(settings.command_check_interval_s, partial(expire_commands, deps), "commands")
    )
    return app, deps
