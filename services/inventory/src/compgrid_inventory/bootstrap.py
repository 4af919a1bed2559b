"""Composition root of the inventory service: builds the process from settings and ports."""

from __future__ import annotations

from compgrid_inventory.adapters.tables import metadata
from compgrid_inventory.config import Settings
from compgrid_runtime.app import ServiceApp


def bootstrap(settings: Settings | None = None) -> ServiceApp:
    """Return the inventory service process, ready to ``run()``."""
    return ServiceApp(settings or Settings(), metadata)
