"""Settings of the inventory service (environment prefix ``COMPGRID_INVENTORY_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from compgrid_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    """The inventory service's settings."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_INVENTORY_", extra="ignore")
    service_name = "inventory"
