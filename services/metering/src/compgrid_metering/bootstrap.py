"""Composition root of the metering service: builds the process from settings and ports."""

from __future__ import annotations

from compgrid_metering.adapters.tables import metadata
from compgrid_metering.config import Settings
from compgrid_runtime.app import ServiceApp


def bootstrap(settings: Settings | None = None) -> ServiceApp:
    """Return the metering service process, ready to ``run()``."""
    return ServiceApp(settings or Settings(), metadata)
