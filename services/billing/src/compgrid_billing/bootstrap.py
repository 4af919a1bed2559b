"""Composition root of the billing service: builds the process from settings and ports."""

from __future__ import annotations

from compgrid_billing.adapters.tables import metadata
from compgrid_billing.config import Settings
from compgrid_runtime.app import ServiceApp


def bootstrap(settings: Settings | None = None) -> ServiceApp:
    """Return the billing service process, ready to ``run()``."""
    return ServiceApp(settings or Settings(), metadata)
