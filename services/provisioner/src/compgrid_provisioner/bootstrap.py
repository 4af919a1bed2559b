"""Composition root of the provisioner service: builds the process from settings and ports."""

from __future__ import annotations

from compgrid_provisioner.adapters.tables import metadata
from compgrid_provisioner.config import Settings
from compgrid_runtime.app import ServiceApp


def bootstrap(settings: Settings | None = None) -> ServiceApp:
    """Return the provisioner service process, ready to ``run()``."""
    return ServiceApp(settings or Settings(), metadata)
