"""Settings of the provisioner service (environment prefix ``COMPGRID_PROVISIONER_``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from compgrid_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    """The provisioner service's settings."""

    model_config = SettingsConfigDict(env_prefix="COMPGRID_PROVISIONER_", extra="ignore")
    service_name = "provisioner"
