"""Composition root of the provisioner service: builds the process from settings and ports."""

from __future__ import annotations

from dataclasses import replace

from compgrid_events.streams import USAGE, StreamSpec, streams_owned_by
from compgrid_provisioner.adapters.tables import metadata
from compgrid_provisioner.config import Settings
from compgrid_provisioner.entrypoints.consumers import register_consumers
from compgrid_provisioner.entrypoints.heartbeat import heartbeat
from compgrid_provisioner.use_cases.deps import Deps, host_pool
from compgrid_provisioner.use_cases.observe import observe
from compgrid_runtime.app import ServiceApp


def bootstrap(settings: Settings | None = None) -> ServiceApp:
    """Return the provisioner service process, ready to ``run()``."""
    return build(settings or Settings())[0]


def owned_streams(settings: Settings) -> tuple[StreamSpec, ...]:
    """The streams this service keeps, the usage stream with the configured retention."""
    return tuple(
        replace(spec, max_age_s=settings.usage_retention_days * 86_400) if spec is USAGE else spec
        for spec in streams_owned_by("provisioner")
    )


def build(settings: Settings) -> tuple[ServiceApp, Deps]:
    """Return the process and the ports its use cases use."""
    app = ServiceApp(settings, metadata, owned_streams=owned_streams(settings))
    deps = Deps(uow=app.unit_of_work, settings=settings, hosts=host_pool(settings))
    register_consumers(app.consumers, deps)

    async def watch(_: ServiceApp) -> None:
        try:
            await observe(deps)
        finally:  # cancelled at stop, after the commands in hand have drained
            deps.hosts.close()

    app.background.append(watch)
    app.background.append(heartbeat(settings))
    return app, deps
